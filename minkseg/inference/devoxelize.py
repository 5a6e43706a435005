"""Voxel outputs -> every original mesh vertex.

A vertex takes the output of its voxel through the inverse map kept by
:func:`minkseg.data.voxelize.voxelize`. A vertex whose voxel was cropped away
(``inverse = -1``) takes the output of the nearest voxel centre (a KD-tree query), so
every vertex of the mesh always gets a prediction.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def resolve_inverse(inverse: torch.Tensor, vertex_xyz: np.ndarray | None = None,
                    voxel_centers: np.ndarray | None = None) -> torch.Tensor:
    """Inverse map with every -1 replaced by the nearest voxel (needs coordinates then)."""
    missing = (inverse < 0).nonzero(as_tuple=True)[0]
    if len(missing) == 0:
        return inverse
    if vertex_xyz is None or voxel_centers is None:
        raise ValueError(f"{len(missing)} vertices have no voxel; pass vertex_xyz and voxel_centers for the fallback")
    _, nearest = cKDTree(voxel_centers).query(vertex_xyz[missing.numpy()], k=1)
    out = inverse.clone()
    out[missing] = torch.from_numpy(np.asarray(nearest, dtype=np.int64))
    return out


def devoxelize(voxel_values: torch.Tensor, inverse: torch.Tensor, vertex_xyz: np.ndarray | None = None,
               voxel_centers: np.ndarray | None = None) -> torch.Tensor:
    """Per-vertex values (labels, instance ids, probabilities...) from per-voxel ones."""
    inv = resolve_inverse(inverse.cpu(), vertex_xyz, voxel_centers)
    return voxel_values[inv.to(voxel_values.device)]
