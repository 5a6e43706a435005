"""Self-training: pseudo-labelled training data, the re-correction module Psi, round
bookkeeping and resume, and a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from minkseg.cli import main
from minkseg.config import load_config
from minkseg.data.dataset import PreparedScenes
from minkseg.data.voxelize import UNKNOWN_INSTANCE, collate, voxelize
from minkseg.engine.selftrain import BASELINE, SelfTraining, certainty_threshold
from minkseg.losses import batch_loss
from minkseg.losses.recorrect import proposal_targets, recorrection_loss
from minkseg.models.model import SegmentationModel
from minkseg.models.recorrect import ProposalRecorrector
from minkseg.viz.compare import run_labels
from scannet_tools.labels import IGNORE_ID


def test_unknown_instance_vertices_make_unknown_voxels():
    xyz = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.31, 0, 0], [0.61, 0, 0]], np.float32)
    sem = np.array([5, 5, 5, 1])
    inst = np.array([3, 3, UNKNOWN_INSTANCE, -1])
    v = voxelize(xyz, np.zeros((4, 3), np.float32), sem, inst, voxel_size=0.1)
    by_vertex = v.instance_known[v.inverse]
    assert by_vertex.tolist() == [True, True, False, True]
    assert v.num_instances == 1 and v.instance[v.inverse].tolist() == [0, 0, -1, -1]
    plain = voxelize(xyz, np.zeros((4, 3), np.float32), sem, np.array([3, 3, -1, -1]), voxel_size=0.1)
    b = collate([plain, v])
    assert plain.instance_known is None  # ground truth: every voxel's instance is known
    assert b.instance_known.tolist() == [True] * 3 + v.instance_known.tolist()


def test_scene_weights_scale_the_batch_loss(prepared_dir):
    torch.manual_seed(0)
    files = sorted(prepared_dir.glob("*.npz"))[:2]
    model = SegmentationModel.build("probabilistic", "MinkUNet14A").eval()
    scenes = PreparedScenes(files, voxel_size=0.1, weights=[1.0, 0.0])
    one = batch_loss(model(collate([scenes[0]])), collate([scenes[0]]))
    both = batch_loss(model(b := collate([scenes[0], scenes[1]])), b)
    for key in one:  # the zero-weight scene adds nothing; the mean is over 2 scenes
        assert both[key].item() == pytest.approx(one[key].item() / 2, rel=1e-5)
    # a scene of weight w adds w times its own loss: (L0 + 0.25 L1) / 2 in float32
    second = PreparedScenes(files[1:], voxel_size=0.1)[0]
    alone = batch_loss(model(collate([second])), collate([second]))
    quarter = PreparedScenes(files, voxel_size=0.1, weights=[1.0, 0.25])
    assert [s.weight for s in (quarter[0], quarter[1])] == [1.0, 0.25]
    mixed = batch_loss(model(b := collate([quarter[0], quarter[1]])), b)
    for key in one:
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx((one[key].item() + 0.25 * alone[key].item()) / 2, rel=1e-5,
                                                  abs=1e-6), key


def test_pseudo_label_files_replace_ground_truth(prepared_dir, tmp_path):
    f = sorted(prepared_dir.glob("*.npz"))[0]
    n = len(np.load(f)["xyz"])
    sem = np.full(n, 7, np.int16)
    sem[::2] = IGNORE_ID
    np.savez(tmp_path / "p.npz", semantic=sem, instance=np.full(n, UNKNOWN_INSTANCE, np.int32))
    s = PreparedScenes([f], voxel_size=0.1, label_files=[tmp_path / "p.npz"], weights=[0.5])[0]
    assert not s.labeled and s.weight == 0.5 and s.num_instances == 0
    assert set(s.semantic.unique().tolist()) <= {7, IGNORE_ID} and not s.instance_known.any()
    np.savez(tmp_path / "short.npz", semantic=sem[:-1], instance=np.zeros(n - 1, np.int32))
    with pytest.raises(ValueError, match="short.npz: .* pseudo labels for a scene of"):
        PreparedScenes([f], label_files=[tmp_path / "short.npz"])[0]


def test_proposal_targets_on_a_hand_built_scene():
    # voxels 0-3 instance 0 (class 5), 4-7 instance 1 (class 2), 8-9 background
    instance = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    instance_class = torch.tensor([5, 2])
    # proposal 0: voxels 0-2 (IoU 3/4); 1: voxels 3-6 (IoU 3/5 with inst 1); 2: background only
    members = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 9])
    owner = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    t = proposal_targets(members, owner, 3, instance, instance_class, num_classes=18)
    assert t.iou.tolist() == pytest.approx([0.75, 0.6, 0.0])
    assert t.classes.tolist() == [5, 2, 18] and t.positive.tolist() == [True, True, False]
    assert t.mask.tolist() == [True, True, True, False, True, True, True, False, False]
    # perfect logits give a small loss, reversed ones a large one
    cls = torch.full((3, 19), -8.0)
    cls[torch.arange(3), t.classes] = 8.0
    good = recorrection_loss(cls, 16 * t.mask.float() - 8, torch.logit(t.iou.clamp(1e-4, 1 - 1e-4)), owner, t)
    bad = recorrection_loss(-cls, 8 - 16 * t.mask.float(), -torch.logit(t.iou.clamp(1e-4, 1 - 1e-4)), owner, t)
    assert good["psi_class"] < 1e-3 and good["psi_mask"] < 1e-3 and bad["psi_class"] > 10 and bad["psi_mask"] > 5
    assert good["psi_certainty"] < bad["psi_certainty"]


def test_recorrector_is_per_proposal_and_order_free():
    torch.manual_seed(0)
    psi = ProposalRecorrector(16, width=8)
    coords = torch.randint(0, 20, (300, 3))
    coords = torch.unique(coords, dim=0)
    m = len(coords)
    feats = torch.randn(m, 16, requires_grad=True)
    centers = coords.float() * 0.1
    members = torch.cat([torch.arange(0, 40), torch.arange(30, 90)])  # proposals may share voxels
    owner = torch.cat([torch.zeros(40), torch.ones(60)]).long()
    out = psi(feats, coords, centers, members, owner, 2)
    out.class_logits.sum().backward()
    assert torch.isfinite(feats.grad).all() and feats.grad[members].abs().sum() > 0
    assert feats.grad[90:].abs().sum() == 0  # voxels of no proposal are not looked at
    psi.eval()
    with torch.no_grad():
        a = psi(feats, coords, centers, members, owner, 2)
        perm = torch.randperm(len(members))
        b = psi(feats, coords, centers, members[perm], 1 - owner[perm], 2)  # shuffled and renumbered
    assert torch.allclose(a.class_logits, b.class_logits.flip(0), atol=1e-5)
    assert torch.allclose(a.certainty_logits, b.certainty_logits.flip(0), atol=1e-5)
    assert torch.allclose(a.mask_logits[perm], b.mask_logits, atol=1e-5)


def test_certainty_schedule_and_comparison_labels(tmp_path):
    cfg = load_config(None, ["selftrain.certainty=[0.1,0.3,0.5,0.7,0.9]"])
    assert [certainty_threshold(cfg, r) for r in range(1, 8)] == [0.1, 0.3, 0.5, 0.7, 0.9, 0.9, 0.9]
    assert certainty_threshold(load_config(None, []), 4) == 0.5
    runs = [tmp_path / "a" / "round_5", tmp_path / "b" / "round_5", tmp_path / "b" / BASELINE / "last.pth"]
    assert run_labels(runs) == ["a/round_5", "b/round_5", BASELINE]


def tiny(raw_root, prepared_dir, tmp_path, *over):
    return [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}", "name=st",
            "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "train.batch_size=2", "train.epochs=2",
            "train.threads=1", "data.label_ratio=0.5", "selftrain.rounds=2", "selftrain.epochs=1",
            "selftrain.min_vertices=1", "cluster.min_size=2", *over]


def test_tiny_selftraining_end_to_end_with_resume(raw_root, prepared_dir, tmp_path, capsys):
    args = tiny(raw_root, prepared_dir, tmp_path, "selftrain.same_budget_baseline=true")
    assert main(["selftrain", "configs/synthetic_probabilistic.yaml", *args]) == 0
    root = tmp_path / "runs" / "st"
    split = json.loads((root / "split.json").read_text())
    assert len(split["labeled"]) == 1 and len(split["unlabeled"]) == 1
    unlabeled = split["unlabeled"][0]
    for r in range(3):
        assert (root / f"round_{r}" / "metrics.json").is_file() and (root / f"round_{r}" / "last.pth").is_file()
    assert not (root / "round_0" / "pseudo").exists()
    p1 = np.load(root / "round_1" / "pseudo" / f"{unlabeled}.npz")
    assert (p1["instance"] == UNKNOWN_INSTANCE).all()  # round 1: semantic pseudo labels only
    stats = [json.loads((root / f"round_{r}" / "pseudo" / "stats.json").read_text()) for r in (1, 2)]
    assert [s["instances"] for s in stats] == [False, True] and stats[1]["recorrect"] is True
    summary = json.loads((root / "summary.json").read_text())
    steps = {row["run"]: row["steps"] for row in summary["rounds"]}
    assert steps[BASELINE] == steps["round_2"]  # the same total budget
    assert (root / "compare" / "report.md").is_file() and "round_2" in (root / "summary.md").read_text()
    # Psi is part of every round's model and is trained along with it
    w0, w1 = (torch.load(root / f"round_{r}" / "last.pth", weights_only=True)["model"] for r in (0, 1))
    psi = [k for k in w0 if k.startswith("recorrector.") and k.endswith("weight")]
    assert psi and any(not torch.equal(w0[k], w1[k]) for k in psi)

    with pytest.raises(FileExistsError, match="already holds a self-training run"):
        SelfTraining(load_config("configs/synthetic_probabilistic.yaml", args))
    # resume after an interruption in round 2: only round 2 (and what follows) is redone
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "round_1" / "last.pth", root / "round_2" / "pseudo" /
                                                 f"{unlabeled}.npz")}
    (root / "round_2" / "metrics.json").unlink()
    (root / "round_2" / "last.pth").unlink()
    capsys.readouterr()
    assert main(["selftrain", "configs/synthetic_probabilistic.yaml", *args, "--resume"]) == 0
    log = capsys.readouterr().out + capsys.readouterr().err
    assert "round 1: finished earlier, skipped" in log
    assert (root / "round_2" / "metrics.json").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    with pytest.raises(ValueError, match="different config"):
        SelfTraining(load_config("configs/synthetic_probabilistic.yaml", args + ["selftrain.pseudo_weight=0.5"]),
                     resume=True)


def test_selftrain_refuses_a_fully_labelled_split(raw_root, prepared_dir, tmp_path):
    with pytest.raises(ValueError, match="needs unlabelled scenes"):
        SelfTraining(load_config(None, tiny(raw_root, prepared_dir, tmp_path, "data.label_ratio=1.0")))


def test_margin_head_selftraining_without_recorrector(raw_root, prepared_dir, tmp_path):
    args = tiny(raw_root, prepared_dir, tmp_path, "selftrain.recorrect=false", "selftrain.rounds=2")
    summary = SelfTraining(load_config("configs/synthetic_margin.yaml", args)).run()
    stats = summary["rounds"][2]["pseudo"]
    assert stats["instances"] is True and stats["recorrect"] is False
    state = torch.load(tmp_path / "runs" / "st" / "round_2" / "last.pth", weights_only=True)
    assert not any(k.startswith("recorrector.") for k in state["model"])


def test_a_broken_unlabelled_scene_is_reported_and_skipped(raw_root, prepared_dir, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_dir, prepared)
    args = tiny(raw_root, prepared, tmp_path, "selftrain.rounds=1")
    st = SelfTraining(load_config(None, args))
    bad = prepared / f"{st.unlabeled[0]}.npz"
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated after round 0 was set up
    st.run()
    stats = json.loads((tmp_path / "runs" / "st" / "round_1" / "pseudo" / "stats.json").read_text())
    assert stats["failed"] == [st.unlabeled[0]] and stats["scenes"] == 0
    assert f"{st.unlabeled[0]}: no pseudo labels" in capsys.readouterr().out
