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


# ---- pseudo_label_scene on a hand-built teacher output (forward pass and proposals replaced) ----

N_CLASSES = 20


def vertex_probs(spec: list[tuple[int, float]]) -> np.ndarray:
    """(N, 20) class probabilities: each vertex puts ``p`` on its class, the rest spread evenly."""
    probs = np.zeros((len(spec), N_CLASSES))
    for i, (c, p) in enumerate(spec):
        probs[i] = (1 - p) / (N_CLASSES - 1)
        probs[i, c] = p
    return probs


# per vertex: (arg-max class, its probability), superpoint; see test_pseudo_label_scene_hand_case
HAND_VERTICES = [((4, 0.95), 0), ((4, 0.95), 0), ((4, 0.95), 0), ((4, 0.95), 0), ((4, 0.6), 0),
                 ((6, 0.95), 1), ((6, 0.95), 1), ((6, 0.95), 1), ((0, 0.95), 2), ((5, 0.95), 3),
                 ((5, 0.5), 3), ((3, 0.6), -1), ((3, 0.6), -1), ((9, 0.95), 4)]
# (vertices, class, certainty) of the teacher's proposals
HAND_PROPOSALS = [([0, 1, 2, 3, 4, 5], 4, 0.8),  # vertex 5 is confidently class 6: trimmed
                  ([5, 6, 7], 6, 0.7),
                  ([9, 10], 5, 0.5),  # certainty and size exactly at the thresholds: kept
                  ([8, 11], 7, 0.49),  # below the certainty threshold
                  ([4, 10, 12], 8, 0.9),  # the most certain: takes vertices 4 and 10 from the others
                  ([1, 2], 4, 0.55),  # kept, but loses both vertices to proposal 0: vanishes
                  ([0, 13], 9, 0.95)]  # vertex 0 confidently class 4: trimmed to 1 vertex, too small


class HandForward:
    """What forward_scene returns, reduced to what pseudo_label_scene reads; voxels in reverse vertex order."""

    def __init__(self, probs: np.ndarray):
        n = len(probs)
        self.inverse = torch.arange(n - 1, -1, -1)
        self.out = ModelOutput(torch.log(torch.from_numpy(probs[::-1].copy())).float(), None)


@pytest.fixture
def hand_teacher(monkeypatch):
    from minkseg.engine import pseudo_labels as module
    from minkseg.inference.masks import MaskSet
    from minkseg.inference.scene_proposals import SceneProposals

    probs = vertex_probs([v for v, _ in HAND_VERTICES])
    n = len(probs)
    scene = {"xyz": np.zeros((n, 3), np.float32), "superpoint": np.array([s for _, s in HAND_VERTICES]),
             "scene": "scene0001_00"}
    forward, calls = HandForward(probs), {}

    def fake_forward(model, scene_, cfg, device="unset"):
        calls["forward"] = (model, scene_, cfg, device)
        return forward

    def fake_proposals(model, f, scene_, ccfg):
        calls["proposals"] = (model, f, scene_, ccfg)
        members = np.concatenate([v for v, _, _ in HAND_PROPOSALS])
        owner = np.concatenate([np.full(len(v), k) for k, (v, _, _) in enumerate(HAND_PROPOSALS)])
        return SceneProposals(MaskSet.from_pairs(members, owner, len(HAND_PROPOSALS), n),
                              np.array([c for _, c, _ in HAND_PROPOSALS]),
                              np.array([s for _, _, s in HAND_PROPOSALS], np.float32))

    monkeypatch.setattr(module, "forward_scene", fake_forward)
    monkeypatch.setattr(module, "scene_proposals", fake_proposals)
    cfg = load_config(None, ["selftrain.min_vertices=2", "cluster.hypotheses=3", "cluster.superpoints=false"])
    return scene, cfg, forward, calls


