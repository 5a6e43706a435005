"""``minkseg compare``: several runs evaluated on the same scenes, side by side.

Writes ``REPORT/report.md``, ``REPORT/report.csv``, ``REPORT/<run>.json`` (the
``minkseg evaluate --json`` format), plots (per-class AP50 bars, mean AP against the IoU
threshold, validation learning curves against training steps), per-scene thumbnails of
each run's predicted instances, the 3D viewer bundle (``REPORT/viewer/``) and
``REPORT/index.html``: everything on one self-contained page. Runs that are seeds of one
setting (configs equal but for ``name``, ``train.seed`` and ``runs_dir``) are also
summarised as mean and spread over their seeds, with per-class AP50 differences between
settings.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minkseg.evaluation.evaluate import write_json
from minkseg.evaluation.metrics import OVERLAPS
from scannet_tools.io import atomic_path, write_text_atomic
from scannet_tools.labels import INSTANCE_NAMES

#: Config entries that may differ between seeds of one setting.
SEED_KEYS = ("name", "train.seed", "runs_dir")
#: Validation metrics drawn as learning curves.
CURVE_METRICS = ("mAP", "AP50", "mIoU")
THUMB_SIZE = (320, 240)


def run_checkpoint(run: Path) -> Path:
    """``best.pth`` of a run folder if it exists, else ``last.pth``; a .pth path is used as is."""
    run = Path(run)
    if run.suffix == ".pth":
        return run
    for name in ("best.pth", "last.pth"):
        if (run / name).is_file():
            return run / name
    raise FileNotFoundError(f"{run}: no best.pth or last.pth")


def run_labels(runs: list[Path]) -> list[str]:
    """A run's folder name (a checkpoint's parent folder); where names repeat (``round_5`` of two
    self-training runs) parent folders are prefixed until the labels differ."""
    dirs = [(Path(r).parent if Path(r).suffix == ".pth" else Path(r)).absolute() for r in runs]
    parts = [d.parts[1:] for d in dirs]  # without the root "/"
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        repeated = [i for i, label in enumerate(labels) if depth[i] < len(parts[i]) and any(
            labels[j] == label and dirs[j] != dirs[i] for j in range(len(labels)))]
        if not repeated:
            return labels
        for i in repeated:
            depth[i] += 1


def learning_curve(run_dir: Path, steps_per_epoch: float | None = None) -> list[dict]:
    """Validation points of a run, in step order: ``{"epoch", "step", "mAP", "AP50", "mIoU"}`` each.

    Read from ``run_dir/val/epoch_XXXX.json`` (what :meth:`Trainer.validate` writes after
    epoch XXXX). The step is the file's ``step`` entry where present, else
    ``epoch * steps_per_epoch``; without either the point's step is None. A file that is
    not valid JSON raises ValueError naming it.
    """
    points = []
    for f in sorted(Path(run_dir).glob("val/epoch_*.json")):
        match = re.fullmatch(r"epoch_(\d+)\.json", f.name)
        if match is None:
            continue
        try:
            m = json.loads(f.read_text())
            values = {"mAP": m["instance"]["mAP"], "AP50": m["instance"]["AP50"], "mIoU": m["semantic"]["mIoU"]}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{f}: not a validation metrics file ({type(e).__name__}: {e})") from None
        epoch = int(match.group(1))
        step = m.get("step", m.get("steps"))
        if step is None and steps_per_epoch:
            step = round(epoch * steps_per_epoch)
        points.append({"epoch": epoch, "step": None if step is None else int(step),
                       **{k: float("nan") if v is None else float(v) for k, v in values.items()}})
    return sorted(points, key=lambda p: p["epoch"])


def best_point(curve: list[dict], metric: str) -> dict | None:
    """The point of ``curve`` with the highest ``metric`` (NaN never wins; the earliest on ties)."""
    valid = [p for p in curve if p[metric] == p[metric]]
    return max(valid, key=lambda p: p[metric]) if valid else None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def group_seeds(configs: dict[str, dict]) -> dict[str, list[str]]:
    """Runs grouped by setting: configs (nested dicts) equal once :data:`SEED_KEYS` are dropped.

    Groups keep the order of their first run. Each is named by the config entries that tell
    the settings apart (``model.head=margin``); a single setting is named after its first run.
    """
    flat = {label: {k: v for k, v in _flatten(c).items() if k not in SEED_KEYS} for label, c in configs.items()}
    keys: dict[str, list[str]] = {}
    for label, c in flat.items():
        keys.setdefault(json.dumps(c, sort_keys=True, default=str), []).append(label)
    groups = list(keys.values())
    if len(groups) == 1:
        return {groups[0][0]: groups[0]}
    settings = [flat[g[0]] for g in groups]
    differ = sorted({k for s in settings for k in s if any(t.get(k) != s.get(k) for t in settings)})
    names: dict[str, list[str]] = {}
    for g, s in zip(groups, settings):
        name = ", ".join(f"{k}={s.get(k)}" for k in differ[:3]) + (", ..." if len(differ) > 3 else "")
        names[name if name not in names else f"{name} ({g[0]})"] = g
    return names


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1: seeds are a sample); std is NaN for one value.

    NaNs (a class absent from the scenes) are left out; all-NaN gives (NaN, NaN).
    """
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def seed_summary(results: dict[str, dict], groups: dict[str, list[str]]) -> dict[str, dict]:
    """Per setting: ``runs``, and (mean, std) over its seeds of mAP, AP50, AP25, mIoU and each class's AP50."""
    out = {}
    for name, labels in groups.items():
        ms = [results[label] for label in labels]
        s = {"runs": list(labels)}
        for k in ("mAP", "AP50", "AP25"):
            s[k] = mean_std([m["instance"][k] for m in ms])
        s["mIoU"] = mean_std([m["semantic"]["mIoU"] for m in ms])
        s["per_class_ap50"] = {c: mean_std([m["instance"]["per_class"][c]["ap50"] for m in ms])
                               for c in INSTANCE_NAMES}
        out[name] = s
    return out


