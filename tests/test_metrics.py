"""The vectorized evaluator against a transcription of ScanNet's current evaluation scripts,
hand-built scenes that pin each rule of the scripts, and the benchmark-file reader."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minkseg.evaluation.evaluate import _clean, evaluate_dirs, missing_scenes_line
from minkseg.evaluation.metrics import (
    _IS_INSTANCE_CLASS,
    _IS_SEMANTIC_CLASS,
    OVERLAPS,
    UNKNOWN_SEMANTIC_ID,
    InstancePrediction,
    _is_member,
    _member_table,
    instance_ap,
    match_scene,
    semantic_confusion,
    summarize_instance,
    summarize_semantic,
)
from scannet_tools.io import IdsFileError, parse_ids, read_ids, write_ids
from scannet_tools.labels import INSTANCE_NYU40_IDS, SEMANTIC_NYU40_IDS

from . import official_eval_reference as ref

CLASSES = [3, 5, 7, 39]
CHAIR, TABLE = 5, 7
LI = {lab: i for i, lab in enumerate(INSTANCE_NYU40_IDS)}
I50, I25 = 0, len(OVERLAPS) - 1  # columns of the 0.50 and 0.25 thresholds


def random_scene(rng, n=3000):
    """Instances of a few classes (some under 100 vertices) among wall, floor, unannotated and other vertices."""
    gt = np.zeros(n, np.int64)
    start, inst = 0, 1
    while start < n - 50:
        size = int(rng.choice([30, 99, 100, 150, 300, 600]))
        kind = rng.random()
        if kind < 0.12:
            val = 0
        elif kind < 0.3:
            val = int(rng.choice([1, 2, 13, 40])) * 1000 + inst  # wall, floor, non-benchmark classes
        else:
            val = int(rng.choice(CLASSES)) * 1000 + inst
        gt[start:start + size] = val
        start += size
        inst += 1
    return gt[rng.permutation(n)]  # instances need not be contiguous in vertex order


def random_predictions(rng, gt):
    preds = []
    for i in [i for i in np.unique(gt) if i // 1000 in CLASSES]:
        for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 (duplicate) detections of this instance
            flip = (rng.random(len(gt)) < rng.choice([0.001, 0.05, 0.3])) & (rng.random(len(gt)) < 0.5)
            label = int(i // 1000) if rng.random() < 0.85 else int(rng.choice(CLASSES + [1, 13]))
            conf = float(rng.choice([0.3, 0.5, 0.9, rng.random()]))  # ties on purpose
            preds.append((((gt == i) ^ flip).astype(np.int64), label, conf))
    for _ in range(rng.integers(0, 5)):  # false positives: parts of any segment (walls too) plus noise
        part = (gt == rng.choice(np.unique(gt))) & (rng.random(len(gt)) < rng.random())
        mask = part | (rng.random(len(gt)) < rng.choice([0.0, 0.02, 0.1]))
        preds.append((mask.astype(np.int64), int(rng.choice(CLASSES)), float(rng.random())))
    return preds


def ours(scenes):
    return instance_ap([match_scene(gt, [InstancePrediction(m, lab, c) for m, lab, c in p]) for gt, p in scenes])


@pytest.mark.parametrize("seed", range(8))
def test_instance_ap_equals_official_scripts(seed):
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(3):
        gt = random_scene(rng)
        scenes.append((gt, random_predictions(rng, gt)))
    expected = ref.instance_ap(scenes, empty_ap=0.0)
    got = ours(scenes)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, equal_nan=True)
    assert np.isfinite(got).sum() >= 3 * len(OVERLAPS)  # several classes scored, not a table of NaN
    s, r = summarize_instance(got), ref.compute_averages(expected)
    np.testing.assert_allclose([s["mAP"], s["AP50"], s["AP25"]], [r["all_ap"], r["all_ap_50%"], r["all_ap_25%"]],
                               rtol=0, atol=1e-9)
    for name, v in s["per_class"].items():
        np.testing.assert_allclose([v["ap"], v["ap50"], v["ap25"]], list(r["classes"][name].values()),
                                   rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_semantic_iou_equals_official_script(seed):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(3):
        gt = rng.choice([0, 1, 2, 3, 5, 13, 39, 40], size=2000)
        pred = np.where(rng.random(2000) < 0.7, gt, rng.choice([-1, 0, 1, 2, 3, 5, 7, 13, 40, 41, 1000], size=2000))
        pairs.append((gt, pred))
    got = summarize_semantic(sum(semantic_confusion(g, p) for g, p in pairs))
    expected = ref.semantic_ious(pairs)
    np.testing.assert_allclose(list(got["per_class"].values()), expected, rtol=0, atol=1e-9, equal_nan=True)
    assert got["mIoU"] == pytest.approx(np.nanmean(expected), abs=1e-9)


# ---- hand-built scenes, one rule each ----

def scene(n=1000, **segments):
    """gt of n vertices; segments name=(start, stop, id)."""
    gt = np.zeros(n, np.int64)
    for start, stop, val in segments.values():
        gt[start:stop] = val
    return gt


def mask(n, *ranges):
    m = np.zeros(n, np.int64)
    for a, b in ranges:
        m[a:b] = 1
    return m


def ap_of(gt, preds, label=CHAIR):
    return ours([(gt, preds)])[LI[label]]


def test_prediction_needs_at_least_100_vertices():
    gt = scene(a=(0, 300, 5001))
    assert ap_of(gt, [(mask(1000, (0, 100)), CHAIR, 0.9)])[I25] == 1.0  # IoU 1/3: a match at 0.25
    assert ap_of(gt, [(mask(1000, (0, 99)), CHAIR, 0.9)])[I25] == 0.0  # dropped: ground truth only -> 0


def test_ground_truth_under_100_vertices_is_not_a_miss():
    perfect = [(mask(1000, (0, 300)), CHAIR, 0.9)]
    assert ap_of(scene(a=(0, 300, 5001), b=(300, 399, 5002)), perfect)[I50] == 1.0
    assert ap_of(scene(a=(0, 300, 5001), b=(300, 400, 5002)), perfect)[I50] == 0.5  # 100 vertices: a miss


def test_iou_must_be_strictly_above_the_threshold():
    gt = scene(a=(0, 200, 5001))
    exact = [(mask(1000, (0, 200), (300, 500)), CHAIR, 0.9)]  # IoU 200 / 400 = 0.5
    assert ap_of(gt, exact)[I50] == 0.0 and ap_of(gt, exact)[I25] == 1.0
    gt4 = scene(a=(0, 400, 5001))
    assert ap_of(gt4, [(mask(1000, (0, 100)), CHAIR, 0.9)])[I25] == 0.0  # IoU exactly 0.25
    assert ap_of(gt4, [(mask(1000, (0, 101)), CHAIR, 0.9)])[I25] == 1.0


# an unmatched chair prediction of 200 vertices: 120 on the segment below, 80 on nothing special
@pytest.mark.parametrize("other, ignored", [
    (1001, True),  # wall
    (2002, True),  # floor
    (0, True),  # unannotated
    (13003, True),  # a non-benchmark class (pillow)
    (40004, True),  # otherprop
    (7006, False),  # another benchmark class: a false positive
])
def test_unmatched_prediction_on_void_is_ignored(other, ignored):
    gt = scene(a=(0, 300, 5001), b=(300, 420, other), c=(420, 1000, 7009))
    preds = [(mask(1000, (0, 300)), CHAIR, 0.5), (mask(1000, (300, 420), (420, 500)), CHAIR, 0.9)]
    ap = ap_of(gt, preds)
    # share on void 120 / 200 = 0.6: ignored up to threshold 0.55, counted above it
    th_below = np.flatnonzero(OVERLAPS < 0.6)
    if ignored:
        assert (ap[th_below] == 1.0).all() and (ap[OVERLAPS > 0.61] < 1.0).all()
    else:
        assert (ap < 1.0).all()


def test_share_on_small_same_class_ground_truth_is_ignored():
    # 60 of the prediction's 220 vertices (27 %) lie on a 99-vertex instance, 160 on a table; IoU 60 / 259 < 0.25
    pred = [(mask(1000, (0, 300)), CHAIR, 0.5), (mask(1000, (300, 360), (500, 660)), CHAIR, 0.9)]
    small_chair = ap_of(scene(a=(0, 300, 5001), b=(300, 399, 5002), c=(399, 1000, 7003)), pred)
    small_table = ap_of(scene(a=(0, 300, 5001), b=(300, 399, 7002), c=(399, 1000, 7003)), pred)
    assert small_chair[I25] == 1.0 and small_chair[I50] < 1.0  # share of ignored ground truth 0.27 > 0.25
    assert small_table[I25] < 1.0  # a small instance of another class is not ignored


def test_ignored_share_equal_to_threshold_is_a_false_positive():
    gt = scene(a=(0, 300, 5001), b=(300, 400, 1002), c=(400, 1000, 7003))
    preds = [(mask(1000, (0, 300)), CHAIR, 0.5), (mask(1000, (300, 400), (400, 500)), CHAIR, 0.9)]
    assert ap_of(gt, preds)[I50] < 1.0  # 100 / 200 = 0.5 is not above 0.5
    preds[1] = (mask(1000, (300, 400), (400, 499)), CHAIR, 0.9)  # 100 / 199 > 0.5
    assert ap_of(gt, preds)[I50] == 1.0


def test_duplicate_is_a_false_positive_with_the_lower_score():
    gt = scene(a=(0, 300, 5001), b=(300, 600, 5002))
    b = (mask(1000, (300, 600)), CHAIR, 0.5)
    # instance a: two detections listed 0.2 then 0.9; a keeps 0.9, the duplicate scores 0.2, below b's 0.5
    assert ap_of(gt, [(mask(1000, (0, 300)), CHAIR, 0.2), (mask(1000, (0, 300)), CHAIR, 0.9), b])[I50] == 1.0
    # duplicates at 0.9 and 0.8: the false positive (0.8) ranks above b: AP = (2/3 + 1/2 + 1 + 1) / 4
    two = [(mask(1000, (0, 300)), CHAIR, 0.9), (mask(1000, (0, 300)), CHAIR, 0.8), b]
    assert ap_of(gt, two)[I50] == pytest.approx(19 / 24, abs=1e-12)


def test_ground_truth_takes_the_first_free_prediction_in_file_order():
    # at 0.25, p1 overlaps chairs a (IoU 0.57) and b (IoU 0.375), p2 is a copy of a; a comes first (lower id)
    gt = scene(a=(0, 200, 5001), b=(200, 400, 5002))
    p1 = (mask(1000, (0, 350)), CHAIR, 0.9)
    p2 = (mask(1000, (0, 200)), CHAIR, 0.8)
    # p1 first: a takes p1, p2 is a's duplicate (FP 0.8), b finds no free prediction: AP 0.5
    # p2 first: a takes p2, p1 is a's duplicate (FP 0.8) but stays free, so b takes it: AP 1
    assert ap_of(gt, [p1, p2])[I25] == 0.5 and ap_of(gt, [p2, p1])[I25] == 1.0
    assert ref.instance_ap([(gt, [p1, p2])])[LI[CHAIR], I25] == 0.5


def test_nan_and_zero_rules():
    gt = scene(a=(0, 300, 5001))
    ap = ours([(gt, [(mask(1000, (0, 300)), CHAIR, 0.9), (mask(1000, (400, 600)), TABLE, 0.9)])])
    assert (ap[LI[CHAIR]] == 1.0).all()
    assert np.isnan(ap[LI[TABLE]]).all()  # predictions but no ground truth: NaN, left out of the means
    assert np.isnan(ap[LI[3]]).all()  # neither
    assert (ours([(gt, [])])[LI[CHAIR]] == 0.0).all()  # ground truth only: 0


def test_class_with_nothing_to_score_gets_ap_zero_where_the_script_raises():
    # the only chair prediction lies on the wall (ignored); the chair is missed: the script's list is empty
    gt = scene(a=(0, 300, 5001), b=(300, 1000, 1002))
    preds = [(mask(1000, (300, 600)), CHAIR, 0.9)]
    with pytest.raises(IndexError):
        ref.instance_ap([(gt, preds)])
    assert (ap_of(gt, preds) == 0.0).all()


def test_ids_outside_the_lookup_table_take_the_sorting_path():
    rng = np.random.default_rng(3)
    gt = random_scene(rng, 1500)
    gt[:40] = -7  # not ScanNet ids, but the script would read them: void
    gt[40:200] = (1 << 22) + 5001  # label 4199: void too
    preds = random_predictions(rng, gt) + [(mask(1500, (0, 200), (200, 260)), CHAIR, 0.95)]
    np.testing.assert_allclose(ours([(gt, preds)]), ref.instance_ap([(gt, preds)], empty_ap=0.0), atol=1e-9,
                               equal_nan=True)


def test_prediction_of_a_non_instance_class_is_dropped():
    gt = scene(a=(0, 300, 5001))
    for label in (1, 2, 0, 13, 40):
        ap = ours([(gt, [(mask(1000, (0, 300)), CHAIR, 0.5), (mask(1000, (300, 700)), label, 0.9)])])
        assert (ap[LI[CHAIR]] == 1.0).all() and np.isnan(np.delete(ap, LI[CHAIR], 0)).all()


def test_semantic_rules_by_hand():
    gt = np.array([1, 1, 1, 5, 5, 0, 13, 40, 5])
    pred = np.array([1, 5, 0, 5, 13, 5, 5, 5, 40])
    per_class = summarize_semantic(semantic_confusion(gt, pred))["per_class"]
    # wall: TP 1, FN 2 (to chair and to 0); chair: TP 1, FP 1 (from wall), FN 2 (to 13 and 40); gt 0/13/40 ignored
    assert per_class["wall"] == pytest.approx(1 / 3) and per_class["chair"] == pytest.approx(1 / 4)
    assert np.isnan(per_class["floor"])
    np.testing.assert_allclose(list(per_class.values()), ref.semantic_ious([(gt, pred)]), equal_nan=True)


def test_averages_follow_the_official_script():
    ap = np.full((18, len(OVERLAPS)), np.nan)
    ap[0, :] = np.linspace(0.1, 1.0, len(OVERLAPS))
    ap[1, :] = 0.5
    s = summarize_instance(ap)
    rest = ~np.isclose(OVERLAPS, 0.25)
    assert s["mAP"] == pytest.approx(np.mean(np.concatenate([ap[0, rest], ap[1, rest]])))
    assert s["AP50"] == pytest.approx((ap[0, 0] + 0.5) / 2)
    assert s["AP25"] == pytest.approx((ap[0, -1] + 0.5) / 2)
    assert np.isnan(s["per_class"]["sofa"]["ap"])
    assert len(OVERLAPS) == 10 and OVERLAPS[8] == pytest.approx(0.9) and OVERLAPS[2] == 0.6000000000000001


def test_ground_truth_skips_a_taken_prediction_and_takes_the_next_free_one():
    # at 0.25, p1 (listed first) overlaps chairs a (IoU 0.57) and b (IoU 0.375) and goes to a;
    # b finds p1 taken, skips it and takes p2 (a copy of b): both found
    gt = scene(a=(0, 200, 5001), b=(200, 400, 5002))
    preds = [(mask(1000, (0, 350)), CHAIR, 0.9), (mask(1000, (200, 400)), CHAIR, 0.8)]
    assert ap_of(gt, preds)[I25] == 1.0 and ref.instance_ap([(gt, preds)])[LI[CHAIR], I25] == 1.0


def test_small_instance_of_another_class_adds_nothing_to_the_ignored_share():
    # the unmatched chair prediction has 100 of its 200 vertices on the wall: 0.5 is not above 0.5,
    # and the 50-vertex table elsewhere must not count towards the ignored share
    gt = scene(n=1100, a=(0, 300, 5001), b=(300, 400, 1002), c=(400, 1000, 7003), d=(1000, 1050, 7004))
    preds = [(mask(1100, (0, 300)), CHAIR, 0.5), (mask(1100, (300, 500)), CHAIR, 0.9)]
    assert ap_of(gt, preds)[I50] < 1.0 and ref.instance_ap([(gt, preds)])[LI[CHAIR], I50] < 1.0


def test_member_tables():
    table = _member_table((3, 5))
    assert table.dtype == bool and table.tolist() == [False, False, False, True, False, True, False]
    values = np.array([-5, 0, 1, 2, 3, 39, 40, 41, 1000])  # outside the table: clipped onto a False entry
    assert _is_member(values, _IS_INSTANCE_CLASS).tolist() == [False] * 4 + [True, True] + [False] * 3
    assert _is_member(values, _IS_SEMANTIC_CLASS).tolist() == [False] * 2 + [True] * 4 + [False] * 3


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64, np.float64])  # float: np.loadtxt
def test_match_scene_by_hand(dtype):
    # chair 5001 (150 vertices), chair 5002 (50), table 7003 (120), wall (80), unannotated (100)
    gt = np.concatenate([np.full(150, 5001), np.full(50, 5002), np.full(120, 7003), np.full(80, 1000),
                         np.zeros(100, np.int64)])[::-1].astype(dtype)  # any integer type, ids in any order
    on = {k: np.flatnonzero(gt == v) for k, v in {"c1": 5001, "c2": 5002, "t": 7003, "w": 1000, "u": 0}.items()}

    def pick(**counts):
        m = np.zeros(len(gt), bool)
        for k, n in counts.items():
            m[on[k][:n]] = True
        return m

    preds = [InstancePrediction(pick(c1=100, c2=30, t=20, w=10, u=5), CHAIR, 0.7),
             InstancePrediction(pick(t=99), TABLE, 0.9),  # 99 vertices: dropped
             InstancePrediction(pick(w=80, u=100), 1, 0.9),  # a wall: not an instance class, dropped
             InstancePrediction(pick(t=120, c1=30, w=30).astype(np.int8) * 3, TABLE, 0.25)]
    m = match_scene(gt, preds)
    assert m.gt_label.tolist() == [5, 5, 7] and m.gt_count.tolist() == [150, 50, 120]
    assert m.pred_label.tolist() == [5, 7] and m.pred_count.tolist() == [165, 180]
    assert m.pred_conf.tolist() == [0.7, 0.25] and m.pred_void.tolist() == [15, 30]
    assert m.inter.tolist() == [[100, 30, 0], [0, 0, 120]]  # other classes' instances: 0
    for a in (m.gt_label, m.gt_count, m.pred_label, m.pred_count, m.pred_void, m.inter):
        assert a.dtype == np.int64
    empty = match_scene(gt, preds[1:3])  # no prediction kept: empty integer arrays
    assert empty.inter.shape == (0, 3) and empty.pred_label.shape == (0,)
    for a in (empty.pred_label, empty.pred_count, empty.pred_void, empty.inter):
        assert a.dtype == np.int64
    assert empty.pred_conf.dtype == np.float64
    with pytest.raises(ValueError, match="^prediction mask has 519 values, the scene has 500 vertices$"):
        match_scene(gt, [InstancePrediction(np.ones(519), CHAIR, 0.5)])


def test_negative_and_empty_ground_truth():
    gt = scene(a=(0, 300, 5001), b=(300, 400, -1), c=(400, 1000, 7003))  # -1: not a ScanNet id, read as void
    preds = [(mask(1000, (0, 300)), CHAIR, 0.5), (mask(1000, (300, 400), (400, 500)), CHAIR, 0.9)]
    np.testing.assert_array_equal(ap_of(gt, preds), ref.instance_ap([(gt, preds)])[LI[CHAIR]])
    assert ap_of(gt, preds)[I50] < 1.0 and ap_of(gt, preds)[I25] == 1.0  # ignored up to the share 0.5
    m = match_scene(np.zeros(0, np.int64), [InstancePrediction(np.zeros(0), CHAIR, 0.5)])
    assert m.gt_label.shape == (0,) and m.inter.shape == (0, 0)
    ap = instance_ap([m])
    assert ap.shape == (18, len(OVERLAPS)) and np.isnan(ap).all()
    assert np.isnan(instance_ap([])).all() and instance_ap([]).shape == (18, len(OVERLAPS))


def test_semantic_confusion_by_hand():
    gt = np.array([1, 1, 5, 5, 5, 0, 40, 7])
    pred = np.array([1, 5, 5, 0, 41, 5, 5, 7])
    expected = np.zeros((41, 41), np.int64)
    for g, p in [(1, 1), (1, 5), (5, 5), (5, UNKNOWN_SEMANTIC_ID), (5, UNKNOWN_SEMANTIC_ID), (7, 7)]:
        expected[g, p] += 1  # ground truth 0 and 40 are not counted; predicted 0 and 41 are "unknown"
    for dtype in (np.int64, np.uint8, np.uint64):  # any integer type (uint8 ids times 41 must not wrap)
        np.testing.assert_array_equal(semantic_confusion(gt.astype(dtype), pred.astype(dtype)), expected)
    with pytest.raises(ValueError, match="^7 predicted values for 8 vertices$"):
        semantic_confusion(gt, pred[:7])


def test_semantic_iou_of_one_vertex_and_of_absent_classes_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an absent class is NaN, not a printed RuntimeWarning
        got = summarize_semantic(semantic_confusion(np.array([5, 1, 1]), np.array([5, 1, 2])))
        assert got["per_class"]["chair"] == 1.0 and got["per_class"]["wall"] == 0.5
        assert got["per_class"]["floor"] == 0.0  # predicted once, never in the ground truth
        assert np.isnan(got["per_class"]["table"]) and got["mIoU"] == pytest.approx(0.5)
        none = summarize_semantic(semantic_confusion(np.array([0, 13]), np.array([1, 5])))
        assert np.isnan(none["mIoU"]) and all(np.isnan(v) for v in none["per_class"].values())
        s = summarize_instance(np.full((18, len(OVERLAPS)), np.nan))
        assert np.isnan([s["mAP"], s["AP50"], s["AP25"]]).all()
        assert all(np.isnan(list(v.values())).all() for v in s["per_class"].values())


# ---- property test: any small scene ----

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # listed in the test extras; without it only this test is skipped
    hypothesis = None

if hypothesis is not None:
    @st.composite
    def small_scenes(draw):
        # unannotated, wall, floor, pillow, otherprop (void) and three instance classes, some under 100 vertices
        segments = draw(st.lists(st.tuples(st.sampled_from([0, 1, 2, 13, 40, 3, 5, 5, 7]),
                                           st.sampled_from([20, 99, 100, 101, 160, 250])), min_size=1, max_size=6))
        gt = np.concatenate([np.full(size, lab * 1000 + k + 1 if lab else 0, np.int64)
                             for k, (lab, size) in enumerate(segments)])
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        gt = gt[rng.permutation(len(gt))]
        ids = np.unique(gt)
        preds = []
        for _ in range(draw(st.integers(0, 6))):
            covered = np.isin(gt, rng.choice(ids, size=int(rng.integers(1, 3))))
            keep = rng.random(len(gt)) < draw(st.sampled_from([1.0, 0.9, 0.6, 0.3]))
            noise = rng.random(len(gt)) < draw(st.sampled_from([0.0, 0.01, 0.1]))
            value = draw(st.sampled_from([1, 2, -1]))  # any nonzero integer marks a member
            preds.append((((covered & keep) | noise) * value, draw(st.sampled_from([3, 5, 5, 7, 1, 40])),
                          draw(st.sampled_from([0.1, 0.5, 0.5, 0.9]))))
        return gt, preds

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.lists(small_scenes(), min_size=1, max_size=3))
    def test_property_metrics_equal_transcription(scenes):
        np.testing.assert_allclose(ours(scenes), ref.instance_ap(scenes, empty_ap=0.0), rtol=0, atol=1e-9,
                                   equal_nan=True)
else:
    @pytest.mark.skip(reason="needs hypothesis (pip install -e '.[test]')")
    def test_property_metrics_equal_transcription():
        pass


# ---- files ----

@pytest.mark.parametrize("data, expected", [
    (b"0\n1\n0\n", [0, 1, 0]),
    (b"0\n1\n7", [0, 1, 7]),  # no trailing newline
    (b"5012\r\n-3\r\n40\r\n", [5012, -3, 40]),
    (b"12\r34\r", [12, 34]),
    (b"", []),
    (b"0\n", [0]),
    (b" 7 \n+8\n-0009\n", [7, 8, -9]),  # blanks and signs: accepted like int()
    (b"123456789012345678\n-999999999999999999\n", [123456789012345678, -999999999999999999]),
])
def test_parse_ids(data, expected):
    got = parse_ids(data)
    assert got.dtype == np.int64 and got.tolist() == expected
    assert got.tolist() == np.array(data.splitlines(), dtype=np.int64).tolist()  # util_3d.load_ids


@pytest.mark.parametrize("data, line", [(b"0\n1\n0.5\n", 3), (b"1\n\n1\n", 2), (b"1\nx\n", 2), (b"1\n1_0\n", 2),
                                        (b"5-3\n", 1), (b"99999999999999999999\n", 1), (b"-\n", 1), (b"\n", 1),
                                        (b"\r\n5\n", 1), (b"5\n\n", 2)])
def test_parse_ids_names_the_bad_line(data, line, tmp_path):
    f = tmp_path / "m.txt"
    f.write_bytes(data)
    with pytest.raises(IdsFileError, match=rf"m\.txt: line {line} is not an integer"):
        read_ids(f)


def test_parse_ids_random_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 2, 5000), rng.integers(-50000, 50000, 5000), rng.integers(0, 41, 3)):
        write_ids(tmp_path / "x.txt", values)
        assert read_ids(tmp_path / "x.txt").tolist() == values.tolist()


def write_submission(root, scenes, sem=True):
    """scenes: {name: (gt, [(mask, label, conf)])} -> gt/ and sub/ folders in the benchmark layout."""
    for name, (gt, preds) in scenes.items():
        write_ids(root / "gt" / "instance" / f"{name}.txt", gt)
        write_ids(root / "gt" / "semantic" / f"{name}.txt", gt // 1000)
        if sem:
            write_ids(root / "sub" / "semantic" / f"{name}.txt", gt // 1000)
        lines = []
        for k, (m, lab, conf) in enumerate(preds):
            write_ids(root / "sub" / "instance" / "masks" / f"{name}_{k}.txt", m)
            lines.append(f"masks/{name}_{k}.txt {lab} {conf!r}\n")
        (root / "sub" / "instance" / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "sub" / "instance" / f"{name}.txt").write_text("".join(lines))


def write_random_submission(root: Path, seed: int, n_scenes: int, n_vertices: int) -> dict:
    """Random scenes and predictions written as ground truth + submission; returns them."""
    rng = np.random.default_rng(seed)
    scenes = {}
    for s in range(n_scenes):
        gt = random_scene(rng, n_vertices)
        scenes[f"scene{s:04d}_00"] = (gt, random_predictions(rng, gt))
    write_submission(root, scenes)
    return scenes

def test_files_equal_the_transcription_of_the_scripts(tmp_path):
    scenes = write_random_submission(tmp_path, seed=11, n_scenes=3, n_vertices=1500)
    got = evaluate_dirs(tmp_path / "sub", tmp_path / "gt", ap_matrix=True, workers=2)
    matches = {}
    for name in scenes:
        info = ref.read_instance_prediction_file(str(tmp_path / "sub" / "instance" / f"{name}.txt"),
                                                 str(tmp_path / "sub" / "instance"))
        gt2pred, pred2gt = ref.assign_instances_for_scan(ref.load_ids(tmp_path / "gt" / "instance" / f"{name}.txt"),
                                                         info, ref.load_ids)
        matches[name] = {"gt": gt2pred, "pred": pred2gt}
    np.testing.assert_allclose(got["ap"], ref.evaluate_matches(matches, empty_ap=0.0), atol=1e-9, equal_nan=True)
    assert got["semantic"]["mIoU"] == 1.0 and "missing_scenes" not in got


def test_missing_scenes_are_reported(tmp_path, capsys):
    from minkseg.cli import main

    gt = scene(a=(0, 300, 5001))
    write_submission(tmp_path, {f"scene{s:04d}_00": (gt, [(mask(1000, (0, 300)), CHAIR, 0.9)]) for s in range(5)})
    for s in (1, 3, 4):
        (tmp_path / "sub" / "instance" / f"scene{s:04d}_00.txt").unlink()
    (tmp_path / "sub" / "semantic" / "scene0002_00.txt").unlink()
    got = evaluate_dirs(tmp_path / "sub", tmp_path / "gt")
    assert got["missing_scenes"] == {"instance": ["scene0001_00", "scene0003_00", "scene0004_00"],
                                     "semantic": ["scene0002_00"]}
    line = missing_scenes_line(got, shown=2)
    assert "3 instance (scene0001_00, scene0003_00, ...)" in line and "1 semantic (scene0002_00)" in line
    assert main(["evaluate", "--pred", str(tmp_path / "sub"), "--gt", str(tmp_path / "gt"),
                 "--json", str(tmp_path / "m.json")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ground-truth scenes without predictions" in err
    assert '"scene0004_00"' in (tmp_path / "m.json").read_text()


def test_non_integer_mask_line_is_one_error_line(tmp_path, capsys):
    from minkseg.cli import main

    gt = scene(a=(0, 300, 5001))
    write_submission(tmp_path, {"scene0000_00": (gt, [(mask(1000, (0, 300)), CHAIR, 0.9)])})
    f = tmp_path / "sub" / "instance" / "masks" / "scene0000_00_0.txt"
    f.write_text("1\n" * 41 + "1.0\n" + "0\n" * 958)
    assert main(["evaluate", "--pred", str(tmp_path / "sub"), "--gt", str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{f}: line 42 is not an integer" in err


def test_evaluate_from_files_imports_neither_torch_nor_minkowskiengine(tmp_path):
    write_random_submission(tmp_path, seed=5, n_scenes=4, n_vertices=800)
    serial = evaluate_dirs(tmp_path / "sub", tmp_path / "gt")
    args = ["evaluate", "--pred", str(tmp_path / "sub"), "--gt", str(tmp_path / "gt"), "--workers", "2",
            "--json", str(tmp_path / "m.json")]
    code = (f"import sys; from minkseg.cli import main; assert main({args!r}) == 0; "
            "print(sorted(m for m in ('torch', 'MinkowskiEngine', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True).stdout
    assert out.strip().endswith("[]")
    forked = json.loads((tmp_path / "m.json").read_text())  # scenes read in 2 forked processes
    assert forked["instance"]["per_class"] == json.loads(json.dumps(_clean(serial)))["instance"]["per_class"]
    assert forked["semantic"]["mIoU"] == serial["semantic"]["mIoU"]


def test_semantic_ids_are_the_benchmark_classes():
    assert list(ref.SEMANTIC_VALID_IDS) == list(SEMANTIC_NYU40_IDS)
    assert list(ref.VALID_CLASS_IDS) == list(INSTANCE_NYU40_IDS)


# ---- validate-submission ----

def _scans_with_meshes(root, counts):
    for scene, n in counts.items():
        d = root / "scans" / scene
        d.mkdir(parents=True)
        (d / f"{scene}_vh_clean_2.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex %d\nend_header\n" % n)
    return root / "scans"


def test_validate_warns_about_label_0_and_names_non_integer_mask_lines(tmp_path):
    from minkseg.evaluation.submission import validate_submission

    gt = scene(n=200, a=(0, 150, 5001))
    write_submission(tmp_path, {"scene0000_00": (gt, [(mask(200, (0, 150)), CHAIR, 0.9)])})
    sem = tmp_path / "sub" / "semantic" / "scene0000_00.txt"
    write_ids(sem, np.r_[np.full(150, 5), np.zeros(50, int)])
    report = validate_submission(tmp_path / "sub", {"scene0000_00": 200})
    assert report.ok and report.masks == 1
    assert len(report.warnings) == 1 and "50 vertices have label 0" in report.warnings[0]
    bad = tmp_path / "sub" / "instance" / "masks" / "scene0000_00_0.txt"
    bad.write_text("1\n" * 7 + "yes\n" + "0\n" * 192)
    report = validate_submission(tmp_path / "sub", {"scene0000_00": 200})
    assert report.problems == [f"{bad}: line 8 is not an integer: 'yes'"]
    bad.write_text("1\n" * 150 + "0\n" * 49)
    assert validate_submission(tmp_path / "sub", {"scene0000_00": 200}).problems == [
        f"{bad}: 199 lines, the mesh has 200 vertices"]


def test_validate_submission_cli_names_scenes_missing_under_scans(tmp_path, capsys):
    from minkseg.cli import main

    gt = scene(n=200, a=(0, 150, 5001))
    write_submission(tmp_path, {"scene0000_00": (gt, [(mask(200, (0, 150)), CHAIR, 0.9)])})
    scans = _scans_with_meshes(tmp_path, {"scene0000_00": 200})
    args = ["validate-submission", str(tmp_path / "sub"), "--scans", str(scans)]
    assert main([*args, "--split", "scene0000_00"]) == 0
    assert "OK: 1 scenes, 1 masks" in capsys.readouterr().out
    assert main([*args, "--split", "scene0000_00,scene0707_00,scene0708_00"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 of the 3 scenes" in err and "scene0707_00, scene0708_00" in err
