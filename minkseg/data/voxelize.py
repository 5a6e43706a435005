"""Voxelization of a prepared scene, keeping the vertex -> voxel inverse map.

One voxel per occupied ``voxel_size`` cell (MinkowskiEngine's ``sparse_quantize``, i.e.
``floor(x / voxel_size)``). Voxel features are those of one representative vertex.

Voxel labels (one rule, so that a voxel's semantic label and its instance membership
always agree):

* semantic: the majority train id of the voxel's labelled vertices (ties go to the
  lower train id, so wall/floor win a tie);
* instance: the majority instance id among the vertices that *carry the voxel's semantic
  label*; a voxel whose label is wall, floor or ignored is never an instance member. A
  thin picture on a wall that loses a voxel's vote to the wall does not make that wall
  voxel a picture member, and a wall vertex cannot lend its voxel to an instance;
* instance class: the majority semantic label of the instance's own vertices that have an
  instance class (train id >= ``FIRST_INSTANCE_TRAIN_ID``), never a vote over voxels, so
  wall and floor cannot leak in. It is therefore always one of the 18 instance classes,
  and :func:`collate` refuses any scene where it is not.

An instance that wins no voxel disappears from training: at coarse voxel sizes a thin
object flush with a wall (a picture, a door frame) can lose every voxel to the wall. It
then counts as wall there, which is what the voxel grid can represent; it never becomes
an instance of class wall.

Pseudo-labelled scenes (self-training) mark vertices whose instance membership is not
known with :data:`UNKNOWN_INSTANCE`: their semantics still train the semantic head, but
the instance losses skip their voxels (``instance_known``). A voxel is unknown when
:data:`UNKNOWN_INSTANCE` wins its instance vote (whatever its semantic label: round 1 of
self-training marks every vertex unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from minkseg.sparse import ME
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, IGNORE_ID, NUM_SEMANTIC

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


def majority_vote(group: np.ndarray, labels: np.ndarray, n_groups: int, ignore: int,
                  dense_limit: int = 1 << 23) -> np.ndarray:
    """Most frequent non-``ignore`` label per group (``ignore`` where a group has none).

    Ties go to the smallest label. With G groups and L distinct labels, a dense G x L
    ``bincount`` table when it has at most ``dense_limit`` cells (fastest, e.g. 20 semantic
    classes); otherwise the (group, label) pairs are counted with ``np.unique`` and each
    group's best pair picked with one sort, O(N log N) time and O(N) memory (instance ids
    of a 250k-voxel scene would need a 25M-cell table).
    """
    group, labels = np.asarray(group, np.int64), np.asarray(labels, np.int64)
    out = np.full(n_groups, ignore, dtype=np.int64)
    valid = labels != ignore
    if not valid.any():
        return out
    uniq, lab = np.unique(labels[valid], return_inverse=True)
    key = group[valid] * len(uniq) + lab
    if n_groups * len(uniq) <= dense_limit:
        counts = np.bincount(key, minlength=n_groups * len(uniq)).reshape(n_groups, len(uniq))
        has = counts.max(1) > 0
        out[has] = uniq[counts[has].argmax(1)]  # argmax takes the first maximum: the smallest label
        return out
    pairs, counts = np.unique(key, return_counts=True)
    g, lab = pairs // len(uniq), pairs % len(uniq)
    order = np.lexsort((lab, -counts, g))  # by group, then most votes, then smallest label
    first = order[np.r_[True, g[order][1:] != g[order][:-1]]]
    out[g[first]] = uniq[lab[first]]
    return out


def voxel_labels(inverse_map: np.ndarray, semantic: np.ndarray | None, instance: np.ndarray | None, m: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor | None]:
    """Per-voxel semantic and instance labels, per-instance classes and ``instance_known``
    (None when every voxel's instance is known), by the rule in the module docstring.

    ``inverse_map[v]`` is the voxel (0..m-1) of each kept vertex; ``semantic`` holds train
    ids or IGNORE_ID, ``instance`` ids >= 0, -1 (none) or UNKNOWN_INSTANCE.
    """
    sem = np.full(m, IGNORE_ID, np.int64)
    if semantic is not None:
        semantic = np.asarray(semantic, np.int64)
        sem = majority_vote(inverse_map, semantic, m, IGNORE_ID)
    inst = np.full(m, -1, np.int64)
    if instance is None:
        return sem, inst, np.zeros(0, np.int64), None
    instance = np.asarray(instance, np.int64)
    vertex_sem = np.full(len(instance), IGNORE_ID, np.int64) if semantic is None else semantic
    # only vertices that carry their voxel's label vote on its instance (IGNORE == IGNORE
    # in unlabelled voxels, so pseudo-label "unknown" marks there still count)
    agrees = vertex_sem == sem[inverse_map]
    vox_inst = majority_vote(inverse_map[agrees], instance[agrees], m, -1)
    vox_inst[(vox_inst >= 0) & (sem < FIRST_INSTANCE_TRAIN_ID)] = -1  # wall, floor, ignored: no instance
    known = torch.from_numpy(vox_inst != UNKNOWN_INSTANCE) if (vox_inst == UNKNOWN_INSTANCE).any() else None
    present = vox_inst >= 0
    if not present.any():
        return sem, inst, np.zeros(0, np.int64), known
    ids, inst[present] = np.unique(vox_inst[present], return_inverse=True)
    # class over the instance's own vertices of instance classes; every present instance
    # has one (a member voxel's winning vertex), so no IGNORE_ID can come out
    pos = np.searchsorted(ids, instance).clip(max=len(ids) - 1)
    thing = (ids[pos] == instance) & (vertex_sem >= FIRST_INSTANCE_TRAIN_ID)
    inst_class = majority_vote(pos[thing], vertex_sem[thing], len(ids), IGNORE_ID)
    return sem, inst, inst_class, known


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
    ``inverse = -1`` and are resolved later by :func:`minkseg.inference.devoxelize.devoxelize`.
    Labels follow the module docstring's rule (:func:`voxel_labels`); instances are
    renumbered 0..K-1 in order of their ids, and one that wins no voxel disappears.
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

    sem, inst, inst_class, known = voxel_labels(
        inverse_map, None if semantic is None else semantic[idx], None if instance is None else instance[idx], m)
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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VoxelBatch:
        moved = {k: getattr(self, k).to(device, non_blocking=non_blocking) for k in
                 ("coords", "feats", "centers", "semantic", "instance", "instance_class", "batch", "instance_known")}
        return VoxelBatch(**moved, scenes=self.scenes)

    def pin_memory(self) -> VoxelBatch:
        """Page-locked copies of the batch tensors: DataLoader(pin_memory=True) calls this, and a
        pinned batch reaches the GPU with ``to(device, non_blocking=True)`` while the step runs."""
        pinned = {k: getattr(self, k).pin_memory() for k in
                  ("coords", "feats", "centers", "semantic", "instance", "instance_class", "batch", "instance_known")}
        return VoxelBatch(**pinned, scenes=self.scenes)


def check_instance_labels(scene: VoxelScene) -> None:
    """Raise ValueError (one line naming the scene) unless every instance has one of the 18
    instance classes and every member voxel is labelled with an instance class.

    The losses index per-class columns with ``instance_class - FIRST_INSTANCE_TRAIN_ID``: a
    wall/floor (0, 1) or ignored class would silently train another class's column or
    index out of range, so this is checked wherever batches are built.
    """
    name = scene.scene or "scene"
    cls = scene.instance_class
    bad = (cls < FIRST_INSTANCE_TRAIN_ID) | (cls >= NUM_SEMANTIC)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: instance {k} has class {int(cls[k])}; instances must have one of the instance "
                         f"classes (train ids {FIRST_INSTANCE_TRAIN_ID}..{NUM_SEMANTIC - 1}), never wall, floor "
                         "or ignored")
    members = scene.instance >= 0
    if members.any() and int(scene.instance[members].max()) >= scene.num_instances:
        raise ValueError(f"{name}: voxel instance index {int(scene.instance.max())} but only "
                         f"{scene.num_instances} instance classes")
    member_sem = scene.semantic[members]
    if (member_sem < FIRST_INSTANCE_TRAIN_ID).any():
        raise ValueError(f"{name}: {int((member_sem < FIRST_INSTANCE_TRAIN_ID).sum())} instance voxels are labelled "
                         "wall, floor or ignored; a voxel's semantic label and instance membership must agree")


def collate(scenes: list[VoxelScene]) -> VoxelBatch:
    """Concatenate scenes into one sparse batch; instance ids are offset per scene.

    Each scene's labels are checked first (:func:`check_instance_labels`).
    """
    coords, inst, batch = [], [], []
    offset = 0
    for b, s in enumerate(scenes):
        check_instance_labels(s)
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
