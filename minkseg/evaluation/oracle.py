"""The voxelization ceiling: what perfect voxel outputs score at a voxel size.

A network sees voxels and its outputs are copied to the vertices of each voxel
(:mod:`minkseg.inference.devoxelize`), so every vertex of a voxel gets the same label and instance.
The oracle does the same with perfect voxel outputs, namely the training targets that
:func:`minkseg.data.voxelize.voxelize` builds:

- semantic: every vertex takes the majority label of its voxel;
- instance: each ground-truth instance keeps the voxels it wins in that vote, devoxelized
  to vertices, with confidence 1 and its ground-truth class.

Scored with :func:`minkseg.evaluation.evaluate.evaluate_scenes`, the same code as a model's
predictions, this says how much of a gap to 1.0 is the voxel size and not the learning.
Not a paper equation: a measurement of the data pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minkseg.data.voxelize import majority_vote, voxelize
from minkseg.evaluation.evaluate import evaluate_scenes
from minkseg.inference.devoxelize import devoxelize
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.predict import ground_truth_ids
from scannet_tools.labels import train_id_to_nyu40

#: Keys of a ceiling summary, in print order.
CEILING_KEYS = ("mAP", "AP50", "AP25", "mIoU")


def oracle_prediction(scene: dict, voxel_size: float) -> tuple[np.ndarray, list[InstancePrediction]]:
    """Per-vertex NYU40 labels and instance masks of the voxel oracle for one prepared scene.

    ``scene`` is a prepared scene (:func:`scannet_tools.prepare.load_prepared`): ``xyz``,
    ``semantic`` (train ids), ``instance`` (-1 outside instances) and ``nyu40``. The grid
    origin is the scene's minimum corner, as in :func:`minkseg.inference.predict.forward_scene`.
    """
    xyz = np.asarray(scene["xyz"], dtype=np.float32)
    xyz = xyz - xyz.min(0)
    vertex_instance = np.asarray(scene["instance"], dtype=np.int64)
    vox = voxelize(xyz, np.zeros((len(xyz), 1), np.float32), np.asarray(scene["semantic"]), vertex_instance,
                   voxel_size, scene=str(scene.get("scene", "")))
    voxel_semantic = devoxelize(vox.semantic, vox.inverse).numpy()  # train id per vertex
    won = devoxelize(vox.instance, vox.inverse).numpy()  # voxel instance index per vertex, -1 none

    # Instance k's ground-truth id: in every voxel it won, it has the most vertices among
    # those that carry the voxel's label, hence also in the union of those voxels, where
    # the majority of the agreeing vertices' ids names it (ties go to the smallest id in
    # both). Its class is the ground-truth class of its own vertices, not a voxel vote.
    agrees = (won >= 0) & (vertex_instance >= 0) & (np.asarray(scene["semantic"], np.int64) == voxel_semantic)
    winner = majority_vote(won[agrees], vertex_instance[agrees], vox.num_instances, -1)
    has_id = vertex_instance >= 0
    nyu40 = np.asarray(scene["nyu40"], dtype=np.int64)
    gt_class = majority_vote(vertex_instance[has_id], nyu40[has_id], int(vertex_instance.max(initial=-1)) + 1, -1)
    order = np.argsort(won, kind="stable")  # vertices grouped by the instance whose voxels they are in
    bounds = np.searchsorted(won[order], np.arange(vox.num_instances + 1))
    instances = []
    for k in np.flatnonzero(winner >= 0):
        mask = np.zeros(len(won), bool)
        mask[order[bounds[k]:bounds[k + 1]]] = True
        instances.append(InstancePrediction(mask, int(gt_class[winner[k]]), 1.0))
    semantic = train_id_to_nyu40(voxel_semantic)
    return semantic, instances


def oracle_metrics(scenes: Iterable[dict], voxel_size: float) -> dict:
    """Benchmark metrics (``evaluate_scenes`` format) of the voxel oracle over prepared scenes."""
    rows = []
    for scene in scenes:
        semantic, instances = oracle_prediction(scene, voxel_size)
        rows.append((ground_truth_ids(scene), instances, np.asarray(scene["nyu40"], dtype=np.int64), semantic))
    return evaluate_scenes(rows)


def ceiling_summary(metrics: dict, voxel_size: float) -> dict:
    """The headline numbers of :func:`oracle_metrics`: voxel size, mAP, AP50, AP25, mIoU."""
    out: dict = {"voxel_size": float(voxel_size)}
    inst, sem = metrics.get("instance", {}), metrics.get("semantic", {})
    for key in ("mAP", "AP50", "AP25"):
        out[key] = float(inst.get(key, float("nan")))
    out["mIoU"] = float(sem.get("mIoU", float("nan")))
    return out


def prepared_ceiling(prepared: str | Path, scenes: list[str], voxel_size: float) -> dict:
    """:func:`ceiling_summary` of the voxel oracle on prepared scenes ``prepared/<scene>.npz``."""
    from scannet_tools.prepare import load_prepared, prepared_path

    loaded = (load_prepared(prepared_path(prepared, name)) for name in scenes)
    return ceiling_summary(oracle_metrics(loaded, voxel_size), voxel_size)


def format_ceiling(ceiling: dict) -> str:
    """One line: ``voxelization ceiling at X cm: mAP .. AP50 .. AP25 .. mIoU ..``."""
    values = "  ".join(f"{k} {ceiling[k]:.3f}" for k in CEILING_KEYS)
    return f"voxelization ceiling at {100 * ceiling['voxel_size']:g} cm: {values}"


def main(argv: list[str] | None = None) -> int:
    """``python -m minkseg.evaluation.oracle PREPARED [--scenes ...] [--voxel-size ...]``: ceilings of prepared
    scenes."""
    import argparse

    from scannet_tools.prepare import PREPARED_SUFFIX

    p = argparse.ArgumentParser(prog="python -m minkseg.evaluation.oracle", description=__doc__.split("\n")[0])
    p.add_argument("prepared", type=Path, help="folder of prepared scenes (minkseg prepare --out)")
    p.add_argument("--scenes", nargs="+", help="scene ids (default: every prepared scene)")
    p.add_argument("--voxel-size", type=float, nargs="+", default=[0.02, 0.05, 0.1],
                   help="metres (default: 0.02 0.05 0.1)")
    args = p.parse_args(argv)
    scenes = args.scenes or sorted(f.name[: -len(PREPARED_SUFFIX)] for f in args.prepared.glob(f"*{PREPARED_SUFFIX}"))
    if not scenes:
        raise SystemExit(f"{args.prepared}: no prepared scenes (*{PREPARED_SUFFIX})")
    print(f"{len(scenes)} scenes from {args.prepared}")
    for size in args.voxel_size:
        print(format_ceiling(prepared_ceiling(args.prepared, scenes, size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
