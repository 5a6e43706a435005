"""Losses of the learnable-margin head (Neven et al. 2019, re-implemented for voxels as in A.4/A.5).

Instance k has centre C_k = mean of its voxels' embeddings e_i and bandwidth from the
mean of their sigma outputs s~_i. Neven's Gaussian

    phi_k(e_i) = exp(-||e_i - C_k||^2 / (2 sigma_k^2))

is parametrised, as in the SpatialEmbeddings code, by 1 / (2 sigma_k^2) = exp(10 s~_k)
per axis (the factor 10 only speeds up learning of the margin), so
phi_k(e_i) = exp(-sum_d (e_i^d - C_k^d)^2 exp(10 s~_k^d)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SIGMA_SCALE = 10.0


def margin_gaussian(embedding: torch.Tensor, center: torch.Tensor, sigma_logit: torch.Tensor) -> torch.Tensor:
    """phi(e_i) for embeddings (..., 3) against centres/bandwidths broadcastable to them."""
    return torch.exp(-((embedding - center) ** 2 * torch.exp(SIGMA_SCALE * sigma_logit)).sum(-1))


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
    smooth: float = 10.0
    seed: float = 1.0
    semantic: float = 1.0


def margin_loss(embedding: torch.Tensor, sigma_logit: torch.Tensor, seed_logits: torch.Tensor,
                semantic_logits: torch.Tensor, semantic: torch.Tensor, instance: torch.Tensor,
                instance_class: torch.Tensor, weights: MarginLossWeights | None = None,
                ignore_index: int = -100, chunk_elements: int = 1 << 22,
                instance_known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Lovasz hinge per instance, sigma smoothness, seed regression and semantic CE, for one scene.

    Instances are processed in groups of ``chunk_elements // N`` so the (group, N) kernel
    and sort buffers stay bounded. Voxels with ``instance_known`` False (pseudo-labelled
    scenes) only enter the semantic term.
    """
    weights = weights or MarginLossWeights()
    known = semantic != ignore_index
    ins = known if instance_known is None else known & instance_known
    e, s, seed, inst = embedding[ins], sigma_logit[ins], seed_logits[ins], instance[ins]
    n, k = len(e), len(instance_class)
    zero = embedding.sum() * 0
    out = {"lovasz": zero, "smooth": zero, "seed": zero}
    seed_prob = torch.sigmoid(seed)
    seed_target = torch.zeros_like(seed_prob)
    if k > 0 and n > 0:
        fg = inst >= 0
        counts = torch.bincount(inst[fg], minlength=k).clamp_min(1).to(e.dtype).unsqueeze(1)
        center = torch.zeros(k, 3, dtype=e.dtype, device=e.device).index_add_(0, inst[fg], e[fg]) / counts
        s_mean = torch.zeros(k, 3, dtype=s.dtype, device=s.device).index_add_(0, inst[fg], s[fg]) / counts
        out["smooth"] = ((s[fg] - s_mean[inst[fg]].detach()) ** 2).mean()
        group = max(1, chunk_elements // max(n, 1))
        lovasz = []
        for a in range(0, k, group):
            ids = torch.arange(a, min(k, a + group), device=e.device)
            phi = margin_gaussian(e[None], center[ids, None], s_mean[ids, None])  # (g, N)
            labels = inst[None] == ids[:, None]
            lovasz.append(lovasz_hinge(2 * phi - 1, labels))
        out["lovasz"] = torch.cat(lovasz).mean()
        own_phi = margin_gaussian(e[fg], center[inst[fg]], s_mean[inst[fg]]).detach()
        seed_target[fg.nonzero(as_tuple=True)[0], instance_class[inst[fg]]] = own_phi
    if n > 0:
        out["seed"] = ((seed_prob - seed_target) ** 2).sum(1).mean()
    out["semantic"] = (F.cross_entropy(semantic_logits, semantic, ignore_index=ignore_index)
                       if known.any() else zero)
    out["total"] = (weights.instance * out["lovasz"] + weights.smooth * out["smooth"]
                    + weights.seed * out["seed"] + weights.semantic * out["semantic"])
    return out
