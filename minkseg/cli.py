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


def cmd_train(args: argparse.Namespace) -> int:
    _pin_openmp_threads(args)
    from minkseg.config import load_config
    from minkseg.device import resolve_device
    from minkseg.engine import distributed
    from minkseg.engine.train import Trainer

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device)
    with distributed.process_group(device):
        trainer = Trainer(cfg, resume=args.resume, device=device)
        if distributed.is_main():
            print(f"run {cfg.run_dir}: world size {trainer.world} (effective batch {trainer.world} x "
                  f"{cfg.train.batch_size}), {trainer.workers} data workers per rank, {len(trainer.train_scenes)} "
                  f"labelled training scenes, {len(trainer.val_scenes)} validation scenes, {cfg.model.backbone} + "
                  f"{cfg.model.head} head on {trainer.device}", flush=True)
        ckpt = trainer.fit(max_steps=args.max_steps)
        if distributed.is_main():
            print(f"checkpoint: {ckpt}")
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
        from minkseg.data.splits import split_scenes
        from minkseg.device import resolve_device
        from minkseg.engine.checkpoint import load_checkpoint
        from minkseg.evaluation.model_eval import evaluate_model

        device = resolve_device(args.device)
        model, cfg, _ = load_checkpoint(args.checkpoint, device)
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

    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.evaluation.submission import predict_submission, validate_submission, zip_submission
    from scannet_tools.prepare import prepare_all
    from scannet_tools.splits import resolve_split

    device = resolve_device(args.device)
    model, cfg, _ = load_checkpoint(args.checkpoint, device)
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
                           args.root and str(args.root), args.device)
    for name, m in results.items():
        i = m["instance"]
        print(f"{name:<28} mAP {i['mAP']:.3f}  AP50 {i['AP50']:.3f}  AP25 {i['AP25']:.3f}  "
              f"mIoU {m['semantic']['mIoU']:.3f}")
    from minkseg.evaluation.oracle import format_ceiling

    for ceiling in {m["ceiling"]["voxel_size"]: m["ceiling"] for m in results.values()}.values():
        print(format_ceiling(ceiling))
    print(f"report: {args.out / 'report.md'} (+ report.csv, ap50_per_class.png, ap_vs_iou.png)")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from minkseg.device import resolve_device
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.viz.visualize import visualize_scene
    from scannet_tools.labels import find_label_table, read_label_table

    device = resolve_device(args.device)
    model, cfg, _ = load_checkpoint(args.checkpoint, device)
    label_map = read_label_table(find_label_table(args.scans, args.labels))
    for p in visualize_scene(model, cfg, args.scans / args.scene, label_map, args.out, device,
                             png=not args.no_png):
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from minkseg.demo import run_demo

    return run_demo(args.out, scenes=args.scenes, seed=args.seed, small=args.small, epochs=args.epochs,
                    device=args.device)


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
                                   "and TensorBoard logs (tensorboard --logdir runs).",
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
    _add_device_arg(p)
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
    _add_device_arg(p)
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
                                   "the same scenes and write REPORT/report.md, report.csv, <run>.json, "
                                   "ap50_per_class.png and ap_vs_iou.png.")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<name>) or checkpoints")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--split", default=None, help="split to evaluate (default: the first run's val split)")
    p.add_argument("--prepared", type=Path, help="override the prepared folder stored in the checkpoints")
    p.add_argument("--root", type=Path, help="override the dataset root stored in the checkpoints")
    _add_device_arg(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("visualize", help="coloured PLYs of ground truth, predictions and uncertainty + a PNG",
                       description="For one raw scene write <scene>_{gt,pred}_{semantic,instance}.ply, "
                                   "<scene>_uncertainty.ply (probabilistic head) and <scene>.png rendered "
                                   "offscreen with open3d.")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--scans", required=True, type=Path)
    p.add_argument("--scene", required=True, help="scene id, e.g. scene0011_00")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--labels", type=Path, default=None)
    p.add_argument("--no-png", action="store_true", help="only the PLY files")
    _add_device_arg(p)
    p.set_defaults(func=cmd_visualize)

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
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
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