def test_pseudo_label_scene_hand_case(hand_teacher):
    scene, cfg, forward, calls = hand_teacher
    model = object()
    labels = pseudo_label_scene(model, scene, cfg, instances=True, certainty_threshold=0.5, recorrect=True)
    assert calls["forward"] == (model, scene, cfg, "cpu")
    m, f, s, ccfg = calls["proposals"]
    assert m is model and f is forward and s is scene
    assert (ccfg.superpoints, ccfg.score, ccfg.psi_refine_mask, ccfg.hypotheses) == (True, "psi", True, 1)
    # spread: superpoint 0 -> 4, 1 -> 6, 2 -> wall, 3 -> 5; 11, 12 unsure without superpoint; then the
    # kept proposals paint their class, the most certain last (vertex 4, 10 and 12 -> 8)
    assert labels.semantic.tolist() == [4, 4, 4, 4, 8, 6, 6, 6, 0, 5, 8, IG, 8, 9]
    # instances in kept order (0, 1, 2, 4; proposal 5 vanished); vertex 13 (class 9, no proposal) unknown
    U = UNKNOWN_INSTANCE
    assert labels.instance.tolist() == [0, 0, 0, 0, 3, 1, 1, 1, -1, 2, 3, -1, 3, U]
    assert labels.instance_class.tolist() == [4, 6, 5, 8] and labels.instance_class.dtype == np.int64
    assert labels.certainty.tolist() == pytest.approx([0.8, 0.7, 0.5, 0.9]) and labels.certainty.dtype == np.float32
    assert labels.proposals == len(HAND_PROPOSALS)


def test_pseudo_label_scene_without_recorrection_ranks_by_cluster_score(hand_teacher):
    scene, cfg, _, calls = hand_teacher
    pseudo_label_scene(object(), scene, cfg, instances=True, device="meta")
    assert calls["forward"][3] == "meta"
    ccfg = calls["proposals"][3]
    assert (ccfg.superpoints, ccfg.score, ccfg.psi_refine_mask, ccfg.hypotheses) == (True, "cluster", False, 1)


def test_pseudo_label_scene_min_vertices_and_default_threshold(hand_teacher):
    scene, cfg, _, _ = hand_teacher
    cfg.selftrain.min_vertices = 3  # proposal 2 ({9, 10}, trimmed to nothing less) is now too small
    labels = pseudo_label_scene(object(), scene, cfg, instances=True)  # default certainty threshold 0.5
    U = UNKNOWN_INSTANCE
    assert labels.instance.tolist() == [0, 0, 0, 0, 2, 1, 1, 1, -1, U, 2, -1, 2, U]
    assert labels.instance_class.tolist() == [4, 6, 8]
    cfg.selftrain.min_vertices = 2
    strict = pseudo_label_scene(object(), scene, cfg, instances=True, certainty_threshold=0.51)
    assert strict.instance_class.tolist() == [4, 6, 8]


def test_round_one_pseudo_labels_of_a_hand_teacher(hand_teacher):
    scene, cfg, _, calls = hand_teacher
    labels = pseudo_label_scene(object(), scene, cfg, instances=False)
    assert "proposals" not in calls
    assert labels.semantic.tolist() == [4, 4, 4, 4, 4, 6, 6, 6, 0, 5, 5, IG, IG, 9]
    assert labels.instance.tolist() == [UNKNOWN_INSTANCE] * len(HAND_VERTICES)
    assert labels.instance_class.dtype == np.int64 and len(labels.instance_class) == 0
    assert labels.certainty.dtype == np.float32 and len(labels.certainty) == 0 and labels.proposals == 0
    # the semantic threshold comes from the config: at 0.96 no vertex is confident
    cfg.selftrain.semantic_threshold = 0.96
    assert (pseudo_label_scene(object(), scene, cfg, instances=False).semantic == IG).all()


def test_trimming_uses_the_configured_semantic_threshold(hand_teacher):
    scene, cfg, _, _ = hand_teacher
    cfg.selftrain.semantic_threshold = 0.5  # vertex 4 (class 4 at 0.6) now confidently disagrees with class 8
    labels = pseudo_label_scene(object(), scene, cfg, instances=True)
    assert labels.instance[4] == 0 and labels.semantic[4] == 4