def compare_runs(runs: list[Path], out: Path, split: str | None = None, prepared: str | None = None,
                 root: str | None = None, device: str | None = "auto", tuned: bool = True, thumbnails: int = 4,
                 viewer: bool = True) -> dict[str, dict]:
    """Evaluate ``runs`` on the same scenes and write the report folder ``out`` (see the module doc).

    ``tuned``: use each run's ``tuned.yaml`` clustering thresholds where present (see load_checkpoint).
    ``thumbnails`` scenes (the first of the split) get rendered thumbnails and, with
    ``viewer``, a 3D viewer bundle under ``out/viewer``.
    """
    from minkseg.config import Config, from_dict, to_dict
    from minkseg.data.splits import split_scenes
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.evaluation.model_eval import evaluate_model
    from minkseg.evaluation.oracle import prepared_ceiling
    from minkseg.inference.masks import paint_by_confidence
    from minkseg.inference.predict import predict_scene
    from minkseg.viz.colors import instance_colors
    from scannet_tools.prepare import load_prepared, prepared_path

    device = resolve_device(device)

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    curves: dict[str, list[dict]] = {}
    ceilings: dict[float, dict] = {}
    scenes = None
    thumb_scenes: dict[str, dict] = {}  # scene -> {"xyz", "faces", "colours": {title: rgb}}
    first_cfg = None
    for run, label in zip(runs, run_labels(runs)):
        ckpt = run_checkpoint(run)
        model, cfg, state = load_checkpoint(ckpt, device, tuned=tuned)
        if prepared:
            cfg.data.prepared = prepared
        if root:
            cfg.data.root = root
        first_cfg = first_cfg or cfg
        # seeds are grouped by the configs they were trained with: tuned.yaml may set each seed's thresholds apart
        configs[label] = to_dict(from_dict(Config, state["config"]))
        configs[label]["data"].update(prepared=cfg.data.prepared, root=cfg.data.root)
        epoch, step = state.get("epoch"), state.get("step")
        curves[label] = learning_curve(ckpt.parent, step / epoch if epoch and step else None)
        names = split_scenes(cfg, split or cfg.data.val_split)
        scenes = scenes or names  # every run on the first run's scenes
        m = evaluate_model(model, cfg, scenes, device, progress=True, ap_matrix=True)
        m["head"] = cfg.model.head
        if cfg.data.voxel_size not in ceilings:  # the voxel oracle, once per voxel size
            ceilings[cfg.data.voxel_size] = prepared_ceiling(cfg.data.prepared, scenes, cfg.data.voxel_size)
        m["ceiling"] = ceilings[cfg.data.voxel_size]
        results[label] = m
        write_json({k: v for k, v in m.items() if k in ("instance", "semantic", "ceiling")}, out / f"{label}.json")
        for scene_id in scenes[:thumbnails]:
            scene = load_prepared(prepared_path(cfg.data.prepared, scene_id))
            entry = thumb_scenes.setdefault(scene_id, _thumb_scene(scene, Path(cfg.data.root)))
            pred = predict_scene(model, scene, cfg, device)
            ids = paint_by_confidence(len(scene["xyz"]), [p.mask for p in pred.instances],
                                      [p.confidence for p in pred.instances])
            entry["colours"][label] = instance_colors(ids)
    scenes = scenes or []
    groups = group_seeds(configs)
    write_report(results, out, scenes, curves=curves, groups=groups)
    thumbs = render_thumbnails(thumb_scenes, out / "thumbs")
    if viewer and thumb_scenes:
        from minkseg.viz.view import export_viewer

        export_viewer([Path(r) for r in runs], out / "viewer", scenes=list(thumb_scenes),
                      split=split or first_cfg.data.val_split, device=str(device),
                      prepared=Path(prepared) if prepared else None, root=Path(root) if root else None,
                      tuned=tuned)
    write_index_html(out, results, scenes, curves, groups, thumbs, viewer=viewer and bool(thumb_scenes))
    return results


