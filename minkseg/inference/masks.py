"""Sets of possibly overlapping masks over N points (voxels or vertices), stored sparsely,
and the mask non-maximum suppression that merges overlapping proposals.

A :class:`MaskSet` holds two aligned vectors, ``members`` (point indices) and ``owner``
(mask index), sorted by mask and then point, so hundreds of masks over a few hundred
thousand vertices cost memory in proportion to their total size, not K x N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse


@dataclass(frozen=True)
class MaskSet:
    members: np.ndarray  # (V,) int64 point indices, grouped by mask, ascending within a mask
    owner: np.ndarray  # (V,) int64 mask index 0..K-1 of each member, ascending
    num_masks: int
    num_points: int

    @classmethod
    def from_pairs(cls, members: np.ndarray, owner: np.ndarray, num_masks: int, num_points: int) -> MaskSet:
        """Masks from (point, mask) pairs in any order; repeated pairs count once."""
        members, owner = np.asarray(members, np.int64), np.asarray(owner, np.int64)
        # without points there are no pairs, and divmod of the empty key by 0 is empty
        owner, members = np.divmod(np.unique(owner * num_points + members), num_points)
        return cls(members, owner, num_masks, num_points)

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_masks: int) -> MaskSet:
        """Disjoint masks from a per-point index (0..K-1, negative: in no mask)."""
        labels = np.asarray(labels, np.int64)
        members = np.flatnonzero(labels >= 0)
        order = np.argsort(labels[members], kind="stable")
        return cls(members[order], labels[members][order], num_masks, len(labels))

    def sizes(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=self.num_masks)

    def mask(self, k: int) -> np.ndarray:
        """(N,) bool mask of mask ``k``."""
        lo, hi = np.searchsorted(self.owner, [k, k + 1])
        out = np.zeros(self.num_points, bool)
        out[self.members[lo:hi]] = True
        return out

    def select(self, keep: np.ndarray) -> MaskSet:
        """The masks ``keep`` (indices, in that order; repeats allowed), renumbered 0..len(keep)-1."""
        keep = np.asarray(keep, np.int64)
        size = self.sizes()
        start, count = (np.cumsum(size) - size)[keep], size[keep]
        rows = np.repeat(start - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        return MaskSet(self.members[rows], np.repeat(np.arange(len(keep)), count), len(keep), self.num_points)

    def expand(self, point_of: np.ndarray) -> MaskSet:
        """Masks over the points of a finer set, each of which maps to one point of this one
        (e.g. vertices -> their voxel via ``point_of = inverse``): a fine point is in a mask
        exactly when its coarse point is. Every fine point must map to one (``point_of >= 0``)."""
        point_of = np.asarray(point_of, np.int64)
        by_coarse = np.argsort(point_of)  # in any order within a coarse point: from_pairs sorts them
        fine_count = np.bincount(point_of, minlength=self.num_points)
        start, count = (np.cumsum(fine_count) - fine_count)[self.members], fine_count[self.members]
        rows = np.repeat(start - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        return MaskSet.from_pairs(by_coarse[rows], np.repeat(self.owner, count), self.num_masks, len(point_of))


def mask_iou(masks: MaskSet) -> np.ndarray:
    """(K, K) intersection over union |A n B| / |A u B| of every pair of masks (0 for two empty masks)."""
    k, n = masks.num_masks, masks.num_points
    a = scipy.sparse.csr_matrix((np.ones(len(masks.members)), (masks.owner, masks.members)), shape=(k, n))
    inter = (a @ a.T).toarray()
    size = masks.sizes()
    union = size[:, None] + size[None, :] - inter
    return inter / np.maximum(union, 1)  # a union of 0 has an intersection of 0


def mask_nms(iou: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy mask non-maximum suppression: indices of the kept masks, best score first.

    Masks are visited in descending score (ties: lower index first); a mask is kept unless
    its IoU with an already kept mask is *greater than* ``iou_threshold`` (a pair at exactly
    the threshold both stay), so ``iou_threshold = 1`` keeps every mask.
    """
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(scores), bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.asarray(kept, np.int64)


def paint_by_confidence(num_vertices: int, masks: list[np.ndarray], confidence) -> np.ndarray:
    """(N,) index of the most confident mask covering each point, -1 where none does.

    Masks may overlap (several taus, class hypotheses, submissions); where they do, the more
    confident one wins (ties: the later mask). Used for pseudo labels, which must be disjoint,
    and for pictures of overlapping predictions.
    """
    out = np.full(num_vertices, -1, np.int64)
    # fromiter: any iterable of numbers, e.g. a generator or a tensor of any dtype and device
    for k in np.argsort(np.fromiter(confidence, np.float64), kind="stable"):  # most confident painted last
        out[np.asarray(masks[k]) != 0] = k
    return out
