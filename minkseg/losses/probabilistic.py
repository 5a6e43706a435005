"""Losses of the probabilistic-embedding head (paper Sec. 3.3, 3.4, A.1, A.2).

All functions take the voxels of *one* scene (embeddings of different scenes share
coordinates and must never be compared) and are pure tensor math. The N x K
voxel-instance kernel matrix is never held whole once it exceeds ``chunk_elements``: it is
then built in row blocks of about that many pairs, and under autograd each block is
recomputed in the backward pass (checkpointing), so memory stays O(chunk_elements)
however large N * K is. Below the budget one block is computed directly (no recompute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .kernels import instance_distribution, log1mexp, log_bhattacharyya_kernel

ENTROPY_CONST = 1.5 * math.log(2 * math.pi * math.e)


def _pair_sums(mu: torch.Tensor, log_sigma: torch.Tensor, mu_hat: torch.Tensor, ls_hat: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Over every (voxel, instance) pair of a chunk: sum of -log(1 - kappa) and sum of kappa."""
    log_k = log_bhattacharyya_kernel(mu[:, None], log_sigma[:, None], mu_hat[None], ls_hat[None])
    return -log1mexp(log_k).sum(), log_k.exp().sum()


def chunked_pair_sums(mu: torch.Tensor, log_sigma: torch.Tensor, mu_hat: torch.Tensor, ls_hat: torch.Tensor,
                      chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pair_sums` over all N x K pairs in row blocks of ~``chunk_elements`` pairs."""
    chunk = max(1, chunk_elements // max(len(mu_hat), 1))
    if chunk >= len(mu):
        return _pair_sums(mu, log_sigma, mu_hat, ls_hat)
    neg = mu.new_zeros(())
    kern = mu.new_zeros(())
    grad = torch.is_grad_enabled() and (mu.requires_grad or log_sigma.requires_grad)
    for a in range(0, len(mu), chunk):
        args = (mu[a:a + chunk], log_sigma[a:a + chunk], mu_hat, ls_hat)
        n, k = checkpoint(_pair_sums, *args, use_reentrant=False) if grad else _pair_sums(*args)
        neg, kern = neg + n, kern + k
    return neg, kern


@dataclass
class InstanceLossTerms:
    ins_ce: torch.Tensor  # Eq. (4)
    log_dice: torch.Tensor  # the log-Dice term of Eq. (5)
    own_kernel: torch.Tensor  # kappa(e_i, c_{z_i}) per voxel (0 where z_i = -1), detached


def instance_loss(mu: torch.Tensor, log_sigma: torch.Tensor, instance: torch.Tensor, num_instances: int,
                  chunk_elements: int = 1 << 22) -> InstanceLossTerms:
    """L_InsCE (Eq. 4) and the log-Dice term of Eq. (5) for one scene.

    ``instance[i]`` is z_i in 0..K-1, or -1 for voxels in no instance (they are negatives
    for every instance). Pass only voxels with a known label.
    """
    n, k = len(mu), num_instances
    if k == 0 or n == 0:
        zero = mu.sum() * 0
        return InstanceLossTerms(zero, zero, torch.zeros(n, device=mu.device))
    mu_hat, ls_hat = instance_distribution(mu, log_sigma, instance, k)
    fg = instance >= 0
    # the voxels' own pairs, O(N): kappa(e_i, c_{z_i})
    log_own = log_bhattacharyya_kernel(mu[fg], log_sigma[fg], mu_hat[instance[fg]], ls_hat[instance[fg]])
    neg_all, kern_all = chunked_pair_sums(mu, log_sigma, mu_hat, ls_hat, chunk_elements)
    # Eq. (4): own pairs take -log kappa, all others -log(1 - kappa); the chunked sum
    # counted the own pairs as negatives, so swap their term.
    bce = (neg_all + (-log_own + log1mexp(log_own)).sum()) / (n * k)
    own = log_own.exp()
    dice = 2 * own.sum() / (kern_all + fg.sum()).clamp_min(1e-12)
    own_kernel = torch.zeros(n, device=mu.device, dtype=mu.dtype)
    own_kernel[fg] = own.detach()
    return InstanceLossTerms(bce, -torch.log(dice.clamp_min(1e-12)), own_kernel)


def score_targets(own_kernel: torch.Tensor, instance: torch.Tensor, instance_class: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """Q of Eqs. (8)-(9), completed with a "not a centre" column (the last one).

    Q[i, l] = max over instances k of class l of kappa(e_i, c_k) 1[z_i = k]; since a voxel
    belongs to at most one instance this is kappa(e_i, c_{z_i}) in the column of z_i's
    class. ScanNet has background (walls, floors, clutter) that PartNet lacks; the extra
    column 1 - sum_l Q[i, l] gives those voxels, and instance voxels far from their
    instance's distribution, a target, so P[i, :] stays a distribution whose foreground
    columns peak at instance centres.
    """
    q = own_kernel.new_zeros(len(own_kernel), num_classes + 1)
    fg = instance >= 0
    q[fg, instance_class[instance[fg]]] = own_kernel[fg]
    q[:, -1] = 1 - q[:, :-1].sum(1)
    return q


def score_loss(score_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Center-aware loss, Eq. (10): mean over voxels of -sum_l Q[i, l] log P[i, l], Q fixed."""
    return -(targets.detach() * F.log_softmax(score_logits, dim=1)).sum(1).mean()


def entropy_regularizer(log_sigma: torch.Tensor) -> torch.Tensor:
    """Eq. (7), per voxel: H(e_i) = 3/2 ln(2 pi e) + sum_d ln sigma_i^d, averaged over voxels.

    The paper sums over points; averaging keeps the weight of Eq. (15) independent of the
    scene size (100k voxels here against PartNet's 10k points).
    """
    return ENTROPY_CONST + log_sigma.sum(1).mean()


@dataclass
class ProbabilisticLossWeights:
    instance: float = 1.0
    score: float = 1.0
    entropy: float = 0.001  # Eq. (15)
    semantic: float = 1.0


def probabilistic_loss(mu: torch.Tensor, log_sigma: torch.Tensor, score_logits: torch.Tensor,
                       semantic_logits: torch.Tensor, semantic: torch.Tensor, instance: torch.Tensor,
                       instance_class: torch.Tensor, weights: ProbabilisticLossWeights | None = None,
                       ignore_index: int = -100, chunk_elements: int = 1 << 22,
                       instance_known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Eq. (15) plus semantic cross-entropy, for one scene.

    L = w_ins (L_InsCE + L_logDice) + w_score L_Score + w_ent L_Reg + w_sem L_CE.
    ``instance`` is 0..K-1 / -1 per voxel, ``instance_class`` the train id of each instance
    mapped to 0..L-1 (instance classes), ``semantic`` the train id per voxel. Voxels with
    ``instance_known`` False (pseudo-labelled scenes) are left out of Eqs. (4), (5), (10).
    """
    weights = weights or ProbabilisticLossWeights()
    known = semantic != ignore_index
    ins = known if instance_known is None else known & instance_known
    k = len(instance_class)
    terms = instance_loss(mu[ins], log_sigma[ins], instance[ins], k, chunk_elements)
    q = score_targets(terms.own_kernel, instance[ins], instance_class, score_logits.shape[1] - 1)
    out = {
        "ins_ce": terms.ins_ce,
        "log_dice": terms.log_dice,
        "score": score_loss(score_logits[ins], q) if ins.any() else score_logits.sum() * 0,
        "entropy": entropy_regularizer(log_sigma),
        "semantic": F.cross_entropy(semantic_logits, semantic, ignore_index=ignore_index)
        if known.any() else semantic_logits.sum() * 0,
    }
    out["total"] = (weights.instance * (out["ins_ce"] + out["log_dice"]) + weights.score * out["score"]
                    + weights.entropy * out["entropy"] + weights.semantic * out["semantic"])
    return out
