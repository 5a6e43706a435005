"""Time of ``minkseg.metrics`` against a straightforward transcription of the official rules.

    .venv/bin/python benchmarks/bench_evaluate.py [--scenes 20] [--vertices 150000]

Each scene has ScanNet-like ground truth (about 40 instances, a third of them chairs, as
in living and conference rooms) and about 60 predicted masks (near-copies of instances,
duplicates, wrong labels, false positives), written to disk in the submission layout.
Both evaluators start from those files in this process: ``minkseg evaluate --pred --gt``'s
code, and the loop-by-loop transcription of the official scripts used by the test suite
(tests/official_eval_reference.py) fed by the scripts' own parsing (``splitlines`` then
``np.array``). The script checks that their AP tables are identical and prints both times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minkseg.evaluate import evaluate_dirs  # noqa: E402
from minkseg.inference import ScenePrediction  # noqa: E402
from minkseg.metrics import InstancePrediction  # noqa: E402
from minkseg.submission import write_scene_submission  # noqa: E402
from scannet_tools.io import write_ids  # noqa: E402
from tests import official_eval_reference as reference  # noqa: E402

CLASSES = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]


def make_scene(rng: np.random.Generator, n: int):
    gt = np.zeros(n, np.int64)
    bounds = np.sort(rng.choice(n, 60, replace=False))
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        label = 1 if k % 5 == 0 else (5 if rng.random() < 0.35 else int(rng.choice(CLASSES)))
        gt[a:b] = label * 1000 + k + 1
    gt = gt[rng.permutation(n)]
    preds = []
    for i in np.unique(gt[gt >= 3000])[:45]:
        for _ in range(int(rng.integers(1, 3))):
            mask = (gt == i) ^ (rng.random(n) < 0.003)
            label = i // 1000 if rng.random() < 0.85 else int(rng.choice(CLASSES))
            preds.append((mask, int(label), float(rng.random())))
    for _ in range(10):
        preds.append((rng.random(n) < 0.01, int(rng.choice(CLASSES)), float(rng.random())))
    return gt, preds


def _official_load_ids(path: Path) -> np.ndarray:
    return np.array(open(path).read().splitlines(), dtype=np.int64)


def _official_read(root: Path, name: str):
    gt = _official_load_ids(root / "gt" / "instance" / f"{name}.txt")
    preds = []
    inst = root / "sub" / "instance"
    for line in (inst / f"{name}.txt").read_text().splitlines():
        rel, label, conf = line.split(" ")
        preds.append((_official_load_ids(inst / rel), int(float(label)), float(conf)))
    return gt, preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--vertices", type=int, default=150_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    scenes = [make_scene(rng, args.vertices) for _ in range(args.scenes)]
    n_pred = sum(len(p) for _, p in scenes)
    print(f"{args.scenes} scenes x {args.vertices} vertices, {n_pred} predicted masks")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for s, (gt, preds) in enumerate(scenes):
            name = f"scene{s:04d}_00"
            write_ids(root / "gt" / "instance" / f"{name}.txt", gt)
            write_ids(root / "gt" / "semantic" / f"{name}.txt", gt // 1000)
            write_scene_submission(ScenePrediction(name, np.zeros(len(gt), np.int64),
                                                   [InstancePrediction(m, lab, c) for m, lab, c in preds]),
                                   root / "sub")
        t = time.perf_counter()
        ours = evaluate_dirs(root / "sub", root / "gt", ap_matrix=True)["ap"]
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref = reference.instance_ap([_official_read(root, f"scene{s:04d}_00") for s in range(len(scenes))])
        t_ref = time.perf_counter() - t
    same = np.allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)
    print(f"minkseg.metrics      {t_ours:8.2f} s")
    print(f"straightforward      {t_ref:8.2f} s")
    print(f"speed-up             {t_ref / t_ours:8.1f} x   identical AP tables: {same}")


if __name__ == "__main__":
    main()