def _thumb_scene(scene: dict, root: Path) -> dict:
    """Vertices (and the raw mesh's faces where the scan is there) plus the ground-truth instances."""
    from minkseg.viz.colors import instance_colors
    from scannet_tools.reader import SceneError, read_scene

    faces = None
    scan = root / "scans" / scene["scene"]
    if scan.is_dir():
        try:
            raw = read_scene(scan, annotations=False)
            faces = raw.faces if len(raw.xyz) == len(scene["xyz"]) else None
        except (OSError, ValueError, SceneError):  # a missing or broken mesh: a thumbnail of points does as well
            faces = None
    gt = scene["instance"].astype(np.int64) - 1  # ScanNet ids from 1, -1 for none
    return {"xyz": scene["xyz"], "faces": faces, "colours": {"ground truth": instance_colors(gt)}}


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def render_thumbnails(scenes: dict[str, dict], out: Path) -> dict[str, list[tuple[str, str]]]:
    """Render each scene's colourings to ``out/<scene>_<title>.png``; scene -> [(title, path relative
    to out's parent)]. A scene that cannot be rendered (no GL/Vulkan driver) gets none, with a warning."""
    from minkseg.viz.render import render_views
    from minkseg.viz.visualize import write_png

    written: dict[str, list[tuple[str, str]]] = {}
    for scene_id, s in scenes.items():
        titles = list(s["colours"])
        try:
            images = render_views(s["xyz"], s["faces"], [s["colours"][t] for t in titles], size=THUMB_SIZE)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"warning: no thumbnails of {scene_id} ({e})", file=sys.stderr)
            continue
        out.mkdir(parents=True, exist_ok=True)
        written[scene_id] = []
        for title, image in zip(titles, images):
            p = out / f"{scene_id}_{_file_part(title)}.png"
            write_png(p, image)
            written[scene_id].append((title, f"{out.name}/{p.name}"))
    return written


