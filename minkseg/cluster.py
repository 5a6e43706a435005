"""Greedy seed clustering (paper Sec. 3.4, Eq. 11; Neven et al. 2019) of per-voxel embeddings.

Repeatedly take the unassigned foreground voxel with the highest seed score; if it is
below ``seed_threshold`` stop; otherwise every unassigned foreground voxel whose kernel
with the seed is >= ``tau`` joins its instance. Each step is one vectorized pass over the
remaining voxels; only the loop over instances is in Python.

Class and confidence of an instance: the class is the arg-max of the *mean* semantic
probability over the instance's voxels (restricted to the 18 instance classes), which
pools evidence over the whole object instead of trusting the seed voxel alone; the
confidence is that mean probability times the seed score, so an instance ranks high in
AP only if it is both a confident centre and consistently classified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from minkseg.losses.kernels import log_bhattacharyya_kernel
from minkseg.losses.margin import margin_gaussian
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID


@dataclass
class Clusters:
    voxel_instance: torch.Tensor  # (M,) 0..K-1, -1 unassigned
    classes: torch.Tensor  # (K,) semantic train id of each instance
    scores: torch.Tensor  # (K,) confidence in [0, 1]

    @property
    def num_instances(self) -> int:
        return int(self.classes.numel())


def greedy_cluster(seed_score: torch.Tensor, foreground: torch.Tensor,
                   kernel_to_seed: Callable[[int, torch.Tensor], torch.Tensor], semantic_probs: torch.Tensor,
                   tau: float, seed_threshold: float = 0.5, min_size: int = 10, max_instances: int = 500,
                   max_seeds: int = 5000) -> Clusters:
    """Generic greedy clustering; ``kernel_to_seed(i0, idx)`` gives kernel values of voxels idx with seed i0."""
    m = len(seed_score)
    voxel_instance = torch.full((m,), -1, dtype=torch.long, device=seed_score.device)
    cand = foreground.nonzero(as_tuple=True)[0]
    free = torch.ones(len(cand), dtype=torch.bool, device=seed_score.device)
    score = seed_score[cand]
    classes, scores = [], []
    inst_probs = semantic_probs[:, FIRST_INSTANCE_TRAIN_ID:]
    for _ in range(max_seeds):
        if not free.any() or len(classes) >= max_instances:
            break
        masked = torch.where(free, score, torch.full_like(score, -1.0))
        j = int(masked.argmax())
        if masked[j] < seed_threshold:
            break
        idx = free.nonzero(as_tuple=True)[0]
        members = idx[kernel_to_seed(int(cand[j]), cand[idx]) >= tau]
        free[members] = False
        free[j] = False  # the seed is used even if its instance is rejected, so the loop ends
        if len(members) < min_size:
            continue
        vox = cand[members]
        mean_prob = inst_probs[vox].mean(0)
        c = int(mean_prob.argmax())
        voxel_instance[vox] = len(classes)
        classes.append(c + FIRST_INSTANCE_TRAIN_ID)
        scores.append(float(mean_prob[c]) * float(masked[j]))
    dev = seed_score.device
    return Clusters(voxel_instance, torch.tensor(classes, dtype=torch.long, device=dev),
                    torch.tensor(scores, dtype=torch.float32, device=dev))


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

    def kernel(i0: int, idx: torch.Tensor) -> torch.Tensor:
        return log_bhattacharyya_kernel(mu[idx], log_sigma[idx], mu[i0], log_sigma[i0]).exp()

    return greedy_cluster(seed, foreground_mask(probs), kernel, probs, tau, seed_threshold, min_size, max_instances)


@torch.no_grad()
def cluster_margin(embedding: torch.Tensor, sigma_logit: torch.Tensor, seed_logits: torch.Tensor,
                   semantic_logits: torch.Tensor, tau: float = 0.5, seed_threshold: float = 0.5,
                   min_size: int = 10, max_instances: int = 500) -> Clusters:
    """Neven et al.: seeds from the seed maps, members with phi(e_i; e_i0, sigma_i0) >= tau."""
    probs = torch.softmax(semantic_logits, 1)
    seed = torch.sigmoid(seed_logits).max(1).values

    def kernel(i0: int, idx: torch.Tensor) -> torch.Tensor:
        return margin_gaussian(embedding[idx], embedding[i0], sigma_logit[i0])

    return greedy_cluster(seed, foreground_mask(probs), kernel, probs, tau, seed_threshold, min_size, max_instances)
