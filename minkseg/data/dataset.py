"""Prepared scenes as a dataset of :class:`VoxelScene` (augmented when training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scannet_tools.prepare import PREPARED_SUFFIX, load_prepared

from .augment import AugmentConfig, augment
from .voxelize import VoxelScene, input_features, voxelize


class PreparedScenes(torch.utils.data.Dataset):
    """Voxelized prepared scenes; with ``augment`` set, each access draws a new augmentation.

    Augmentation randomness comes from ``seed`` and an access counter per item, so a run
    is reproducible from its seed and resumable from the epoch it stopped at.

    ``label_files[i]`` (self-training) replaces item i's ground truth by the per-vertex
    ``semantic`` and ``instance`` arrays of a pseudo-label file, and ``weights[i]`` scales
    its loss. The same scene may appear several times (each occurrence is augmented anew).
    """

    def __init__(self, files: list[Path], voxel_size: float = 0.02, augment: AugmentConfig | None = None,
                 use_normals: bool = False, seed: int = 0, label_files: list[Path | None] | None = None,
                 weights: list[float] | None = None):
        if not files:
            raise ValueError("no prepared scenes given")
        self.files = [Path(f) for f in files]
        self.voxel_size, self.augment, self.use_normals, self.seed = voxel_size, augment, use_normals, seed
        self.label_files = list(label_files) if label_files is not None else [None] * len(self.files)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.files)
        if not len(self.label_files) == len(self.weights) == len(self.files):
            raise ValueError("files, label_files and weights must have the same length")
        self.epoch = 0

    @classmethod
    def from_dir(cls, prepared_dir: str | Path, scenes: list[str] | None = None, **kw) -> PreparedScenes:
        d = Path(prepared_dir)
        if scenes is None:
            files = sorted(d.glob(f"scene*{PREPARED_SUFFIX}"))
        else:
            files = [d / f"{s}{PREPARED_SUFFIX}" for s in scenes]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: {len(missing)} prepared scenes missing, e.g. {missing[:3]}")
        return cls(files, **kw)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> VoxelScene:
        s = load_prepared(self.files[i])
        semantic, instance = s["semantic"], s["instance"]
        if self.label_files[i] is not None:
            semantic, instance = load_pseudo_labels(self.label_files[i], len(semantic))
        xyz, rgb, keep = s["xyz"], s["rgb"], None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            xyz, rgb, keep = augment(xyz, rgb, self.augment, rng)
        else:
            xyz = xyz - xyz.min(0)
        feats = input_features(rgb, s["normals"] if self.use_normals else None)
        vox = voxelize(xyz, feats, semantic, instance, self.voxel_size, scene=s["scene"], keep=keep)
        vox.labeled, vox.weight = self.label_files[i] is None, float(self.weights[i])
        return vox


def load_pseudo_labels(path: Path, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex ``semantic`` and ``instance`` of a pseudo-label file (see minkseg.pseudo_labels)."""
    with np.load(path) as z:
        semantic, instance = z["semantic"], z["instance"]
    if len(semantic) != num_vertices or len(instance) != num_vertices:
        raise ValueError(f"{path}: {len(semantic)} pseudo labels for a scene of {num_vertices} vertices")
    return semantic, instance
