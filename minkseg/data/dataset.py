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
    """

    def __init__(self, files: list[Path], voxel_size: float = 0.02, augment: AugmentConfig | None = None,
                 use_normals: bool = False, seed: int = 0):
        if not files:
            raise ValueError("no prepared scenes given")
        self.files = [Path(f) for f in files]
        self.voxel_size, self.augment, self.use_normals, self.seed = voxel_size, augment, use_normals, seed
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
        xyz, rgb, keep = s["xyz"], s["rgb"], None
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            xyz, rgb, keep = augment(xyz, rgb, self.augment, rng)
        else:
            xyz = xyz - xyz.min(0)
        feats = input_features(rgb, s["normals"] if self.use_normals else None)
        return voxelize(xyz, feats, s["semantic"], s["instance"], self.voxel_size, scene=s["scene"], keep=keep)
