"""predict's wiring around the clustering (minkseg.inference.predict): which head's function gets
which settings, what one pass hands the network, the per-vertex outputs, the ground-truth format."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import minkseg.inference.predict as predict_module
from minkseg.config import ClusterConfig, load_config
from minkseg.inference.predict import SceneForward, cluster_output, forward_pass, ground_truth_ids, predict_from_forward
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput
from scannet_tools.labels import train_id_to_nyu40
from tests.test_proposal_options import NoPsi, planted_output, scene_of

CLUSTER_FUNCTIONS = ("cluster_probabilistic", "cluster_margin", "meanshift_probabilistic", "meanshift_margin")


def test_ground_truth_ids_are_nyu40_thousands_plus_the_instance():
    # uint8 labels as prepare stores them: the product must not wrap around
    scene = {"nyu40": np.array([5, 1, 0, 39], np.uint8), "instance": np.array([3, -1, 7, 0])}
    ids = ground_truth_ids(scene)
    assert ids.dtype == np.int64 and ids.tolist() == [5003, 1000, 7, 39000]


def outputs_of(head: str, m: int = 4) -> ModelOutput:
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(m, 3, generator=g) for _ in range(3))
    sem = torch.randn(m, 20, generator=g)
    if head == "probabilistic":
        return ModelOutput(sem, ProbabilisticOutput(a, b, torch.randn(m, 19, generator=g)))
    return ModelOutput(sem, MarginOutput(a, b, c[:, :1].expand(m, 18)))


@pytest.mark.parametrize("grouping", ["greedy", "meanshift"])
@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_cluster_output_hands_each_head_its_own_settings(head, grouping, monkeypatch):
    calls = []
    for name in CLUSTER_FUNCTIONS:
        monkeypatch.setattr(predict_module, name, lambda *a, _name=name, **kw: calls.append((_name, a, kw)) or _name)
    cfg = ClusterConfig(tau_probabilistic=0.31, tau_margin=0.62, seed_threshold=0.43, min_size=7, grouping=grouping,
                        meanshift_bandwidth=1.7, meanshift_iterations=3, meanshift_anchors=99)
    out = outputs_of(head)
    tensors = tuple(getattr(out.instance, f.name) for f in dataclasses.fields(out.instance)) + (out.semantic_logits,)
    tau = 0.31 if head == "probabilistic" else 0.62
    for max_instances, kwargs in ((12, {"max_instances": 12}), (500, {})):  # 500: the default
        calls.clear()
        name = ("cluster_" if grouping == "greedy" else "meanshift_") + head
        assert cluster_output(out, cfg, **kwargs) == name
        ((called, args, kw),) = calls
        assert called == name
        assert all(x is y for x, y in zip(args[:4], tensors)) and len(args) >= 5
        if grouping == "greedy":
            assert args[4:] == (tau, 0.43, 7, max_instances) and kw == {}
        else:
            assert args[4:] == (tau,)
            assert kw == dict(bandwidth=1.7, iterations=3, min_size=7, max_instances=max_instances, max_anchors=99)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_each_tau_of_cluster_taus_reaches_the_heads_threshold(head, monkeypatch):
    seen = []
    real = predict_module.cluster_output

    def spy(out, cfg, *args):
        seen.append((cfg.tau_probabilistic, cfg.tau_margin))
        return real(out, cfg, *args)

    monkeypatch.setattr(predict_module, "cluster_output", spy)
    out = planted_output([(np.zeros((3, 3)), 4, 5.0)])
    if head == "margin":
        out = ModelOutput(out.semantic_logits, MarginOutput(out.instance.mu, torch.zeros(3, 3),
                                                            2 * out.instance.score_logits[:, :18] - 5))
    m = len(out.semantic_logits)
    batch = type("Batch", (), {"coords": torch.zeros(m, 4, dtype=torch.int32), "centers": torch.zeros(m, 3)})()
    f = SceneForward(batch, out, torch.arange(m))
    cfg = load_config(None, ["cluster.min_size=1", "cluster.taus=[0.2,0.7]"])
    pred = predict_from_forward(NoPsi(), f, scene_of(m), cfg)
    assert seen == [(0.2, 0.2), (0.7, 0.7)]
    assert len(pred.instances) == 1  # the two passes find the same mask; NMS keeps one


class Recorder(nn.Module):
    """A network that keeps the batch it was given and answers with fixed outputs."""

    def __init__(self):
        super().__init__()
        self.batch = None

    def forward(self, batch):
        self.batch = batch
        return outputs_of("margin", len(batch.coords))


@pytest.mark.parametrize("use_normals", [False, True])
def test_one_pass_voxelizes_from_the_scene_minimum_in_eval_mode(use_normals):
    # a scene far from the origin: the grid starts at its minimum corner, so 0.26 m along x is voxel 2
    xyz = np.array([[10.0, 20.0, 30.0], [10.26, 20.0, 30.0], [10.05, 20.11, 30.0], [10.27, 20.01, 30.02]],
                   np.float32)
    scene = {"scene": "scene0000_00", "xyz": xyz, "rgb": np.full((4, 3), 128, np.uint8),
             "normals": np.tile(np.array([[0.0, 0.0, 1.0]], np.float32), (4, 1))}
    cfg = load_config(None, ["data.voxel_size=0.1", f"data.use_normals={str(use_normals).lower()}"])
    model = Recorder().train()
    f = forward_pass(model, scene, cfg)
    assert not model.training
    coords = f.batch.coords
    assert coords[:, 0].tolist() == [0, 0, 0]  # one scene: batch index 0
    np.testing.assert_array_equal(coords[f.inverse, 1:].numpy(), [[0, 0, 0], [2, 0, 0], [0, 1, 0], [2, 0, 0]])
    assert f.batch.feats.shape == (3, 6 if use_normals else 3)
    assert model.batch is f.batch and len(f.out.semantic_logits) == 3
    assert f.batch.scenes[0].scene == "scene0000_00" and f.batch.scenes[0].voxel_size == 0.1


def test_per_vertex_semantics_and_uncertainty_follow_the_inverse_map():
    # three voxels with known classes and sigmas; five vertices, mapped out of order
    out = planted_output([(np.zeros((1, 3)), 4, 5.0), (np.full((1, 3), 9.0), 7, 5.0), (np.full((1, 3), -9.0), 2, 5.0)])
    out.instance.log_sigma[:] = torch.log(torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.4, 0.4], [1.0, 2.0, 6.0]]))
    m = 3
    batch = type("Batch", (), {"coords": torch.zeros(m, 4, dtype=torch.int32), "centers": torch.zeros(m, 3)})()
    inverse = torch.tensor([2, 0, 1, 1, 0])
    cfg = load_config(None, ["cluster.min_size=1"])
    pred = predict_from_forward(NoPsi(), SceneForward(batch, out, inverse), scene_of(5), cfg)
    assert pred.semantic_nyu40.tolist() == train_id_to_nyu40(np.array([2, 4, 7, 7, 4])).tolist()
    np.testing.assert_allclose(pred.uncertainty, [3.0, 0.2, 0.4, 0.4, 0.2], rtol=1e-6)
    assert pred.scene == "scene_planted"
    assert [np.flatnonzero(i.mask).tolist() for i in pred.instances] == [[1, 4], [2, 3], [0]]
    margin = ModelOutput(out.semantic_logits, MarginOutput(out.instance.mu, torch.zeros(3, 3),
                                                           2 * out.instance.score_logits[:, :18] - 5))
    assert predict_from_forward(NoPsi(), SceneForward(batch, margin, inverse), scene_of(5), cfg).uncertainty is None


# ---------------------------------------------------------------- proposal options after clustering


def test_mean_class_probs_average_each_proposals_instance_class_probabilities(dtype):
    from minkseg.inference.scene_proposals import mean_class_probs

    logits = torch.full((4, 20), -30.0)
    logits[0, 2], logits[1, 3] = 0.0, 0.0  # voxel 0: class 2 surely; voxel 1: class 3 surely
    logits[2, 2] = logits[2, 4] = 0.0  # voxel 2: classes 2 and 4 at 1/2 each
    logits[3, 0] = 0.0  # voxel 3: wall, outside the 18 instance columns
    members, owner = torch.tensor([0, 2, 1, 3, 2]), torch.tensor([0, 0, 2, 2, 3])
    got = mean_class_probs(logits, members, owner, 5)
    want = torch.zeros(5, 18, dtype=torch.float64)
    want[0, 0], want[0, 2] = 0.75, 0.25  # (1 + 1/2) / 2 and (0 + 1/2) / 2
    want[2, 1] = 0.5  # (1 + 0) / 2: the wall voxel counts, with no instance class probability
    want[3, 0], want[3, 2] = 0.5, 0.5  # one voxel: its own probabilities
    assert got.dtype == dtype and got.shape == (5, 18)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)  # proposals 1 and 4: empty, zero


# ---------------------------------------------------------------- proposals that train Psi


def three_scene_batch():
    """Scenes 0 and 2 labelled, 1 pseudo-labelled; per-scene outputs with planted clusters.

    Scene 0 (rows 0-5): one cluster {0, 1, 2}; true instances 0 = {0, 1}, 1 = {3, 4}.
    Scene 1 (rows 6-8): a cluster and instance 2 = {7}, never used (not labelled).
    Scene 2 (rows 9-13): clusters {9, 10} (stronger seed) and {12, 13}; true instance 3 = {9, 10, 11}.
    """
    groups = [(np.zeros((3, 3)), 4, 6.0), (np.full((3, 3), 50.0), 0, -9.0),  # scene 0: cluster, then stuff
              (np.full((3, 3), 9.0), 5, 6.0),  # scene 1
              (np.full((2, 3), 3.0), 6, 7.0), (np.full((1, 3), 60.0), 0, -9.0), (np.full((2, 3), -3.0), 7, 5.0)]
    out = planted_output(groups)
    out.features = torch.randn(14, 4, generator=torch.Generator().manual_seed(1))
    instance = torch.tensor([0, 0, -1, 1, 1, -1, -1, 2, -1, 3, 3, 3, -1, -1])
    scenes = [type("Scene", (), {"labeled": lab})() for lab in (True, False, True)]
    batch = type("Batch", (), {"scenes": scenes, "batch": torch.tensor([0] * 6 + [1] * 3 + [2] * 5),
                               "instance": instance, "instance_class": torch.tensor([4, 9, 5, 19]),
                               "coords": torch.arange(56, dtype=torch.int32).view(14, 4),
                               "centers": torch.randn(14, 3, generator=torch.Generator().manual_seed(2))})()
    return out, batch


def test_training_proposals_are_each_labelled_scenes_clusters_then_its_true_instances():
    from minkseg.inference.proposals import training_proposals

    out, batch = three_scene_batch()
    cfg = ClusterConfig(min_size=1)
    members, owner, p = training_proposals(out, batch, cfg, max_predicted=8)
    assert p == 6
    assert members.tolist() == [0, 1, 2, 0, 1, 3, 4, 9, 10, 12, 13, 9, 10, 11]
    assert owner.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    members, owner, p = training_proposals(out, batch, cfg, max_predicted=1)  # one cluster per scene
    assert p == 5 and members.tolist() == [0, 1, 2, 0, 1, 3, 4, 9, 10, 9, 10, 11]
    assert owner.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    for s in batch.scenes:
        s.labeled = False
    members, owner, p = training_proposals(out, batch, cfg, max_predicted=8)
    assert p == 0 and members.tolist() == [] and owner.tolist() == [] and members.dtype == torch.long


def test_recorrection_batch_loss_feeds_psi_the_batch_proposals_and_their_targets():
    from minkseg.inference.proposals import recorrection_batch_loss
    from minkseg.losses.recorrect import proposal_targets, recorrection_loss
    from minkseg.models.recorrect import RecorrectOutput

    out, batch = three_scene_batch()
    g = torch.Generator().manual_seed(3)
    answer = RecorrectOutput(torch.randn(6, 19, generator=g), torch.randn(14, generator=g), torch.randn(6, generator=g))
    seen = []

    def recorrector(*args):
        seen.append(args)
        return answer

    model = type("Model", (), {"recorrector": staticmethod(recorrector)})()
    got = recorrection_batch_loss(model, out, batch, ClusterConfig(min_size=1), max_predicted=8)
    ((features, coords, centers, members, owner, p),) = seen
    assert features is out.features and torch.equal(coords, batch.coords[:, 1:]) and centers is batch.centers
    assert p == 6 and owner.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5]
    # true instance classes as 0..17 (train id - 2), 18 classes: the "no object" column left out
    targets = proposal_targets(members, owner, 6, batch.instance, torch.tensor([2, 7, 3, 17]), 18)
    want = recorrection_loss(answer.class_logits, answer.mask_logits, answer.certainty_logits, owner, targets)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_superpoint_snapping_without_superpoints_is_one_clear_error():
    out = planted_output([(np.zeros((3, 3)), 4, 5.0)])
    batch = type("Batch", (), {"coords": torch.zeros(3, 4, dtype=torch.int32), "centers": torch.zeros(3, 3)})()
    scene = {"scene": "scene_planted", "xyz": np.zeros((3, 3))}  # no "superpoint" array
    with pytest.raises(ValueError, match=r"^cluster\.superpoints=true needs the scene.s superpoint array"):
        predict_from_forward(NoPsi(), SceneForward(batch, out, torch.arange(3)), scene,
                             load_config(None, ["cluster.min_size=1", "cluster.superpoints=true"]))


def test_no_clusters_give_no_proposals_of_the_right_types():
    from minkseg.inference.scene_proposals import finish_proposals

    out = planted_output([(np.zeros((3, 3)), 4, -9.0)])  # no seed above the threshold
    batch = type("Batch", (), {"coords": torch.zeros(3, 4, dtype=torch.int32), "centers": torch.zeros(3, 3)})()
    for over in ([], ["cluster.hypotheses=2"], ["cluster.taus=[0.2,0.5]"]):
        cfg = load_config(None, ["cluster.min_size=1", *over]).cluster
        for clusters in ([], [cluster_output(out, cfg)]):
            props = finish_proposals(NoPsi(), out, batch, torch.arange(3), clusters, np.full(3, -1), cfg)
            assert props.num_proposals == 0 and props.masks.num_masks == 0 and props.masks.num_points == 3
            assert props.classes.dtype == np.int64 and props.scores.dtype == np.float32


def test_a_proposal_emptied_by_psi_is_dropped():
    from tests.test_proposal_options import FixedPsi, three_objects

    out, group_of_voxel = three_objects()
    member_logit = torch.ones(15)
    member_logit[6:11] = -1.0  # Psi rejects every member of the second object
    class_logits = torch.zeros(3, 19)
    class_logits[:, 3] = 5.0
    model = NoPsi(FixedPsi(group_of_voxel, class_logits, torch.zeros(3), member_logit))
    m = len(out.semantic_logits)
    batch = type("Batch", (), {"coords": torch.zeros(m, 4, dtype=torch.int32), "centers": torch.zeros(m, 3)})()
    pred = predict_from_forward(NoPsi(model.recorrector), SceneForward(batch, out, torch.arange(m)), scene_of(m),
                                load_config(None, ["cluster.min_size=1", "cluster.score=psi",
                                                   "cluster.psi_refine_mask=true"]))
    assert [np.flatnonzero(i.mask).tolist() for i in pred.instances] == [list(range(6)), list(range(11, 15))]


def test_one_pass_puts_the_batch_and_the_inverse_map_on_the_requested_device():
    # the "meta" device stands in for a GPU on a CPU-only machine: tensors left on the CPU show
    scene = {"scene": "scene0000_00", "xyz": np.array([[0.0, 0, 0], [0.5, 0, 0]], np.float32),
             "rgb": np.full((2, 3), 128, np.uint8)}
    f = forward_pass(Recorder(), scene, load_config(None, ["data.voxel_size=0.1"]), device="meta")
    assert f.batch.coords.is_meta and f.batch.feats.is_meta and f.inverse.is_meta


def test_no_labelled_scene_gives_empty_proposals_on_the_batch_device():
    from minkseg.inference.proposals import training_proposals

    # "meta" stands in for a GPU: without a labelled scene nothing is clustered, only the empty result is made
    batch = type("Batch", (), {"scenes": [type("Scene", (), {"labeled": False})()],
                               "batch": torch.zeros(3, dtype=torch.long, device="meta"),
                               "instance": torch.zeros(3, dtype=torch.long, device="meta")})()
    members, owner, p = training_proposals(outputs_of("margin", 3), batch, ClusterConfig(), 8)
    assert p == 0 and members.is_meta and owner.is_meta and members.shape == (0,) and members.dtype == torch.long


def test_proposals_of_several_passes_are_numbered_on_after_each_other():
    from minkseg.inference.cluster import Clusters
    from minkseg.inference.scene_proposals import finish_proposals

    out = planted_output([(np.zeros((6, 3)), 4, 5.0)])
    batch = type("Batch", (), {"coords": torch.zeros(6, 4, dtype=torch.int32), "centers": torch.zeros(6, 3)})()
    # pass 1: three instances {0, 1}, {2, 3}, {4}; pass 2: one instance {0, 1, 2, 3, 4, 5}
    first = Clusters(torch.tensor([0, 0, 1, 1, 2, -1]), torch.tensor([4, 5, 6]), torch.tensor([0.9, 0.8, 0.7]))
    second = Clusters(torch.zeros(6, dtype=torch.long), torch.tensor([7]), torch.tensor([0.6]))
    cfg = load_config(None, ["cluster.taus=[0.1,0.2]", "cluster.nms_iou=1.0"]).cluster  # NMS keeps everything
    props = finish_proposals(NoPsi(), out, batch, torch.tensor([5, 4, 3, 2, 1, 0]), [first, second],
                             np.full(6, -1), cfg)
    # vertices map to voxels in reverse: voxel v is vertex 5 - v
    assert [np.flatnonzero(props.masks.mask(k)).tolist() for k in range(4)] == [[4, 5], [2, 3], [1], list(range(6))]
    assert props.classes.tolist() == [4, 5, 6, 7]
    np.testing.assert_allclose(props.scores, [0.9, 0.8, 0.7, 0.6], rtol=1e-7)
    # class hypotheses average each of the 4 proposals' probabilities; at threshold 1 none adds a class
    cfg = load_config(None, ["cluster.taus=[0.1,0.2]", "cluster.nms_iou=1.0", "cluster.hypotheses=2",
                             "cluster.hypothesis_threshold=1.0"]).cluster
    again = finish_proposals(NoPsi(), out, batch, torch.tensor([5, 4, 3, 2, 1, 0]), [first, second], np.full(6, -1),
                             cfg)
    assert again.classes.tolist() == [4, 5, 6, 7] and again.scores.tolist() == props.scores.tolist()
