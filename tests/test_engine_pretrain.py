"""minkseg.engine.pretrain's wiring with exact values on the one-weight model of test_engine_train
(the mixture NLL itself is tested in test_gmm.py and the pretext's learning in test_pretrain.py):
which scenes the pretext sees, the variance floor, the points the likelihood is taken over,
the validation NLL and best.pth, and pretrain.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minkseg.data.voxelize import collate, voxelize
from minkseg.engine import distributed, pretrain
from minkseg.engine import train as train_module
from minkseg.engine.pretrain import (
    PretextLoss,
    Pretrainer,
    covariance_floor,
    pretext_loss,
    pretext_points,
    pretrain_scenes,
)
from tests.test_engine_train import TRAIN, VAL, FakeBar, FakeWriter, make_tiny, read

PARTITION = ("model.head=partition",)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """test_engine_train's one-weight setup, with pretrain's progress lines recorded too."""
    monkeypatch.setattr(pretrain, "tqdm", FakeBar)
    return make_tiny(tmp_path, monkeypatch)


@pytest.fixture
def nll(monkeypatch):
    """batch_partition_nll replaced by the model output plus the voxel count; the calls are recorded."""
    calls = []

    def fake(points, logits, counts, floor):
        calls.append((points, logits, counts, floor))
        return logits + float(sum(counts))

    monkeypatch.setattr(pretrain, "batch_partition_nll", fake)
    return calls


def small_batch():
    xyz = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    feats = np.arange(18, dtype=np.float32).reshape(3, 6) / 10
    return collate([voxelize(xyz, feats, voxel_size=0.5, scene="a"), voxelize(xyz[:2], feats[:2], voxel_size=0.5,
                                                                               scene="b")])


def test_pretrain_scenes_all_or_the_unlabelled_ones(tiny):
    assert pretrain_scenes(tiny(*PARTITION)) == TRAIN
    labelled = {TRAIN[i] for i in np.random.default_rng(2).choice(5, 2, replace=False)}
    got = pretrain_scenes(tiny(*PARTITION, "pretrain.scenes=unlabeled", "data.label_ratio=0.4", "data.label_seed=2"))
    assert got == [s for s in TRAIN if s not in labelled]
    with pytest.raises(ValueError) as err:
        pretrain_scenes(tiny(*PARTITION, "pretrain.scenes=unlabeled"))
    assert str(err.value) == ("pretrain.scenes=unlabeled: every scene of train is labelled (set data.label_ratio < 1 "
                              "or data.label_list, or pretrain.scenes=all)")


@pytest.mark.parametrize("over, expected", [
    ((), [0.25 / 12] * 3),
    (("pretrain.covariance_floor=0.01",), [0.01] * 3),
    (("pretrain.inputs=[xyz,rgb]", "pretrain.feature_floor=0.5"), [0.25 / 12] * 3 + [0.5] * 3),
    (("pretrain.inputs=[xyz,rgb,normals]", "pretrain.covariance_floor=0.2"), [0.2] * 3 + [1e-3] * 6),
])
def test_covariance_floor(tiny, over, expected):
    floor = covariance_floor(tiny(*PARTITION, *over))  # voxels of 0.5 m: quantisation variance 0.25 / 12
    assert floor.dtype == torch.float32 and floor.device.type == "cpu"
    torch.testing.assert_close(floor, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0)
    assert covariance_floor(tiny(*PARTITION, *over), "meta").device.type == "meta"


@pytest.mark.parametrize("inputs, columns", [("[xyz]", []), ("[xyz,rgb]", [0, 1, 2]), ("[xyz,normals]", [3, 4, 5]),
                                             ("[xyz,rgb,normals]", [0, 1, 2, 3, 4, 5])])
def test_pretext_points_are_centres_then_the_chosen_features(tiny, inputs, columns):
    batch = small_batch()
    got = pretext_points(batch, tiny(*PARTITION, f"pretrain.inputs={inputs}", "data.use_normals=true"))
    torch.testing.assert_close(got, torch.cat([batch.centers, batch.feats[:, columns]], 1), rtol=0, atol=0)
    if not columns:
        assert got is batch.centers


def test_pretext_loss_takes_the_nll_per_scene(tiny, nll):
    cfg = tiny(*PARTITION)
    batch = small_batch()
    floor = torch.tensor([1.0, 2.0, 3.0])
    model = lambda b: torch.tensor(0.5)  # noqa: E731 - a model stand-in
    out = pretext_loss(model, batch, cfg, floor)
    assert list(out) == ["total"] and float(out["total"]) == 5.5  # 0.5 + 3 + 2 voxels
    points, logits, counts, got_floor = nll[0]
    assert counts == [3, 2] and got_floor is floor and float(logits) == 0.5
    torch.testing.assert_close(points, batch.centers, rtol=0, atol=0)
    module = PretextLoss(model, cfg, floor)
    assert float(module(batch)["total"]) == 5.5 and module.floor is floor and "floor" not in module.state_dict()
    assert nll[-1][3] is floor


def test_pretrainer_needs_normals_in_the_features_when_the_pretext_reads_them(tiny):
    with pytest.raises(ValueError) as err:
        Pretrainer(tiny(*PARTITION, "pretrain.inputs=[xyz,normals]"))
    assert str(err.value) == ("pretrain.inputs holds normals: set data.use_normals=true (they come from the input "
                              "features)")


def test_pretrainer_refuses_segmentation_heads(tiny):
    with pytest.raises(ValueError, match=r"^model\.head=margin is not trained by this command \(it trains "
                                         r"partition\)"):
        Pretrainer(tiny())


def test_pretrainer_trains_on_the_pretext_scenes_and_writes_its_record(tiny, nll, monkeypatch):
    wrapped = []
    monkeypatch.setattr(distributed, "wrap", lambda module, unused: wrapped.append((module, unused)) or module)
    cfg = tiny(*PARTITION, "pretrain.scenes=unlabeled", "data.label_ratio=0.4", "data.label_seed=2", "train.seed=5",
               "data.use_normals=true", "pretrain.inputs=[xyz,normals]")
    t = Pretrainer(cfg)
    labelled = {TRAIN[i] for i in np.random.default_rng(2).choice(5, 2, replace=False)}
    scenes = [s for s in TRAIN if s not in labelled]
    assert t.train_scenes == scenes and [f.stem for f in t.dataset.files] == scenes
    ds = t.dataset
    assert (ds.voxel_size, ds.augment, ds.use_normals, ds.seed) == (0.5, cfg.data.augment, True, 5)
    assert t.best == float("-inf")
    torch.testing.assert_close(t.floor, torch.tensor([0.25 / 12] * 3 + [1e-3] * 3), rtol=0, atol=0)
    t.fit()
    module, unused = wrapped[0]
    assert type(module) is PretextLoss and module.model is t.model and unused is False and module.floor is t.floor
    assert nll and all(c[3] is t.floor for c in nll)
    assert sorted(s for batch in t.model.seen for s in batch) == sorted(scenes * 2)  # 2 epochs of 3 scenes
    record = json.loads((cfg.run_dir / "pretrain.json").read_text())
    assert {k: record[k] for k in ("scenes", "epoch", "steps", "steps_this_call", "best_val_nll")} == {
        "scenes": 3, "epoch": 2, "steps": 4, "steps_this_call": 4, "best_val_nll": None}
    assert 0 <= record["seconds_this_call"] < 600


def test_validation_nll_is_the_mean_over_scenes_and_keeps_the_lowest(tiny, nll, monkeypatch):
    values = iter([3.0, 1.0, 1.0, float("nan")])
    monkeypatch.setattr(Pretrainer, "validation_nll", lambda self: next(values))
    cfg = tiny(*PARTITION, "train.epochs=4", "train.val_every=1", "train.save_every=10")
    t = Pretrainer(cfg)
    assert t.fit() == cfg.run_dir / "best.pth"
    assert t.best == -1.0 and read(cfg.run_dir / "best.pth")["epoch"] == 2
    for epoch, value in ((1, 3.0), (2, 1.0), (3, 1.0)):  # epoch 3 ties epoch 2: best.pth stays epoch 2's
        assert json.loads((cfg.run_dir / "val" / f"epoch_{epoch:04d}.json").read_text()) == {"nll": value, "scenes": 2}
    assert FakeBar.lines[:2] == ["epoch 1: validation NLL 3.0000 per voxel (2 scenes)",
                                "epoch 2: validation NLL 1.0000 per voxel (2 scenes)"]
    val = [(tag, v, step) for tag, v, step in FakeWriter.made[0].scalars if tag.startswith("val/")]
    assert val[:2] == [("val/nll", 3.0, 3), ("val/nll", 1.0, 6)] and len(val) == 4
    assert json.loads((cfg.run_dir / "pretrain.json").read_text())["best_val_nll"] == 1.0


def test_validation_nll_runs_each_validation_scene_once_without_augmentation(tiny, nll):
    t = Pretrainer(tiny(*PARTITION, "train.val_every=1"))
    t.model.train(False)
    value = t.validation_nll()
    # the fake NLL is the model output (w times the feature sum) plus the scene's voxel count (3)
    assert [c[2] for c in nll] == [[3], [3]] and t.model.seen == [[VAL[0]], [VAL[1]]]
    assert value == pytest.approx(sum(float(c[1]) + 3.0 for c in nll) / 2, rel=1e-6)
    assert t.model.training  # back in training mode
    for points, _, _, floor in nll:
        assert points.shape == (3, 3) and floor is t.floor


def test_validation_nll_without_scenes_is_zero(tiny, nll):
    t = Pretrainer(tiny(*PARTITION))
    assert t.val_scenes == [] and t.validation_nll() == 0.0 and nll == []


def test_a_resumed_pretraining_keeps_its_best(tiny, nll, monkeypatch):
    monkeypatch.setattr(Pretrainer, "validation_nll", lambda self: 4.0)
    cfg = tiny(*PARTITION, "train.val_every=1", "train.epochs=3")
    t = Pretrainer(cfg)
    t.fit(max_steps=4)
    assert t.best == -4.0
    resumed = Pretrainer(cfg, resume=True)
    assert resumed.best == -4.0 and resumed.step == 4
    resumed.fit(max_steps=2)
    record = json.loads((cfg.run_dir / "pretrain.json").read_text())
    assert (record["steps"], record["steps_this_call"], record["best_val_nll"]) == (6, 2, 4.0)


def test_validate_returns_the_nll(tiny, nll, monkeypatch):
    monkeypatch.setattr(Pretrainer, "validation_nll", lambda self: 2.5)
    t = Pretrainer(tiny(*PARTITION, "train.val_every=1"))
    assert t.validate() == {"nll": 2.5} and t.best == -2.5


def test_pretrainer_runs_on_the_asked_device_with_the_floor_there(tiny, nll, monkeypatch):
    asked, floors = [], []
    monkeypatch.setattr(train_module, "resolve_device", lambda device: asked.append(device) or torch.device("cpu"))
    original = pretrain.covariance_floor
    monkeypatch.setattr(pretrain, "covariance_floor", lambda cfg, device: floors.append(device) or original(
        cfg, device))
    Pretrainer(tiny(*PARTITION), device="cpu")
    assert asked == ["cpu"] and floors == [torch.device("cpu")]


def test_covariance_floor_is_float32_whatever_the_default_dtype(tiny, float64):
    assert covariance_floor(tiny(*PARTITION)).dtype == torch.float32