def test_pseudo_labels_save_and_load_round_trip(tmp_path):
    from minkseg.data.dataset import load_pseudo_labels
    from minkseg.engine.pseudo_labels import PseudoLabels, load_stats

    labels = PseudoLabels(np.array([4, IG, 0]), np.array([0, -1, UNKNOWN_INSTANCE]), np.array([4]),
                          np.array([0.75]), 3)
    stats = {"vertices": 3, "semantic_correct": 1}  # integer counts come back as floats
    labels.save(tmp_path / "s.npz", stats)
    semantic, instance = load_pseudo_labels(tmp_path / "s.npz", 3)
    assert semantic.tolist() == [4, IG, 0] and instance.tolist() == [0, -1, UNKNOWN_INSTANCE]
    loaded = load_stats(tmp_path / "s.npz")
    assert loaded == stats and all(type(v) is float for v in loaded.values())
    with np.load(tmp_path / "s.npz") as z:
        assert z["instance_class"].tolist() == [4] and z["certainty"].tolist() == [0.75] and int(z["proposals"]) == 3
        assert z["semantic"].dtype == np.int16 and z["instance"].dtype == np.int32
        assert z["instance_class"].dtype == np.int16 and z["certainty"].dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]  # no temporary file left


def test_pseudo_label_stats_hand_case():
    from minkseg.engine.pseudo_labels import PseudoLabels

    scene = {"semantic": np.array([4, 4, 4, 0, IG, 5]), "instance": np.array([0, 0, 0, -1, -1, 3])}
    labels = PseudoLabels(np.array([4, 4, 6, 0, 4, IG]), np.array([0, 0, 0, -1, UNKNOWN_INSTANCE, -1]),
                          np.array([4]), np.array([0.9]), 5)
    assert pseudo_label_stats(labels, scene) == {
        "vertices": 6, "semantic_labelled": 5, "semantic_checked": 4, "annotated": 5, "semantic_correct": 3,
        "instance_vertices": 3, "proposals": 5, "pseudo_instances": 1, "pseudo_matched": 1, "true_instances": 2,
        "true_matched": 1}


def test_summarize_stats_sums_counts_over_scenes():
    keys = ["vertices", "semantic_labelled", "semantic_checked", "annotated", "semantic_correct",
            "instance_vertices", "proposals", "pseudo_instances", "pseudo_matched", "true_instances", "true_matched"]
    a = dict(zip(keys, [10, 5, 4, 8, 3, 2, 3, 2, 1, 1, 1]))
    b = dict(zip(keys, [30, 15, 12, 16, 9, 8, 4, 2, 2, 3, 1]))
    s = summarize_stats([a, b])
    assert s == {"scenes": 2, "semantic_coverage": 0.5, "semantic_precision": 0.75, "semantic_recall": 0.5,
                 "instance_coverage": 0.25, "proposals": 7, "pseudo_instances": 4, "instance_precision": 0.75,
                 "instance_recall": 0.5}
    empty = summarize_stats([])
    assert empty["scenes"] == 0 and empty["proposals"] == 0 and empty["pseudo_instances"] == 0
    assert all(np.isnan(v) for k, v in empty.items() if k not in ("scenes", "proposals", "pseudo_instances"))


def test_pseudo_label_cluster_config_keeps_the_other_settings():
    from minkseg.engine.pseudo_labels import pseudo_label_cluster_config

    cfg = load_config(None, ["cluster.superpoints=false", "cluster.hypotheses=4", "cluster.score=psi",
                             "cluster.psi_refine_mask=true", "cluster.min_size=7"])
    plain = pseudo_label_cluster_config(cfg, recorrect=False)
    assert (plain.superpoints, plain.score, plain.psi_refine_mask, plain.hypotheses) == (True, "cluster", False, 1)
    assert plain.min_size == 7 and cfg.cluster.hypotheses == 4  # the config itself is not changed
    psi = pseudo_label_cluster_config(cfg, recorrect=True)
    assert (psi.superpoints, psi.score, psi.psi_refine_mask, psi.hypotheses) == (True, "psi", True, 1)


def test_precision_with_a_single_checked_vertex_and_none():
    assert label_precision_recall(np.array([3, IG]), np.array([3, 3])) == (1.0, 0.5)
    assert label_precision_recall(np.array([3, 5]), np.array([3, IG])) == (1.0, 1.0)  # one annotated vertex
    assert label_precision_recall(np.array([IG, IG]), np.array([IG, IG])) == (0.0, 0.0)
    assert label_precision_recall(np.array([2, 2]), np.array([9, 9]), ignore=9) == (0.0, 0.0)


