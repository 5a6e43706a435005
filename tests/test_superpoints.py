"""Masks snapped to superpoints (inference.superpoints): the majority rule on hand-built cases,
one mask and many at once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minkseg.inference.masks import MaskSet
from minkseg.inference.superpoints import snap_masks_to_superpoints, snap_to_superpoints


def snap_set(masks: list[list[int]], superpoint: list[int], **kw) -> list[list[int]]:
    """snap_masks_to_superpoints on dense 0/1 masks, answered as dense 0/1 masks."""
    n = len(superpoint)
    dense = np.asarray(masks, bool).reshape(len(masks), n)
    owner, members = np.nonzero(dense)
    got = snap_masks_to_superpoints(MaskSet.from_pairs(members, owner, len(masks), n),
                                    np.asarray(superpoint), **kw)
    assert got.num_masks == len(masks) and got.num_points == n
    return [got.mask(k).astype(int).tolist() for k in range(len(masks))]


def both(mask: list[int], superpoint: list[int], **kw) -> list[int]:
    """One mask snapped by both functions, which must agree."""
    one = snap_to_superpoints(np.asarray(mask, bool), np.asarray(superpoint), **kw).astype(int).tolist()
    assert snap_set([mask], superpoint, **kw) == [one]
    return one


def test_superpoint_zero_and_single_vertex_superpoints():
    # superpoint 0 counts like any other; a one-vertex superpoint follows its vertex
    assert both([1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 2, 3]) == [1, 1, 1, 0, 1, 0]
    assert both([0, 0, 1, 0], [0, 0, 0, -1]) == [0, 0, 0, 0]  # 1 of 3: out
    # only superpoint 0 and vertices without one
    assert both([1, 1, 0, 1, 0], [0, 0, 0, -1, -1]) == [1, 1, 1, 1, 0]


def test_the_highest_superpoints_may_be_untouched_by_the_mask():
    assert both([1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 2, 2, 3, 3]) == [1, 1, 0, 0, 0, 0, 0]
    assert both([0, 0, 0, 0, 0, 1, 1], [3, 3, 2, 1, 1, 0, 0]) == [0, 0, 0, 0, 0, 1, 1]
    # superpoint ids with gaps (ids 1 and 2 unused)
    assert both([1, 0, 0, 1], [0, 3, 3, 3]) == [1, 0, 0, 0]


def test_min_fraction_is_a_strict_majority_by_default_and_adjustable():
    mask, sp = [1, 1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]  # 2 of 4, 1 of 3
    assert both(mask, sp) == [0, 0, 0, 0, 0, 0, 0]
    assert both(mask, sp, min_fraction=0.49) == [1, 1, 1, 1, 0, 0, 0]
    assert both(mask, sp, min_fraction=0.3) == [1, 1, 1, 1, 1, 1, 1]
    assert both([1, 0, 0], [0, 0, 0], min_fraction=1 / 3) == [0, 0, 0]  # exactly the fraction: out
    assert both([1, 1, 1], [0, 0, 0], min_fraction=0.99) == [1, 1, 1]


def test_without_superpoints_masks_are_unchanged_copies():
    mask = np.array([True, False, True])
    out = snap_to_superpoints(mask, np.full(3, -1))
    assert out.tolist() == [True, False, True] and out is not mask
    out[0] = False
    assert mask[0]  # the caller's mask is not touched
    assert snap_to_superpoints([1, 0, 2], [-1, -1, -1]).dtype == bool
    assert snap_set([[1, 0, 1], [0, 0, 0], [1, 1, 1]], [-1, -1, -1]) == [[1, 0, 1], [0, 0, 0], [1, 1, 1]]


def test_many_masks_overlap_stay_apart_and_may_come_out_empty():
    sp = [0, 0, 0, 1, 1, 2, 2, 2, -1, -1]
    masks = [[1, 1, 0, 1, 0, 0, 0, 0, 1, 0],  # sp 0 won, sp 1 half: out, loose vertex 8 kept
             [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],  # sp 1 all, sp 2 two of three
             [0, 0, 1, 0, 0, 1, 0, 0, 0, 1],  # nothing by majority: only its loose vertex 9
             [0, 0, 0, 0, 0, 0, 0, 1, 0, 0],  # one of three: empty
             [0] * 10]  # empty stays empty
    assert snap_set(masks, sp) == [[1, 1, 1, 0, 0, 0, 0, 0, 1, 0],
                                   [0, 0, 0, 1, 1, 1, 1, 1, 0, 0],
                                   [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                                   [0] * 10,
                                   [0] * 10]
    assert snap_set(masks, sp, min_fraction=0.3)[2] == [1, 1, 1, 0, 0, 1, 1, 1, 0, 1]


def test_superpoint_ids_are_taken_as_integers_whatever_their_dtype():
    mask, sp = [1, 1, 0, 0, 1], [0.0, 0.0, 0.0, -1.0, -1.0]  # e.g. read back from a float array
    assert both(mask, sp) == [1, 1, 1, 0, 1]
    assert both(mask, np.array([0, 0, 0, -1, -1], np.int16)) == [1, 1, 1, 0, 1]


def test_superpoints_must_cover_the_masks_points():
    masks = MaskSet.from_labels(np.array([0, 0, 1]), 2)
    with pytest.raises(ValueError, match=r"^superpoint array has 4 vertices, the masks 3$"):
        snap_masks_to_superpoints(masks, np.zeros(4, np.int64))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), k=st.integers(0, 4))
def test_snapping_follows_the_majority_rule_on_random_masks(data, n, k):
    sp = data.draw(st.lists(st.integers(-1, 5), min_size=n, max_size=n))
    masks = data.draw(st.lists(st.lists(st.integers(0, 1), min_size=n, max_size=n), min_size=k, max_size=k))
    fraction = data.draw(st.sampled_from([0.0, 0.25, 0.5, 2 / 3]))
    want = []
    for mask in masks:  # the rule, vertex by vertex
        row = []
        for v in range(n):
            if sp[v] < 0:
                row.append(mask[v])
            else:
                same = [u for u in range(n) if sp[u] == sp[v]]
                row.append(int(sum(mask[u] for u in same) > fraction * len(same)))
        want.append(row)
    assert snap_set(masks, sp, min_fraction=fraction) == want
    for mask, row in zip(masks, want):
        assert snap_to_superpoints(np.asarray(mask, bool), np.asarray(sp), fraction).astype(int).tolist() == row
