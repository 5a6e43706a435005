"""Greedy seed clustering (paper Sec. 3.4, Eq. 11; Neven et al. 2019) of per-voxel embeddings.

Repeatedly take the unassigned foreground voxel with the highest seed score; if it is
below ``seed_threshold`` stop; otherwise every unassigned foreground voxel whose kernel
with the seed is >= ``tau`` joins its instance.

The loop is run in blocks so that a GPU is not stopped by a host sync for every seed
(each ``int(...)``/``.any()`` on a CUDA tensor waits for the device). Candidates are
visited in descending score order (stable, so ties go to the lower voxel index, as
``argmax`` does). A block takes the next ``block_size`` still-free candidates above the
threshold and evaluates their (B, B) kernel once: a candidate is a seed exactly when no
earlier seed of the block claims it, because any seed outside the block scores lower and
comes later. The seeds' kernels against the free voxels are then evaluated a chunk of
seeds at a time, and each voxel goes to the first seed of the block that claims it
(a block seed's own voxel only to itself, since it is used when its turn comes), which
is what the one-seed-at-a-time loop would have done. A block costs six syncs (two of them
small host-to-device copies) plus two per chunk, whatever its number of seeds; the
result is the same clusters, classes and scores in the same order
(``tests/test_cluster.py`` checks it against the plain loop). On CPU, where a sync costs
nothing, the defaults shrink to small blocks and one-seed chunks, so no kernel work is
spent beyond the plain loop's.

Class and confidence of an instance: the class is the arg-max of the *mean* semantic
probability over the instance's voxels (restricted to the 18 instance classes), which
pools evidence over the whole object instead of trusting the seed voxel alone; the
confidence is that mean probability times the seed score, so an instance ranks high in
AP only if it is both a confident centre and consistently classified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from minkseg.losses.kernels import log_bhattacharyya_kernel
from minkseg.losses.margin import margin_gaussian
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID

# Kernel entries evaluated per (S, N) chunk: each (S, N, 3) float32 temporary is then at most 48 MiB.
KERNEL_CHUNK_ELEMENTS = 1 << 22


@dataclass
class Clusters:
    voxel_instance: torch.Tensor  # (M,) 0..K-1, -1 unassigned
    classes: torch.Tensor  # (K,) semantic train id of each instance
    scores: torch.Tensor  # (K,) confidence in [0, 1]

    @property
    def num_instances(self) -> int:
        return int(self.classes.numel())


KernelToSeeds = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_block_size(device: torch.device) -> int:
    """Candidates per block: many on CUDA (a block saves syncs), few elsewhere (its (B, B) kernel is pure cost)."""
    return 1024 if device.type == "cuda" else 32


def default_rows_per_chunk(device: torch.device) -> int:
    """Seed rows per kernel chunk: on CUDA as many as ``KERNEL_CHUNK_ELEMENTS`` allows (each chunk
    costs a sync), elsewhere one (no sync cost, least kernel work)."""
    return KERNEL_CHUNK_ELEMENTS if device.type == "cuda" else 1


def claims(kernel_to_seed: KernelToSeeds, seeds: torch.Tensor, voxels: torch.Tensor, tau: float) -> torch.Tensor:
    """(S, V) bool: kernel(seed s, voxel v) >= tau, evaluated in row chunks to bound memory."""
    rows = max(1, KERNEL_CHUNK_ELEMENTS // max(1, len(voxels)))
    out = [kernel_to_seed(seeds[a:a + rows, None], voxels) >= tau for a in range(0, len(seeds), rows)]
    if not out:
        return torch.zeros((0, len(voxels)), dtype=torch.bool, device=voxels.device)
    return torch.cat(out)


def first_free_seeds(claim_matrix: np.ndarray, limit: int) -> list[int]:
    """Rows of a block that are seeds: row b is a seed iff no earlier seed a claims it (claim_matrix[a, b])."""
    claimed = np.zeros(claim_matrix.shape[0], dtype=bool)
    seeds: list[int] = []
    for b in range(claim_matrix.shape[0]):
        if len(seeds) >= limit:
            break
        if claimed[b]:
            continue
        seeds.append(b)
        claimed |= claim_matrix[b]
    return seeds


def members_of_seeds(kernel_to_seed: KernelToSeeds, cand: torch.Tensor, seeds: torch.Tensor, free_pos: torch.Tensor,
                     tau: float, rows_per_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Free voxels taken by a block's seeds, each by the first seed (in seed order) that claims it.

    ``seeds`` and ``free_pos`` are positions in ``cand``; returns (positions, seed rows),
    grouped by seed row and ascending in position within a row. Seeds are evaluated in
    chunks of ``rows_per_chunk`` rows; the voxels a chunk takes are dropped before the
    next, so the work shrinks as the one-seed loop's does. A drop is a host sync: on CUDA
    the default chunk is as many rows as fit ``KERNEL_CHUNK_ELEMENTS``, on CPU (no sync
    cost, least work) one row.
    """
    dev = cand.device
    if rows_per_chunk is None:
        rows_per_chunk = default_rows_per_chunk(dev)
    if rows_per_chunk < 1:
        raise ValueError(f"members_of_seeds: rows_per_chunk must be >= 1, got {rows_per_chunk}")
    seed_row = torch.full((len(cand),), -1, dtype=torch.long, device=dev)
    seed_row[seeds] = torch.arange(len(seeds), device=dev)
    taken_pos, taken_row = [], []
    start = 0
    while start < len(seeds) and len(free_pos):
        rows_fit = max(1, KERNEL_CHUNK_ELEMENTS // len(free_pos))
        stop = start + min(rows_per_chunk, rows_fit)
        rows = torch.arange(start, min(stop, len(seeds)), device=dev)[:, None]
        member = kernel_to_seed(cand[seeds[rows[:, 0]], None], cand[free_pos]) >= tau
        # a seed is used when its turn comes, so no other seed of the block may take it
        col_seed = seed_row[free_pos]
        member &= (col_seed < 0) | (col_seed == rows)
        owner = torch.where(member, rows, len(seeds)).min(0).values  # len(seeds): nobody's
        taken = owner < len(seeds)
        taken_idx = taken.nonzero(as_tuple=True)[0]  # sync
        by_row = torch.sort(owner[taken_idx], stable=True)  # stable: positions stay ascending within a row
        taken_pos.append(free_pos[taken_idx[by_row.indices]])
        taken_row.append(by_row.values)
        free_pos = free_pos[~taken]  # sync
        start = stop
    if not taken_pos:
        return free_pos[:0], torch.zeros(0, dtype=torch.long, device=dev)
    return torch.cat(taken_pos), torch.cat(taken_row)


def greedy_cluster(seed_score: torch.Tensor, foreground: torch.Tensor, kernel_to_seed: KernelToSeeds,
                   semantic_probs: torch.Tensor, tau: float, seed_threshold: float = 0.5, min_size: int = 10,
                   max_instances: int = 500, max_seeds: int = 5000, block_size: int | None = None,
                   rows_per_chunk: int | None = None) -> Clusters:
    """Greedy clustering of Sec. 3.4, run in blocks of seeds (see the module docstring).

    ``kernel_to_seed(seeds, idx)`` gives the kernel between voxels ``idx`` (n,) and seeds
    given as a (S, 1) index tensor, shape (S, n); a kernel written for one integer seed by
    indexing and broadcasting works unchanged. At most ``max_seeds`` seeds are tried and
    ``max_instances`` instances kept; an instance under ``min_size`` voxels is dropped but
    its voxels stay used. ``block_size`` candidates are resolved per block (default 1024 on
    CUDA, where a block saves syncs and its (B, B) kernel is cheap even when most of the
    candidates belong to one object, and 32 on CPU, where that kernel is pure cost);
    ``rows_per_chunk``: see :func:`members_of_seeds`.
    """
    if block_size is None:
        block_size = default_block_size(seed_score.device)
    if block_size < 1:
        raise ValueError(f"greedy_cluster: block_size must be >= 1, got {block_size}")
    dev = seed_score.device
    m = len(seed_score)
    voxel_instance = torch.full((m,), -1, dtype=torch.long, device=dev)
    cand = foreground.nonzero(as_tuple=True)[0]
    free = torch.ones(len(cand), dtype=torch.bool, device=dev)
    score = seed_score[cand]
    order = torch.sort(score, descending=True, stable=True).indices
    queue = order[score[order] >= seed_threshold]  # positions in cand, best seed first
    inst_probs = semantic_probs[:, FIRST_INSTANCE_TRAIN_ID:]
    means: list[torch.Tensor] = []
    seed_scores: list[torch.Tensor] = []
    seeds_tried = 0
    while len(queue) and seeds_tried < max_seeds and len(means) < max_instances:
        block = queue[:block_size]
        block_claims = claims(kernel_to_seed, cand[block], cand[block], tau).cpu().numpy()  # sync
        rows = first_free_seeds(block_claims, max_seeds - seeds_tried)
        seeds = block[torch.tensor(rows, dtype=torch.long, device=dev)]
        member_pos, member_row = members_of_seeds(kernel_to_seed, cand, seeds, free.nonzero(as_tuple=True)[0], tau,
                                                  rows_per_chunk)
        free[member_pos] = False
        free[seeds] = False  # a seed is used even when its instance is rejected
        sizes = torch.bincount(member_row, minlength=len(seeds)).tolist()  # sync
        groups = torch.split(cand[member_pos], sizes)
        # one gather per block: score[seeds[r]] would index with a 0-d device tensor, i.e. .item(), a sync per seed
        block_scores = score[seeds]
        # built on the host (no host-to-device copy per row), copied to the device once below; -1: rejected
        instance_of_row = [-1] * len(seeds)
        for r, size in enumerate(sizes):
            if len(means) >= max_instances:
                break
            seeds_tried += 1
            if size < min_size:
                continue
            instance_of_row[r] = len(means)
            means.append(inst_probs[groups[r]].mean(0))
            seed_scores.append(block_scores[r])  # a python int: a view, no sync
        voxel_instance[cand[member_pos]] = torch.tensor(instance_of_row, dtype=torch.long, device=dev)[member_row]
        queue = queue[free[queue]]  # sync
    if not means:
        return Clusters(voxel_instance, torch.zeros(0, dtype=torch.long, device=dev),
                        torch.zeros(0, dtype=torch.float32, device=dev))
    mean_probs = torch.stack(means)
    best = mean_probs.argmax(1)
    confidence = mean_probs.gather(1, best[:, None])[:, 0] * torch.stack(seed_scores)
    return Clusters(voxel_instance, best + FIRST_INSTANCE_TRAIN_ID, confidence.to(torch.float32))


def foreground_mask(semantic_probs: torch.Tensor) -> torch.Tensor:
    """Voxels whose predicted class is one of the 18 instance classes."""
    return semantic_probs.argmax(1) >= FIRST_INSTANCE_TRAIN_ID


@torch.no_grad()
def cluster_probabilistic(mu: torch.Tensor, log_sigma: torch.Tensor, score_logits: torch.Tensor,
                          semantic_logits: torch.Tensor, tau: float = 0.35, seed_threshold: float = 0.5,
                          min_size: int = 10, max_instances: int = 500) -> Clusters:
    """Sec. 3.4: seeds from the centre score map P (Eq. 11), members with kappa(e_i, e_i0) >= tau."""
    probs = torch.softmax(semantic_logits, 1)
    seed = torch.softmax(score_logits, 1)[:, :-1].max(1).values  # drop the "not a centre" column

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return log_bhattacharyya_kernel(mu[idx], log_sigma[idx], mu[i0], log_sigma[i0]).exp()

    return greedy_cluster(seed, foreground_mask(probs), kernel, probs, tau, seed_threshold, min_size, max_instances)


@torch.no_grad()
def cluster_margin(embedding: torch.Tensor, sigma_logit: torch.Tensor, seed_logits: torch.Tensor,
                   semantic_logits: torch.Tensor, tau: float = 0.5, seed_threshold: float = 0.5,
                   min_size: int = 10, max_instances: int = 500) -> Clusters:
    """Neven et al.: seeds from the seed maps, members with phi(e_i; e_i0, sigma_i0) >= tau."""
    probs = torch.softmax(semantic_logits, 1)
    seed = torch.sigmoid(seed_logits).max(1).values

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return margin_gaussian(embedding[idx], embedding[i0], sigma_logit[i0])

    return greedy_cluster(seed, foreground_mask(probs), kernel, probs, tau, seed_threshold, min_size, max_instances)
