"""The ``minkseg`` command: one entry point, one subcommand per pipeline stage.

Heavy imports (torch, MinkowskiEngine) happen inside the subcommands that need them, so
``minkseg --help`` and the data commands start instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EPILOG = """\
typical use on a real ScanNet v2 download (ScanNet/scans/sceneXXXX_YY/...):
  minkseg prepare --scans ScanNet/scans --out data/prepared --workers 8 --align
  minkseg export-gt --scans ScanNet/scans --out data/gt

without ScanNet, the embedded synthetic dataset in the same raw layout:
  minkseg demo --out demo_out
"""


def _add_scans_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scans", required=True, type=Path, help="the raw scans/ folder (one sceneXXXX_YY/ per scene)")
    p.add_argument("--labels", type=Path, default=None,
                   help="label table (default: scannetv2-labels.combined.tsv next to scans/)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default: 1)")
    p.add_argument("--split", default=None,
                   help="only scenes of this split: train, val, test, a split file, or a comma-separated list")
    p.add_argument("--overwrite", action="store_true", help="redo scenes that are already done (default: skip them)")
    p.add_argument("--unknown-category", choices=("error", "otherprop", "ignore"), default="error",
                   help="raw categories the label table does not list (e.g. stick, trashcan): error refuses the "
                        "scene (default); otherprop labels them NYU40 40 and ignore leaves them unannotated, both "
                        "outside the benchmark, with a warning that counts their vertices")


DEVICE_HELP = ("where the network runs: auto (default) takes the GPU when torch sees one, else the CPU, and under "
               "torchrun each rank takes cuda:LOCAL_RANK; or cpu, cuda, cuda:K (GPU number K)")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def _add_tuned_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tuned", action="store_true",
                   help="ignore the clustering settings minkseg tune wrote to tuned.yaml beside the checkpoint "
                        "(default: use them when present, saying so in one line)")


def _add_cluster_overrides_arg(p: argparse.ArgumentParser) -> None:
    """Inference options over the checkpoint's (and tuned.yaml's) cluster settings."""
    p.add_argument("overrides", nargs="*", metavar="cluster.KEY=VALUE",
                   help="proposal options over the checkpoint's, e.g. cluster.score=psi (needs a model trained "
                        "with model.recorrector=true) cluster.psi_refine_mask=true cluster.superpoints=true "
                        "cluster.hypotheses=3 cluster.hypothesis_threshold=0.2 cluster.taus=[0.25,0.35,0.5] "
                        "cluster.nms_iou=0.5 (see minkseg/config.py ClusterConfig)")


def _add_run_args(p: argparse.ArgumentParser, resume_help: str) -> None:
    """Arguments of the training subcommands (train, selftrain)."""
    p.add_argument("config", type=Path, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*",
                   help="dotted key=value overrides, e.g. train.lr=0.01 model.head=margin selftrain.rounds=3")
    p.add_argument("--resume", action="store_true", help=resume_help)
    p.add_argument("--deterministic", action="store_true",
                   help="bitwise-reproducible CPU training (one OpenMP thread for MinkowskiEngine; slower)")
    _add_device_arg(p)


def _pin_openmp_threads(args: argparse.Namespace) -> None:
    if args.deterministic:
        # must precede the first torch import: MinkowskiEngine's CPU kernel maps are built by
        # OpenMP threads in arrival order, and only this variable pins their number
        os.environ["OMP_NUM_THREADS"] = "1"


def _split_scenes(args: argparse.Namespace) -> list[str] | None:
    if args.split is None:
        return None
    from scannet_tools.splits import resolve_split

    return resolve_split(args.split, args.scans.parent)


def cmd_synth(args: argparse.Namespace) -> int:
    from scannet_tools.synth import synthesize

    t0 = time.time()
    names = synthesize(args.out, args.scenes, seed=args.seed, small=args.small,
                       target_vertices=args.vertices)
    print(f"wrote {len(names)} scenes to {args.out / 'scans'} in {time.time() - t0:.1f} s "
          f"(label table, scannetv2_train.txt and scannetv2_val.txt beside it)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from scannet_tools.labels import find_label_table
    from scannet_tools.prepare import prepare_all

    t0 = time.time()
    table = None if args.no_labels else find_label_table(args.scans, args.labels)
    report = prepare_all(args.scans, args.out, table, workers=args.workers, align=args.align,
                         scenes=_split_scenes(args), overwrite=args.overwrite, unknown=args.unknown_category)
    dt = time.time() - t0
    print(report.summary("prepared"))
    if report.done:
        rate = report.vertices / max(dt, 1e-9)
        print(f"{report.vertices} vertices in {dt:.1f} s ({rate:,.0f} vertices/s) -> {args.out}")
    return 0 if report.ok else 1


def cmd_export_gt(args: argparse.Namespace) -> int:
    from scannet_tools.export_gt import export_gt_all
    from scannet_tools.labels import find_label_table

    report = export_gt_all(args.scans, args.out, find_label_table(args.scans, args.labels), workers=args.workers,
                           scenes=_split_scenes(args), overwrite=args.overwrite, unknown=args.unknown_category)
    print(report.summary("exported"))
    print(f"ground truth in {args.out}/semantic and {args.out}/instance")
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    from minkseg.check import self_check

    print(self_check(args.device))
    return 0


def _fit(args: argparse.Namespace, trainer_class, start_line) -> None:
    """Config + overrides -> ``trainer_class`` (Trainer or Pretrainer) under torchrun or alone -> fit; rank 0
    prints ``start_line(cfg, trainer)`` first and the checkpoint's path last."""
    from minkseg.config import load_config
    from minkseg.device import resolve_device
    from minkseg.engine import distributed

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device)
    with distributed.process_group(device):
        trainer = trainer_class(cfg, resume=args.resume, device=device)
        if distributed.is_main():
            print(start_line(cfg, trainer), flush=True)
        ckpt = trainer.fit(max_steps=args.max_steps)
        if distributed.is_main():
            print(f"checkpoint: {ckpt}")


