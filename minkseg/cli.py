"""The ``minkseg`` command: one entry point, one subcommand per pipeline stage.

Heavy imports (torch, MinkowskiEngine) happen inside the subcommands that need them, so
``minkseg --help`` and the data commands start instantly.
"""

from __future__ import annotations

import argparse
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
    report = prepare_all(args.scans, args.out, find_label_table(args.scans, args.labels), workers=args.workers,
                         align=args.align, scenes=_split_scenes(args), overwrite=args.overwrite)
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
                           scenes=_split_scenes(args), overwrite=args.overwrite)
    print(report.summary("exported"))
    print(f"ground truth in {args.out}/semantic and {args.out}/instance")
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    from minkseg.check import self_check

    print(self_check())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from minkseg.demo import run_demo

    return run_demo(args.out, scenes=args.scenes, seed=args.seed, small=args.small)


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
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("export-gt", help="ground truth in the official evaluation format",
                       description="Write OUT/semantic/<scene>.txt (NYU40 id per vertex, 0 unannotated) and "
                                   "OUT/instance/<scene>.txt (nyu40*1000 + objectId+1 per vertex, 0 elsewhere), "
                                   "as ScanNet's export_train_mesh_for_evaluation.py produces them.")
    _add_scans_args(p)
    p.add_argument("--out", required=True, type=Path, help="ground-truth folder")
    p.set_defaults(func=cmd_export_gt)

    p = sub.add_parser("check", help="self-check: one sparse convolution forward and backward",
                       description="Import MinkowskiEngine (through minkseg's one import shim), run one sparse "
                                   "convolution forward and backward, print the versions and the device.")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic dataset",
                       description="Generate synthetic scenes, prepare them, export ground truth and run the "
                                   "network on a prepared scene; prints where everything is.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    p.add_argument("--scenes", type=int, default=6, help="number of synthetic scenes (default: 6)")
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
    except (FileNotFoundError, ValueError) as e:  # user errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
