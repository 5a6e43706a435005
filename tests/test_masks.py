"""Sparse mask sets, mask IoU, mask NMS and painting by confidence (inference.masks) on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minkseg.inference.masks import MaskSet, mask_iou, mask_nms, paint_by_confidence


def as_lists(masks: MaskSet) -> list[list[int]]:
    """The members of every mask."""
    return [np.flatnonzero(masks.mask(k)).tolist() for k in range(masks.num_masks)]


def test_from_pairs_sorts_by_mask_then_point_and_drops_repeats():
    ms = MaskSet.from_pairs(np.array([4, 1, 0, 4, 2, 1]), np.array([0, 2, 2, 0, 0, 0]), 4, 5)
    assert ms.members.tolist() == [1, 2, 4, 0, 1] and ms.owner.tolist() == [0, 0, 0, 2, 2]
    assert ms.members.dtype == ms.owner.dtype == np.int64
    assert (ms.num_masks, ms.num_points) == (4, 5)
    assert ms.sizes().tolist() == [3, 0, 2, 0]  # trailing empty masks counted too
    assert as_lists(ms) == [[1, 2, 4], [], [0, 1], []]
    assert MaskSet.from_pairs([3], [1], 2, 4).members.tolist() == [3]  # plain lists are fine


def test_a_scene_without_points_or_masks():
    ms = MaskSet.from_pairs(np.zeros(0), np.zeros(0), 2, 0)
    assert ms.members.tolist() == [] and ms.owner.tolist() == [] and ms.sizes().tolist() == [0, 0]
    assert ms.mask(1).shape == (0,)
    none = MaskSet.from_pairs(np.zeros(0), np.zeros(0), 0, 3)
    assert none.sizes().tolist() == [] and mask_iou(none).shape == (0, 0)
    assert none.select(np.zeros(0, np.int64)).num_masks == 0


def test_from_labels_makes_disjoint_masks_with_points_ascending():
    labels = np.array([1, -1, 0, 1, 2, 0, -3, 1])
    ms = MaskSet.from_labels(labels, 4)
    assert ms.members.tolist() == [2, 5, 0, 3, 7, 4] and ms.owner.tolist() == [0, 0, 1, 1, 1, 2]
    assert ms.num_points == 8 and ms.sizes().tolist() == [2, 3, 1, 0]
    # many points per mask: each mask's points stay ascending (a stable sort)
    labels = np.arange(200) % 3
    ms = MaskSet.from_labels(labels, 3)
    assert ms.members.tolist() == [p for k in range(3) for p in range(200) if p % 3 == k]
    # labels are indices whatever their dtype, e.g. floats read back from a file
    ms = MaskSet.from_labels(np.array([1.0, -1.0, 0.0, 1.0]), 2)
    assert ms.owner.dtype == np.int64 and ms.sizes().tolist() == [1, 2] and as_lists(ms) == [[2], [0, 3]]


def test_mask_is_a_boolean_vector_of_one_mask():
    ms = MaskSet.from_labels(np.array([0, 1, 1, 2, -1]), 3)
    m = ms.mask(1)
    assert m.dtype == bool and m.tolist() == [False, True, True, False, False]
    assert ms.mask(0).tolist() == [True, False, False, False, False]
    assert ms.mask(2).tolist() == [False, False, False, True, False]


def test_select_renumbers_reorders_and_repeats():
    ms = MaskSet.from_pairs([0, 1, 2, 3, 4, 5], [0, 0, 1, 3, 3, 3], 4, 6)
    sel = ms.select(np.array([3, 0, 3, 1]))
    assert as_lists(sel) == [[3, 4, 5], [0, 1], [3, 4, 5], [2]]
    assert sel.owner.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3] and sel.num_points == 6
    assert as_lists(ms.select([2, 3])) == [[], [3, 4, 5]]
    assert ms.select(np.zeros(0, np.int64)).num_masks == 0
    nothing = ms.select([])  # an empty list of indices too
    assert nothing.num_masks == 0 and nothing.members.tolist() == [] and nothing.sizes().tolist() == []


def test_expand_maps_masks_to_the_finer_points():
    ms = MaskSet.from_pairs([0, 2, 1], [0, 0, 1], 3, 3)  # masks over 3 voxels: {0, 2}, {1}, {}
    point_of = np.array([2, 0, 0, 1, 2, 2, 1])  # 7 vertices
    fine = ms.expand(point_of)
    assert fine.num_points == 7 and fine.num_masks == 3
    assert as_lists(fine) == [[0, 1, 2, 4, 5], [3, 6], []]
    # a voxel no vertex maps to contributes nothing, the last one included
    assert as_lists(MaskSet.from_pairs([1], [0], 1, 3).expand(np.array([0, 2]))) == [[]]
    assert as_lists(MaskSet.from_pairs([1, 2], [0, 0], 1, 3).expand(np.array([1, 0, 1]))) == [[0, 2]]
    assert as_lists(ms.expand(np.array([1.0, 2.0]))) == [[1], [0], []]  # indices of any dtype


def test_mask_iou_by_hand():
    ms = MaskSet.from_pairs([0, 1, 2, 1, 2, 3, 4, 5, 5], [0, 0, 0, 1, 1, 1, 3, 3, 5], 6, 6)  # 2 and 4 empty
    # {0,1,2} vs {1,2,3}: 2 / 4; disjoint: 0; {4,5} vs {5}: 1 / 2; an empty mask: 0 with anything, itself included
    want = np.array([[1, 0.5, 0, 0, 0, 0],
                     [0.5, 1, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 1, 0, 0.5],
                     [0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0.5, 0, 1]])
    with np.errstate(all="raise"):
        got = mask_iou(ms)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_nms_ties_keep_the_lower_index_first_among_many():
    n = 60  # many equal scores among others: an unstable sort would reorder them
    iou = np.eye(n)
    scores = np.array([0.25, 0.5, 0.75])[np.arange(n) * 7 % 3]
    assert mask_nms(iou, scores, 0.5).tolist() == [i for s in (0.75, 0.5, 0.25) for i in range(n) if scores[i] == s]
    assert mask_nms(iou, np.full(n, 0.3), 0.5).tolist() == list(range(n))
    # every mask a duplicate of every other: only the first of the equal best survives
    assert mask_nms(np.ones((n, n)), np.full(n, 0.3), 0.5).tolist() == [0]


def test_nms_of_nothing_and_suppressed_masks_do_not_suppress():
    kept = mask_nms(np.zeros((0, 0)), np.zeros(0), 0.5)
    assert kept.dtype == np.int64 and kept.tolist() == []
    # a overlaps b, b overlaps c, a and c do not: b is suppressed by a and so cannot suppress c
    iou = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.6], [0.0, 0.6, 1.0]])
    assert mask_nms(iou, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert mask_nms(iou, [0.1, 0.8, 0.7], 0.5).tolist() == [1]  # a list of scores is fine


def test_paint_by_confidence_the_most_confident_wins_and_ties_go_to_the_later_mask():
    three = [np.array([1, 1, 0, 0, 0]), np.array([0, 1, 1, 0, 0], bool), np.array([0, 0, 1, 1, 0])]
    got = paint_by_confidence(5, three, [0.5, 0.9, 0.1])
    assert got.dtype == np.int64 and got.tolist() == [0, 1, 1, 2, -1]
    assert paint_by_confidence(5, three, (x for x in [0.5, 0.5, 0.5])).tolist() == [0, 1, 2, 2, -1]
    n = 40  # many equal confidences: the last mask wins everywhere
    assert paint_by_confidence(3, [np.ones(3)] * n, [0.2] * n).tolist() == [n - 1] * 3
    # one point per mask, pairs of masks 2 j, 2 j + 1 over point j, confidences tied in threes among others
    conf = np.array([0.1, 0.2, 0.3])[np.arange(2 * n) // 3 % 3]
    masks = [np.arange(n) == k // 2 for k in range(2 * n)]
    want = [2 * j + 1 if conf[2 * j + 1] >= conf[2 * j] else 2 * j for j in range(n)]
    assert paint_by_confidence(n, masks, conf).tolist() == want
    # confidences as a tensor of a dtype NumPy does not have
    bf16 = torch.tensor([0.5, 0.25, 0.75], dtype=torch.bfloat16)
    assert paint_by_confidence(5, three, bf16).tolist() == [0, 0, 2, 2, -1]
    assert paint_by_confidence(3, [], []).tolist() == [-1, -1, -1]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), k=st.integers(0, 5), n=st.integers(1, 12))
def test_mask_set_operations_match_dense_masks(data, k, n):
    dense = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=k,
                                       max_size=k)), bool).reshape(k, n)
    owner, members = np.nonzero(dense)
    perm = data.draw(st.permutations(range(len(members))))
    ms = MaskSet.from_pairs(members[list(perm)], owner[list(perm)], k, n)
    assert [ms.mask(i).tolist() for i in range(k)] == dense.tolist()
    assert ms.sizes().tolist() == dense.sum(1).tolist()
    keep = np.array(data.draw(st.lists(st.integers(0, max(k - 1, 0)), max_size=6 if k else 0)), np.int64)
    assert [ms.select(keep).mask(i).tolist() for i in range(len(keep))] == dense[keep].tolist()
    fine = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=15)), np.int64)
    assert [ms.expand(fine).mask(i).tolist() for i in range(k)] == dense[:, fine].tolist()
    iou = mask_iou(ms)
    for a in range(k):
        for b in range(k):
            union = (dense[a] | dense[b]).sum()
            want = (dense[a] & dense[b]).sum() / union if union else 0.0
            assert iou[a, b] == pytest.approx(want, abs=1e-12)