@dataclass
class Table:
    """A report table, written both as Markdown and as HTML."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    align_left: int = 1  # leading columns that hold names
    extra: list[str] = field(default_factory=list)  # Markdown lines after the table


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}"


def _pm(ms: tuple[float, float]) -> str:
    mean, std = ms
    return _pct(mean) if std != std else f"{_pct(mean)} ± {_pct(std)}"


def report_tables(results: dict[str, dict], curves: dict[str, list[dict]] | None = None,
                  groups: dict[str, list[str]] | None = None) -> list[Table]:
    """The report's tables: runs, AP50 per class, learning-curve bests, and (seeds) the settings."""
    labels = list(results)
    main = Table("Runs", ["run", "head", "mAP", "AP50", "AP25", "mIoU"], [], align_left=2)
    for name in labels:
        inst, sem = results[name]["instance"], results[name]["semantic"]
        main.rows.append([name, str(results[name].get("head", ""))]
                         + [_pct(v) for v in (inst["mAP"], inst["AP50"], inst["AP25"], sem["mIoU"])])
    ceilings = {m["ceiling"]["voxel_size"]: m["ceiling"] for m in results.values() if "ceiling" in m}
    for size, c in sorted(ceilings.items()):
        main.rows.append(["voxelization ceiling", f"{100 * size:g} cm voxels"]
                         + [_pct(c[k]) for k in ("mAP", "AP50", "AP25", "mIoU")])
    if ceilings:
        main.note = ("The ceiling is the voxel oracle (minkseg/evaluation/oracle.py): each vertex takes its voxel's "
                     "majority label and each ground-truth instance keeps the voxels it wins, i.e. what perfect voxel "
                     "outputs score at that voxel size.")
    per_class = Table("AP50 per class", ["class", *labels],
                      [[c] + [_pct(results[n]["instance"]["per_class"][c]["ap50"]) for n in labels]
                       for c in INSTANCE_NAMES])
    tables = [main, per_class]
    if curves and any(curves.values()):
        t = Table("Validation during training (best of each run)", ["run", "validations", *[
            f"best {k} (step)" for k in CURVE_METRICS]], [],
            note="From each run's val/epoch_XXXX.json; steps are optimizer steps.")
        for name, curve in curves.items():
            cells = []
            for k in CURVE_METRICS:
                b = best_point(curve, k)
                cells.append("-" if b is None else f"{_pct(b[k])} ({b['step'] if b['step'] is not None else '?'})")
            t.rows.append([name, str(len(curve)), *cells])
        tables.append(t)
    if groups and any(len(g) > 1 for g in groups.values()):
        summary = seed_summary(results, groups)
        t = Table("Settings over seeds (mean ± std)", ["setting", "runs", "mAP", "AP50", "AP25", "mIoU"], [],
                  note="std is the sample standard deviation over the setting's runs (ddof=1); runs are seeds "
                       f"of one setting when their configs are equal but for {', '.join(SEED_KEYS)}.", align_left=2)
        for name, s in summary.items():
            t.rows.append([name, ", ".join(s["runs"])] + [_pm(s[k]) for k in ("mAP", "AP50", "AP25", "mIoU")])
        tables.append(t)
        names = list(summary)
        if len(names) > 1:
            base = names[0]
            header = ["class", *[f"{n}" for n in names], *[f"{n} - {base}" for n in names[1:]]]
            rows = []
            for c in INSTANCE_NAMES:
                means = [summary[n]["per_class_ap50"][c][0] for n in names]
                rows.append([c, *[_pm(summary[n]["per_class_ap50"][c]) for n in names],
                             *[_signed(m - means[0]) for m in means[1:]]])
            tables.append(Table("AP50 per class: settings (mean ± std over seeds) and differences", header, rows,
                                note=f"Differences of the seed means, in AP50 points, against {base}."))
    return tables


def _signed(v: float) -> str:
    return "-" if v != v else f"{100 * v:+.1f}"


def _md_table(t: Table) -> list[str]:
    lines = [f"## {t.title}", "", "| " + " | ".join(t.header) + " |",
             "| " + " | ".join("---" if i < t.align_left else "---:" for i in range(len(t.header))) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in t.rows]
    return lines + ([""] + [t.note] if t.note else []) + [""]


