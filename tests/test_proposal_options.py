"""Proposal options (cluster.score/psi_refine_mask/superpoints/hypotheses/taus/nms_iou) on
hand-built cases, and the one proposal function shared by predict and pseudo labelling."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from minkseg.config import ConfigError, load_config
from minkseg.inference.hypotheses import class_hypotheses
from minkseg.inference.masks import MaskSet, mask_iou, mask_nms
from minkseg.inference.predict import SceneForward, forward_scene, predict_from_forward, predict_scene
from minkseg.inference.superpoints import snap_masks_to_superpoints, snap_to_superpoints
from minkseg.losses.kernels import log_bhattacharyya_kernel
from minkseg.models.heads import ProbabilisticOutput
from minkseg.models.model import ModelOutput
from minkseg.models.recorrect import RecorrectOutput
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, train_id_to_nyu40

F = FIRST_INSTANCE_TRAIN_ID


# ---------------------------------------------------------------- masks, superpoints, NMS


def dense(masks: MaskSet) -> np.ndarray:
    return np.stack([masks.mask(k) for k in range(masks.num_masks)]) if masks.num_masks else np.zeros((0, 0), bool)


def test_superpoint_majority_rule_on_a_hand_built_mask():
    sp = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1])
    mask = np.array([1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0], bool)
    # sp 0: 2 of 3 (> half) -> all in; sp 1: 2 of 4 (exactly half) -> out; sp 2: none -> out;
    # vertices without a superpoint keep their own membership
    expected = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    assert snap_to_superpoints(mask, sp).astype(int).tolist() == expected
    snapped = snap_masks_to_superpoints(MaskSet.from_labels(np.where(mask, 0, -1), 1), sp)
    assert snapped.mask(0).astype(int).tolist() == expected


def test_snapping_many_overlapping_masks_equals_snapping_each():
    rng = np.random.default_rng(0)
    n, k = 300, 12
    sp = rng.integers(-1, 25, n)
    masks = rng.random((k, n)) < rng.random((k, 1))
    owner, members = np.nonzero(masks)
    snapped = dense(snap_masks_to_superpoints(MaskSet.from_pairs(members, owner, k, n), sp))
    for i in range(k):
        np.testing.assert_array_equal(snapped[i], snap_to_superpoints(masks[i], sp))


def test_mask_set_select_expand_and_iou_agree_with_dense_masks():
    rng = np.random.default_rng(1)
    k, n = 7, 40
    masks = rng.random((k, n)) < 0.3
    masks[3] = False  # an empty mask
    owner, members = np.nonzero(masks)
    ms = MaskSet.from_pairs(members[::-1], owner[::-1], k, n)  # any pair order
    np.testing.assert_array_equal(dense(ms), masks)
    np.testing.assert_array_equal(dense(ms.select(np.array([5, 0, 5]))), masks[[5, 0, 5]])
    point_of = rng.integers(0, n, 100)  # 100 fine points, each in one of the n coarse points
    np.testing.assert_array_equal(dense(ms.expand(point_of)), masks[:, point_of])
    inter = (masks[:, None] & masks[None]).sum(2)
    union = (masks[:, None] | masks[None]).sum(2)
    expected = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.testing.assert_allclose(mask_iou(ms), expected, rtol=0, atol=1e-12)


def test_nms_keeps_best_first_and_suppresses_only_above_the_threshold():
    n = 10
    a = np.isin(np.arange(n), [0, 1])  # IoU(a, b) = 2 / 4 = 0.5 exactly
    b = np.isin(np.arange(n), [0, 1, 2, 3])
    c = np.isin(np.arange(n), [6, 7, 8])
    c2 = c.copy()  # an exact duplicate of c
    masks = np.stack([a, b, c, c2])
    owner, members = np.nonzero(masks)
    iou = mask_iou(MaskSet.from_pairs(members, owner, 4, n))
    scores = np.array([0.9, 0.8, 0.3, 0.7])
    # best first; IoU exactly 0.5 is not above 0.5, so b stays; c loses to its better duplicate
    assert mask_nms(iou, scores, 0.5).tolist() == [0, 1, 3]
    assert mask_nms(iou, scores, 0.49).tolist() == [0, 3]
    assert mask_nms(iou, scores, 1.0).tolist() == [0, 1, 3, 2]
    # ties go to the lower index
    assert mask_nms(iou, np.array([0.5, 0.5, 0.5, 0.5]), 0.9).tolist() == [0, 1, 2]


# ---------------------------------------------------------------- class hypotheses


def test_class_hypotheses_count_order_and_scores(dtype):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05],
                          [0.1, 0.1, 0.7, 0.1],  # own class (given) is not the arg-max
                          [0.0, 0.6, 0.4, 0.0]])  # own class has probability 0: no extra hypotheses
    classes = torch.tensor([0, 1, 0])
    scores = torch.tensor([0.4, 0.2, 0.3])
    idx, cls, score = class_hypotheses(probs, classes, scores, max_hypotheses=3, threshold=0.15)
    assert idx.tolist() == [0, 0, 0, 1, 1, 2]
    assert cls.tolist() == [0, 1, 2, 1, 2, 0]  # own class first, then by probability; 0.15 itself passes
    # score_c = score x p_c / p_own: the class-free factor (0.4 / 0.5, 0.2 / 0.1) times p_c
    expected = torch.tensor([0.4, 0.4 * 0.3 / 0.5, 0.4 * 0.15 / 0.5, 0.2, 0.2 * 0.7 / 0.1, 0.3], dtype=torch.float64)
    assert score.dtype == dtype
    torch.testing.assert_close(score.double(), expected, rtol=1e-6, atol=0)
    assert score[0] == scores[0] and score[3] == scores[1]  # the own class keeps its score exactly
    one = class_hypotheses(probs, classes, scores, 1, 0.0)
    assert one[0].tolist() == [0, 1, 2] and one[1].tolist() == classes.tolist() and torch.equal(one[2], scores)
    # the threshold boundary: a class at exactly the threshold stays, just above it does not
    assert len(class_hypotheses(probs[:1], classes[:1], scores[:1], 4, 0.3)[0]) == 2
    assert len(class_hypotheses(probs[:1], classes[:1], scores[:1], 4, 0.30001)[0]) == 1


# ---------------------------------------------------------------- planted network outputs


def planted_output(groups: list[tuple[np.ndarray, int, float]], log_sigma: float = -2.0) -> ModelOutput:
    """A probabilistic head's output: group g = (centres (n, 3), instance class, seed logit),
    every voxel of a group embedded at its row's centre, certain semantics."""
    mu = torch.cat([torch.as_tensor(c, dtype=torch.get_default_dtype()) for c, _, _ in groups])
    m = len(mu)
    sem = torch.zeros(m, 20)
    score = torch.zeros(m, 19)
    row = 0
    for c, cls, seed in groups:
        sem[row:row + len(c), cls] = 10.0
        score[row:row + len(c), cls - F] = seed
        row += len(c)
    return ModelOutput(sem, ProbabilisticOutput(mu, torch.full_like(mu, log_sigma), score), torch.zeros(m, 4))


