"""Voxelization of a prepared scene, keeping the vertex -> voxel inverse map.

One voxel per occupied ``voxel_size`` cell (MinkowskiEngine's ``sparse_quantize``, i.e.
``floor(x / voxel_size)``). Voxel features are those of one representative vertex; voxel
labels are the majority vote of the voxel's labelled vertices.

Pseudo-labelled scenes (self-training) mark vertices whose instance membership is not
known with :data:`UNKNOWN_INSTANCE`: their semantics still train the semantic head, but
the instance losses skip their voxels (``instance_known``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minkseg.sparse import ME
from scannet_tools.labels import IGNORE_ID

UNKNOWN_INSTANCE = -2  # per-vertex instance id: "may belong to an instance we have no label for"


@dataclass
class VoxelScene:
    """One voxelized scene. ``inverse[v]`` is the voxel of vertex ``v`` (-1 if cropped away)."""

    scene: str
    coords: torch.Tensor  # (M, 3) int32 voxel grid coordinates
    feats: torch.Tensor  # (M, C) float32
    centers: torch.Tensor  # (M, 3) float32 voxel centres in metres
    semantic: torch.Tensor  # (M,) int64 train id or IGNORE_ID
    instance: torch.Tensor  # (M,) int64 instance index 0..K-1, -1 for none
    instance_class: torch.Tensor  # (K,) int64 train id of each instance
    inverse: torch.Tensor  # (N_vertices,) int64
    voxel_size: float
    instance_known: torch.Tensor | None = None  # (M,) bool; None: every voxel's instance is known
    labeled: bool = True  # ground-truth labels (False: pseudo labels from a teacher)
    weight: float = 1.0  # this scene's factor in the batch loss

    @property
    def num_instances(self) -> int:
        return int(self.instance_class.numel())


def input_features(rgb: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
    """Colours scaled to [-0.5, 0.5] (as in MinkowskiEngine's ScanNet example), normals appended if given."""
    feats = rgb.astype(np.float32) / 255.0 - 0.5
    if normals is not None:
        feats = np.concatenate([feats, normals.astype(np.float32)], axis=1)
    return feats


def majority_vote(group: np.ndarray, labels: np.ndarray, n_groups: int, ignore: int) -> np.ndarray:
    """Most frequent non-``ignore`` label per group (``ignore`` where a group has none).

    One ``bincount`` over (group, label) pairs: O(N + G * L) and no Python loop.
    """
    valid = labels != ignore
    if not valid.any():
        return np.full(n_groups, ignore, dtype=np.int64)
    uniq, lab = np.unique(labels[valid], return_inverse=True)
    counts = np.bincount(group[valid] * len(uniq) + lab, minlength=n_groups * len(uniq)).reshape(n_groups, len(uniq))
    out = uniq[counts.argmax(1)].astype(np.int64)
    out[counts.max(1) == 0] = ignore
    return out


def voxelize(
    xyz: np.ndarray,
    feats: np.ndarray,
    semantic: np.ndarray | None = None,
    instance: np.ndarray | None = None,
    voxel_size: float = 0.02,
    scene: str = "",
    keep: np.ndarray | None = None,
) -> VoxelScene:
    """Quantize vertices to voxels.

    ``keep`` (bool per vertex) marks the vertices that survive a crop; the others get
    ``inverse = -1`` and are resolved later by :func:`minkseg.devoxelize.devoxelize`.
    Instances are renumbered 0..K-1 in order of their ids; an instance whose voxels all
    lose the majority vote, or that has no labelled voxel, disappears. Voxels whose vote
    is :data:`UNKNOWN_INSTANCE` get ``instance_known = False``.
    """
    n = len(xyz)
    idx = np.arange(n) if keep is None else np.flatnonzero(keep)
    if len(idx) == 0:
        raise ValueError(f"{scene or 'scene'}: no vertices to voxelize")
    coords, unique_map, inverse_map = ME.utils.sparse_quantize(
        np.ascontiguousarray(xyz[idx], dtype=np.float32), quantization_size=voxel_size,
        return_index=True, return_inverse=True,
    )
    unique_map, inverse_map = unique_map.numpy(), inverse_map.numpy()
    m = len(unique_map)
    inverse = np.full(n, -1, dtype=np.int64)
    inverse[idx] = inverse_map

    sem = np.full(m, IGNORE_ID, np.int64)
    if semantic is not None:
        sem = majority_vote(inverse_map, semantic[idx].astype(np.int64), m, IGNORE_ID)
    inst = np.full(m, -1, np.int64)
    inst_class = np.zeros(0, np.int64)
    known = None
    if instance is not None:
        vox_inst = majority_vote(inverse_map, instance[idx].astype(np.int64), m, -1)
        if (vox_inst == UNKNOWN_INSTANCE).any():
            known = torch.from_numpy(vox_inst != UNKNOWN_INSTANCE)
        present = vox_inst >= 0
        if present.any():
            ids, inst[present] = np.unique(vox_inst[present], return_inverse=True)
            inst_class = majority_vote(inst[present], sem[present], len(ids), IGNORE_ID)
            bad = inst_class == IGNORE_ID  # an instance with no labelled voxel cannot be trained on
            if bad.any():
                inst[np.isin(inst, np.flatnonzero(bad))] = -1
                keep_ids = np.flatnonzero(~bad)
                relabel = np.full(len(ids), -1, np.int64)
                relabel[keep_ids] = np.arange(len(keep_ids))
                inst[inst >= 0] = relabel[inst[inst >= 0]]
                inst_class = inst_class[keep_ids]
    coords = coords.int() if isinstance(coords, torch.Tensor) else torch.from_numpy(coords).int()
    return VoxelScene(
        scene=scene,
        coords=coords,
        feats=torch.from_numpy(np.ascontiguousarray(feats[idx][unique_map], dtype=np.float32)),
        centers=(coords.float() + 0.5) * voxel_size,
        semantic=torch.from_numpy(sem),
        instance=torch.from_numpy(inst),
        instance_class=torch.from_numpy(inst_class),
        inverse=torch.from_numpy(inverse),
        voxel_size=voxel_size,
        instance_known=known,
    )


@dataclass
class VoxelBatch:
    """Several scenes concatenated; ``batch`` maps each voxel to its scene."""

    coords: torch.Tensor  # (M, 4) int32: batch index, x, y, z
    feats: torch.Tensor
    centers: torch.Tensor
    semantic: torch.Tensor
    instance: torch.Tensor  # instance index unique across the batch, -1 none
    instance_class: torch.Tensor
    batch: torch.Tensor  # (M,) int64
    instance_known: torch.Tensor  # (M,) bool
    scenes: list[VoxelScene]

    def to(self, device: torch.device | str) -> VoxelBatch:
        moved = {k: getattr(self, k).to(device) for k in
                 ("coords", "feats", "centers", "semantic", "instance", "instance_class", "batch", "instance_known")}
        return VoxelBatch(**moved, scenes=self.scenes)


def collate(scenes: list[VoxelScene]) -> VoxelBatch:
    """Concatenate scenes into one sparse batch; instance ids are offset per scene."""
    coords, inst, batch = [], [], []
    offset = 0
    for b, s in enumerate(scenes):
        coords.append(torch.cat([torch.full((len(s.coords), 1), b, dtype=torch.int32), s.coords], 1))
        inst.append(torch.where(s.instance >= 0, s.instance + offset, s.instance))
        batch.append(torch.full((len(s.coords),), b, dtype=torch.int64))
        offset += s.num_instances
    return VoxelBatch(
        coords=torch.cat(coords), feats=torch.cat([s.feats for s in scenes]),
        centers=torch.cat([s.centers for s in scenes]), semantic=torch.cat([s.semantic for s in scenes]),
        instance=torch.cat(inst), instance_class=torch.cat([s.instance_class for s in scenes]),
        batch=torch.cat(batch), scenes=scenes,
        instance_known=torch.cat([torch.ones(len(s.coords), dtype=torch.bool) if s.instance_known is None
                                  else s.instance_known for s in scenes]),
    )
