"""minkseg.engine.train's bookkeeping with exact values, on a one-parameter model and hand-made
three-vertex scenes (seconds, not minutes): the loss's composition, which scenes each step
sees, steps / epochs / scenes counted, the learning-rate schedule, what last.pth and best.pth
hold, resume, validation and what is logged. test_dataloader.py, test_distributed.py and
test_overfit.py train the real network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.tensorboard

from minkseg.config import load_config, to_dict
from minkseg.engine import distributed, train
from minkseg.engine.checkpoint import CheckpointError, save_checkpoint
from minkseg.engine.train import Trainer, TrainingLoss, loss_weights, training_loss

TRAIN = [f"scene00{i:02d}_00" for i in (7, 3, 5, 1, 9)]  # list order, not sorted order
VAL = ["scene0050_00", "scene0051_00"]


class TinyModel(torch.nn.Module):
    """One weight w; the "output" is w times the batch's feature sum, so the stubbed loss below is
    linear in w. Records the scenes of every forward."""

    recorrector = None

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(()))
        self.register_buffer("count", torch.zeros(()))
        self.seen: list[list[str]] = []

    def forward(self, batch):
        self.seen.append([s.scene for s in batch.scenes])
        return self.w * batch.feats.sum()


class FakeWriter:
    """SummaryWriter stand-in: the scalars, in order."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


class FakeBar:
    """tqdm stand-in: constructor arguments, updates and written lines."""

    bars: list[FakeBar] = []
    lines: list[str] = []

    def __init__(self, **kw):
        self.kw, self.updates, self.postfix, self.closed = kw, 0, [], False
        FakeBar.bars.append(self)

    def set_postfix(self, **kw) -> None:
        self.postfix.append(kw)

    def update(self, n: int) -> None:
        self.updates += n

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def write(line: str) -> None:
        FakeBar.lines.append(line)


def write_scene(folder: Path, name: str, shade: int) -> None:
    xyz = np.array([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.6, 0.3]], np.float32)
    rgb = np.full((3, 3), shade, np.uint8)
    np.savez(folder / f"{name}.npz", scene=name, xyz=xyz, rgb=rgb, normals=np.zeros((3, 3), np.float32),
             semantic=np.array([5, 5, 0]), instance=np.array([1, 1, -1]))