class FixedPsi(nn.Module):
    """A re-correction module whose answers are fixed per group (group of a proposal's first member)."""

    def __init__(self, group_of_voxel: torch.Tensor, class_logits: torch.Tensor, certainty_logits: torch.Tensor,
                 member_logit: torch.Tensor):
        super().__init__()
        self.group_of_voxel, self.class_logits = group_of_voxel, class_logits
        self.certainty_logits, self.member_logit = certainty_logits, member_logit

    def forward(self, features, coords, centers, members, owner, num_proposals):
        first = torch.full((num_proposals,), -1, dtype=torch.long)
        for j in range(len(members) - 1, -1, -1):
            first[owner[j]] = members[j]
        g = self.group_of_voxel[first]
        return RecorrectOutput(self.class_logits[g], self.member_logit[members], self.certainty_logits[g])


class NoPsi(nn.Module):
    """A model as inference after the network reads it: only its re-correction module (here none)."""

    def __init__(self, recorrector: nn.Module | None = None):
        super().__init__()
        self.recorrector = recorrector


def forward_of(out: ModelOutput) -> SceneForward:
    m = len(out.semantic_logits)
    batch = types.SimpleNamespace(coords=torch.zeros(m, 4, dtype=torch.int32), centers=torch.zeros(m, 3))
    return SceneForward(batch, out, torch.arange(m))


