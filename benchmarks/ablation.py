"""Ablation of the inference options of issue 13 on synthetic validation scenes, both heads, several seeds.

    .venv/bin/python benchmarks/ablation.py --out ablation_out            # the README table
    .venv/bin/python benchmarks/ablation.py --out ablation_out --seeds 0  # one seed, quicker

1. ``synth`` a dataset with its own data seed (no test or config of minkseg was tuned on
   it): ``--train-scenes`` training and ``--val-scenes`` validation scenes.
2. Train each head once per seed with Psi (``model.recorrector=true``), so every option can
   be switched at inference; training validates every ``--val-every`` epochs, so
   ``minkseg compare`` draws the learning curves of these runs. Finished runs are reused.
3. For every trained model: the network runs once per validation scene (once per pose set
   for test-time augmentation) and every option is applied to the cached outputs with
   ``predict_from_forward``, exactly the code ``evaluate`` and ``predict`` run.
4. A Markdown table (``OUT/ablation.md``): mAP / AP50 / AP25 mean ± std over seeds and the
   inference time per scene (forward + clustering + options) of each option, then the
   combination of every option that raised that head's mean mAP.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("probabilistic", "margin")

# name -> overrides of the cluster section (per head where they differ); "baseline" is the single greedy pass
OPTIONS: dict[str, list[str] | dict[str, list[str]]] = {
    "baseline": [],
    "Psi scores": ["score=psi"],
    "Psi scores + masks": ["score=psi", "psi_refine_mask=true"],
    "superpoints": ["superpoints=true"],
    "3 hypotheses": ["hypotheses=3", "hypothesis_threshold=0.1"],
    "3 taus + NMS": {"probabilistic": ["taus=[0.25,0.35,0.5]", "nms_iou=0.5"],
                     "margin": ["taus=[0.4,0.5,0.6]", "nms_iou=0.5"]},
    "mean shift": ["grouping=meanshift"],
    "TTA (8 poses)": ["tta=4", "tta_flip=true"],
}


def head_options(head: str, names: list[str]) -> dict[str, list[str]]:
    return {k: OPTIONS[k][head] if isinstance(OPTIONS[k], dict) else OPTIONS[k] for k in names}


def train_runs(out: Path, heads: list[str], seeds: list[int], epochs: int, val_every: int, device: str) -> dict:
    from minkseg.config import load_config
    from minkseg.engine.train import Trainer

    runs = {}
    for head in heads:
        for seed in seeds:
            over = [f"data.root={out / 'scannet'}", f"data.prepared={out / 'prepared'}", f"runs_dir={out / 'runs'}",
                    f"name={head}_s{seed}", f"train.seed={seed}", f"train.epochs={epochs}",
                    f"train.val_every={val_every}", "model.recorrector=true", "train.workers=0"]
            cfg = load_config(ROOT / "configs" / f"synthetic_{head}.yaml", over)
            ckpt = cfg.run_dir / "last.pth"  # the fixed budget: best.pth was selected on these very scenes
            t = time.time()
            Trainer(cfg, resume=ckpt.is_file(), device=device).fit()  # a finished run returns at once
            print(f"{cfg.name}: {time.time() - t:.0f} s", flush=True)
            runs[(head, seed)] = ckpt
    return runs


def option_config(cfg, overrides: list[str]):
    from minkseg.config import Config, apply_override, from_dict, to_dict

    data = to_dict(cfg)
    for o in overrides:
        apply_override(data, o if o.startswith("cluster.") else f"cluster.{o}")
    return from_dict(Config, data)


def evaluate_options(ckpt: Path, options: dict[str, list[str]], device: str) -> dict[str, dict]:
    """Metrics and per-scene time of every option on one model; forwards cached per pose set."""
    import torch

    from minkseg.data.splits import split_scenes
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.evaluation.evaluate import summarize_matches
    from minkseg.evaluation.metrics import match_scene, semantic_confusion
    from minkseg.inference.predict import forward_scene, ground_truth_ids, predict_from_forward
    from scannet_tools.prepare import load_prepared, prepared_path

    model, base, _ = load_checkpoint(ckpt, device, tuned=False)
    scenes = [load_prepared(prepared_path(base.data.prepared, s)) for s in split_scenes(base, base.data.val_split)]
    forwards: dict[str, tuple[list, float]] = {}
    results = {}
    for name, overrides in options.items():
        cfg = option_config(base, overrides)
        key = json.dumps([cfg.cluster.tta, cfg.cluster.tta_flip])
        if key not in forwards:
            t = time.perf_counter()
            fs = [forward_scene(model, s, cfg, device) for s in scenes]
            forwards[key] = (fs, (time.perf_counter() - t) / len(scenes))
        fs, t_forward = forwards[key]
        matches, confusions = [], []
        t = time.perf_counter()
        with torch.no_grad():
            preds = [predict_from_forward(model, f, s, cfg) for f, s in zip(fs, scenes)]
        t_post = (time.perf_counter() - t) / len(scenes)
        for s, p in zip(scenes, preds):
            matches.append(match_scene(ground_truth_ids(s), p.instances))
            confusions.append(semantic_confusion(s["nyu40"].astype(np.int64), p.semantic_nyu40))
        m = summarize_matches(matches, confusions)
        results[name] = {**m["instance"], "mIoU": m["semantic"]["mIoU"], "seconds": t_forward + t_post}
        print(f"  {ckpt.parent.name:<20} {name:<22} mAP {results[name]['mAP']:.3f} AP50 {results[name]['AP50']:.3f}"
              f" {results[name]['seconds'] * 1000:.0f} ms/scene", flush=True)
    return results


def table(results: dict, heads: list[str], names: list[str]) -> str:
    """Mean ± sample std (ddof=1) over seeds, and each option's paired mAP difference to the baseline."""
    rows = ["| head | option | mAP | AP50 | AP25 | mIoU | mAP - baseline (paired) | ms / scene |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for head in heads:
        seeds = [key for key in results if key[0] == head]
        for name in names:
            per_seed = [results[key][name] for key in seeds if name in results[key]]
            if not per_seed:
                continue
            cells = []
            for k in ("mAP", "AP50", "AP25", "mIoU"):
                v = 100 * np.array([r[k] for r in per_seed])
                cells.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else float('nan'):.1f}")
            d = 100 * np.array([results[key][name]["mAP"] - results[key]["baseline"]["mAP"]
                                for key in seeds if name in results[key]])
            delta = "" if name == "baseline" else f"{d.mean():+.1f} ± {d.std(ddof=1) if len(d) > 1 else 0:.1f}"
            ms = 1000 * np.mean([r["seconds"] for r in per_seed])
            rows.append(f"| {head} | {name} | {' | '.join(cells)} | {delta} | {ms:.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("ablation_out"))
    p.add_argument("--data-seed", type=int, default=1313, help="scenes of this seed (used nowhere else)")
    p.add_argument("--train-scenes", type=int, default=16)
    p.add_argument("--val-scenes", type=int, default=30)
    p.add_argument("--full-size", action="store_true",
                   help="full-size synthetic rooms (50k-200k vertices) instead of the small ones (~4k)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--options", nargs="+", default=None, help=f"subset of {sorted(OPTIONS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--table-only", action="store_true", help="rebuild OUT/ablation.md from OUT/ablation.json")
    args = p.parse_args()
    if args.table_only:
        saved = json.loads((args.out / "ablation.json").read_text())
        results = {tuple(k.rsplit("_s", 1)[:1]) + (int(k.rsplit("_s", 1)[1]),): v for k, v in saved.items()}
        names = list(dict.fromkeys(n for r in results.values() for n in r))
        md = table(results, [h for h in args.heads if any(k[0] == h for k in results)], names)
        (args.out / "ablation.md").write_text(md + "\n")
        print(md)
        return

    from minkseg.device import resolve_device
    from scannet_tools.prepare import prepare_all
    from scannet_tools.synth import synthesize

    device = str(resolve_device(args.device))
    out = args.out
    n = args.train_scenes + args.val_scenes
    if not (out / "scannet" / "scannetv2_val.txt").is_file():
        synthesize(out / "scannet", n, seed=args.data_seed, small=not args.full_size, val_fraction=args.val_scenes / n)
    if not (out / "prepared").is_dir() or len(list((out / "prepared").glob("*.npz"))) < n:
        report = prepare_all(out / "scannet" / "scans", out / "prepared",
                             out / "scannet" / "scannetv2-labels.combined.tsv", workers=2)
        print(report.summary("prepared"))
    runs = train_runs(out, args.heads, args.seeds, args.epochs, args.val_every, device)

    names = list(args.options or OPTIONS)
    results = {(h, s): evaluate_options(ckpt, head_options(h, names), device) for (h, s), ckpt in runs.items()}
    # the best combination per head: every option that raised that head's mean mAP over the baseline
    combos = {}
    for head in args.heads:
        mean = {k: np.mean([r[k]["mAP"] for (h, _), r in results.items() if h == head]) for k in names}
        helpful = [k for k in names if k != "baseline" and mean[k] > mean["baseline"]]
        combos[head] = [o for k in helpful for o in head_options(head, [k])[k]]
        print(f"{head}: options that raise mAP: {helpful or 'none'}")
    for (head, seed), ckpt in runs.items():
        if combos[head]:
            results[(head, seed)].update(evaluate_options(ckpt, {"best combination": combos[head]}, device))
    md = table(results, args.heads, names + ["best combination"])
    md += "\n\nbest combination: " + "; ".join(f"{h}: {' '.join(c) or '(baseline)'}" for h, c in combos.items())
    (out / "ablation.md").write_text(md + "\n")
    (out / "ablation.json").write_text(json.dumps({f"{h}_s{s}": r for (h, s), r in results.items()}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
