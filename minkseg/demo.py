"""``minkseg demo``: the whole pipeline on the embedded synthetic dataset.

synth -> prepare -> export-gt -> train both heads -> evaluate (``--json`` per run) ->
predict + validate a submission -> compare report with plots -> visualize a scene.
Every stage goes through the same code as real scans; re-running resumes finished stages.
"""

from __future__ import annotations

import time
from pathlib import Path

from minkseg.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
HEADS = ("probabilistic", "margin")


def _stage(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.time()


def run_demo(out: str | Path, scenes: int = 8, seed: int = 0, small: bool = False, epochs: int | None = None,
             device: str | None = "auto", seeds: list[int] | None = None) -> int:
    """``seed`` makes the scenes and (without ``seeds``) the training; ``seeds`` trains each head once
    per training seed (runs ``<head>_s<seed>``), and the report gives each head's mean and spread."""
    from minkseg.data.splits import split_scenes
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.engine.train import Trainer
    from minkseg.evaluation.evaluate import format_metrics, write_json
    from minkseg.evaluation.model_eval import evaluate_model
    from minkseg.evaluation.oracle import format_ceiling, prepared_ceiling
    from minkseg.evaluation.submission import predict_submission, validate_submission, zip_submission
    from minkseg.viz.compare import compare_runs
    from minkseg.viz.visualize import visualize_scene
    from scannet_tools.export_gt import export_gt_all
    from scannet_tools.labels import read_label_table
    from scannet_tools.prepare import prepare_all
    from scannet_tools.reader import scene_vertex_counts
    from scannet_tools.synth import synthesize

    device = resolve_device(device)  # before any work, so a bad --device fails at once
    out = Path(out)
    raw, prepared, gt = out / "scannet", out / "prepared", out / "gt"
    table = raw / "scannetv2-labels.combined.tsv"
    t_all = time.time()

    t = _stage(f"synth: {scenes} synthetic scenes in the raw ScanNet layout -> {raw}")
    synthesize(raw, scenes, seed=seed, small=small)
    print(f"   {time.time() - t:.1f} s")

    t = _stage(f"prepare -> {prepared}")
    report = prepare_all(raw / "scans", prepared, table, workers=2)
    print(report.summary("prepared"))
    print(f"   {time.time() - t:.1f} s")

    t = _stage(f"export-gt -> {gt}")
    report = export_gt_all(raw / "scans", gt, table, workers=2)
    print(report.summary("exported"))
    print(f"   {time.time() - t:.1f} s")

    runs, metrics, ceilings = {}, {}, {}
    train_seeds = seeds or [seed]
    for head, train_seed in ((h, s) for h in HEADS for s in train_seeds):
        name = head if seeds is None else f"{head}_s{train_seed}"
        over = [f"data.root={raw}", f"data.prepared={prepared}", f"runs_dir={out / 'runs'}", f"name={name}",
                f"train.seed={train_seed}"]
        if epochs is not None:
            over += [f"train.epochs={epochs}", f"train.val_every={epochs}"]
        cfg = load_config(CONFIGS / f"synthetic_{head}.yaml", over)
        t = _stage(f"train {head} head: {cfg.model.backbone}, {cfg.train.epochs} epochs, "
                   f"{cfg.data.voxel_size * 100:.0f} cm voxels -> {cfg.run_dir}")
        trainer = Trainer(cfg, resume=(cfg.run_dir / "last.pth").is_file(), device=device)
        runs[name] = trainer.fit()
        print(f"   {time.time() - t:.0f} s, checkpoint {runs[name]}")
        t = _stage(f"evaluate {name} on the validation scenes")
        model, cfg, _ = load_checkpoint(runs[name], trainer.device)
        metrics[name] = evaluate_model(model, cfg, split_scenes(cfg, cfg.data.val_split), trainer.device)
        if cfg.data.voxel_size not in ceilings:  # the voxel oracle, once per voxel size
            ceilings[cfg.data.voxel_size] = prepared_ceiling(cfg.data.prepared, split_scenes(cfg, cfg.data.val_split),
                                                             cfg.data.voxel_size)
        metrics[name]["ceiling"] = ceilings[cfg.data.voxel_size]
        write_json(metrics[name], out / "metrics" / f"{name}.json")
        print(format_metrics(metrics[name]))
        print(format_ceiling(metrics[name]["ceiling"]))
        print(f"   {time.time() - t:.1f} s -> {out / 'metrics' / f'{name}.json'}")

    t = _stage("predict a benchmark submission (probabilistic head, validation scenes) and validate it")
    model, cfg, _ = load_checkpoint(next(iter(runs.values())), device)  # the first probabilistic run
    sub = out / "submission"
    val = split_scenes(cfg, cfg.data.val_split)
    predict_submission(model, cfg, prepared, val, sub, device)
    check = validate_submission(sub, scene_vertex_counts(raw / "scans", val))
    archives = zip_submission(sub)
    print(f"   {'valid' if check.ok else 'INVALID'} submission: {check.scenes} scenes, {check.masks} masks; "
          f"archives {', '.join(str(a) for a in archives)}")
    for p in check.problems:
        print("   " + p)

    t = _stage("compare the two heads on the same scenes")
    compare_runs([out / "runs" / name for name in runs], out / "report", device=device)
    print(f"   {time.time() - t:.1f} s -> {out / 'report' / 'index.html'}, viewer {out / 'report' / 'viewer'}")

    t = _stage("visualize a validation scene")
    files = visualize_scene(model, cfg, raw / "scans" / val[0], read_label_table(table), out / "visualize",
                            device)
    print(f"   {files[-1]}")

    print(f"\ndone in {time.time() - t_all:.0f} s\n")
    print(f"{'run':<20}{'mAP':>8}{'AP50':>8}{'AP25':>8}{'mIoU':>8}")
    for name, m in metrics.items():
        i, s = m["instance"], m["semantic"]
        print(f"{name:<20}{i['mAP']:>8.3f}{i['AP50']:>8.3f}{i['AP25']:>8.3f}{s['mIoU']:>8.3f}")
    if seeds is not None and len(seeds) > 1:
        from minkseg.viz.compare import mean_std

        for head in HEADS:  # mean and sample standard deviation over the training seeds
            rows = [metrics[f"{head}_s{s}"] for s in seeds]
            cells = [mean_std([r["semantic" if k == "mIoU" else "instance"][k] for r in rows])
                     for k in ("mAP", "AP50", "AP25", "mIoU")]
            print(f"{head + ' mean':<20}" + "".join(f"{m:>8.3f}" for m, _ in cells))
            print(f"{head + ' std':<20}" + "".join(f"{sd:>8.3f}" for _, sd in cells))
    for c in {m["ceiling"]["voxel_size"]: m["ceiling"] for m in metrics.values()}.values():
        label = f"ceiling {100 * c['voxel_size']:g} cm"  # the voxel oracle: what this voxel size allows
        print(f"{label:<20}{c['mAP']:>8.3f}{c['AP50']:>8.3f}{c['AP25']:>8.3f}{c['mIoU']:>8.3f}")
    print(f"\nraw scenes    {raw / 'scans'}\nprepared      {prepared}\nground truth  {gt}\n"
          f"runs          {out / 'runs'}  (tensorboard --logdir {out / 'runs'})\nmetrics       {out / 'metrics'}\n"
          f"submission    {sub}\nreport        {out / 'report' / 'index.html'} (+ report.md)\n"
          f"3D viewer     {out / 'report' / 'viewer' / 'index.html'}  (minkseg view {out / 'runs' / '*'} --serve)\n"
          f"visualization {out / 'visualize'}")
    return 0