def scene_of(m: int, superpoint: np.ndarray | None = None) -> dict:
    return {"scene": "scene_planted", "xyz": np.zeros((m, 3)),
            "superpoint": np.full(m, -1) if superpoint is None else superpoint}


def config(*over: str):
    return load_config(None, ["cluster.min_size=1", *over])


def three_objects() -> tuple[ModelOutput, torch.Tensor]:
    groups = [(np.zeros((6, 3)), F + 1, 9.0), (np.full((5, 3), 20.0), F + 3, 7.0), (np.full((4, 3), -20.0), F, 5.0)]
    group_of_voxel = torch.repeat_interleave(torch.arange(3), torch.tensor([6, 5, 4]))
    return planted_output(groups), group_of_voxel


def test_default_options_are_the_greedy_clusters_as_before():
    out, _ = three_objects()
    pred = predict_from_forward(NoPsi(), forward_of(out), scene_of(15), config())
    assert [int(i.mask.sum()) for i in pred.instances] == [6, 5, 4]  # seed order
    assert [i.label_id for i in pred.instances] == train_id_to_nyu40(np.array([F + 1, F + 3, F])).tolist()
    for inst, seed_logit in zip(pred.instances, (9.0, 7.0, 5.0)):  # class probability ~1 x seed score
        assert inst.confidence == pytest.approx(np.exp(seed_logit) / (np.exp(seed_logit) + 18), rel=1e-3)


def test_psi_scores_rank_and_relabel_the_proposals(dtype):
    out, group_of_voxel = three_objects()
    # Psi: group 0 is "no object" mostly, group 2 (the weakest seed) is a sure object of another class
    class_logits = torch.zeros(3, 19)
    class_logits[0, -1], class_logits[0, 5] = 4.0, 1.0
    class_logits[1, 7] = 3.0
    class_logits[2, 2] = 6.0
    certainty_logits = torch.tensor([0.0, 1.0, 2.0])
    member_logit = torch.ones(15)
    member_logit[:3] = -1.0  # Psi's refined mask drops three voxels of group 0
    model = NoPsi(FixedPsi(group_of_voxel, class_logits, certainty_logits, member_logit))
    p64 = torch.softmax(class_logits.double(), 1)
    expected_cls = [5, 7, 2]
    expected = [float(p64[g, expected_cls[g]] * torch.sigmoid(certainty_logits.double()[g])) for g in range(3)]
    f = forward_of(out)
    pred = predict_from_forward(model, f, scene_of(15), config("cluster.score=psi"))
    got = [(int(i.mask.sum()), i.label_id, i.confidence) for i in pred.instances]
    assert [g[0] for g in got] == [6, 5, 4]
    assert [g[1] for g in got] == train_id_to_nyu40(np.array(expected_cls) + F).tolist()
    np.testing.assert_allclose([g[2] for g in got], expected, rtol=1e-5)
    # the ranking the benchmark sees: group 2 (weakest seed) first, group 0 ("no object") last
    assert np.argsort([-g[2] for g in got]).tolist() == [2, 1, 0]
    refined = predict_from_forward(model, f, scene_of(15), config("cluster.score=psi", "cluster.psi_refine_mask=true"))
    assert [int(i.mask.sum()) for i in refined.instances] == [3, 5, 4]
    assert not refined.instances[0].mask[:3].any()
    with pytest.raises(ValueError, match="model.recorrector=true"):
        predict_from_forward(NoPsi(), f, scene_of(15), config("cluster.score=psi"))
    assert torch.equal(f.inverse, torch.arange(15)) and len(f.out.semantic_logits) == 15  # f is only read


