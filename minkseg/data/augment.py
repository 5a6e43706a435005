"""Training augmentation, all in one place, applied to vertices before voxelization."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass
class AugmentConfig:
    rotate_z: bool = True  # uniform rotation about the vertical axis
    flip: bool = True  # random mirror in x and/or y
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    jitter_std: float = 0.005  # metres, per vertex
    color_jitter_std: float = 0.05  # in [0, 1] colour units
    elastic: bool = False  # MinkowskiEngine-example style elastic distortion (slow on big scenes)
    max_voxels: int = 0  # 0: no crop; otherwise crop to about this many voxels
    voxel_size: float = 0.02


def elastic_distortion(xyz: np.ndarray, granularity: float, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement field (noise on a coarse grid, blurred, trilinearly sampled)."""
    lo = xyz.min(0)
    dims = ((xyz.max(0) - lo) // granularity).astype(int) + 3
    noise = rng.standard_normal((3, *dims)).astype(np.float32)
    for _ in range(2):
        noise = np.stack([gaussian_filter(n, sigma=1.0, mode="nearest") for n in noise])
    g = (xyz - lo) / granularity + 1
    i0 = np.clip(np.floor(g).astype(int), 0, dims - 2)
    t = np.clip(g - i0, 0, 1)
    out = np.zeros_like(xyz)
    for corner in range(8):  # trilinear interpolation, vectorized over vertices
        o = np.array([(corner >> k) & 1 for k in range(3)])
        w = np.prod(np.where(o, t, 1 - t), axis=1)
        idx = i0 + o
        out += w[:, None] * noise[:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    return xyz + out * magnitude


def crop_mask(xyz: np.ndarray, max_voxels: int, voxel_size: float, rng: np.random.Generator) -> np.ndarray:
    """Keep a random axis-aligned xy window holding about ``max_voxels`` voxels (bounds memory)."""
    occupied = len(np.unique(np.floor(xyz / voxel_size).astype(np.int64), axis=0))
    if occupied <= max_voxels:
        return np.ones(len(xyz), bool)
    frac = np.sqrt(max_voxels / occupied)
    lo, hi = xyz[:, :2].min(0), xyz[:, :2].max(0)
    size = (hi - lo) * frac
    start = lo + rng.uniform(0, 1, 2) * (hi - lo - size)
    return ((xyz[:, :2] >= start) & (xyz[:, :2] <= start + size)).all(1)


def augment(xyz: np.ndarray, rgb: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented coordinates, colours and the crop mask (all vertices True without a crop)."""
    xyz = xyz.astype(np.float64) - xyz.mean(0)
    if cfg.rotate_z:
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        xyz = xyz @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    if cfg.flip:
        xyz[:, :2] *= np.where(rng.random(2) < 0.5, -1.0, 1.0)
    xyz *= rng.uniform(*cfg.scale)
    if cfg.elastic:
        xyz = elastic_distortion(xyz, 0.2, 0.4 * 0.2, rng)
        xyz = elastic_distortion(xyz, 0.8, 1.6 * 0.2, rng)
    if cfg.jitter_std > 0:
        xyz += rng.normal(0, cfg.jitter_std, xyz.shape)
    rgb = rgb.astype(np.float64)
    if cfg.color_jitter_std > 0:
        rgb = rgb + rng.normal(0, cfg.color_jitter_std * 255, (1, 3)) + rng.normal(0, 2.0, rgb.shape)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    xyz -= xyz.min(0)
    keep = crop_mask(xyz, cfg.max_voxels, cfg.voxel_size, rng) if cfg.max_voxels else np.ones(len(xyz), bool)
    return xyz.astype(np.float32), rgb, keep