def cmd_train(args: argparse.Namespace) -> int:
    _pin_openmp_threads(args)
    from minkseg.engine.train import Trainer

    _fit(args, Trainer, lambda cfg, t: (
        f"run {cfg.run_dir}: world size {t.world} (effective batch {t.world} x {cfg.train.batch_size}), "
        f"{t.workers} data workers per rank, {len(t.train_scenes)} labelled training scenes, "
        f"{len(t.val_scenes)} validation scenes, {cfg.model.backbone} + {cfg.model.head} head"
        f"{' + re-correction module Psi' if cfg.model.recorrector else ''} on {t.device}"))
    return 0


def cmd_selftrain(args: argparse.Namespace) -> int:
    _pin_openmp_threads(args)
    from minkseg.config import load_config
    from minkseg.device import resolve_device
    from minkseg.engine import distributed
    from minkseg.engine.selftrain import SelfTraining

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device)
    with distributed.process_group(device):
        if distributed.is_main():
            print(f"self-training {cfg.run_dir}: world size {distributed.world_size()} on {device}", flush=True)
        SelfTraining(cfg, resume=args.resume, device=device).run()
        if distributed.is_main():
            print(f"summary: {cfg.run_dir / 'summary.md'}; comparison: {cfg.run_dir / 'compare' / 'report.md'}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    _pin_openmp_threads(args)
    from minkseg.engine.pretrain import Pretrainer

    _fit(args, Pretrainer, lambda cfg, t: (
        f"pretrain {cfg.run_dir}: world size {t.world}, {t.workers} data workers per rank, "
        f"{len(t.train_scenes)} training scenes ({cfg.pretrain.scenes}), no labels read, {cfg.model.backbone} + "
        f"{cfg.pretrain.components}-way partition head, likelihood over {'+'.join(cfg.pretrain.inputs)}, on "
        f"{t.device}; fine-tune from its checkpoint with: minkseg train CONFIG model.init_backbone=CHECKPOINT"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from minkseg.evaluation.evaluate import evaluate_dirs, format_metrics, missing_scenes_line, write_json

    t0 = time.time()
    if args.pred is not None:
        if args.gt is None:
            raise ValueError("--pred needs --gt (a folder written by minkseg export-gt)")
        metrics = evaluate_dirs(args.pred, args.gt, workers=args.workers)
        warning = missing_scenes_line(metrics)
        if warning:
            print(warning, file=sys.stderr)
    else:
        if args.checkpoint is None:
            raise ValueError("give --checkpoint CKPT (with --split), or --pred DIR --gt DIR")
        from minkseg.config import with_cluster_overrides
        from minkseg.data.splits import split_scenes
        from minkseg.device import resolve_device
        from minkseg.engine.checkpoint import load_checkpoint
        from minkseg.evaluation.model_eval import evaluate_model

        device = resolve_device(args.device)
        model, cfg, _ = load_checkpoint(args.checkpoint, device, tuned=not args.no_tuned)
        cfg = with_cluster_overrides(cfg, args.overrides)
        if args.prepared:
            cfg.data.prepared = str(args.prepared)
        if args.root:
            cfg.data.root = str(args.root)
        metrics = evaluate_model(model, cfg, split_scenes(cfg, args.split), device, progress=True)
        from minkseg.evaluation.oracle import prepared_ceiling  # what the voxel size allows, beside the metrics

        metrics["ceiling"] = prepared_ceiling(cfg.data.prepared, split_scenes(cfg, args.split), cfg.data.voxel_size)
    print(format_metrics(metrics))
    if "ceiling" in metrics:
        from minkseg.evaluation.oracle import format_ceiling

        print(format_ceiling(metrics["ceiling"]))
    print(f"evaluated in {time.time() - t0:.1f} s")
    if args.json:
        write_json(metrics, args.json)
        print(f"metrics written to {args.json}")
    return 0


def _split_vertex_counts(scans: Path, split: str) -> dict[str, int]:
    """Mesh vertex count of each scene of the split; one ValueError line when scenes are missing."""
    from scannet_tools.reader import SceneError, ScenePaths, mesh_vertex_count
    from scannet_tools.splits import resolve_split

    counts, failed = {}, []
    for scene in resolve_split(split, scans.parent):
        try:
            counts[scene] = mesh_vertex_count(ScenePaths(scans / scene).mesh, scene)
        except SceneError as e:
            failed.append(e)
    if failed:
        names = ", ".join(e.scene for e in failed[:3]) + (", ..." if len(failed) > 3 else "")
        raise ValueError(f"{scans}: {len(failed)} of the {len(counts) + len(failed)} scenes of split {split!r} have "
                         f"no readable mesh ({names}; first: {failed[0]}); is --scans the folder of this split?")
    return counts


def cmd_predict(args: argparse.Namespace) -> int:
    import tempfile

    from minkseg.config import with_cluster_overrides
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.evaluation.submission import predict_submission, validate_submission, zip_submission
    from scannet_tools.prepare import prepare_all
    from scannet_tools.splits import resolve_split

    device = resolve_device(args.device)
    model, cfg, _ = load_checkpoint(args.checkpoint, device, tuned=not args.no_tuned)
    cfg = with_cluster_overrides(cfg, args.overrides)
    scenes = resolve_split(args.split, args.scans.parent)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="minkseg-predict-") as tmp:
        # the same prepare step as training data, without labels: prediction needs none, so any scan
        # with a mesh runs, whatever categories its annotation (if any) uses
        report = prepare_all(args.scans, tmp, None, workers=args.workers, align=args.align, scenes=scenes)
        if report.failed:
            print(report.summary("prepared"))
            return 1
        masks = predict_submission(model, cfg, Path(tmp), scenes, args.out, device, args.max_masks, args.min_score,
                                   workers=args.workers)
    print(f"wrote {len(scenes)} scenes, {masks} instance masks to {args.out} in {time.time() - t0:.1f} s")
    check = validate_submission(args.out, _split_vertex_counts(args.scans, args.split))
    if not check.ok:
        print("\n".join(check.problems))
        return 1
    if args.zip:
        for z in zip_submission(args.out):
            print(f"archive {z} ({z.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_validate_submission(args: argparse.Namespace) -> int:
    from minkseg.evaluation.submission import validate_submission

    report = validate_submission(args.submission, _split_vertex_counts(args.scans, args.split))
    for w in report.warnings:
        print(f"warning: {w}")
    for p in report.problems:
        print(p)
    print(f"{'OK' if report.ok else 'INVALID'}: {report.scenes} scenes, {report.masks} masks checked, "
          f"{len(report.problems)} problems")
    return 0 if report.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from minkseg.viz.compare import compare_runs

    results = compare_runs(args.runs, args.out, args.split, args.prepared and str(args.prepared),
                           args.root and str(args.root), args.device, tuned=not args.no_tuned,
                           thumbnails=args.thumbnails, viewer=not args.no_viewer)
    for name, m in results.items():
        i = m["instance"]
        print(f"{name:<28} mAP {i['mAP']:.3f}  AP50 {i['AP50']:.3f}  AP25 {i['AP25']:.3f}  "
              f"mIoU {m['semantic']['mIoU']:.3f}")
    from minkseg.evaluation.oracle import format_ceiling

    for ceiling in {m["ceiling"]["voxel_size"]: m["ceiling"] for m in results.values()}.values():
        print(format_ceiling(ceiling))
    print(f"report: {args.out / 'index.html'} (one page: tables, plots, learning curves, scene thumbnails "
          f"linking to the 3D viewer); also report.md, report.csv")
    return 0


def _candidates(text: str | None, flag: str, typ: type) -> list | None:
    if text is None:
        return None
    try:
        values = [typ(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated {typ.__name__} values") from None
    if not values:
        raise ValueError(f"{flag}: no values given")
    return values


def cmd_tune(args: argparse.Namespace) -> int:
    from minkseg.config import ConfigError, apply_override
    from minkseg.device import resolve_device
    from minkseg.engine import distributed
    from minkseg.engine.tune import format_table, tune_run
    from minkseg.viz.compare import run_checkpoint

    fixed: dict = {}
    for o in args.overrides:
        if not o.startswith("cluster."):
            raise ConfigError(f"override {o!r}: tune fixes cluster.* options only")
        apply_override(fixed, o)
    space = {k: v for k, v in (("tau", _candidates(args.tau, "--tau", float)),
                               ("seed_threshold", _candidates(args.seed_threshold, "--seed-threshold", float)),
                               ("min_size", _candidates(args.min_size, "--min-size", int)),
                               ("hypothesis_threshold", _candidates(args.hypothesis_threshold,
                                                                    "--hypothesis-threshold", float)))
             if v is not None}
    checkpoint = run_checkpoint(args.run)
    device = resolve_device(args.device)
    t0 = time.time()
    with distributed.process_group(device) as several:
        main_rank = distributed.is_main()
        result, yaml_path, md_path = tune_run(
            checkpoint, args.split, args.metric, space, args.search, args.passes, device,
            args.prepared and str(args.prepared), args.root and str(args.root), fixed.get("cluster"),
            int(args.cache_gib * 2**30), args.workers, progress=main_rank, split_over_ranks=several,
            log=(lambda line: print(line, flush=True)) if main_rank else None)
    if main_rank:
        print(format_table(result))
        best = result.rows[result.best]
        print(f"best {result.metric} {100 * best.value(result.metric):.1f} over {result.scenes} scenes "
              f"({len(result.rows)} settings, {time.time() - t0:.1f} s): "
              + ", ".join(f"{k}={v}" for k, v in best.setting.items()))
        print(f"wrote {yaml_path} and {md_path}; evaluate/predict/compare with {checkpoint.parent} use it "
              "(--no-tuned ignores it)")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.viz.visualize import visualize_scene
    from scannet_tools.labels import find_label_table, read_label_table

    device = resolve_device(args.device)
    model, cfg, _ = load_checkpoint(args.checkpoint, device, tuned=not args.no_tuned, allow_pretrain=True)
    label_map = read_label_table(find_label_table(args.scans, args.labels))
    for p in visualize_scene(model, cfg, args.scans / args.scene, label_map, args.out, device,
                             png=not args.no_png):
        print(p)
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from minkseg.viz.view import export_viewer, remove_bundle_dir, serve, temporary_bundle_dir

    if not args.serve and args.out is None:
        raise ValueError("give --out DIR (a static bundle: DIR/index.html) or --serve (a local server), or both")
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()] if args.scenes else None
    out = args.out or temporary_bundle_dir()
    try:
        t0 = time.time()
        index = export_viewer(args.sources, out, scenes, args.split, args.scans, args.device, args.max_vertices,
                              args.max_scenes, args.prepared, args.root, tuned=not args.no_tuned)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"wrote {index} ({size / 2**20:.1f} MiB) in {time.time() - t0:.1f} s")
        if args.serve:
            serve(out, args.host, args.port,
                  ready=lambda url: print(f"serving {url}  (Ctrl-C stops)", flush=True))
    finally:
        if args.out is None:
            remove_bundle_dir(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from minkseg.demo import run_demo

    seeds = [int(v) for v in args.seeds.split(",") if v.strip()] if args.seeds else None
    return run_demo(args.out, scenes=args.scenes, seed=args.seed, small=args.small, epochs=args.epochs,
                    device=args.device, seeds=seeds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minkseg",
        description="Sparse-voxel instance + semantic segmentation for ScanNet v2 (MinkowskiNet backbone, "
                    "probabilistic-embedding and learnable-margin heads).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from minkseg import __version__

    parser.add_argument("--version", action="version", version=f"minkseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help="write synthetic scenes in the raw ScanNet v2 layout",
                       description="Write deterministic synthetic rooms as a ScanNet v2 download lays them out: "
                                   "OUT/scans/sceneXXXX_00/{_vh_clean_2.ply, _vh_clean_2.labels.ply, "
                                   "_vh_clean_2.0.010000.segs.json, .aggregation.json, .txt}, the label table "
                                   "and train/val split lists. Scene i depends only on (seed, i).")
    p.add_argument("--out", required=True, type=Path, help="output root; scenes go to OUT/scans/")
    p.add_argument("--scenes", type=int, default=8, help="number of scenes (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--vertices", type=int, default=None,
                   help="vertices per scene (default: drawn from 50k-200k; 4k with --small)")
    p.add_argument("--small", action="store_true", help="small, coarse scenes for tests (~4k vertices)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="raw scans -> one compact .npz per scene",
                       description="Read raw ScanNet scenes (mesh, colours, normals, superpoints, labels) and write "
                                   "one .npz per scene. Resumable: finished scenes are skipped; every file is "
                                   "written to a temporary name and renamed. Malformed scenes are reported with "
                                   "the file and the problem; the others are still prepared; the exit status is "
                                   "1 if any failed.")
    _add_scans_args(p)
    p.add_argument("--out", required=True, type=Path, help="folder for the prepared .npz files")
    p.add_argument("--align", action="store_true", help="apply each scene's axisAlignment to the coordinates")
    p.add_argument("--no-labels", action="store_true",
                   help="prepare mesh, colours, normals and superpoints only, every vertex ignored (what "
                        "prediction needs): no label table, and the aggregation is not read")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("export-gt", help="ground truth in the official evaluation format",
                       description="Write OUT/semantic/<scene>.txt (NYU40 id per vertex, 0 unannotated) and "
                                   "OUT/instance/<scene>.txt (nyu40*1000 + objectId+1 per vertex, 0 elsewhere), "
                                   "as ScanNet's export_train_mesh_for_evaluation.py produces them.")
    _add_scans_args(p)
    p.add_argument("--out", required=True, type=Path, help="ground-truth folder")
    p.set_defaults(func=cmd_export_gt)

    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train from a YAML config in configs/ with dotted overrides, e.g. "
                                   "`minkseg train configs/synthetic_margin.yaml train.epochs=10 name=try1`. "
                                   "The run folder runs/<name>/ holds config.yaml, last.pth, best.pth, val/*.json "
                                   "and TensorBoard logs (tensorboard --logdir runs). model.recorrector=true also "
                                   "trains the proposal re-correction module Psi (loss.recorrect weighs its loss), "
                                   "which cluster.score=psi then uses to rank and relabel instances.",
                       epilog="several GPUs (one process each; the effective batch is N x train.batch_size):\n"
                              "  torchrun --standalone --nproc_per_node=4 -m minkseg train CONFIG name=p4\n"
                              "  torchrun --standalone --nproc_per_node=4 -m minkseg train CONFIG name=p4 --resume\n"
                              "two nodes: torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d "
                              "--rdzv_endpoint=node0:29400 --rdzv_id=p8 -m minkseg train CONFIG name=p8",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(p, "continue runs/<name>/last.pth exactly where it stopped")
    p.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("selftrain", help="TWIST-style self-training rounds for limited labels",
                       description="Round 0 trains on the labelled training scenes (data.label_list=1|5|10|20 "
                                   "for a shipped limited-reconstruction list, or data.label_ratio with "
                                   "data.label_seed). Each round r = 1..selftrain.rounds then writes the previous "
                                   "model's pseudo labels for the unlabelled training scenes to "
                                   "runs/<name>/round_<r>/pseudo/ and trains a student on labelled + pseudo-labelled "
                                   "scenes: round 1 with semantic pseudo labels spread over superpoints "
                                   "(max probability > selftrain.semantic_threshold), later rounds also with instance "
                                   "proposals of certainty >= selftrain.certainty, corrected by the re-correction "
                                   "module (selftrain.recorrect). Writes summary.md (metrics and pseudo-label "
                                   "precision/recall per round) and compare/report.md. Example: "
                                   "`minkseg selftrain configs/synthetic_probabilistic.yaml data.label_ratio=0.1 "
                                   "name=st10 selftrain.epochs=4`.")
    _add_run_args(p, "continue runs/<name>/ after its last finished round, pseudo-label set or checkpoint")
    p.set_defaults(func=cmd_selftrain)

    p = sub.add_parser("pretrain", help="self-supervised backbone pretraining (ParAE's GMM pretext), no labels",
                       description="Pretrain the backbone on the training scenes without labels (the scenes may be "
                                   "prepared with --no-labels): a pretrain.components-way partition head (J = 32) "
                                   "softly splits each scene, the split defines a Gaussian mixture in closed form "
                                   "(full covariances, floored at voxel_size^2/12), and the loss is the negative "
                                   "log-likelihood of the voxel centres under it (Eckart et al., Eqs. 5-11). "
                                   "pretrain.scenes=all uses every training scene, =unlabeled those outside the "
                                   "labelled list (data.label_ratio / data.label_list). Run folder, --resume, "
                                   "--max-steps, TensorBoard and torchrun as in train; best.pth has the lowest "
                                   "validation NLL. Then start from it: `minkseg train CONFIG "
                                   "model.init_backbone=runs/<name>/last.pth` (backbone only, heads fresh; also "
                                   "for selftrain), and see its partitions with `minkseg visualize --checkpoint "
                                   "runs/<name>/last.pth ...`.",
                       epilog="example: minkseg pretrain configs/synthetic_pretrain.yaml name=pre train.epochs=20\n"
                              "several GPUs: torchrun --standalone --nproc_per_node=4 -m minkseg pretrain CONFIG",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(p, "continue runs/<name>/last.pth exactly where it stopped")
    p.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="ScanNet benchmark metrics (AP, AP50, AP25, mIoU)",
                       description="Either run a checkpoint on a split of prepared scenes, or read benchmark-format "
                                   "predictions (--pred DIR with semantic/ and/or instance/) against official-format "
                                   "ground truth (--gt DIR from minkseg export-gt). The numbers are those of ScanNet's "
                                   "evaluate_semantic_instance.py and evaluate_semantic_label.py.")
    p.add_argument("--checkpoint", type=Path, help="a .pth written by minkseg train; the voxelization ceiling at "
                   "its voxel size is printed too (JSON: \"ceiling\")")
    p.add_argument("--split", default="val", help="split of the checkpoint's prepared data (default: val)")
    p.add_argument("--prepared", type=Path, help="override the prepared folder stored in the checkpoint")
    p.add_argument("--root", type=Path, help="override the dataset root (split lists) stored in the checkpoint")
    p.add_argument("--pred", type=Path, help="benchmark-format predictions folder")
    p.add_argument("--gt", type=Path, help="official-format ground-truth folder")
    p.add_argument("--json", type=Path, help="write the metrics as JSON (fractions in [0, 1], null for NaN)")
    p.add_argument("--workers", type=int, default=1,
                   help="with --pred: processes reading scenes (default 1: this process; more can help on idle "
                        "multi-core machines)")
    _add_cluster_overrides_arg(p)
    _add_device_arg(p)
    _add_tuned_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="benchmark submission files from a checkpoint",
                       description="Run a checkpoint on the raw scans of a split and write the official submission "
                                   "layout: OUT/semantic/<scene>.txt and OUT/instance/<scene>.txt with masks in "
                                   "OUT/instance/predicted_masks/. Scans are read without labels, so any scan with a "
                                   "mesh runs whatever its annotation holds. The result is validated before the "
                                   "command ends.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--scans", required=True, type=Path, help="raw scans/ folder (e.g. ScanNet/scans_test)")
    p.add_argument("--split", default="test", help="split to predict (default: test)")
    p.add_argument("--out", required=True, type=Path, help="submission folder")
    p.add_argument("--labels", type=Path, default=None,
                   help="ignored: prediction reads no labels (kept so older command lines still run)")
    p.add_argument("--zip", action="store_true", help="also write semantic.zip and instance.zip (no root folder)")
    p.add_argument("--max-masks", type=int, default=0, help="keep at most this many masks per scene (0: all)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop masks below this confidence")
    p.add_argument("--align", action="store_true", help="apply axisAlignment (use if the model was trained so)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that prepare the scans and read prepared scenes ahead of the network (default: 1)")
    _add_cluster_overrides_arg(p)
    _add_device_arg(p)
    _add_tuned_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("validate-submission", help="check a submission folder against every format rule",
                       description="Every scene of the split present, line counts equal to vertex counts, valid "
                                   "NYU40 ids, binary masks, relative mask paths inside the folder, numeric "
                                   "confidences. All problems are listed at once; exit status 1 if any.")
    p.add_argument("submission", type=Path)
    p.add_argument("--scans", required=True, type=Path, help="raw scans/ folder, for the vertex counts")
    p.add_argument("--split", default="test")
    p.set_defaults(func=cmd_validate_submission)

    p = sub.add_parser("compare", help="evaluate several runs on the same scenes; Markdown/CSV report + plots",
                       description="Evaluate each run (its best.pth, else last.pth, or a .pth given directly) on "
                                   "the same scenes and write REPORT/index.html (one self-contained page), "
                                   "report.md, report.csv, <run>.json, ap50_per_class.png, ap_vs_iou.png, "
                                   "learning_curves.png (validation mAP/AP50/mIoU against training steps from "
                                   "each run's val/*.json, best marked), thumbs/ and viewer/ (3D viewer of the "
                                   "thumbnailed scenes). Runs whose configs differ only in name, train.seed and "
                                   "runs_dir count as seeds of one setting: the report adds mean ± std per "
                                   "setting and per-class AP50 differences between settings. Example: minkseg "
                                   "compare runs/prob_s0 runs/prob_s1 runs/margin_s0 runs/margin_s1 --out report")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>) or checkpoints")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--split", default=None, help="split to evaluate (default: the first run's val split)")
    p.add_argument("--prepared", type=Path, help="override the prepared folder stored in the checkpoints")
    p.add_argument("--root", type=Path, help="override the dataset root stored in the checkpoints")
    p.add_argument("--thumbnails", type=int, default=4, metavar="N",
                   help="render thumbnails (and export the viewer) for the first N scenes (default 4; 0: none)")
    p.add_argument("--no-viewer", action="store_true", help="do not export the 3D viewer bundle")
    _add_device_arg(p)
    _add_tuned_arg(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="search the clustering thresholds on the validation split -> RUN/tuned.yaml",
                       description="Run the network once per scene of a split (outputs cached on the CPU, beyond "
                                   "--cache-gib on disk under RUN/tune_cache/), then score clustering settings on "
                                   "the cached outputs with the benchmark code of evaluate: the head's tau "
                                   "(cluster.tau_probabilistic or cluster.tau_margin), cluster.seed_threshold, "
                                   "cluster.min_size (voxels) and, with cluster.hypotheses > 1, "
                                   "cluster.hypothesis_threshold. Coordinate descent from the run's settings by "
                                   "default (--search grid: every combination). Writes RUN/tune.md (one row per "
                                   "setting, the best marked) and RUN/tuned.yaml, which evaluate, predict, compare "
                                   "and visualize then apply to any checkpoint of RUN, saying so (--no-tuned "
                                   "ignores it).",
                       epilog="examples:\n"
                              "  minkseg tune runs/prob --split val\n"
                              "  minkseg tune runs/prob --metric mAP --tau 0.25,0.35,0.45 --min-size 20,40\n"
                              "  minkseg tune runs/prob cluster.hypotheses=3 cluster.superpoints=true\n"
                              "  minkseg evaluate --checkpoint runs/prob/best.pth   # uses runs/prob/tuned.yaml\n"
                              "several GPUs: torchrun --standalone --nproc_per_node=4 -m minkseg tune runs/prob",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder (its best.pth, else last.pth) or a checkpoint; tuned.yaml "
                   "and tune.md go to the checkpoint's folder")
    p.add_argument("overrides", nargs="*", help="cluster.KEY=VALUE options fixed for the search and written to "
                   "tuned.yaml with the result, e.g. cluster.hypotheses=3 cluster.superpoints=true")
    p.add_argument("--split", default="val", help="split of the run's prepared data to tune on (default: val)")
    p.add_argument("--metric", choices=("mAP", "AP50", "AP25"), default=None,
                   help="objective (default: the run's train.select_metric if an instance metric, else mAP)")
    p.add_argument("--search", choices=("descent", "grid"), default="descent",
                   help="descent (default): each key in turn takes its best value with the others fixed, passes "
                        "repeat until nothing changes; grid: every combination of the candidates")
    p.add_argument("--passes", type=int, default=3, help="at most this many coordinate-descent passes (default: 3)")
    p.add_argument("--tau", help="candidate values of the head's tau, comma-separated (default: 0.2,0.3,...,0.7 "
                   "and the run's)")
    p.add_argument("--seed-threshold", help="candidate seed thresholds (default: 0.3,...,0.7 and the run's)")
    p.add_argument("--min-size", help="candidate minimum sizes in voxels (default: 5,10,20,40,80 and the run's)")
    p.add_argument("--hypothesis-threshold", help="candidate class-probability thresholds of extra hypotheses, "
                   "with cluster.hypotheses > 1 (default: 0.1,0.2,0.3,0.5 and the run's)")
    p.add_argument("--cache-gib", type=float, default=8.0,
                   help="memory for the cached network outputs; scenes beyond it go to RUN/tune_cache/ (default: 8; "
                        "a 150k-voxel scene takes ~50 MiB, ~100 MiB with the re-correction module)")
    p.add_argument("--prepared", type=Path, help="override the prepared folder stored in the checkpoint")
    p.add_argument("--root", type=Path, help="override the dataset root (split lists) stored in the checkpoint")
    p.add_argument("--workers", type=int, default=0, help="processes reading scenes ahead of the network (default 0)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("visualize", help="coloured PLYs of ground truth, predictions and uncertainty + a PNG",
                       description="For one raw scene write <scene>_{gt,pred}_{semantic,instance}.ply, "
                                   "<scene>_uncertainty.ply (probabilistic head) and <scene>.png: the input "
                                   "colours and each colouring rendered offscreen with open3d from a top-down "
                                   "oblique camera fitted to the scene, each panel titled, semantic panels with "
                                   "their class legend (ScanNet benchmark colours), the uncertainty with a colour "
                                   "bar and its limits.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--scans", required=True, type=Path)
    p.add_argument("--scene", required=True, help="scene id, e.g. scene0011_00")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--labels", type=Path, default=None)
    p.add_argument("--no-png", action="store_true", help="only the PLY files")
    _add_device_arg(p)
    _add_tuned_arg(p)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("view", help="interactive 3D viewer in the browser: inputs, ground truth, predictions, errors",
                       description="Show scenes in the browser with switchable layers: input colours, ground-truth\n"
                                   "semantics and instances, each SOURCE's predicted semantics and instances, errors\n"
                                   "(wrong class / wrong instance match), the probabilistic head's sigma with a\n"
                                   "colour bar, a self-training round's pseudo labels (kept, unknown, ignored) and a\n"
                                   "pretraining run's partition. Hover or click an instance for its class, score and\n"
                                   "IoU with the best-matching ground truth; 'side by side' compares two layers.\n"
                                   "--out writes a static bundle: DIR/index.html opens from disk or any static host,\n"
                                   "with no network; --serve serves it on this machine. The URL fragment\n"
                                   "#scene=ID&layer=KEY&right=KEY selects what is shown.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples (after minkseg demo --out demo_out):\n"
                              "  minkseg view demo_out/runs/probabilistic demo_out/runs/margin --out demo_out/view\n"
                              "  minkseg view demo_out/runs/probabilistic --scenes scene0006_00 --serve\n"
                              "  minkseg view demo_out/submission --scans demo_out/scannet/scans --out view_sub")
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                   help="run folder (best.pth, else last.pth) or checkpoint: the network runs on its prepared "
                        "scenes; submission folder (semantic/, instance/; needs --scans); self-training round "
                        "folder (runs/<name>/round_<r>: its pseudo/ labels and its student's predictions)")
    p.add_argument("--scenes", default=None, help="comma-separated scene ids (default: the first SOURCE's scenes)")
    p.add_argument("--split", default=None,
                   help="scenes of this split when --scenes is not given (default: a run's validation split)")
    p.add_argument("--max-scenes", type=int, default=10, help="at most this many scenes without --scenes (default: 10)")
    p.add_argument("--scans", type=Path, default=None, help="raw scans/ folder: the meshes of a submission's scenes")
    p.add_argument("--out", type=Path, default=None, help="write the static bundle here (DIR/index.html)")
    p.add_argument("--serve", action="store_true", help="serve the bundle over HTTP and print the URL")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to serve on (default: 8000; 0: any free port)")
    p.add_argument("--max-vertices", type=int, default=500_000,
                   help="decimate scenes above this many vertices for display, saying so on screen (default: "
                        "500000; 0: never)")
    p.add_argument("--prepared", type=Path, help="override the prepared folder stored in the checkpoints")
    p.add_argument("--root", type=Path, help="override the dataset root stored in the checkpoints (raw meshes)")
    _add_tuned_arg(p)
    _add_device_arg(p)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("check", help="self-check: one sparse convolution forward and backward",
                       description="Import MinkowskiEngine (through minkseg's one import shim), run one sparse "
                                   "convolution forward and backward, print the versions and the device.")
    _add_device_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic dataset",
                       description="Generate synthetic scenes, prepare them, export ground truth, train both heads "
                                   "(configs/synthetic_*.yaml), evaluate them (--json metrics), predict and validate "
                                   "a submission, write the comparison report and a visualization; prints where "
                                   "everything is. Re-running resumes finished stages.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--scenes", type=int, default=8, help="number of synthetic scenes (default: 8)")
    p.add_argument("--epochs", type=int, default=None, help="override the configs' training epochs")
    _add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the scenes and the training (default: 0)")
    p.add_argument("--seeds", default=None, metavar="S1,S2,...",
                   help="train each head once per training seed (runs <head>_s<seed>; the scenes come from --seed) "
                        "and report each head's mean and standard deviation; the compare report groups the seeds")
    p.add_argument("--small", action="store_true", help="tiny scenes (for a smoke test)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # user errors: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
