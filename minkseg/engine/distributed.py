"""torch.distributed for runs launched by ``torchrun``: process group, ranks, data shards, gathering.

torchrun starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Without those
variables every helper here describes a world of one process and runs no collective, so
the same training code serves a laptop and a multi-node job.

Sharding rule (:func:`shard_batches`): one optimizer step consumes ``world x batch_size``
consecutive scenes of the epoch's (seed, epoch) permutation, rank r taking the r-th
contiguous slice. The epoch's tail is *padded* (with the permutation's first scenes) to a
multiple of the world size, so every rank steps the same number of times with batches of
equal size; at most ``world - 1`` scenes are seen twice per epoch, none is dropped.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

# rank-0-only work between two collectives (a checkpoint, the metric computation) must fit in this
TIMEOUT = datetime.timedelta(minutes=30)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"WORLD_SIZE={value!r} is not a positive integer (is this a torchrun launch?)")
    return int(value)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(device: torch.device) -> bool:
    """Join the process group torchrun describes; False (and nothing done) for a single process."""
    if dist.is_initialized():
        return True
    if launched_world_size() == 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    return True


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """:func:`init_process_group` for the duration of a command; the group is destroyed at the end."""
    started = init_process_group(device)
    try:
        yield started
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """True on the one process that writes files (checkpoints, TensorBoard, metrics)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (after rank 0 wrote a file the others will read)."""
    if dist.is_initialized():
        dist.barrier()


def shard_batches(order: Sequence[int], batch_size: int, world: int = 1, rank: int = 0,
                  start: int = 0) -> list[list[int]]:
    """This rank's batches of one epoch, from position ``start`` of the permutation ``order``.

    Global step k takes ``order[start + k*world*batch_size : start + (k+1)*world*batch_size]``
    and splits it into ``world`` equal contiguous slices, one per rank. The remainder is
    padded cyclically from ``order``'s beginning to a multiple of ``world``, so the last
    step gives every rank the same smaller batch. ``start`` is the number of scenes the
    epoch has consumed (all ranks together): a run resumed with another world size
    continues with exactly the scenes that were not seen yet. With ``world = 1`` this is
    ``order[start:]`` cut into batches of ``batch_size``, the last one shorter.
    """
    if batch_size < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_batches: batch_size {batch_size}, world {world}, rank {rank} out of range")
    rest = [int(i) for i in order[start:]]
    if rest and len(rest) % world:
        rest += [int(order[i % len(order)]) for i in range(world - len(rest) % world)]
    step = world * batch_size
    batches = []
    for s in range(0, len(rest), step):
        chunk = rest[s:s + step]
        per_rank = len(chunk) // world
        batches.append(chunk[rank * per_rank:(rank + 1) * per_rank])
    return batches


def rank_items(n: int) -> list[int]:
    """Indices 0..n-1 this rank handles when work is split over ranks round-robin (evaluation, pseudo labels)."""
    return list(range(rank(), n, world_size()))


def all_gather(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (picklable objects; ``[obj]`` alone)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean over ranks of scalar tensors (loss terms for the log); one all-reduce."""
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist()))


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank.

    DDP broadcasts them before each forward only, so after the last step every rank holds
    the statistics of its own last batch; validation and checkpoints need one model.
    """
    if dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, 0)


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Synchronized batch norm on CUDA with several ranks; the model unchanged otherwise.

    MinkowskiEngine's conversion handles the backbone's ``MinkowskiBatchNorm`` only; the
    heads' plain ``nn.BatchNorm1d`` (one call per forward on every rank) are converted by
    torch's. gloo has no SyncBatchNorm kernels, so CPU ranks keep per-rank statistics.
    """
    if world_size() == 1 or device.type != "cuda":
        return model
    from minkseg.sparse import ME

    model = ME.MinkowskiSyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(module: torch.nn.Module, find_unused_parameters: bool) -> torch.nn.Module:
    """``module`` under DistributedDataParallel when there are several ranks, else unchanged.

    No ``device_ids``: inputs are already on the rank's device, and DDP would otherwise copy
    every tensor of the batch's per-scene records to the GPU.
    """
    if world_size() == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)
