"""DataLoader workers: the same batches as the in-process path, the epoch reaching persistent
workers, resume without loading the finished batches, and the worker count rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minkseg.config import load_config
from minkseg.data import dataset as dataset_module
from minkseg.data.augment import AugmentConfig
from minkseg.data.dataset import (
    EpochBatchSampler,
    PreparedScenes,
    iterate_prepared,
    resolve_workers,
    training_loader,
)
from minkseg.data.splits import labeled_scenes, split_scenes
from minkseg.data.voxelize import VoxelBatch, collate
from minkseg.engine.train import Trainer
from scannet_tools.prepare import load_prepared, prepared_path

TENSORS = [f.name for f in dataclasses.fields(VoxelBatch) if f.name != "scenes"]


def config(raw_root, prepared_dir, tmp_path, **over):
    args = [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}",
            "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "train.batch_size=1", "train.epochs=2",
            "train.val_every=0", "train.threads=1", "train.workers=0", "name=t"]
    return load_config(None, args + [f"{k}={v}" for k, v in over.items()])


def scenes(prepared_dir) -> PreparedScenes:
    augment = AugmentConfig(elastic=True, voxel_size=0.1)  # every random draw of the augmentation in play
    return PreparedScenes(sorted(prepared_dir.glob("*.npz")), voxel_size=0.1, augment=augment, seed=3)


def assert_same_batch(a: VoxelBatch, b: VoxelBatch) -> None:
    assert [s.scene for s in a.scenes] == [s.scene for s in b.scenes]
    for name in TENSORS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)
    for sa, sb in zip(a.scenes, b.scenes):
        torch.testing.assert_close(sa.inverse, sb.inverse, rtol=0, atol=0)


def test_workers_give_the_in_process_batches_and_see_each_epoch(prepared_dir):
    ds = scenes(prepared_dir)
    fixed = [[0, 1], [2]]
    in_process, in_workers = EpochBatchSampler(), EpochBatchSampler()
    plain = training_loader(ds, in_process, workers=0)
    pooled = training_loader(ds, in_workers, workers=2, prefetch=1)  # persistent: the same processes every epoch
    firsts = []
    for epoch in (0, 1):
        in_process.set_epoch(epoch, fixed)
        in_workers.set_epoch(epoch, fixed)
        ds.epoch = epoch
        direct = [collate([ds[i] for i in b]) for b in fixed]  # the original path: index + dataset attribute
        got_plain, got_pooled = list(plain), list(pooled)
        assert len(got_plain) == len(got_pooled) == len(fixed)
        for d, p, w in zip(direct, got_plain, got_pooled):
            assert_same_batch(d, p)
            assert_same_batch(d, w)
        firsts.append(got_pooled[0])
    # the workers were started in epoch 0; a different augmentation in epoch 1 shows the epoch reached them
    assert not torch.equal(firsts[0].feats, firsts[1].feats) or not torch.equal(firsts[0].coords, firsts[1].coords)


def test_iterate_prepared_reads_in_order_and_reports_bad_files(prepared_dir, tmp_path):
    files = sorted(prepared_dir.glob("*.npz"))
    bad = tmp_path / "scene9999_00.npz"
    bad.write_bytes(files[0].read_bytes()[:100])  # truncated
    got = list(iterate_prepared(files + [bad], workers=2, errors_as_values=True))
    assert [g["scene"] for g in got[:-1]] == [load_prepared(f)["scene"] for f in files]
    assert isinstance(got[-1], Exception)
    for g, f in zip(got, files):
        torch.testing.assert_close(torch.from_numpy(g["xyz"]), torch.from_numpy(load_prepared(f)["xyz"]))
    with pytest.raises(Exception):  # noqa: B017 - whatever numpy raises for a truncated archive
        list(iterate_prepared([bad]))


class CountingScenes(PreparedScenes):
    """Records every (epoch, index) it is asked for."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.loaded: list[tuple[int, int]] = []

    def __getitem__(self, key):
        self.loaded.append(key)
        return super().__getitem__(key)


def test_resume_skips_finished_batches_without_loading_them(raw_root, prepared_dir, tmp_path):
    cfg = config(raw_root, prepared_dir, tmp_path)
    files = [prepared_path(prepared_dir, s) for s in labeled_scenes(cfg, split_scenes(cfg, "train"))]
    counting = CountingScenes(files, 0.1, cfg.data.augment, seed=cfg.train.seed)
    first = Trainer(cfg, dataset=counting)
    first.fit(max_steps=3)  # 2 scenes per epoch: stops after the first batch of epoch 1
    order1 = first.batches(1)
    assert counting.loaded == [(0, i) for b in first.batches(0) for i in b] + [(1, order1[0][0])]
    again = CountingScenes(files, 0.1, cfg.data.augment, seed=cfg.train.seed)
    resumed = Trainer(cfg, resume=True, dataset=again)
    resumed.fit()
    assert again.loaded == [(1, order1[1][0])]


def test_training_with_workers_is_bitwise_the_in_process_training(raw_root, prepared_dir, tmp_path):
    runs = {}
    for workers in (0, 2):
        trainer = Trainer(config(raw_root, prepared_dir, tmp_path, **{"train.workers": workers,
                                                                       "name": f"w{workers}"}))
        trainer.fit()
        runs[workers] = trainer.model.state_dict()
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[2][k], rtol=0, atol=0, msg=k)
    # the worker count is how a run executes, not what it computes: --resume may change it
    again = Trainer(config(raw_root, prepared_dir, tmp_path, **{"train.workers": 1, "train.prefetch": 4,
                                                                 "name": "w0"}), resume=True)
    assert again.epoch == 2 and again.workers == 1
    with pytest.raises(ValueError, match="different config"):
        Trainer(config(raw_root, prepared_dir, tmp_path, **{"train.lr": 0.5, "name": "w0"}), resume=True)


def test_worker_count_rule(monkeypatch):
    monkeypatch.setattr(dataset_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(-1) == 8  # capped
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks share the node's CPUs
    assert resolve_workers(-1) == 4
    assert resolve_workers(3) == 3 and resolve_workers(0) == 0
    with pytest.raises(ValueError, match="train.workers=-2"):
        resolve_workers(-2)
