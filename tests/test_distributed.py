"""torch.distributed on CPU (gloo, 2 processes): sharding, DDP training, resume, split validation.

One 2-rank session (``two_rank_session``, 30-55 s on 2 cores, shared by five tests) trains,
interrupts, resumes, evaluates and takes a frozen-BN step; the tests compare what each rank
saved with each other and with one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minkseg.config import load_config
from minkseg.data.dataset import PreparedScenes
from minkseg.data.splits import split_scenes
from minkseg.data.voxelize import collate
from minkseg.engine import distributed
from minkseg.engine.checkpoint import save_checkpoint
from minkseg.engine.train import Trainer, TrainingLoss
from minkseg.evaluation.model_eval import evaluate_model
from minkseg.models.build import build_model
from scannet_tools.prepare import prepared_path

REPO = Path(__file__).parents[1]
WORLD = 2


# ---------------------------------------------------------------- sharding (pure)

@pytest.mark.parametrize("n,bs,world", [(10, 3, 1), (10, 2, 2), (7, 2, 2), (7, 2, 3), (5, 4, 4), (1, 1, 2)])
def test_shards_are_disjoint_steps_of_equal_size_covering_the_permutation(n, bs, world):
    order = np.random.default_rng(n).permutation(n)
    shards = [distributed.shard_batches(order, bs, world, r) for r in range(world)]
    steps = len(shards[0])
    assert all(len(s) == steps for s in shards)  # every rank steps the same number of times
    for k in range(steps):
        sizes = {len(s[k]) for s in shards}
        assert len(sizes) == 1 and 1 <= sizes.pop() <= bs  # one batch size per step, never empty
    flat = [i for k in range(steps) for s in shards for i in s[k]]
    pad = (-n) % world
    assert len(flat) == n + pad and flat[:n] == order.tolist()  # step-major order is the permutation
    assert flat[n:] == order[:pad].tolist()  # padded with the permutation's first scenes


def test_one_process_batches_are_the_permutation_in_chunks():
    order = np.arange(10)[::-1]
    assert distributed.shard_batches(order, 4) == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]
    assert distributed.shard_batches(order, 4, start=8) == [[1, 0]]


def test_resuming_with_another_world_size_continues_with_the_unseen_scenes():
    order = np.random.default_rng(0).permutation(11)
    done = 2 * 2 * 2  # two steps of 2 ranks x batch 2
    rest = [i for b in distributed.shard_batches(order, 3, 1, 0, start=done) for i in b]
    assert rest == order[done:].tolist()
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard_batches(order, 2, 2, 2)


def test_gpu_ranks_get_sync_batchnorm_with_the_same_checkpoint_keys(raw_root, prepared_dir, tmp_path, monkeypatch):
    """The CUDA branch, reached on CPU: the conversion itself does not need a GPU."""
    from minkseg.sparse import ME

    model = build_model(tiny_config(raw_root, prepared_dir, tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert distributed.sync_batchnorm(model, torch.device("cuda")) is model  # one process: unchanged
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.sync_batchnorm(model, torch.device("cpu")) is model  # gloo: plain batch norm
    synced = distributed.sync_batchnorm(model, torch.device("cuda"))
    kinds = [type(m) for m in synced.modules()]
    assert ME.MinkowskiSyncBatchNorm in kinds and ME.MinkowskiBatchNorm not in kinds
    # the heads' plain batch norms too: every batch norm left is a synchronized one
    plain = [type(m).__name__ for m in synced.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)]
    assert plain == []
    after = synced.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"


def test_one_process_starts_no_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with distributed.process_group(torch.device("cpu")) as started:
        assert not started and distributed.world_size() == 1 and distributed.is_main()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        distributed.launched_world_size()


# ---------------------------------------------------------------- the 2-rank session

def tiny_config(raw_root, prepared_dir, runs, **over):
    args = [f"data.root={raw_root}", f"data.prepared={prepared_dir}", f"runs_dir={runs}",
            "data.voxel_size=0.1", "model.backbone=MinkUNet14A", "model.head=margin", "train.batch_size=1",
            "train.epochs=2", "train.val_every=0", "train.threads=1", "train.workers=0", "name=t"]
    return load_config(None, args + [f"{k}={v}" for k, v in over.items()])


def doubled_dataset(cfg) -> PreparedScenes:
    """4 items (each training scene twice): 2 steps per epoch with 2 ranks of batch 1."""
    files = [prepared_path(cfg.data.prepared, s) for s in split_scenes(cfg, "train")]
    return PreparedScenes(files * 2, cfg.data.voxel_size, cfg.data.augment, seed=cfg.train.seed)


def freeze_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def frozen_bn_gradients(cfg, keys: list[tuple[int, int]]) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one step on ``keys`` with batch norm in eval mode (DDP-wrapped under 2 ranks)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    freeze_batchnorm(model)
    module = distributed.wrap(TrainingLoss(model, cfg), find_unused_parameters=False)
    batch = collate([doubled_dataset(cfg)[k] for k in keys])
    total = module(batch)["total"]
    total.backward()
    return float(total.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank_main(rank: int, raw_root: str, prepared_dir: str, out: str) -> None:
    out_dir = Path(out)
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'store'}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        runs = out_dir / "runs"

        def cfg_named(name, **over):
            return tiny_config(raw_root, prepared_dir, runs, name=name, **over)

        full = Trainer(cfg_named("full"), dataset=doubled_dataset(cfg_named("full")))
        full.fit()
        torch.save(full.model.state_dict(), out_dir / f"full_{rank}.pt")

        cut = cfg_named("cut")
        Trainer(cut, dataset=doubled_dataset(cut)).fit(max_steps=3)  # inside epoch 1 (2 steps per epoch)
        if rank == 0:  # the same checkpoint as another run, for a 1-process resume
            state = torch.load(runs / "cut" / "last.pth", weights_only=True)
            state["config"]["name"] = "cut_for_one_process"
            (runs / "cut_for_one_process").mkdir()
            save_checkpoint(runs / "cut_for_one_process" / "last.pth", state)
        distributed.barrier()
        resumed = Trainer(cut, resume=True, dataset=doubled_dataset(cut))
        resumed.fit()
        torch.save(resumed.model.state_dict(), out_dir / f"resumed_{rank}.pt")

        val = split_scenes(cut, "val") + split_scenes(cut, "train")
        metrics = evaluate_model(resumed.model, cut, val, split_over_ranks=True)
        (out_dir / f"eval_{rank}.json").write_text(json.dumps(metrics, sort_keys=True))

        mine = [(0, 0), (0, 1)] if rank == 0 else [(0, 2), (0, 3)]
        loss, grads = frozen_bn_gradients(cfg_named("frozen", **{"train.batch_size": 2}), mine)
        torch.save({"loss": loss, "grads": grads}, out_dir / f"frozen_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_session(raw_root, prepared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_rank_main, args=(str(raw_root), str(prepared_dir), str(out)), nprocs=WORLD, join=True)
    return out


def _load(path: Path):
    return torch.load(path, weights_only=True)


def test_two_ranks_end_with_bitwise_equal_weights(two_rank_session):
    a, b = _load(two_rank_session / "full_0.pt"), _load(two_rank_session / "full_1.pt")
    assert a.keys() == b.keys()
    for k in a:  # parameters and batch-norm statistics
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_two_rank_resume_equals_the_uninterrupted_two_rank_run(two_rank_session):
    full, resumed = _load(two_rank_session / "full_0.pt"), _load(two_rank_session / "resumed_0.pt")
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=0, atol=0, msg=k)
    state = _load(two_rank_session / "runs" / "cut" / "last.pth")
    assert state["world_size"] == WORLD and state["step"] == 4 and state["epoch"] == 2


def test_a_two_rank_checkpoint_resumes_in_one_process(two_rank_session, raw_root, prepared_dir, capsys):
    cfg = tiny_config(raw_root, prepared_dir, two_rank_session / "runs", name="cut_for_one_process")
    trainer = Trainer(cfg, resume=True, dataset=doubled_dataset(cfg))
    assert (trainer.world, trainer.epoch, trainer.epoch_scenes) == (1, 1, 2)
    log = capsys.readouterr()
    assert "world size 2 with world size 1" in log.out + log.err
    # the two scenes of epoch 1 the two ranks had not seen, as two steps of batch 1
    order = np.random.default_rng([cfg.train.seed, 1]).permutation(4)
    assert trainer.batches(1, trainer.epoch_scenes) == [[int(order[2])], [int(order[3])]]
    trainer.fit()
    assert trainer.step == 3 + 2 and trainer.epoch == 2


def test_validation_split_over_ranks_equals_one_process(two_rank_session, raw_root, prepared_dir):
    cfg = tiny_config(raw_root, prepared_dir, two_rank_session / "runs")
    model = build_model(cfg)
    model.load_state_dict(_load(two_rank_session / "resumed_0.pt"))
    alone = evaluate_model(model, cfg, split_scenes(cfg, "val") + split_scenes(cfg, "train"))
    for rank in range(WORLD):
        split = json.loads((two_rank_session / f"eval_{rank}.json").read_text())
        assert split == json.loads(json.dumps(alone, sort_keys=True))


def test_two_rank_step_equals_one_process_step_on_the_union(two_rank_session, raw_root, prepared_dir):
    """With batch norm frozen, DDP's averaged gradient is the gradient of the mean loss over both shards."""
    cfg = tiny_config(raw_root, prepared_dir, two_rank_session / "runs", **{"train.batch_size": 4})
    loss, grads = frozen_bn_gradients(cfg, [(0, 0), (0, 1), (0, 2), (0, 3)])
    ranks = [_load(two_rank_session / f"frozen_{r}.pt") for r in range(WORLD)]
    assert np.isclose(np.mean([r["loss"] for r in ranks]), loss, rtol=1e-5)
    # float32 sums over thousands of voxels in another order: relative 1e-3, and near-zero
    # gradients (cancellations) compared against the largest gradient of the model
    scale = max(float(g.abs().max()) for g in grads.values())
    for r in ranks:
        assert r["grads"].keys() == grads.keys()
        for k, g in grads.items():
            torch.testing.assert_close(r["grads"][k], g, rtol=1e-3, atol=1e-6 * scale, msg=k)


