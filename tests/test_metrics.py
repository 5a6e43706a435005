"""The vectorized evaluator against a literal transcription of the official scripts' rules."""

import numpy as np
import pytest

from minkseg.metrics import (
    OVERLAPS,
    InstancePrediction,
    instance_ap,
    match_scene,
    semantic_confusion,
    summarize_instance,
    summarize_semantic,
)

from . import official_eval_reference as ref

CLASSES = [3, 5, 7, 39]


def random_scene(rng, n=3000):
    """Ground truth with instances of a few classes (some tiny), wall/floor and unannotated vertices."""
    gt = np.zeros(n, np.int64)
    start = 0
    inst = 1
    while start < n - 50:
        size = int(rng.choice([30, 150, 300, 600]))
        kind = rng.random()
        if kind < 0.15:
            val = 0
        elif kind < 0.25:
            val = 1 * 1000 + inst  # wall: not an instance class
        else:
            val = int(rng.choice(CLASSES)) * 1000 + inst
        gt[start:start + size] = val
        start += size
        inst += 1
    perm = rng.permutation(n)  # instances need not be contiguous in vertex order
    return gt[perm]


def random_predictions(rng, gt):
    preds = []
    ids = [i for i in np.unique(gt) if i >= 3000]
    for i in ids:
        for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 (duplicate) detections of this instance
            mask = gt == i
            flip = rng.random(len(gt)) < rng.choice([0.001, 0.02, 0.2])
            mask = mask ^ (flip & (rng.random(len(gt)) < 0.3))
            label = i // 1000 if rng.random() < 0.85 else int(rng.choice(CLASSES + [1, 13]))
            conf = float(rng.choice([0.3, 0.5, 0.9, rng.random()]))  # ties on purpose
            preds.append((mask.astype(np.int64), label, conf))
    for _ in range(rng.integers(0, 4)):  # pure false positives, some on unannotated vertices
        mask = rng.random(len(gt)) < rng.choice([0.02, 0.1])
        preds.append((mask.astype(np.int64), int(rng.choice(CLASSES)), float(rng.random())))
    return preds


@pytest.mark.parametrize("seed", range(6))
def test_instance_ap_equals_official_rules(seed):
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(3):
        gt = random_scene(rng)
        scenes.append((gt, random_predictions(rng, gt)))
    expected = ref.instance_ap(scenes)
    ours = instance_ap([match_scene(gt, [InstancePrediction(m, lab, c) for m, lab, c in p]) for gt, p in scenes])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12, equal_nan=True)
    s = summarize_instance(ours)
    assert 0 <= s["AP50"] <= 1 and 0 <= s["mAP"] <= s["AP25"] + 1e-12


def test_strict_iou_threshold_and_min_region():
    gt = np.zeros(1000, np.int64)
    gt[:200] = 5001
    half = np.zeros(1000, bool)
    half[:100] = True
    half[200:300] = True  # IoU = 100 / 300 < 0.5 ; exactly 0.5 needs IoU > 0.5 to match
    exact = np.zeros(1000, bool)
    exact[:200] = True
    exact[200:400] = True  # IoU = 200 / 400 = 0.5 exactly: not a match at 0.5
    ap = instance_ap([match_scene(gt, [InstancePrediction(exact, 5, 0.9)])])
    li = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39].index(5)
    assert ap[li, 0] == 0.0 and ap[li, -1] == 1.0  # 0.50: miss; 0.25: hit
    small = np.zeros(1000, bool)
    small[:99] = True  # under 100 vertices: dropped, class has no prediction -> AP 0
    assert instance_ap([match_scene(gt, [InstancePrediction(small, 5, 0.9)])])[li, -1] == 0.0
    assert np.isnan(instance_ap([match_scene(gt, [])])[0, 0])  # cabinet: no gt, no pred -> NaN


def test_prediction_on_ignored_ground_truth_is_not_a_false_positive():
    gt = np.zeros(1000, np.int64)
    gt[:300] = 5001
    gt[300:350] = 5002  # a ground-truth chair under 100 vertices: ignored
    good = np.zeros(1000, bool)
    good[:300] = True
    on_small = np.zeros(1000, bool)
    on_small[300:350] = True
    on_small[350:410] = True  # 50 of 110 vertices on the ignored instance: 45 %
    li = 2  # chair
    ap = instance_ap([match_scene(gt, [InstancePrediction(good, 5, 0.5), InstancePrediction(on_small, 5, 0.9)])])
    # at 0.25 the 45 % share exceeds the threshold: ignored, AP stays 1; at 0.5 it is a false positive
    assert ap[li, -1] == 1.0 and ap[li, 0] < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_semantic_iou_equals_official_rules(seed):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(3):
        gt = rng.choice([0, 1, 2, 3, 5, 13, 39, 40], size=2000)
        pred = np.where(rng.random(2000) < 0.7, gt, rng.choice([1, 2, 3, 5, 7, 0], size=2000))
        pairs.append((gt, pred))
    conf = sum(semantic_confusion(g, p) for g, p in pairs)
    ours = summarize_semantic(conf)
    expected = ref.semantic_ious(pairs)
    np.testing.assert_allclose(list(ours["per_class"].values()), expected, equal_nan=True)
    assert ours["mIoU"] == pytest.approx(np.nanmean(expected))


def test_duplicate_detection_is_a_false_positive_with_the_lower_score():
    gt = np.zeros(1000, np.int64)
    gt[:400] = 7001  # one table
    mask = np.zeros(1000, bool)
    mask[:400] = True
    li = 4  # table
    one = instance_ap([match_scene(gt, [InstancePrediction(mask, 7, 0.9)])])
    # a second, lower-scored copy: precision drops after recall is reached, AP stays 1
    low = instance_ap([match_scene(gt, [InstancePrediction(mask, 7, 0.9), InstancePrediction(mask, 7, 0.1)])])
    # a higher-scored copy listed second: the ground truth keeps the max score, the other copy is the FP
    high = instance_ap([match_scene(gt, [InstancePrediction(mask, 7, 0.1), InstancePrediction(mask, 7, 0.9)])])
    assert one[li, 0] == 1.0 and low[li, 0] == 1.0 and high[li, 0] == 1.0
    # but a higher-scored false positive elsewhere ranks first and costs precision
    fp = np.zeros(1000, bool)
    fp[500:700] = True
    worse = instance_ap([match_scene(gt, [InstancePrediction(mask, 7, 0.5), InstancePrediction(fp, 7, 0.9)])])
    assert worse[li, 0] < 1.0


def test_averages_follow_the_official_script():
    ap = np.full((18, len(OVERLAPS)), np.nan)
    ap[0, :] = np.linspace(0.1, 1.0, len(OVERLAPS))
    ap[1, :] = 0.5
    s = summarize_instance(ap)
    rest = ~np.isclose(OVERLAPS, 0.25)
    assert s["mAP"] == pytest.approx(np.mean(np.concatenate([ap[0, rest], ap[1, rest]])))
    assert s["AP50"] == pytest.approx((ap[0, 0] + 0.5) / 2)
    assert s["AP25"] == pytest.approx((ap[0, -1] + 0.5) / 2)
    assert np.isnan(s["per_class"]["sofa"]["ap"])  # no ground truth and no prediction: NaN, left out of means
    assert len(OVERLAPS) == 10 and OVERLAPS[8] == pytest.approx(0.9)  # 0.50..0.90 and 0.25; 0.95 is not used