def test_hypotheses_emit_a_mask_once_per_plausible_class():
    out, _ = three_objects()
    # group 1's voxels: 3 sure of class F+3, 2 sure of F+4 -> mean probabilities ~0.6 / ~0.4
    out.semantic_logits[9:11] = 0.0
    out.semantic_logits[9:11, F + 4] = 10.0
    cfg = config("cluster.hypotheses=2", "cluster.hypothesis_threshold=0.3")
    pred = predict_from_forward(NoPsi(), forward_of(out), scene_of(15), cfg)
    labels = [i.label_id for i in pred.instances]
    assert labels == train_id_to_nyu40(np.array([F + 1, F + 3, F + 4, F])).tolist()
    np.testing.assert_array_equal(pred.instances[1].mask, pred.instances[2].mask)
    base = predict_from_forward(NoPsi(), forward_of(out), scene_of(15), config())
    assert pred.instances[1].confidence == base.instances[1].confidence
    assert pred.instances[2].confidence == pytest.approx(base.instances[1].confidence * 0.4 / 0.6, rel=1e-3)


def test_several_taus_merged_by_nms():
    sigma = 0.1
    d = 0.25  # core and shell of one object: their kernel lies between the two taus
    kern = float(log_bhattacharyya_kernel(torch.tensor([[0.0, 0, 0]]), torch.full((1, 3), np.log(sigma)),
                                          torch.tensor([[d, 0, 0]]), torch.full((1, 3), np.log(sigma))).exp())
    assert 0.1 < kern < 0.9, kern
    core, shell = np.zeros((10, 3)), np.tile([d, 0.0, 0.0], (10, 1))
    groups = [(core, F + 1, 6.0), (shell, F + 1, 3.0), (np.full((5, 3), 20.0), F + 2, 4.0)]
    out = planted_output(groups, log_sigma=float(np.log(sigma)))
    f, scene = forward_of(out), scene_of(25)

    def sizes(*over):
        return [int(i.mask.sum()) for i in predict_from_forward(NoPsi(), f, scene, config(*over)).instances]

    assert sizes("cluster.tau_probabilistic=0.1") == [20, 5]
    assert sizes("cluster.tau_probabilistic=0.9") == [10, 5, 10]
    # pass 0.9: core, other, shell; pass 0.1: core+shell, other (duplicate). IoU(core+shell, core) = 0.5
    assert sizes("cluster.taus=[0.9,0.1]", "cluster.nms_iou=1.0") == [10, 5, 10, 20, 5]
    assert sizes("cluster.taus=[0.9,0.1]", "cluster.nms_iou=0.5") == [10, 5, 10, 20]
    # below 0.5 the merged object loses to the core (equal score, earlier pass)
    assert sizes("cluster.taus=[0.9,0.1]", "cluster.nms_iou=0.4") == [10, 5, 10]


def test_superpoint_option_snaps_the_predicted_masks():
    out, _ = three_objects()
    sp = np.array([0] * 6 + [1] * 4 + [2] * 5)  # superpoint 1 holds 4 of group 1's 5 voxels
    pred = predict_from_forward(NoPsi(), forward_of(out), scene_of(15, sp), config("cluster.superpoints=true"))
    assert [np.flatnonzero(i.mask).tolist() for i in pred.instances] == [list(range(6)), [6, 7, 8, 9],
                                                                         list(range(10, 15))]


def test_cluster_config_rejects_bad_options():
    for bad in ("cluster.score=best", "cluster.hypotheses=0", "cluster.nms_iou=1.5"):
        with pytest.raises(ConfigError, match="config.cluster"):
            load_config(None, [bad])


# ---------------------------------------------------------------- shared by predict and pseudo labels