# ---------------------------------------------------------------- the command under torchrun

@pytest.mark.slow  # two torchrun launches: 40-55 s on 2 cores
def test_torchrun_trains_resumes_and_writes_one_run(raw_root, prepared_dir, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [str(torchrun), "--standalone", f"--nproc_per_node={WORLD}", "-m", "minkseg", "train",
            str(REPO / "configs" / "synthetic_margin.yaml"), f"data.root={raw_root}", f"data.prepared={prepared_dir}",
            f"runs_dir={tmp_path / 'runs'}", "name=ddp", "train.epochs=2", "train.val_every=2", "train.threads=1",
            "train.workers=1", "train.batch_size=1", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.run(args + ["--max-steps", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "world size 2" in first.stdout and first.stdout.count("run ") == 1  # rank 0 alone prints
    second = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == WORLD
    assert sorted(p.name for p in (run / "val").iterdir()) == ["epoch_0002.json"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]


@pytest.mark.slow  # a torchrun launch of 3 self-training rounds: 15-30 s on 2 cores
def test_torchrun_selftraining_splits_pseudo_labels_and_finishes_every_round(raw_root, prepared_dir, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [str(torchrun), "--standalone", f"--nproc_per_node={WORLD}", "-m", "minkseg", "selftrain",
            str(REPO / "configs" / "synthetic_probabilistic.yaml"), f"data.root={raw_root}",
            f"data.prepared={prepared_dir}", f"runs_dir={tmp_path / 'runs'}", "name=st", "data.voxel_size=0.1",
            "model.backbone=MinkUNet14A", "train.batch_size=1", "train.epochs=1", "train.threads=1",
            "train.workers=0", "data.label_ratio=0.5", "selftrain.rounds=1", "selftrain.min_vertices=1",
            "cluster.min_size=2", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("world size 2 on cpu") == 1  # rank 0 alone logs
    root = tmp_path / "runs" / "st"
    unlabeled = json.loads((root / "split.json").read_text())["unlabeled"]
    assert all((root / "round_1" / "pseudo" / f"{s}.npz").is_file() for s in unlabeled)
    assert json.loads((root / "round_1" / "pseudo" / "stats.json").read_text())["failed"] == []
    for r in (0, 1):
        assert torch.load(root / f"round_{r}" / "last.pth", weights_only=True)["world_size"] == WORLD
    assert (root / "summary.md").is_file() and (root / "compare" / "report.md").is_file()
