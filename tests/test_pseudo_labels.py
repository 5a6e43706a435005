"""Pseudo labels for self-training: building blocks on hand-built cases, and the whole
stage with an oracle teacher whose outputs are the ground truth."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from minkseg.config import load_config
from minkseg.data.voxelize import UNKNOWN_INSTANCE, input_features, voxelize
from minkseg.engine.pseudo_labels import (
    instance_precision_recall,
    keep_certain,
    label_precision_recall,
    paint_instances,
    paint_proposals,
    pseudo_label_scene,
    pseudo_label_stats,
    spread_confident_semantics,
    summarize_stats,
    trim_disagreeing,
)
from minkseg.inference.superpoints import snap_to_superpoints
from minkseg.models.heads import ProbabilisticOutput
from minkseg.models.model import ModelOutput
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID
from scannet_tools.labels import IGNORE_ID as IG
from scannet_tools.prepare import load_prepared


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


def test_instance_painting_overlaps_and_vanished_masks():
    a = np.array([1, 1, 1, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 0], bool)
    c = np.array([0, 1, 0, 0, 0], bool)  # wholly covered by more certain masks: disappears
    ids, present = paint_instances(5, [a, b, c], [0.9, 0.6, 0.1])
    assert ids.tolist() == [0, 0, 0, 1, -1] and present.tolist() == [0, 1]
    ids, present = paint_instances(5, [a, c, b], [0.6, 0.1, 0.9])
    assert ids.tolist() == [0, 1, 1, 1, -1] and present.tolist() == [0, 2]


def test_instance_precision_recall_needs_iou_and_class():
    truth = np.array([7, 7, 7, 7, 9, 9, 9, 9, -1, -1])
    truth_sem = np.array([4, 4, 4, 4, 5, 5, 5, 5, 0, 0])
    pseudo = np.array([0, 0, 0, -1, 1, 1, -1, -1, 2, 2])  # IoU 0.75 (ok), 0.5 (wrong class), background
    assert instance_precision_recall(pseudo, np.array([4, 6, 4]), truth, truth_sem) == (1, 3, 1, 2)
    assert instance_precision_recall(pseudo, np.array([4, 5, 4]), truth, truth_sem) == (2, 3, 2, 2)
    assert instance_precision_recall(np.full(10, -1), np.zeros(0, int), truth, truth_sem) == (0, 0, 0, 2)
    s = summarize_stats([{"vertices": 10, "semantic_labelled": 5, "semantic_checked": 4, "annotated": 8,
                          "semantic_correct": 3, "instance_vertices": 2, "proposals": 3, "pseudo_instances": 2,
                          "pseudo_matched": 1, "true_instances": 0, "true_matched": 0}])
    assert s["semantic_coverage"] == 0.5 and s["semantic_precision"] == 0.75 and s["semantic_recall"] == 3 / 8
    assert s["instance_precision"] == 0.5 and np.isnan(s["instance_recall"])


class OracleTeacher(nn.Module):
    """Outputs that encode one scene's ground truth: certain semantics where annotated,
    every instance's voxels embedded on one tight Gaussian with a centre score of 1."""

    def __init__(self, scene: dict, voxel_size: float):
        super().__init__()
        xyz = scene["xyz"] - scene["xyz"].min(0)
        vox = voxelize(xyz, input_features(scene["rgb"]), scene["semantic"], scene["instance"], voxel_size)
        m, inst = len(vox.coords), vox.instance
        self.sem = torch.zeros(m, 20)
        known = vox.semantic != IG
        self.sem[known.nonzero(as_tuple=True)[0], vox.semantic[known]] = 10.0
        self.mu = vox.centers + 100.0 * (inst < 0)[:, None]
        for k in range(vox.num_instances):
            self.mu[inst == k] = vox.centers[inst == k].mean(0)
        self.score = torch.zeros(m, 19)
        self.score[inst < 0, -1] = 10.0
        fg = (inst >= 0).nonzero(as_tuple=True)[0]
        self.score[fg, vox.instance_class[inst[fg]] - FIRST_INSTANCE_TRAIN_ID] = 10.0
        self.recorrector = None

    def forward(self, batch):
        assert len(batch.coords) == len(self.mu)  # the same voxelization as the stage's
        return ModelOutput(self.sem, ProbabilisticOutput(self.mu, torch.full_like(self.mu, -3.0), self.score))


@pytest.fixture
def oracle_case(prepared_dir):
    scene = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    cfg = load_config(None, ["data.voxel_size=0.05", "selftrain.min_vertices=1", "cluster.min_size=1"])
    return scene, cfg, OracleTeacher(scene, 0.05)


def test_round_one_pseudo_labels_of_an_oracle_are_semantics_only(oracle_case):
    scene, cfg, teacher = oracle_case
    labels = pseudo_label_scene(teacher, scene, cfg, instances=False)
    assert (labels.instance == UNKNOWN_INSTANCE).all() and len(labels.instance_class) == 0
    stats = pseudo_label_stats(labels, scene)
    annotated = scene["semantic"] != IG
    # the oracle is exact per voxel; only vertices of voxels that straddle two classes can be wrong
    assert stats["semantic_correct"] >= 0.99 * stats["semantic_checked"]
    assert stats["semantic_checked"] >= 0.95 * annotated.sum()


def test_later_round_pseudo_instances_of_an_oracle_match_the_truth(oracle_case):
    scene, cfg, teacher = oracle_case
    labels = pseudo_label_scene(teacher, scene, cfg, instances=True, certainty_threshold=0.5)
    s = summarize_stats([pseudo_label_stats(labels, scene)])
    assert s["instance_precision"] == 1.0 and s["instance_recall"] >= 0.9, s
    assert np.all(labels.certainty >= 0.5)
    # every vertex with an instance-class label is in a pseudo instance or marked unknown,
    # and instance vertices carry their instance's class (instance -> semantic)
    thing = labels.semantic >= FIRST_INSTANCE_TRAIN_ID
    assert np.all((labels.instance >= 0) | ~thing | (labels.instance == UNKNOWN_INSTANCE))
    inside = labels.instance >= 0
    assert np.all(labels.semantic[inside] == labels.instance_class[labels.instance[inside]])


def test_certainty_threshold_filters_the_oracles_proposals(oracle_case):
    scene, cfg, teacher = oracle_case
    kept = pseudo_label_scene(teacher, scene, cfg, instances=True, certainty_threshold=0.5)
    none = pseudo_label_scene(teacher, scene, cfg, instances=True, certainty_threshold=1.01)
    assert len(kept.instance_class) > 0 and len(none.instance_class) == 0
    assert none.proposals == kept.proposals > 0
    thing = none.semantic >= FIRST_INSTANCE_TRAIN_ID
    assert thing.any() and np.all(none.instance[thing] == UNKNOWN_INSTANCE)
