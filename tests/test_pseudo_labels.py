"""Pseudo-label building blocks for self-training on hand-built cases."""

import numpy as np

from minkseg.pseudo_labels import (
    keep_certain,
    label_precision_recall,
    paint_proposals,
    snap_to_superpoints,
    spread_confident_semantics,
    trim_disagreeing,
)
from scannet_tools.labels import IGNORE_ID as IG


def test_threshold_is_strictly_above_0_9_and_spreads_over_superpoints():
    probs = np.array([
        [0.95, 0.05],  # sp 0: confident class 0
        [0.60, 0.40],  # sp 0: unsure -> takes sp 0's label
        [0.90, 0.10],  # sp 1: exactly 0.9 is not above the threshold
        [0.50, 0.50],  # sp 1: nothing confident in sp 1 -> ignored
        [0.02, 0.98],  # no superpoint: keeps its own confident label
        [0.70, 0.30],  # no superpoint, unsure -> ignored
    ])
    sp = np.array([0, 0, 1, 1, -1, -1])
    assert spread_confident_semantics(probs, sp).tolist() == [0, 0, IG, IG, 1, IG]


def test_superpoint_takes_the_majority_of_its_confident_vertices():
    probs = np.array([[0.99, 0.01], [0.01, 0.99], [0.01, 0.99], [0.5, 0.5]])
    assert spread_confident_semantics(probs, np.zeros(4, int)).tolist() == [1, 1, 1, 1]


def test_certainty_filter():
    assert keep_certain(np.array([0.2, 0.5, 0.49, 0.9])).tolist() == [1, 3]
    assert keep_certain(np.array([0.2, 0.5, 0.9]), threshold=0.7).tolist() == [2]


def test_semantic_to_instance_snapping_and_trimming():
    sp = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    mask = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], bool)  # covers 3/4 of sp 0, 1/4 of sp 1
    assert snap_to_superpoints(mask, sp).tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    sem = np.array([5, 5, 7, 5, 5, 5, 5, 5, 5, 5])
    conf = np.array([0.99, 0.99, 0.95, 0.5, 1, 1, 1, 1, 1, 1])
    full = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    # vertex 2 is confidently class 7: trimmed from a class-5 proposal; an unsure disagreement would stay
    assert trim_disagreeing(full, 5, sem, conf).tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]


def test_instance_to_semantic_painting_more_certain_wins():
    sem = np.array([0, 0, 0, 0])
    a = np.array([1, 1, 1, 0], bool)
    b = np.array([0, 1, 1, 1], bool)
    assert paint_proposals(sem, [a, b], [4, 6], [0.9, 0.6]).tolist() == [4, 4, 4, 6]
    assert paint_proposals(sem, [a, b], [4, 6], [0.6, 0.9]).tolist() == [4, 6, 6, 6]


def test_pseudo_label_precision_recall():
    truth = np.array([1, 1, 2, 2, IG])
    pseudo = np.array([1, 2, 2, IG, 1])
    p, r = label_precision_recall(pseudo, truth)
    assert p == 2 / 3 and r == 2 / 4
