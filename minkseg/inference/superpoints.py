"""Masks snapped to superpoints: ScanNet's over-segmentation (``segIndices``, the prepared
scene's ``superpoint`` array; -1 where a vertex has none).

Majority rule: a superpoint joins a mask exactly when *more than* ``min_fraction`` (default
one half) of its vertices are in the mask, and then all its vertices join; a superpoint
covered by exactly half or less leaves entirely. Vertices without a superpoint keep their own
membership. Superpoints rarely cross object boundaries, so snapping removes ragged borders
and fills holes. Two disjoint masks stay disjoint: with ``min_fraction >= 0.5`` no
superpoint can have more than half of its vertices in both.
"""

from __future__ import annotations

import numpy as np

from minkseg.inference.masks import MaskSet


def snap_to_superpoints(mask: np.ndarray, superpoint: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """One (N,) mask made the union of the superpoints it covers by more than ``min_fraction``."""
    mask = np.asarray(mask, bool)
    sp = np.asarray(superpoint, dtype=np.int64)
    has_sp = sp >= 0
    if not has_sp.any():
        return mask.copy()
    n_sp = int(sp.max()) + 1
    inside = np.bincount(sp[has_sp & mask], minlength=n_sp)
    total = np.bincount(sp[has_sp], minlength=n_sp)
    keep_sp = inside > min_fraction * np.maximum(total, 1)
    out = mask.copy()
    out[has_sp] = keep_sp[sp[has_sp]]
    return out


def snap_masks_to_superpoints(masks: MaskSet, superpoint: np.ndarray, min_fraction: float = 0.5) -> MaskSet:
    """:func:`snap_to_superpoints` for every mask of a set at once (sparse: no K x N matrix).

    Masks may overlap; each is snapped on its own. A mask may come out empty (it covered no
    superpoint by a majority); it is kept, empty, so that indices still line up.
    """
    sp = np.asarray(superpoint, dtype=np.int64)
    if len(sp) != masks.num_points:
        raise ValueError(f"superpoint array has {len(sp)} vertices, the masks {masks.num_points}")
    member_sp = sp[masks.members]
    loose = member_sp < 0
    keep_members, keep_owner = masks.members[loose], masks.owner[loose]
    if (sp >= 0).any():
        n_sp = int(sp.max()) + 1
        total = np.bincount(sp[sp >= 0], minlength=n_sp)
        # (mask, superpoint) pairs with the number of the mask's vertices in the superpoint
        pair, inside = np.unique(masks.owner[~loose] * n_sp + member_sp[~loose], return_counts=True)
        pair_owner, pair_sp = np.divmod(pair, n_sp)
        won = inside > min_fraction * total[pair_sp]
        pair_owner, pair_sp = pair_owner[won], pair_sp[won]
        # every vertex of each won superpoint (in any order within a superpoint: from_pairs sorts them)
        by_sp = np.argsort(sp)
        start = np.searchsorted(sp[by_sp], pair_sp, side="left")
        count = total[pair_sp]
        offsets = np.repeat(start - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        keep_members = np.concatenate([keep_members, by_sp[offsets]])
        keep_owner = np.concatenate([keep_owner, np.repeat(pair_owner, count)])
    return MaskSet.from_pairs(keep_members, keep_owner, masks.num_masks, masks.num_points)