def write_report(results: dict[str, dict], out: Path, scenes: list[str], curves: dict[str, list[dict]] | None = None,
                 groups: dict[str, list[str]] | None = None) -> None:
    labels = list(results)
    header = ["run", "head", "mAP", "AP50", "AP25", "mIoU"] + [f"AP50 {c}" for c in INSTANCE_NAMES]
    rows = []
    for name in labels:
        m = results[name]
        inst, sem = m["instance"], m["semantic"]
        rows.append([name, m.get("head", ""), inst["mAP"], inst["AP50"], inst["AP25"], sem["mIoU"]]
                    + [inst["per_class"][c]["ap50"] for c in INSTANCE_NAMES])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([[f"{v:.4f}" if isinstance(v, float) else v for v in r] for r in rows])
    write_text_atomic(out / "report.csv", buf.getvalue())

    has_curves = _plots(results, out, curves or {})
    md = [f"# Comparison on {len(scenes)} scenes", "", "Values in %, as on the ScanNet benchmark page "
          "(mAP over IoU 0.50:0.05:0.90, min. region 100 vertices). The same page with scene thumbnails "
          "and the 3D viewer: [index.html](index.html).", ""]
    for t in report_tables(results, curves, groups):
        md += _md_table(t)
    md += ["![per-class AP50](ap50_per_class.png)", "", "![AP against IoU threshold](ap_vs_iou.png)", ""]
    if has_curves:
        md += ["![validation learning curves](learning_curves.png)", ""]
    md += ["Scenes: " + ", ".join(scenes)]
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0 4px}td,th{border:1px solid #ccc;padding:3px 8px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f2f2f2}p.note{color:#555;max-width:60em}
img.plot{max-width:100%;display:block;margin:8px 0}.scene{display:flex;gap:8px;align-items:flex-end;flex-wrap:wrap}
figure{margin:0}figcaption{font-size:13px;color:#444}"""


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td{'' if i < t.align_left else ' class=n'}>{e(v)}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in t.rows)
    note = f"<p class=note>{e(t.note)}</p>" if t.note else ""
    return f"<h2>{e(t.title)}</h2><table><tr>{head}</tr>{body}</table>{note}"


def write_index_html(out: Path, results: dict[str, dict], scenes: list[str], curves: dict[str, list[dict]],
                     groups: dict[str, list[str]], thumbs: dict[str, list[tuple[str, str]]],
                     viewer: bool = True) -> None:
    """``out/index.html``: the report's tables and plots, and per scene thumbnails linking to the viewer.

    Self-contained: inline CSS, no script, images as files next to it (relative links).
    """
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset=utf-8>",
             f"<title>minkseg compare: {len(results)} runs on {len(scenes)} scenes</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Comparison of {len(results)} runs on {len(scenes)} scenes</h1>",
             "<p class=note>Values in %, as on the ScanNet benchmark page (mAP over IoU 0.50:0.05:0.90, "
             "min. region 100 vertices).</p>"]
    parts += [_html_table(t) for t in report_tables(results, curves, groups)]
    parts += ["<h2>Plots</h2>", "<img class=plot id=ap50 src=ap50_per_class.png alt='AP50 per class'>",
              "<img class=plot id=apiou src=ap_vs_iou.png alt='AP against IoU threshold'>"]
    if (out / "learning_curves.png").is_file() and curves and any(curves.values()):
        parts.append("<img class=plot id=curves src=learning_curves.png alt='validation learning curves'>")
    if thumbs:
        parts.append("<h2>Scenes</h2><p class=note>Instances: ground truth and each run's prediction (grey: none)."
                     + (" Click a scene to open it in the 3D viewer." if viewer else "") + "</p>")
        for scene_id, items in thumbs.items():
            link = f"viewer/index.html#scene={e(scene_id)}"
            figs = "".join(f"<figure>{f'<a href={chr(34)}{link}{chr(34)}>' if viewer else ''}"
                           f"<img class=thumb src='{e(src)}' alt='{e(title)}' width={THUMB_SIZE[0]} "
                           f"height={THUMB_SIZE[1]}>{'</a>' if viewer else ''}<figcaption>{e(title)}</figcaption>"
                           f"</figure>" for title, src in items)
            name = f"<a href='{link}'>{e(scene_id)}</a>" if viewer else e(scene_id)
            parts.append(f"<h3>{name}</h3><div class=scene>{figs}</div>")
    parts.append("<p class=note>Scenes: " + e(", ".join(scenes)) + "</p></body></html>")
    write_text_atomic(out / "index.html", "\n".join(parts) + "\n")


def _plots(results: dict[str, dict], out: Path, curves: dict[str, list[dict]]) -> bool:
    """Write the plots; True when there were learning curves to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    x = np.arange(len(INSTANCE_NAMES))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(12, 4))
    for i, name in enumerate(labels):
        v = [results[name]["instance"]["per_class"][c]["ap50"] for c in INSTANCE_NAMES]
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(v), width, label=name)
    ax.set_xticks(x, INSTANCE_NAMES, rotation=45, ha="right")
    ax.set_ylabel("AP50")
    ax.set_ylim(0, 1)
    ax.set_title("AP50 per class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never over them
    _save(fig, out / "ap50_per_class.png")

    order = np.argsort(OVERLAPS)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in labels:
        ap = results[name].get("ap")
        if ap is None:
            continue
        with np.errstate(all="ignore"):
            mean = np.array([np.nan if np.isnan(ap[:, j]).all() else np.nanmean(ap[:, j]) for j in order])
        ax.plot(OVERLAPS[order], mean, marker="o", label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("mean AP over classes")
    ax.set_ylim(0, 1)
    ax.set_title("AP against the IoU threshold")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _save(fig, out / "ap_vs_iou.png")
    return plot_learning_curves(curves, out / "learning_curves.png")


def plot_learning_curves(curves: dict[str, list[dict]], path: Path) -> bool:
    """Validation mAP, AP50 and mIoU against training steps, one line per run, each run's best
    marked with a star; False (nothing written) when no run has validation points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(curves.values()):
        return False
    by_step = all(p["step"] is not None for c in curves.values() for p in c)
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], CURVE_METRICS):
        for i, (name, curve) in enumerate(curves.items()):
            if not curve:
                continue
            colour = f"C{i % 10}"
            xs = [p["step"] if by_step else p["epoch"] for p in curve]
            ax.plot(xs, [p[metric] for p in curve], marker="o", ms=3, color=colour, label=name)
            b = best_point(curve, metric)
            if b is not None:
                ax.plot([b["step"] if by_step else b["epoch"]], [b[metric]], marker="*", ms=14, color=colour,
                        markeredgecolor="black", linestyle="none")
        ax.set_title(f"validation {metric} (star: best)")
        ax.set_xlabel("training steps" if by_step else "epochs")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
