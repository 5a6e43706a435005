"""minkseg.engine.distributed without spawning processes: the helpers of a single process, and
the collectives' bookkeeping with torch.distributed replaced by a stand-in for a second rank
(test_distributed.py runs real two-rank groups)."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist

from minkseg.engine import distributed


class FakeGroup:
    """torch.distributed as rank ``rank`` of ``world`` sees it: the other ranks' contributions are
    ``others`` (all_reduce adds them; all_gather_object puts them in their slots)."""

    def __init__(self, monkeypatch, world: int = 2, rank: int = 1, others=None):
        self.world, self.rank, self.others, self.calls = world, rank, others, []
        for name in ("is_initialized", "get_world_size", "get_rank", "barrier", "all_reduce", "all_gather_object",
                     "broadcast", "init_process_group", "destroy_process_group"):
            monkeypatch.setattr(dist, name, getattr(self, name))

    def is_initialized(self) -> bool:
        return True

    def get_world_size(self) -> int:
        return self.world

    def get_rank(self) -> int:
        return self.rank

    def barrier(self) -> None:
        self.calls.append("barrier")

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.calls.append("all_reduce")
        tensor += self.others

    def all_gather_object(self, out: list, obj) -> None:
        self.calls.append("all_gather_object")
        for i in range(len(out)):
            out[i] = obj if i == self.rank else self.others[i]

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        self.calls.append(("broadcast", src))
        tensor.fill_(7.0)

    def init_process_group(self, *args, **kwargs) -> None:
        self.calls.append(("init", args, kwargs))

    def destroy_process_group(self) -> None:
        self.calls.append("destroy")


# ------------------------------------------------------------------------------ one process


def test_one_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist.is_initialized()
    assert (distributed.launched_world_size(), distributed.world_size(), distributed.rank(), distributed.is_main()
            ) == (1, 1, 0, True)
    assert distributed.rank_items(5) == [0, 1, 2, 3, 4]
    assert distributed.all_gather({"a": 1}) == [{"a": 1}]
    distributed.barrier()  # nothing to wait for


@pytest.mark.parametrize("value, size", [("1", 1), ("4", 4), ("16", 16)])
def test_launched_world_size_reads_torchruns_variable(monkeypatch, value, size):
    monkeypatch.setenv("WORLD_SIZE", value)
    assert distributed.launched_world_size() == size


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_launched_world_size_refuses_what_is_no_positive_integer(monkeypatch, value):
    monkeypatch.setenv("WORLD_SIZE", value)
    with pytest.raises(ValueError) as err:
        distributed.launched_world_size()
    assert str(err.value) == f"WORLD_SIZE={value!r} is not a positive integer (is this a torchrun launch?)"


def test_backends_are_nccl_between_gpus_and_gloo_otherwise():
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("meta")) == "gloo"


def test_the_collective_timeout_is_thirty_minutes():
    assert distributed.TIMEOUT == datetime.timedelta(minutes=30)


def test_a_single_process_joins_no_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("no group for one process"))
    assert distributed.init_process_group(torch.device("cpu")) is False
    with distributed.process_group(torch.device("cpu")) as started:
        assert started is False


def test_a_torchrun_process_joins_the_group_with_its_backend_and_timeout(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    calls, devices = [], []
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    assert distributed.init_process_group(torch.device("cpu")) is True
    assert calls == [(("gloo",), {"timeout": datetime.timedelta(minutes=30)})] and devices == []
    assert distributed.init_process_group(torch.device("cpu")) is True  # already in it: nothing more
    assert len(calls) == 1
    calls.clear()
    with distributed.process_group(torch.device("cuda", 3)) as started:
        assert started is True
        assert calls == [(("nccl",), {"timeout": datetime.timedelta(minutes=30)})]
        assert devices == [torch.device("cuda", 3)]
    assert calls[-1] == "destroy"


def test_the_group_is_destroyed_even_when_the_command_fails(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    group = FakeGroup(monkeypatch)
    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: joined.append(1))
    with pytest.raises(RuntimeError, match="boom"):
        with distributed.process_group(torch.device("cpu")):
            raise RuntimeError("boom")
    assert group.calls == ["destroy"]


def test_a_group_started_elsewhere_is_not_destroyed_here(monkeypatch):
    group = FakeGroup(monkeypatch)
    monkeypatch.setattr(distributed, "init_process_group", lambda device: False)
    with distributed.process_group(torch.device("cpu")) as started:
        assert started is False
    assert group.calls == []


# ------------------------------------------------------------------------------ shards


def test_shards_by_hand_with_padding_from_the_permutations_start():
    order = np.array([5, 3, 8, 1, 9, 0, 2])
    # 7 scenes on 2 ranks: padded with order[0] = 5 to 8; steps take 4 scenes, 2 per rank
    assert distributed.shard_batches(order, 2, 2, 0) == [[5, 3], [9, 0]]
    assert distributed.shard_batches(order, 2, 2, 1) == [[8, 1], [2, 5]]
    # from scene 5 on 3 ranks: [0, 2] padded with order[0] to [0, 2, 5]; one scene per rank
    assert [distributed.shard_batches(order, 4, 3, r, start=5) for r in range(3)] == [[[0]], [[2]], [[5]]]
    # from scene 2 on 2 ranks, batch 3: [8, 1, 9, 0, 2] + [5]; step 6 cut in two halves of 3
    assert distributed.shard_batches(order, 3, 2, 1, start=2) == [[0, 2, 5]]
    assert distributed.shard_batches(order, 3, 2, 0, start=2) == [[8, 1, 9]]
    # 4 ranks from scene 1: [3, 8, 1, 9, 0, 2] padded with order[0], order[1] to 8 scenes, two steps
    assert [distributed.shard_batches(order, 1, 4, r, start=1) for r in range(4)] == [
        [[3], [0]], [[8], [2]], [[1], [5]], [[9], [3]]]


def test_one_process_shards_are_the_rest_of_the_permutation_in_batches():
    order = np.array([4, 0, 3, 1, 2])
    got = distributed.shard_batches(order, 2)
    assert got == [[4, 0], [3, 1], [2]] and all(type(i) is int for b in got for i in b)
    assert distributed.shard_batches(order, 2, start=3) == [[1, 2]]
    assert distributed.shard_batches(order, 5, start=5) == []
    assert distributed.shard_batches(order, 10) == [[4, 0, 3, 1, 2]]
    assert distributed.shard_batches([], 2, 2, 1) == []


@pytest.mark.parametrize("batch_size, world, rank", [(0, 1, 0), (1, 0, 0), (2, 2, 2), (2, 2, -1)])
def test_shard_arguments_out_of_range_are_refused(batch_size, world, rank):
    with pytest.raises(ValueError) as err:
        distributed.shard_batches([0, 1, 2], batch_size, world, rank)
    assert str(err.value) == f"shard_batches: batch_size {batch_size}, world {world}, rank {rank} out of range"


def test_the_last_valid_rank_is_accepted():
    assert distributed.shard_batches([0, 1, 2, 3], 1, 2, 1) == [[1], [3]]


# ------------------------------------------------------------------------------ collectives


def test_rank_and_world_come_from_the_group(monkeypatch):
    FakeGroup(monkeypatch, world=3, rank=2)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (3, 2, False)
    assert distributed.rank_items(8) == [2, 5]


def test_rank_zero_of_a_group_is_the_main_process(monkeypatch):
    FakeGroup(monkeypatch, world=3, rank=0)
    assert distributed.is_main() and distributed.rank_items(7) == [0, 3, 6]


def test_barrier_waits_in_a_group(monkeypatch):
    group = FakeGroup(monkeypatch)
    distributed.barrier()
    assert group.calls == ["barrier"]


def test_all_gather_puts_every_ranks_object_in_rank_order(monkeypatch):
    group = FakeGroup(monkeypatch, world=3, rank=1, others=["zero", None, "two"])
    assert distributed.all_gather("one") == ["zero", "one", "two"]
    assert group.calls == ["all_gather_object"]


def test_mean_over_ranks_without_a_group_is_each_value_as_a_float():
    x = torch.tensor([2.5], requires_grad=True)
    got = distributed.mean_over_ranks({"b": x * 2, "a": torch.tensor(3, dtype=torch.int64),
                                       "c": torch.tensor(0.1, dtype=torch.float64)})
    assert got == {"a": 3.0, "b": 5.0, "c": pytest.approx(0.1, abs=1e-8)}
    assert list(got) == ["a", "b", "c"] and all(type(v) is float for v in got.values())


def test_mean_over_ranks_averages_the_other_ranks_values_by_name(monkeypatch):
    # the other rank's values in sorted-name order: a = 1, b = 9
    group = FakeGroup(monkeypatch, world=2, rank=0, others=torch.tensor([1.0, 9.0]))
    assert distributed.mean_over_ranks({"b": torch.tensor(3.0), "a": torch.tensor(5.0)}) == {"a": 3.0, "b": 6.0}
    assert group.calls == ["all_reduce"]


def test_broadcast_buffers_sends_rank_zeros_buffers_only(monkeypatch):
    group = FakeGroup(monkeypatch)
    module = torch.nn.BatchNorm1d(2)
    weight = module.weight.detach().clone()
    distributed.broadcast_buffers(module)
    assert group.calls == [("broadcast", 0)] * 3  # running mean, running var, batch count
    for b in module.buffers():
        assert (b == 7).all()
    torch.testing.assert_close(module.weight.detach(), weight, rtol=0, atol=0)


def test_broadcast_buffers_without_a_group_changes_nothing():
    module = torch.nn.BatchNorm1d(2)
    distributed.broadcast_buffers(module)
    assert module.running_mean.tolist() == [0.0, 0.0] and module.running_var.tolist() == [1.0, 1.0]


def test_sync_batchnorm_only_with_several_cuda_ranks(monkeypatch):
    def converted(device: torch.device) -> list[type]:
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        return [type(m) for m in distributed.sync_batchnorm(model, device)]

    plain, synced = [torch.nn.Linear, torch.nn.BatchNorm1d], [torch.nn.Linear, torch.nn.SyncBatchNorm]
    assert converted(torch.device("cuda", 0)) == plain  # one rank
    assert converted(torch.device("cpu")) == plain
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert converted(torch.device("cpu")) == plain  # gloo has no SyncBatchNorm
    assert converted(torch.device("cuda", 0)) == synced


def test_wrap_uses_ddp_only_with_several_ranks(monkeypatch):
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, True) is module
    made = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda m, **kw: made.append((m, kw)) or "ddp")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.wrap(module, True) == "ddp" and made == [(module, {"find_unused_parameters": True})]
    assert distributed.wrap(module, False) == "ddp" and made[-1] == (module, {"find_unused_parameters": False})