def test_trimming_keeps_disagreements_at_exactly_the_threshold():
    mask = np.ones(3, bool)
    sem, conf = np.array([7, 7, 5]), np.array([0.9, 0.91, 1.0])
    assert trim_disagreeing(mask, 5, sem, conf).tolist() == [True, False, True]
    assert trim_disagreeing(mask, 5, sem, conf, threshold=0.95).tolist() == [True, True, True]


def test_instance_precision_recall_counts_instance_id_zero_and_iou_exactly_half():
    truth = np.array([0, 0, 0, 0, -1, -1])
    truth_sem = np.array([3, 3, 3, 3, 1, 1])
    pseudo = np.array([0, 0, -1, -1, 0, 0])  # IoU 2 / 6 = 1/3
    assert instance_precision_recall(pseudo, np.array([3]), truth, truth_sem) == (0, 1, 0, 1)
    assert instance_precision_recall(pseudo, np.array([3]), truth, truth_sem, iou=1 / 3) == (1, 1, 1, 1)
    half = np.array([0, 0, -1, -1, -1, -1])  # IoU exactly 0.5 counts
    assert instance_precision_recall(half, np.array([3]), truth, truth_sem) == (1, 1, 1, 1)
    assert instance_precision_recall(half, np.array([4]), truth, truth_sem) == (0, 1, 0, 1)


def test_spreading_with_sparse_superpoint_ids():
    # superpoint 5 only: ids need not be dense; a superpoint without a confident vertex is ignored
    probs = vertex_probs([(3, 0.95), (3, 0.2), (7, 0.5)])
    assert spread_confident_semantics(probs, np.array([5, 5, 2])).tolist() == [3, 3, IG]
    assert spread_confident_semantics(probs, np.array([5, 5, 2]), threshold=0.96).tolist() == [IG, IG, IG]


def test_instance_precision_recall_of_one_vertex_instances_and_of_two_matches_of_one_truth():
    # a one-vertex pseudo instance on a one-vertex true instance: IoU 1, a match even at IoU 0.99
    assert instance_precision_recall(np.array([0, -1]), np.array([3]), np.array([4, -1]), np.array([3, 1]),
                                     iou=0.99) == (1, 1, 1, 1)
    # two pseudo instances (classes 3 and 3) both overlap true instance 0 at IoU 0.5; true 1 is missed
    truth = np.array([0, 0, 0, 0, 1, 1])
    pseudo = np.array([0, 0, 1, 1, -1, -1])
    assert instance_precision_recall(pseudo, np.array([3, 3]), truth, np.array([3, 3, 3, 3, 3, 3])) == (2, 2, 1, 2)


def test_painting_ties_go_to_the_later_proposal_for_semantics_and_instances_alike():
    # 20 proposals with tied certainties (enough for numpy's default sort to reorder ties): the later of
    # the most certain wins, in the semantic and in the instance painting, so both name the same proposal
    certainty = [0.5, 0.9, 0.9, 0.9, 0.5, 0.5, 0.9, 0.9, 0.5, 0.5, 0.9, 0.5, 0.5, 0.9, 0.5, 0.5, 0.9, 0.9, 0.5, 0.5]
    masks = [np.array([1, 1 - k % 2, 0]) for k in range(20)]  # int masks; vertex 1 in the even ones only
    classes = list(range(2, 22))
    painted = paint_proposals(np.array([0, 0, 1], np.int16), masks, classes, certainty)
    assert painted.dtype == np.int64
    assert painted.tolist() == [classes[17], classes[16], 1]  # the last 0.9 proposal, the last even 0.9 one
    ids, present = paint_instances(3, masks, certainty)
    assert [present[i] for i in ids[:2]] == [17, 16] and ids[2] == -1


def test_trimming_takes_integer_masks_and_returns_a_boolean_mask():
    trimmed = trim_disagreeing(np.array([1, 1, 0]), 5, np.array([5, 7, 5]), np.array([1.0, 1.0, 1.0]))
    assert trimmed.dtype == bool and trimmed.tolist() == [True, False, False]


def test_instance_precision_recall_counts_pseudo_instances_without_vertices():
    # pseudo instance 2 has a class but no vertex left: it counts as an unmatched pseudo instance
    truth = np.array([0, 0, 1, 1])
    pseudo = np.array([0, 0, 1, 1])
    assert instance_precision_recall(pseudo, np.array([3, 4, 5]), truth, np.array([3, 3, 4, 4])) == (2, 3, 2, 2)
