"""Whole-process time of ``minkseg evaluate --pred --gt`` against the official scripts' transcription.

    .venv/bin/python benchmarks/bench_evaluate.py [--scenes 20] [--vertices 125000] [--masks 29]

Writes ScanNet-like benchmark files to a temporary folder: per scene about 40 ground-truth
instances (a third chairs) among wall, floor, unannotated and non-benchmark vertices,
``--masks`` predicted masks (near-copies of instances, duplicates, wrong labels, false
positives partly on walls), a semantic prediction with 20 % wrong vertices. Then runs, each
as a separate process started from the shell's point of view (interpreter start and
imports included):

(a) tests/official_eval_reference.py: the loop-by-loop transcription of ScanNet's current
    evaluate_semantic_instance.py and evaluate_semantic_label.py (both parts);
(b) ``minkseg evaluate --pred SUB --gt GT --json`` through the ``minkseg`` entry point
    (``minkseg.cli.main``), from ``--minkseg-root`` (default: this checkout).

With ``--official BenchmarkScripts --python2 EXE`` it also times ScanNet's unmodified Python 2
scripts on the same files and compares their tables.

It asserts that both give the same per-class AP, AP50, AP25 and IoU (1e-9) and prints the
wall and CPU (user + system) times and their ratios; on a shared machine the CPU ratio is
the steadier one. ``--minkseg-root`` lets an older checkout be timed on the same files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scannet_tools.io import write_ids  # noqa: E402

CLASSES = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]


def make_scene(rng: np.random.Generator, n: int, n_masks: int) -> tuple[np.ndarray, list]:
    """Ground-truth ids (nyu40 * 1000 + instance) and (mask, label, confidence) predictions."""
    n_segments = 60
    sizes = rng.dirichlet(np.full(n_segments, 0.7)) * n
    bounds = np.concatenate([[0], np.cumsum(sizes).astype(int)])
    bounds[-1] = n
    gt = np.zeros(n, np.int64)
    for k in range(n_segments):
        kind = k % 6
        if kind == 0:
            label = int(rng.choice([1, 2]))  # wall, floor
        elif kind == 1 and rng.random() < 0.5:
            label = int(rng.choice([0, 13, 40]))  # unannotated or non-benchmark
        else:
            label = 5 if rng.random() < 0.35 else int(rng.choice(CLASSES))
        gt[bounds[k]:bounds[k + 1]] = label * 1000 + k + 1 if label else 0
    gt = gt[rng.permutation(n)]
    instances = [i for i in np.unique(gt) if i // 1000 in CLASSES]
    detected = rng.permutation(instances)[:int(0.8 * n_masks)]
    preds = []
    for k in range(n_masks):
        if k < len(detected) or rng.random() < 0.5:  # a detection: some vertices dropped, a few added
            target = gt == (detected[k] if k < len(detected) else rng.choice(instances))
            mask = target & (rng.random(n) > rng.choice([0.02, 0.1, 0.4]))
            mask |= rng.random(n) < rng.choice([0.0002, 0.002])
            label = int(gt[np.flatnonzero(target)[0]] // 1000)
            if rng.random() < 0.1:
                label = int(rng.choice(CLASSES))
        else:  # a false positive on wall/floor and random vertices
            mask = ((gt // 1000 <= 2) & (rng.random(n) < 0.05)) | (rng.random(n) < 0.002)
            label = int(rng.choice(CLASSES))
        preds.append((mask, label, float(rng.random())))
    return gt, preds


def write_mask(path: Path, mask: np.ndarray) -> None:
    """The bytes ``write_ids`` writes for a 0/1 mask ("0\\n" / "1\\n" per vertex), built in one step."""
    text = np.full(2 * len(mask), ord("\n"), np.uint8)
    text[0::2] = ord("0") + mask.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.tobytes())


def write_files(root: Path, scenes: list) -> None:
    rng = np.random.default_rng(1)
    semantic_ids = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39])
    for s, (gt, preds) in enumerate(scenes):
        name = f"scene{s:04d}_00"
        write_ids(root / "gt" / "instance" / f"{name}.txt", gt)
        write_ids(root / "gt" / "semantic" / f"{name}.txt", gt // 1000)
        wrong = rng.random(len(gt)) < 0.2
        write_ids(root / "sub" / "semantic" / f"{name}.txt",
                  np.where(wrong, rng.choice(semantic_ids, len(gt)), gt // 1000))
        lines = []
        for k, (mask, label, conf) in enumerate(preds):
            rel = f"predicted_masks/{name}_{k:03d}.txt"
            write_mask(root / "sub" / "instance" / rel, mask)
            lines.append(f"{rel} {label} {conf:.6f}\n")
        (root / "sub" / "instance" / f"{name}.txt").write_text("".join(lines))


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one process; CPU (user + system) is the steadier figure on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return elapsed, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def compare(a: dict, b: dict, tol: float = 1e-9) -> list[str]:
    """Differences between two metrics JSONs (per-class AP/AP50/AP25 and IoU, and the means)."""
    bad = []
    pairs = [("instance", k, a["instance"]["per_class"][n][k], b["instance"]["per_class"][n][k], n)
             for n in a["instance"]["per_class"] for k in ("ap", "ap50", "ap25")]
    pairs += [("instance", k, a["instance"][k], b["instance"][k], "all") for k in ("mAP", "AP50", "AP25")]
    pairs += [("semantic", "iou", v, b["semantic"]["per_class"][n], n) for n, v in a["semantic"]["per_class"].items()]
    pairs += [("semantic", "mIoU", a["semantic"]["mIoU"], b["semantic"]["mIoU"], "all")]
    for part, key, x, y, name in pairs:
        x = math.nan if x is None else x
        y = math.nan if y is None else y
        if not (math.isnan(x) and math.isnan(y)) and not abs(x - y) <= tol:
            bad.append(f"{part} {name} {key}: {x} vs {y}")
    return bad


def compare_official(tables: dict, ours: dict) -> list[str]:
    """Differences from the Python 2 scripts' output files (per-class AP at 1e-9, IoU as printed)."""
    bad = []
    for name, v in tables["instance"]["per_class"].items():
        for key, x in v.items():
            y = ours["instance"]["per_class"][name][key]
            y = math.nan if y is None else y
            if not (math.isnan(x) and math.isnan(y)) and not abs(x - y) <= 1e-9:
                bad.append(f"instance {name} {key}: {x} vs {y}")
    for name, x in tables["semantic"]["per_class"].items():
        if not abs(x - ours["semantic"]["per_class"][name]) <= 5e-4:
            bad.append(f"semantic {name}: {x} vs {ours['semantic']['per_class'][name]}")
    return bad


