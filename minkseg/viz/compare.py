"""``minkseg compare``: several runs evaluated on the same scenes, side by side.

Writes ``REPORT/report.md``, ``REPORT/report.csv``, ``REPORT/<run>.json`` (the
``minkseg evaluate --json`` format) and two plots: per-class AP50 bars and mean AP
against the IoU threshold.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from minkseg.evaluation.evaluate import write_json
from minkseg.evaluation.metrics import OVERLAPS
from scannet_tools.io import atomic_path, write_text_atomic
from scannet_tools.labels import INSTANCE_NAMES


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
    self-training runs) the parent folder is prefixed."""
    dirs = [Path(r).parent if Path(r).suffix == ".pth" else Path(r) for r in runs]
    names = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in dirs]


def compare_runs(runs: list[Path], out: Path, split: str | None = None, prepared: str | None = None,
                 root: str | None = None, device: str | None = "auto") -> dict[str, dict]:
    from minkseg.data.splits import split_scenes
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.evaluation.model_eval import evaluate_model
    from minkseg.evaluation.oracle import prepared_ceiling

    device = resolve_device(device)

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    ceilings: dict[float, dict] = {}
    scenes = None
    for run, label in zip(runs, run_labels(runs)):
        model, cfg, _ = load_checkpoint(run_checkpoint(run), device)
        if prepared:
            cfg.data.prepared = prepared
        if root:
            cfg.data.root = root
        names = split_scenes(cfg, split or cfg.data.val_split)
        scenes = scenes or names  # every run on the first run's scenes
        m = evaluate_model(model, cfg, scenes, device, progress=True, ap_matrix=True)
        m["head"] = cfg.model.head
        if cfg.data.voxel_size not in ceilings:  # the voxel oracle, once per voxel size
            ceilings[cfg.data.voxel_size] = prepared_ceiling(cfg.data.prepared, scenes, cfg.data.voxel_size)
        m["ceiling"] = ceilings[cfg.data.voxel_size]
        results[label] = m
        write_json({k: v for k, v in m.items() if k in ("instance", "semantic", "ceiling")}, out / f"{label}.json")
    write_report(results, out, scenes or [])
    return results


def write_report(results: dict[str, dict], out: Path, scenes: list[str]) -> None:
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

    def cell(v):
        return "-" if v != v else f"{100 * v:.1f}"

    md = [f"# Comparison on {len(scenes)} scenes", "", "Values in %, as on the ScanNet benchmark page "
          "(mAP over IoU 0.50:0.05:0.90, min. region 100 vertices).", "",
          "| run | head | mAP | AP50 | AP25 | mIoU |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r[0]} | {r[1]} | " + " | ".join(cell(v) for v in r[2:6]) + " |" for r in rows]
    ceilings = {m["ceiling"]["voxel_size"]: m["ceiling"] for m in results.values() if "ceiling" in m}
    md += [f"| voxelization ceiling | {100 * size:g} cm voxels | "
           + " | ".join(cell(c[k]) for k in ("mAP", "AP50", "AP25", "mIoU")) + " |"
           for size, c in sorted(ceilings.items())]
    if ceilings:
        md += ["", "The ceiling is the voxel oracle (minkseg/evaluation/oracle.py): each vertex takes its voxel's "
               "majority label and each ground-truth instance keeps the voxels it wins, i.e. what perfect voxel "
               "outputs score at that voxel size."]
    md += ["", "## AP50 per class", "", "| class | " + " | ".join(labels) + " |",
           "| --- | " + " | ".join("---:" for _ in labels) + " |"]
    for ci, c in enumerate(INSTANCE_NAMES):
        md.append(f"| {c} | " + " | ".join(cell(r[6 + ci]) for r in rows) + " |")
    md += ["", "![per-class AP50](ap50_per_class.png)", "", "![AP against IoU threshold](ap_vs_iou.png)", "",
           "Scenes: " + ", ".join(scenes)]
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    _plots(results, out)


def _plots(results: dict[str, dict], out: Path) -> None:
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
    ax.legend()
    _save(fig, out / "ap50_per_class.png")

    order = np.argsort(OVERLAPS)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in labels:
        ap = results[name]["ap"]
        with np.errstate(all="ignore"):
            mean = np.array([np.nan if np.isnan(ap[:, j]).all() else np.nanmean(ap[:, j]) for j in order])
        ax.plot(OVERLAPS[order], mean, marker="o", label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("mean AP over classes")
    ax.set_ylim(0, 1)
    ax.legend()
    _save(fig, out / "ap_vs_iou.png")


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
