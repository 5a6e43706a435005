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
LOG2 = math.log(2.0)


def _pair_sums(mu: torch.Tensor, log_sigma: torch.Tensor, own: torch.Tensor, mu_hat: torch.Tensor,
               ls_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the (voxel, instance) pairs of a chunk: sum of -log(1 - kappa) over the pairs with
    z_i != k (Eq. 4's negatives; ``own[i]`` is z_i, -1 for none) and sum of kappa over all pairs.

    The own pair is masked out, not added and subtracted later: as kappa(e_i, c_{z_i}) -> 1
    its -log(1 - kappa) and that term's gradient (~1 / (1 - kappa)) grow without bound, and
    cancelling them in float32 loses everything. For a negative pair with log kappa above
    -finfo.eps (kappa within eps of 1, where kappa itself rounds to 1) -log(1 - kappa) is
    continued linearly with its slope at -eps: at most -ln(eps) + 1 per pair (16.9 in
    float32), gradient at most 1 / eps, and never zero, so a collapsed embedding (e.g. the
    sigma -> infinity degeneration of Eq. 6) is still pushed apart.
    """
    log_k = log_bhattacharyya_kernel(mu[:, None], log_sigma[:, None], mu_hat[None], ls_hat[None])
    is_own = own[:, None] == torch.arange(len(mu_hat), device=own.device)[None]
    eps = torch.finfo(log_k.dtype).eps
    # the excess above -eps is taken with relu, not as log_k - capped: that difference would
    # carry +-1/eps gradients through two paths whose sum cancels the real one in rounding
    excess = F.relu(log_k + eps)
    negative = -log1mexp(log_k.clamp(max=-eps)) + excess / math.expm1(eps)
    negatives = torch.where(is_own, torch.zeros_like(log_k), negative)
    return negatives.sum(), log_k.exp().sum()


def chunked_pair_sums(mu: torch.Tensor, log_sigma: torch.Tensor, own: torch.Tensor, mu_hat: torch.Tensor,
                      ls_hat: torch.Tensor, chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pair_sums` over all N x K pairs in row blocks of ~``chunk_elements`` pairs."""
    chunk = max(1, chunk_elements // max(len(mu_hat), 1))
    if chunk >= len(mu):
        return _pair_sums(mu, log_sigma, own, mu_hat, ls_hat)
    neg = mu.new_zeros(())
    kern = mu.new_zeros(())
    grad = torch.is_grad_enabled() and (mu.requires_grad or log_sigma.requires_grad)
    for a in range(0, len(mu), chunk):
        args = (mu[a:a + chunk], log_sigma[a:a + chunk], own[a:a + chunk], mu_hat, ls_hat)
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
    for every instance). Pass only voxels with a known label. Instances with no voxel
    here (cropped away, or all their voxels unlabelled) have no c_k and are left out, so
    K in Eqs. (4)-(5) counts the instances present.

    The log-Dice term is evaluated in log space, log(2 sum_i kappa_i,z_i) via logsumexp of
    the own log-kernels, so it keeps its gradient when every own kernel underflows.
    """
    n = len(mu)
    counts = torch.bincount(instance[instance >= 0], minlength=num_instances)
    present = counts > 0
    k = int(present.sum())
    if k == 0 or n == 0:
        zero = mu.sum() * 0 + log_sigma.sum() * 0
        return InstanceLossTerms(zero, zero, torch.zeros(n, device=mu.device, dtype=mu.dtype))
    if k < num_instances:  # renumber the present instances 0..k-1
        new_id = torch.cumsum(present, 0) - 1
        instance = torch.where(instance >= 0, new_id[instance.clamp_min(0)], instance)
    mu_hat, ls_hat = instance_distribution(mu, log_sigma, instance, k)
    fg = instance >= 0
    # the voxels' own pairs, O(N): log kappa(e_i, c_{z_i})
    log_own = log_bhattacharyya_kernel(mu[fg], log_sigma[fg], mu_hat[instance[fg]], ls_hat[instance[fg]])
    neg_sum, kern_all = chunked_pair_sums(mu, log_sigma, instance, mu_hat, ls_hat, chunk_elements)
    # Eq. (4): own pairs take -log kappa, all others -log(1 - kappa)
    bce = (neg_sum - log_own.sum()) / (n * k)
    # Eq. (5): -log(2 sum_own kappa / (sum_all kappa + sum 1[z_i = k])); the denominator is >= |fg| >= 1
    log_dice = LOG2 + torch.logsumexp(log_own, 0) - torch.log(kern_all + fg.sum())
    own_kernel = torch.zeros(n, device=mu.device, dtype=mu.dtype)
    own_kernel[fg] = log_own.detach().exp()
    return InstanceLossTerms(bce, -log_dice, own_kernel)


def score_targets(own_kernel: torch.Tensor, instance: torch.Tensor, instance_class: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """Q of Eqs. (8)-(9), completed with a "not a centre" column (the last one).

    Q[i, l] = max over instances k of class l of kappa(e_i, c_k) 1[z_i = k]; since a voxel
    belongs to at most one instance this is kappa(e_i, c_{z_i}) in the column of z_i's
    class. ScanNet has background (walls, floors, clutter) that PartNet lacks; the extra
    column 1 - sum_l Q[i, l] gives those voxels, and instance voxels far from their
    instance's distribution, a target, so P[i, :] stays a distribution whose foreground
    columns peak at instance centres. ``instance_class`` must lie in 0..num_classes-1.
    """
    if instance_class.numel() and (int(instance_class.min()) < 0 or int(instance_class.max()) >= num_classes):
        raise ValueError(f"score_targets: instance classes must lie in 0..{num_classes - 1}, got "
                         f"{sorted(set(instance_class.tolist()))} (a wall/floor/unlabelled instance?)")
    q = own_kernel.new_zeros(len(own_kernel), num_classes + 1)
    fg = instance >= 0
    q[fg, instance_class[instance[fg]]] = own_kernel[fg]
    q[:, -1] = 1 - q[:, :-1].sum(1)
    return q


def score_loss(score_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Center-aware loss, Eq. (10) without its 1/L: mean over voxels of -sum_l Q[i, l] log P[i, l].

    P = softmax over the class axis (dim 1) of the score logits (Table 3); Q is a fixed
    target (no gradient). The printed 1/(N L) is 1/N here: the same per-voxel scale as the
    semantic cross-entropy it is trained beside (see README, "Deviations from the papers").
    """
    return -(targets.detach() * F.log_softmax(score_logits, dim=1)).sum(1).mean()


def entropy_regularizer(log_sigma: torch.Tensor) -> torch.Tensor:
    """Eq. (7), per voxel: H(e_i) = 3/2 ln(2 pi e) + sum_d ln sigma_i^d, averaged over voxels.

    The paper sums over points; averaging keeps the weight of Eq. (15) independent of the
    scene size (see README, "Deviations from the papers", for the measured consequence).
    An empty scene gives 0.
    """
    if len(log_sigma) == 0:
        return log_sigma.sum() * 0
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