def run_official(official: Path, python2: str, root: Path) -> tuple[tuple[float, float], dict]:
    """Time ScanNet's own two scripts (Python 2) on the files; their tables in this script's JSON shape.

    ``util.py``/``util_3d.py`` import imageio and plyfile without using them for evaluation:
    empty stand-ins are put on the path so only numpy is needed.
    """
    stubs = root / "stubs"
    stubs.mkdir()
    (stubs / "imageio.py").write_text("")
    (stubs / "plyfile.py").write_text("PlyData = PlyElement = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stubs), str(official)]
                                                      + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    script = official / "3d_evaluation"
    inst = timed([python2, str(script / "evaluate_semantic_instance.py"), "--pred_path", str(root / "sub" / "instance"),
                  "--gt_path", str(root / "gt" / "instance"), "--output_file", str(root / "inst.csv")], root, env)
    sem = timed([python2, str(script / "evaluate_semantic_label.py"), "--pred_path", str(root / "sub" / "semantic"),
                 "--gt_path", str(root / "gt" / "semantic"), "--output_file", str(root / "sem.txt")], root, env)
    rows = [line.split(",") for line in (root / "inst.csv").read_text().splitlines()[1:]]
    per_class = {r[0]: {"ap": float(r[2]), "ap50": float(r[3]), "ap25": float(r[4])} for r in rows}
    ious = {}
    for line in (root / "sem.txt").read_text().split("confusion matrix")[0].splitlines()[1:]:
        if "):" in line:  # "name (id): 0.123", three decimals
            ious[line.split("(")[0].strip()] = float(line.rsplit(":", 1)[1])
    return (inst[0] + sem[0], inst[1] + sem[1]), {"instance": {"per_class": per_class}, "semantic": {"per_class": ious}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--vertices", type=int, default=125_000)
    ap.add_argument("--masks", type=int, default=29, help="predicted masks per scene (default 29: 580 for 20 scenes)")
    ap.add_argument("--minkseg-root", type=Path, default=REPO, help="checkout whose minkseg is timed")
    ap.add_argument("--repeat", type=int, default=3, help="runs of minkseg; the fastest is reported")
    ap.add_argument("--official", type=Path,
                    help="also time ScanNet's own scripts: the BenchmarkScripts folder of a ScanNet checkout")
    ap.add_argument("--python2", default="python2", help="with --official: a Python 2 with numpy")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, args.vertices, args.masks) for _ in range(args.scenes)]
    print(f"{args.scenes} scenes x {args.vertices} vertices, {args.scenes * args.masks} predicted masks")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_files(root, scenes)
        env = dict(os.environ, PYTHONPATH=str(args.minkseg_root.resolve()))
        ours_cmd = [sys.executable, "-c", "import sys; from minkseg.cli import main; sys.exit(main())",
                    "evaluate", "--pred", str(root / "sub"), "--gt", str(root / "gt"), "--json", str(root / "b.json")]
        t_ours = min(timed(ours_cmd, root, env) for _ in range(args.repeat))  # fastest wall, its CPU
        t_ref = timed([sys.executable, str(REPO / "tests" / "official_eval_reference.py"), "--pred",
                       str(root / "sub"), "--gt", str(root / "gt"), "--json", str(root / "a.json")], root)
        official, ours = json.loads((root / "a.json").read_text()), json.loads((root / "b.json").read_text())
        if args.official:
            t_py2, tables = run_official(args.official.resolve(), args.python2, root)
    bad = compare(official, ours)
    print(f"{'':34}{'wall':>8}{'CPU':>9}")
    print(f"official scripts (transcription)  {t_ref[0]:7.2f}s {t_ref[1]:7.2f}s")
    if args.official:
        print(f"official scripts (Python 2)       {t_py2[0]:7.2f}s {t_py2[1]:7.2f}s")
    print(f"minkseg evaluate                  {t_ours[0]:7.2f}s {t_ours[1]:7.2f}s")
    print(f"speed-up over the transcription   {t_ref[0] / t_ours[0]:7.1f}x {t_ref[1] / t_ours[1]:7.1f}x"
          f"   identical tables: {not bad}")
    if args.official:
        bad_py2 = compare_official(tables, ours)
        print(f"speed-up over Python 2 scripts    {t_py2[0] / t_ours[0]:7.1f}x {t_py2[1] / t_ours[1]:7.1f}x"
              f"   same tables (semantic to the 3 printed decimals): {not bad_py2}")
        bad += bad_py2
    print(f"mAP {ours['instance']['mAP']:.4f}  AP50 {ours['instance']['AP50']:.4f}  "
          f"AP25 {ours['instance']['AP25']:.4f}  mIoU {ours['semantic']['mIoU']:.4f}")
    if bad:
        raise SystemExit("tables differ:\n" + "\n".join(bad[:10]))


if __name__ == "__main__":
    main()