def make_tiny(tmp_path: Path, monkeypatch):
    """Scenes on disk, the one-weight model, a stubbed loss and recording writer / progress bars;
    returns a config maker."""
    root, prepared = tmp_path / "root", tmp_path / "prepared"
    root.mkdir()
    prepared.mkdir()
    (root / "scannetv2_train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "scannetv2_val.txt").write_text("\n".join(VAL) + "\n")
    for i, s in enumerate(TRAIN + VAL):
        write_scene(prepared, s, 20 * i)
    monkeypatch.setattr(train, "build_model", lambda cfg: TinyModel())
    losses = []

    def batch_loss(out, batch, weights, chunk):
        losses.append((weights, chunk))
        return {"total": out, "scenes": torch.tensor(float(len(batch.scenes)))}

    monkeypatch.setattr(train, "batch_loss", batch_loss)
    FakeWriter.made, FakeBar.bars, FakeBar.lines = [], [], []
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", FakeWriter)
    monkeypatch.setattr(train, "tqdm", FakeBar)

    def make(*over: str):
        return load_config(None, [f"data.root={root}", f"data.prepared={prepared}", f"runs_dir={tmp_path / 'runs'}",
                                  "name=t", "model.head=margin", "data.voxel_size=0.5", "train.batch_size=2",
                                  "train.epochs=2", "train.val_every=0", "train.workers=0", "train.lr=0.01",
                                  "train.weight_decay=0", "train.log_every=4", *over])

    make.losses = losses
    return make


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    return make_tiny(tmp_path, monkeypatch)


# the scenes as stored (moved to the origin only): three voxels of known colour each
NO_AUGMENT = ("data.augment.rotate_z=false", "data.augment.flip=false", "data.augment.scale=[1.0,1.0]",
              "data.augment.jitter_std=0", "data.augment.color_jitter_std=0")


def epoch_batches(seed: int, epoch: int, batch_size: int = 2) -> list[list[str]]:
    """The scenes of each step of an epoch: the (seed, epoch) permutation cut into batches."""
    order = np.random.default_rng([seed, epoch]).permutation(len(TRAIN))
    return [[TRAIN[i] for i in order[s:s + batch_size]] for s in range(0, len(TRAIN), batch_size)]


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------ the loss


def test_loss_weights_follow_the_head(tiny):
    prob, margin = tiny("model.head=probabilistic"), tiny()
    assert loss_weights(prob) is prob.loss.probabilistic and loss_weights(margin) is margin.loss.margin


def test_training_loss_is_phi_plus_alpha_times_every_psi_term(tiny, monkeypatch):
    cfg = tiny("loss.recorrect=0.5", "loss.recorrect_proposals=7", "loss.chunk_elements=99")
    calls = []

    class WithPsi(torch.nn.Module):
        recorrector = "psi"

        def forward(self, batch):
            return "out"

    model, batch = WithPsi(), object()
    monkeypatch.setattr(train, "batch_loss", lambda out, b, weights, chunk: calls.append(
        ("phi", out, b, weights, chunk)) or {"total": torch.tensor(2.0), "seg": torch.tensor(5.0)})
    monkeypatch.setattr(train, "recorrection_batch_loss", lambda m, out, b, cluster, k: calls.append(
        ("psi", m, out, b, cluster, k)) or {"psi_a": torch.tensor(1.0), "psi_b": torch.tensor(3.0)})
    terms = training_loss(model, batch, cfg)
    assert {k: float(v) for k, v in terms.items()} == {"total": 4.0, "seg": 5.0, "psi_a": 1.0, "psi_b": 3.0}
    assert calls == [("phi", "out", batch, cfg.loss.margin, 99), ("psi", model, "out", batch, cfg.cluster, 7)]
    WithPsi.recorrector = None
    calls.clear()
    assert {k: float(v) for k, v in training_loss(model, batch, cfg).items()} == {"total": 2.0, "seg": 5.0}
    assert [c[0] for c in calls] == ["phi"]
    WithPsi.recorrector = "psi"
    assert float(TrainingLoss(model, cfg)(batch)["total"]) == 4.0


# ------------------------------------------------------------------------------ construction


def test_trainer_refuses_the_pretext_head(tiny):
    with pytest.raises(ValueError) as err:
        Trainer(tiny("model.head=partition"))
    assert str(err.value) == ("model.head=partition is not trained by this command (it trains probabilistic or "
                              "margin); model.head=partition is minkseg pretrain's")


def test_trainer_settings(tiny, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    cfg = tiny("train.seed=4", "train.threads=3", "train.lr_milestones=[1,3]", "train.lr_gamma=0.25",
               "train.weight_decay=0.5", "train.val_every=2", "data.augment.rotate_z=false")
    t = Trainer(cfg)
    assert threads == [3] and t.device == torch.device("cpu") and t.world == 1 and t.workers == 0
    torch.manual_seed(4)
    assert float(t.model.w.detach()) == float(torch.randn(()))  # the model is built after seeding with train.seed
    group = t.optimizer.param_groups[0]
    assert type(t.optimizer) is torch.optim.Adam and (group["lr"], group["weight_decay"]) == (0.01, 0.5)
    assert dict(t.scheduler.milestones) == {1: 1, 3: 1} and t.scheduler.gamma == 0.25
    assert t.train_scenes == TRAIN and t.val_scenes == VAL
    assert [f.stem for f in t.dataset.files] == TRAIN
    ds = t.dataset
    assert (ds.voxel_size, ds.augment, ds.use_normals, ds.seed) == (0.5, cfg.data.augment, False, 4)
    assert (t.epoch, t.epoch_step, t.step, t.best, t.epoch_scenes) == (0, 0, 0, -1.0, 0)
    assert (cfg.run_dir / "config.yaml").is_file() and not (cfg.run_dir / "init_backbone.json").exists()
    assert load_config(cfg.run_dir / "config.yaml") == cfg


def test_trainer_without_threads_leaves_torch_alone_and_without_validation_reads_no_val(tiny, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail("threads set"))
    t = Trainer(tiny("train.threads=0", "data.label_ratio=0.4", "data.label_seed=1"))
    assert t.val_scenes == []
    chosen = sorted(np.random.default_rng(1).choice(5, 2, replace=False))
    assert t.train_scenes == [TRAIN[i] for i in chosen]


def test_init_model_and_init_backbone(tiny, monkeypatch):
    t = Trainer(tiny(), init_model={"w": torch.tensor(0.75), "count": torch.tensor(2.0)})
    assert float(t.model.w.detach()) == 0.75 and float(t.model.count) == 2.0
    loaded = []
    monkeypatch.setattr(train, "load_backbone", lambda model, path, device: loaded.append((path, device)) or {
        "path": path, "sha256": "ab"})
    cfg = tiny("model.init_backbone=pre.pth", "name=u")
    Trainer(cfg)
    assert loaded == [("pre.pth", torch.device("cpu"))]
    assert json.loads((cfg.run_dir / "init_backbone.json").read_text()) == {"path": "pre.pth", "sha256": "ab"}
    Trainer(tiny("model.init_backbone=pre.pth", "name=v"), init_model={"w": torch.tensor(1.0),
                                                                          "count": torch.tensor(0.0)})
    assert len(loaded) == 1  # a teacher's weights win over the backbone


def test_a_second_run_in_the_same_folder_is_refused(tiny):
    cfg = tiny()
    save_checkpoint(cfg.run_dir / "last.pth", {"model": {}, "config": {}})
    with pytest.raises(FileExistsError) as err:
        Trainer(cfg)
    assert str(err.value) == f"{cfg.run_dir} already holds a run; pass --resume or choose another name="


def test_resume_refusals(tiny):
    cfg = tiny()
    with pytest.raises(FileNotFoundError) as err:
        Trainer(cfg, resume=True)
    assert str(err.value) == f"{cfg.run_dir / 'last.pth'}: nothing to resume"
    Trainer(cfg).fit(max_steps=1)
    last = cfg.run_dir / "last.pth"
    with pytest.raises(ValueError) as err:
        Trainer(tiny("train.lr=0.02"), resume=True)
    assert str(err.value) == f"{last}: the run was started with a different config; resume with the same one"
    state = read(last)
    state["config"]["train"]["epochs"] = "many"
    save_checkpoint(last, state)
    with pytest.raises(CheckpointError, match=rf"^{last}: the stored config is not valid \(.+\)$"):
        Trainer(cfg, resume=True)
    del state["torch_rng"]
    save_checkpoint(last, state)
    with pytest.raises(CheckpointError, match="lacks 'torch_rng'"):
        Trainer(cfg, resume=True)


# ------------------------------------------------------------------------------ fit


def test_each_epoch_trains_its_seeded_permutation_and_counts_steps(tiny):
    cfg = tiny("train.seed=3", "train.lr_milestones=[1]", "train.lr_gamma=0.5")
    t = Trainer(cfg)
    assert t.batches(1) == [list(b) for b in np.array_split(np.random.default_rng([3, 1]).permutation(5), [2, 4])]
    assert t.batches(1, start=4) == [[int(np.random.default_rng([3, 1]).permutation(5)[4])]]
    path = t.fit()
    assert path == cfg.run_dir / "last.pth" and t.dataset.epoch == 1  # direct indexing sees the last epoch
    assert t.model.seen == epoch_batches(3, 0) + epoch_batches(3, 1)
    assert (t.epoch, t.epoch_step, t.epoch_scenes, t.step) == (2, 0, 0, 6)
    state = read(path)
    assert {k: state[k] for k in ("epoch", "epoch_step", "epoch_scenes", "step", "best", "world_size")} == {
        "epoch": 2, "epoch_step": 0, "epoch_scenes": 0, "step": 6, "best": -1.0, "world_size": 1}
    assert state["config"] == to_dict(cfg) and state["scheduler"]["last_epoch"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.005  # halved after epoch 1
    torch.testing.assert_close(state["model"]["w"], t.model.w.detach(), rtol=0, atol=0)
    # steps 1 and 4 are logged (the first step, then every log_every): loss terms and the lr of that step
    writer = FakeWriter.made[0]
    assert writer.log_dir == str(cfg.run_dir / "tb") and writer.closed
    assert [(tag, step) for tag, _, step in writer.scalars] == [
        ("train/scenes", 1), ("train/total", 1), ("train/lr", 1), ("train/scenes", 4), ("train/total", 4),
        ("train/lr", 4)]
    scalars = {(tag, step): v for tag, v, step in writer.scalars}
    assert scalars["train/scenes", 1] == 2.0 and scalars["train/lr", 1] == 0.01 and scalars["train/lr", 4] == 0.005


def test_progress_bars_count_each_epochs_batches(tiny):
    t = Trainer(tiny())
    t.fit()
    assert [b.kw for b in FakeBar.bars] == [
        {"total": 3, "initial": 0, "desc": f"epoch {e}/2", "unit": "batch", "dynamic_ncols": True, "disable": None}
        for e in (1, 2)]
    assert [b.updates for b in FakeBar.bars] == [3, 3] and all(b.closed for b in FakeBar.bars)
    post = FakeBar.bars[0].postfix
    assert len(post) == 3 and set(post[0]) == {"loss", "scenes_per_s"}
    assert re.fullmatch(r"-?\d+\.\d{3}", post[0]["loss"]) and re.fullmatch(r"\d+\.\d{2}", post[0]["scenes_per_s"])


def test_one_adam_step_per_batch_with_fresh_gradients(tiny):
    t = Trainer(tiny("train.epochs=1", *NO_AUGMENT))
    w0 = float(t.model.w.detach())
    t.fit()
    sums = [3 * 3 * sum(20 * TRAIN.index(s) for s in batch) / 255 - 0.5 * 9 * len(batch)
            for batch in epoch_batches(0, 0)]  # d(loss)/dw: the batch's feature sum
    ref = torch.nn.Parameter(torch.tensor(w0))
    adam = torch.optim.Adam([ref], lr=0.01, weight_decay=0)
    for g in sums:
        ref.grad = torch.tensor(float(g))
        adam.step()
    torch.testing.assert_close(t.model.w.detach(), ref.detach(), rtol=1e-6, atol=1e-7)


def test_training_step_returns_the_terms_and_steps_once(tiny):
    t = Trainer(tiny())
    calls = []
    module = lambda batch: {"total": t.model.w * 2.0}  # noqa: E731 - a module stand-in
    t.model.w.grad = torch.tensor(100.0)  # a stale gradient must not add to the step
    t.optimizer.step = lambda: calls.append(float(t.model.w.grad))
    terms = t.train_step(module, None)
    assert calls == [2.0] and float(terms["total"].detach()) == float(t.model.w.detach()) * 2


def test_interrupted_run_resumes_with_the_unseen_batches_and_ends_bitwise_equal(tiny):
    full = Trainer(tiny("name=full"))
    full.fit()
    part = Trainer(tiny("name=part"))
    assert part.fit(max_steps=4) == part.run_dir / "last.pth"
    assert part.model.seen == epoch_batches(0, 0) + epoch_batches(0, 1)[:1]
    state = read(part.run_dir / "last.pth")
    assert {k: state[k] for k in ("epoch", "epoch_step", "epoch_scenes", "step")} == {
        "epoch": 1, "epoch_step": 1, "epoch_scenes": 2, "step": 4}
    resumed = Trainer(tiny("name=part"), resume=True)
    assert (resumed.epoch, resumed.epoch_step, resumed.epoch_scenes, resumed.step) == (1, 1, 2, 4)
    resumed.fit()
    assert resumed.model.seen == epoch_batches(0, 1)[1:]
    assert FakeBar.bars[-1].kw["initial"] == 1 and FakeBar.bars[-1].kw["total"] == 3
    assert resumed.step == 6 and float(resumed.model.w.detach()) == float(full.model.w.detach())


def test_max_steps_zero_saves_without_loading_anything(tiny, monkeypatch):
    loaded = []
    original = train.PreparedScenes.__getitem__
    monkeypatch.setattr(train.PreparedScenes, "__getitem__", lambda self, key: loaded.append(key) or original(
        self, key))
    t = Trainer(tiny())
    t.fit(max_steps=0)
    assert loaded == [] and t.model.seen == [] and read(t.run_dir / "last.pth")["step"] == 0
    t2 = Trainer(tiny("name=two"))
    t2.fit(max_steps=2)
    assert len(loaded) == 4  # the two batches' scenes, not the third batch
    assert read(t2.run_dir / "last.pth")["epoch_scenes"] == 4


def test_resume_from_another_world_size_restarts_the_bar_and_says_so(tiny):
    cfg = tiny()
    Trainer(cfg).fit(max_steps=1)
    last = cfg.run_dir / "last.pth"
    state = read(last)
    state.update(world_size=2, epoch_scenes=4, epoch_step=1)
    save_checkpoint(last, state)
    FakeBar.lines.clear()
    t = Trainer(cfg, resume=True)
    assert (t.epoch_step, t.epoch_scenes) == (0, 4)
    assert FakeBar.lines == ["resuming a run of world size 2 with world size 1: the effective batch changes from 4 "
                             "to 2 scenes, the rest of epoch 1 continues after its first 4 scenes (exact resume "
                             "needs the same world size; train.lr is not rescaled)"]
    t.fit()
    assert t.model.seen == epoch_batches(0, 0)[2:] + epoch_batches(0, 1)


def test_resume_of_a_checkpoint_from_before_distributed_training(tiny):
    cfg = tiny()
    Trainer(cfg).fit(max_steps=1)
    last = cfg.run_dir / "last.pth"
    state = read(last)
    del state["world_size"], state["epoch_scenes"]  # counted steps of one process
    save_checkpoint(last, state)
    FakeBar.lines.clear()
    t = Trainer(cfg, resume=True)
    assert (t.epoch_step, t.epoch_scenes) == (1, 2) and FakeBar.lines == []  # 1 step of 2 scenes


def test_checkpoints_every_save_every_epochs_and_at_the_end(tiny, monkeypatch):
    saved = []
    original = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, state: saved.append((path.name, state["epoch"]))
                        or original(path, state))
    broadcasts = []
    monkeypatch.setattr(distributed, "broadcast_buffers", lambda model: broadcasts.append(model))
    t = Trainer(tiny("train.epochs=5", "train.save_every=2"))
    t.fit()
    assert saved == [("last.pth", 2), ("last.pth", 4), ("last.pth", 5)]
    assert broadcasts == [t.model] * 5
    saved.clear()
    broadcasts.clear()
    t2 = Trainer(tiny("train.epochs=5", "train.save_every=2", "name=u"))
    t2.fit(max_steps=4)
    assert saved == [("last.pth", 1)] and broadcasts == [t2.model] * 2


def test_validation_keeps_the_best_and_writes_each_epochs_metrics(tiny, monkeypatch):
    values = iter([0.2, 0.5, 0.4, float("nan")])
    calls = []

    def evaluate_model(model, cfg, scenes, device, workers, split_over_ranks):
        calls.append((model, cfg, scenes, device, workers, split_over_ranks))
        v = next(values)
        return {"instance": {"mAP": v / 2, "AP50": v, "AP25": 0.75}, "semantic": {"mIoU": 0.125}}

    monkeypatch.setattr(train, "evaluate_model", evaluate_model)
    cfg = tiny("train.epochs=4", "train.val_every=1", "train.save_every=10")
    t = Trainer(cfg)
    FakeBar.lines.clear()
    assert t.fit() == cfg.run_dir / "best.pth"
    assert calls == [(t.model, cfg, VAL, torch.device("cpu"), 0, True)] * 4
    assert t.best == 0.5 and read(cfg.run_dir / "best.pth")["epoch"] == 2
    assert read(cfg.run_dir / "best.pth")["best"] == 0.5
    for epoch in (1, 2, 3):
        got = json.loads((cfg.run_dir / "val" / f"epoch_{epoch:04d}.json").read_text())
        assert got["step"] == 3 * epoch and got["semantic"] == {"mIoU": 0.125}
    assert FakeBar.lines[1] == "epoch 2: val mAP 0.250 AP50 0.500 AP25 0.750 mIoU 0.125"
    val = [(tag, v, step) for tag, v, step in FakeWriter.made[0].scalars if tag.startswith("val/")]
    assert val[:3] == [("val/mAP", 0.1, 3), ("val/AP50", 0.2, 3), ("val/mIoU", 0.125, 3)]
    assert len(val) == 12


def test_validation_schedule_and_mIoU_selection(tiny, monkeypatch):
    epochs = []
    monkeypatch.setattr(train, "evaluate_model", lambda model, cfg, scenes, device, workers, split_over_ranks:
                        epochs.append(t.epoch) or {"instance": {"mAP": 0.0, "AP50": 0.0, "AP25": 0.0},
                                                   "semantic": {"mIoU": 0.3 if t.epoch < 5 else 0.6}})
    t = Trainer(tiny("train.epochs=5", "train.val_every=2", "train.select_metric=mIoU"))
    t.fit()
    assert epochs == [2, 4, 5] and t.best == 0.6 and read(t.run_dir / "best.pth")["epoch"] == 5


def test_a_metric_equal_to_the_best_writes_no_new_best(tiny, monkeypatch):
    monkeypatch.setattr(train, "evaluate_model", lambda *a, **k: {
        "instance": {"mAP": 0.0, "AP50": 0.5, "AP25": 0.0}, "semantic": {"mIoU": 0.0}})
    t = Trainer(tiny("train.val_every=1"))
    t.fit()
    assert read(t.run_dir / "best.pth")["epoch"] == 1  # epoch 2's equal value did not replace it


def test_training_loader_gets_the_runs_workers_and_prefetch(tiny, monkeypatch):
    made = []
    original = train.training_loader
    monkeypatch.setattr(train, "training_loader", lambda ds, sampler, workers, prefetch, pin_memory: made.append(
        (ds, workers, prefetch, pin_memory)) or original(ds, sampler, 0, prefetch, pin_memory))
    monkeypatch.setattr(train, "resolve_workers", lambda w: 0 if w == 0 else 3)
    t = Trainer(tiny("train.workers=-1", "train.prefetch=4"))
    t.fit(max_steps=1)
    assert made == [(t.dataset, 3, 4, False)]


def test_training_module_looks_for_unused_parameters_only_with_psi(tiny, monkeypatch):
    wrapped = []
    monkeypatch.setattr(distributed, "wrap", lambda module, unused: wrapped.append((module, unused)) or module)
    t = Trainer(tiny())
    module = t.training_module()
    assert type(module) is TrainingLoss and module.model is t.model and module.cfg is t.cfg
    t.model.recorrector = "psi"
    t.training_module()
    assert [u for _, u in wrapped] == [False, True]


def test_ranks_other_than_zero_write_no_scalars_and_show_no_bars(tiny, monkeypatch):
    t = Trainer(tiny())
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    t.fit(max_steps=2)
    assert FakeWriter.made == [] and [b.kw["disable"] for b in FakeBar.bars] == [True]


def test_batches_go_to_the_device_pinned_and_non_blocking(tiny, monkeypatch):
    t = Trainer(tiny())
    t.device = torch.device("cuda", 0)  # no GPU needed: the batch's move is recorded, not made
    moves, pins = [], []
    monkeypatch.setattr(train.VoxelBatch, "to", lambda self, device, non_blocking=False: moves.append(
        (device, non_blocking)) or self)
    original = train.training_loader
    monkeypatch.setattr(train, "training_loader", lambda ds, sampler, workers, prefetch, pin_memory: pins.append(
        pin_memory) or original(ds, sampler, workers, prefetch, False))
    t.fit(max_steps=2)
    assert pins == [True] and moves == [(torch.device("cuda", 0), True)] * 2


def test_progress_shows_scenes_per_second_of_each_step(tiny, monkeypatch):
    clock = iter([100.0, 100.5, 101.5, 105.5])
    t = Trainer(tiny("train.epochs=1"))
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    t.fit()
    # batches of 2, 2 and 1 scenes taking 0.5 s, 1 s and 4 s
    assert [p["scenes_per_s"] for p in FakeBar.bars[0].postfix] == ["4.00", "2.00", "0.25"]


def test_zero_grad_drops_the_gradients_of_parameters_a_step_does_not_use(tiny):
    # Psi gets no gradient on a batch without proposals: Adam must skip it, not move it by momentum
    t = Trainer(tiny())
    extra = torch.nn.Parameter(torch.tensor(1.0))
    t.optimizer = torch.optim.Adam([t.model.w, extra], lr=0.1)
    t.train_step(lambda batch: {"total": t.model.w * 2 + extra * 3}, None)
    after_first = float(extra.detach())
    t.train_step(lambda batch: {"total": t.model.w * 2}, None)
    assert extra.grad is None and float(extra.detach()) == after_first != 1.0


def test_construction_on_a_gpu_selects_it_and_puts_the_model_there(tiny, monkeypatch):
    asked, selected, moved, synced, built = [], [], [], [], []

    class Recorded(TinyModel):
        def to(self, device):
            moved.append(device)
            return self

    cuda = torch.device("cuda", 1)
    monkeypatch.setattr(train, "resolve_device", lambda device: asked.append(device) or (
        cuda if device == "cuda:1" else torch.device("cpu")))
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    monkeypatch.setattr(train, "build_model", lambda cfg: built.append(cfg) or Recorded())
    monkeypatch.setattr(distributed, "sync_batchnorm", lambda model, device: synced.append((model, device)) or model)
    cfg = tiny("data.use_normals=true")
    t = Trainer(cfg, device="cuda:1")
    assert asked == ["cuda:1"] and selected == [cuda] and moved == [cuda] and built == [cfg]
    assert synced == [(t.model, cuda)] and t.dataset.use_normals is True
    Trainer(tiny("name=cpu"), device="cpu")
    assert asked[-1] == "cpu" and len(selected) == 1


def test_init_backbone_goes_into_the_new_model(tiny, monkeypatch):
    into = []
    monkeypatch.setattr(train, "load_backbone", lambda model, path, device: into.append(model) or {})
    t = Trainer(tiny("model.init_backbone=pre.pth"))
    assert into == [t.model]


def test_resume_reads_on_the_run_device_and_names_the_file_for_bad_weights(tiny, monkeypatch):
    cfg = tiny()
    Trainer(cfg).fit(max_steps=1)
    last = cfg.run_dir / "last.pth"
    devices, original = [], train.read_checkpoint
    monkeypatch.setattr(train, "read_checkpoint", lambda path, device, keys: devices.append(device) or original(
        path, device, keys))
    Trainer(cfg, resume=True)
    assert devices == [torch.device("cpu")]
    state = read(last)
    state["model"] = {"v": torch.zeros(1)}
    save_checkpoint(last, state)
    with pytest.raises(CheckpointError, match=rf"^{last}: the weights do not fit the model its config builds"):
        Trainer(cfg, resume=True)