def test_pseudo_labels_use_the_same_proposals_as_predict(prepared_dir, monkeypatch):
    from minkseg.engine import pseudo_labels
    from scannet_tools.prepare import load_prepared
    from tests.test_pseudo_labels import OracleTeacher

    scene = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    cfg = load_config(None, ["data.voxel_size=0.05", "selftrain.min_vertices=1", "cluster.min_size=1",
                             "cluster.hypotheses=2", "cluster.hypothesis_threshold=0.0", "cluster.taus=[0.3,0.6]"])
    teacher = OracleTeacher(scene, 0.05)
    seen = []
    real = pseudo_labels.scene_proposals

    def spy(*args):
        seen.append(real(*args))
        return seen[-1]

    monkeypatch.setattr(pseudo_labels, "scene_proposals", spy)
    pseudo_labels.pseudo_label_scene(teacher, scene, cfg, instances=True)
    # pseudo labels always snap to superpoints and give a mask one class (a pseudo instance has one);
    # with those two settings predict makes the very same proposals
    pred = predict_scene(teacher, scene, dataclasses.replace(cfg, cluster=dataclasses.replace(
        cfg.cluster, superpoints=True, hypotheses=1)))
    (props,) = seen
    assert props.num_proposals == len(pred.instances) > 0
    assert not any(np.array_equal(props.masks.mask(i), props.masks.mask(j))
                   for i in range(props.num_proposals) for j in range(i))
    for k, inst in enumerate(pred.instances):
        np.testing.assert_array_equal(props.masks.mask(k), inst.mask)
        assert int(train_id_to_nyu40(props.classes[k:k + 1])[0]) == inst.label_id
        assert float(props.scores[k]) == inst.confidence


# ---------------------------------------------------------------- Psi in plain supervised training


def test_train_with_the_recorrector_trains_psi_and_psi_scores_its_predictions(raw_root, prepared_dir, tmp_path,
                                                                            capsys):
    from minkseg.cli import main
    from minkseg.engine.checkpoint import load_checkpoint
    from minkseg.models.build import build_model
    from scannet_tools.prepare import load_prepared

    over = [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}", "name=psi",
            "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "train.batch_size=2", "train.epochs=1",
            "train.threads=1", "train.workers=0", "train.val_every=0", "cluster.min_size=2",
            "model.recorrector=true"]
    assert main(["train", "configs/synthetic_probabilistic.yaml", *over, "--max-steps", "2"]) == 0
    ckpt = tmp_path / "runs" / "psi" / "last.pth"
    model, cfg, _ = load_checkpoint(ckpt, tuned=False)
    assert model.recorrector is not None and cfg.model.recorrector
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg).state_dict()  # the weights the run started from (Trainer seeds the same way)
    trained = model.state_dict()
    psi = [k for k in trained if k.startswith("recorrector.") and k.endswith("weight")]
    assert psi and any(not torch.equal(init[k], trained[k]) for k in psi)
    scene = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    # a network two steps old finds no object: call every voxel a chair and every voxel a seed, so
    # that the trained Psi has proposals to score on the real features
    f = forward_scene(model, scene, cfg)
    chairs = torch.zeros_like(f.out.semantic_logits)
    chairs[:, F] = 1.0
    f = SceneForward(f.batch, ModelOutput(chairs, f.out.instance, f.out.features), f.inverse)
    psi_cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, score="psi", psi_refine_mask=True,
                                                                   seed_threshold=0.0, min_size=1))
    pred = predict_from_forward(model, f, scene, psi_cfg)
    assert len(pred.instances) > 0 and all(0.0 <= i.confidence <= 1.0 for i in pred.instances)
    # evaluate takes the options from the command line
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", str(out), "cluster.score=psi",
                 "cluster.superpoints=true", "cluster.hypotheses=2", "cluster.taus=[0.3,0.5]"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt), "train.lr=1"]) != 0
    assert "only cluster.* options" in capsys.readouterr().err
