"""Losses of the learnable-margin head (Neven et al. 2019, re-implemented for voxels as in A.4/A.5).

Instance k has centre C_k = mean of its voxels' embeddings e_i and bandwidth from the
mean of their sigma outputs s~_i. Neven's Gaussian

    phi_k(e_i) = exp(-||e_i - C_k||^2 / (2 sigma_k^2))

is parametrised, as in the SpatialEmbeddings code, by 1 / (2 sigma_k^2) = exp(10 s~_k)
per axis (the factor 10 only speeds up learning of the margin), so
phi_k(e_i) = exp(-sum_d (e_i^d - C_k^d)^2 exp(10 s~_k^d)).

Float32 safety: exp(10 s~) overflows float32 at s~ > 8.87, and (e - C)^2 * inf is NaN
where e = C. The exponent 10 s~ is bounded to +-ln(finfo.max) / 2 (44.4 in float32:
sigma from 1.6e-10 m to 3e9 m) with a straight-through clamp, so values and gradients stay
finite for any network output while the gradient keeps pointing back into range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels import straight_through_clamp

SIGMA_SCALE = 10.0


def margin_gaussian(embedding: torch.Tensor, center: torch.Tensor, sigma_logit: torch.Tensor) -> torch.Tensor:
    """phi(e_i) = exp(-sum_d (e_i^d - C^d)^2 exp(10 s~^d)) (Neven et al. 2019, Sec. 3, with their code's
    exp(10 s~) = 1 / (2 sigma^2)) for embeddings (..., 3) against centres/bandwidths broadcastable to them.

    10 s~ is bounded to +-ln(finfo.max) / 2 (straight-through), see the module docstring.
    """
    bound = math.log(torch.finfo(embedding.dtype).max) / 2
    log_bandwidth = straight_through_clamp(SIGMA_SCALE * sigma_logit, bound)
    return torch.exp(-((embedding - center) ** 2 * torch.exp(log_bandwidth)).sum(-1))


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al. 2018) for each row of (R, N) logits vs binary labels; (R,) losses.

    Sorting the hinge errors and weighting them by the gradient of the Lovasz extension of
    the Jaccard loss gives a convex surrogate of 1 - IoU per row.
    """
    signs = 2 * labels.to(logits.dtype) - 1
    errors = 1 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    gt_sorted = torch.gather(labels.to(logits.dtype), 1, perm)
    gts = gt_sorted.sum(1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(1)
    union = gts + (1 - gt_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (F.relu(errors_sorted) * grad).sum(1)


@dataclass
class MarginLossWeights:
    instance: float = 1.0
    smooth: float = 10.0  # Neven's w_var
    seed: float = 1.0
    semantic: float = 1.0
    seed_foreground: float = 1.0  # factor on foreground voxels' seed terms (Neven's code: 10 for Cityscapes cars)


def margin_loss(embedding: torch.Tensor, sigma_logit: torch.Tensor, seed_logits: torch.Tensor,
                semantic_logits: torch.Tensor, semantic: torch.Tensor, instance: torch.Tensor,
                instance_class: torch.Tensor, weights: MarginLossWeights | None = None,
                ignore_index: int = -100, chunk_elements: int = 1 << 22,
                instance_known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Lovasz hinge per instance, sigma smoothness, seed regression and semantic CE, for one scene.

    As in Neven et al. (2019) and their code: the Lovasz hinge of 2 phi_k - 1 against
    instance k's mask, averaged over instances; the smoothness term
    mean_i (s~_i - s~_k)^2 within each instance (s~_k detached), averaged over instances;
    the seed maps regressed to phi_k(e_i) (detached) on instance k's voxels in the column of
    its class (that entry times ``seed_foreground``) and to 0 elsewhere, averaged over voxels.
    Instances without voxels here are left out. Instances are processed in groups of
    ``chunk_elements // N`` so the (group, N) kernel and sort buffers stay bounded. Voxels
    with ``instance_known`` False (pseudo-labelled scenes) only enter the semantic term.
    """
    weights = weights or MarginLossWeights()
    known = semantic != ignore_index
    ins = known if instance_known is None else known & instance_known
    e, s, seed, inst = embedding[ins], sigma_logit[ins], seed_logits[ins], instance[ins]
    n = len(e)
    num_classes = seed_logits.shape[1]
    if instance_class.numel() and (int(instance_class.min()) < 0 or int(instance_class.max()) >= num_classes):
        raise ValueError(f"margin_loss: instance classes must lie in 0..{num_classes - 1}, got "
                         f"{sorted(set(instance_class.tolist()))} (a wall/floor/unlabelled instance?)")
    counts = torch.bincount(inst[inst >= 0], minlength=len(instance_class))
    present = counts > 0
    k = int(present.sum())
    if k < len(instance_class):  # renumber the present instances 0..k-1
        new_id = torch.cumsum(present, 0) - 1
        inst = torch.where(inst >= 0, new_id[inst.clamp_min(0)], inst)
        instance_class, counts = instance_class[present], counts[present]
    zero = embedding.sum() * 0 + sigma_logit.sum() * 0 + seed_logits.sum() * 0
    out = {"lovasz": zero, "smooth": zero, "seed": zero}
    seed_prob = torch.sigmoid(seed)
    seed_target = torch.zeros_like(seed_prob)
    seed_weight = torch.ones_like(seed_prob)
    if k > 0:
        fg = inst >= 0
        idx = inst[fg]
        size = counts.to(e.dtype).unsqueeze(1)
        center = torch.zeros(k, 3, dtype=e.dtype, device=e.device).index_add_(0, idx, e[fg]) / size
        s_mean = torch.zeros(k, 3, dtype=s.dtype, device=s.device).index_add_(0, idx, s[fg]) / size
        # Neven's smoothness: mean squared deviation within each instance, then mean over instances
        dev = ((s[fg] - s_mean[idx].detach()) ** 2).mean(1)
        per_instance = torch.zeros(k, dtype=s.dtype, device=s.device).index_add_(0, idx, dev) / size[:, 0]
        out["smooth"] = per_instance.mean()
        group = max(1, chunk_elements // max(n, 1))
        lovasz = []
        for a in range(0, k, group):
            ids = torch.arange(a, min(k, a + group), device=e.device)
            phi = margin_gaussian(e[None], center[ids, None], s_mean[ids, None])  # (g, N)
            labels = inst[None] == ids[:, None]
            lovasz.append(lovasz_hinge(2 * phi - 1, labels))
        out["lovasz"] = torch.cat(lovasz).mean()
        own_phi = margin_gaussian(e[fg], center[idx], s_mean[idx]).detach()
        rows, cols = fg.nonzero(as_tuple=True)[0], instance_class[idx]
        seed_target[rows, cols] = own_phi
        seed_weight[rows, cols] = weights.seed_foreground
    if n > 0:
        out["seed"] = (seed_weight * (seed_prob - seed_target) ** 2).sum(1).mean()
    # with no labelled voxel the semantic logits still get a (zero) gradient, as in the probabilistic
    # head: a parameter without one would stall DistributedDataParallel's gradient reduction
    out["semantic"] = (F.cross_entropy(semantic_logits, semantic, ignore_index=ignore_index)
                       if known.any() else semantic_logits.sum() * 0)
    out["total"] = (weights.instance * out["lovasz"] + weights.smooth * out["smooth"]
                    + weights.seed * out["seed"] + weights.semantic * out["semantic"])
    return out
