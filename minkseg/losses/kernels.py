"""The Bhattacharyya kernel between diagonal Gaussians, in log space (paper Sec. 3.2).

For p_i = N(mu_i, diag(sigma_i^2)), p_j = N(mu_j, diag(sigma_j^2)) in D dimensions, Eq. (1)
integrates to

    kappa(e_i, e_j) = beta_ij * exp(- sum_d (mu_i^d - mu_j^d)^2 / alpha_ij^d),
    alpha_ij^d     = 4 (sigma_i^d^2 + sigma_j^d^2),
    beta_ij        = prod_d ( (sigma_i^d / sigma_j^d + sigma_j^d / sigma_i^d) / 2 )^(-1/2).

The paper prints the Mahalanobis sum without the square on (mu_i - mu_j); the square is
required (it is the Bhattacharyya distance (1/8) dmu^T ((S_i + S_j)/2)^-1 dmu) and is what
the tests check against numerical integration. Everything is computed from log sigma so
that sigma -> 0 or -> infinity gives finite values and gradients.

Float32 (the training dtype) safety, by construction rather than by luck:

* log sigma enters the kernel bounded to |log sigma| <= ln(finfo.max) / 8 (11.1 in float32:
  sigma from 15 um to 66 km), so 1 / alpha, the Mahalanobis sum and its gradients, and
  their squares (Adam's second moment) stay finite for room-sized mean differences. The
  bound is straight-through: outside it the gradient is the one at the bound, so a sigma
  driven out of range (e.g. by Eq. 7) is still pulled back by the instance loss.
* log beta is clamped to <= 0, so rounding never makes kappa exceed 1.
* :func:`log1mexp` evaluates each ``torch.where`` branch only on its own domain, so the
  unused branch can never produce an inf whose zero-weighted gradient becomes NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)
LOG4 = math.log(4.0)


def straight_through_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x clamped to [-bound, bound] in the forward pass, identity in the backward pass.

    Used where a plain clamp would leave a parameter stuck beyond the bound with zero
    gradient; the gradient passed back is the loss's gradient at the bound.
    """
    return x + (x.clamp(-bound, bound) - x).detach()


def log_sigma_bound(dtype: torch.dtype) -> float:
    """Largest |log sigma| the kernel uses for ``dtype``: ln(finfo.max) / 8 (11.09 for float32).

    With |mu_i - mu_j| <= 100 m per axis, 1 / alpha <= exp(2 bound) / 8, the Mahalanobis term
    <= 3e4 exp(2 bound) / 8 and the squares of its gradients <= (2e4 exp(2 bound) / 8)^2:
    1.2e26 in float32 (max 3.4e38), so Adam's second moment cannot overflow either.
    """
    return math.log(torch.finfo(dtype).max) / 8


def log_beta(log_sigma_i: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """log beta_ij = -1/2 sum_d log cosh(log sigma_i^d - log sigma_j^d)  (Sec. 3.2).

    Uses (r + 1/r) / 2 = cosh(log r); log cosh(t) = |t| + log1p(exp(-2|t|)) - log 2 is exact
    and overflow-free for any t. It is >= 0 mathematically; the clamp removes the rounding
    of softplus(0) - log 2 that would otherwise give beta slightly above 1.
    """
    t = (log_sigma_i - log_sigma_j).abs()
    return -0.5 * (t + F.softplus(-2 * t) - LOG2).clamp_min(0).sum(-1)


def log_bhattacharyya_kernel(mu_i: torch.Tensor, log_sigma_i: torch.Tensor,
                             mu_j: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """log kappa(e_i, e_j) of Eq. (1) (closed form of Sec. 3.2) for broadcastable (..., D) inputs; shape (...).

    Always <= 0. log sigma is bounded by :func:`log_sigma_bound` (straight-through).
    """
    bound = log_sigma_bound(mu_i.dtype)
    ls_i = straight_through_clamp(log_sigma_i, bound)
    ls_j = straight_through_clamp(log_sigma_j, bound)
    log_alpha = LOG4 + torch.logaddexp(2 * ls_i, 2 * ls_j)
    mahalanobis = ((mu_i - mu_j) ** 2 * torch.exp(-log_alpha)).sum(-1)
    return log_beta(ls_i, ls_j) - mahalanobis


def bhattacharyya_kernel(mu_i: torch.Tensor, log_sigma_i: torch.Tensor,
                         mu_j: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """kappa(e_i, e_j) in [0, 1], = 1 iff the two Gaussians are equal (Eq. 1)."""
    return log_bhattacharyya_kernel(mu_i, log_sigma_i, mu_j, log_sigma_j).exp()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x (Maechler 2012).

    For x > -log 2 it is log(-expm1(x)), otherwise log1p(-exp(x)). ``torch.where``
    differentiates both branches everywhere, so each branch's input is clamped into that
    branch's own domain first: the near-zero branch sees [-log 2, -finfo.tiny], the far
    branch (-inf, -log 2]. Both are then finite with finite gradients for every x, and
    x = 0 gives log(finfo.tiny) (-87.3 in float32) instead of -inf.
    """
    tiny = torch.finfo(x.dtype).tiny
    near = x > -LOG2
    x_near = x.clamp(-LOG2, -tiny)
    x_far = x.clamp(max=-LOG2)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def instance_distribution(mu: torch.Tensor, log_sigma: torch.Tensor, instance: torch.Tensor, k: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log sigma of each instance's distribution c_k (Eq. 3).

    mu_hat_k = mean of mu_i, Sigma_hat_k = mean of Sigma_i over the voxels of instance k
    (Eq. 3 as printed: the mean of the variances). ``instance`` holds 0..k-1 or -1. An
    instance without voxels gets mu_hat = 0 and log sigma_hat = 0 (the callers drop it).
    """
    fg = instance >= 0
    idx, m, ls = instance[fg], mu[fg], log_sigma[fg]
    present = torch.bincount(idx, minlength=k)[:, None] > 0
    counts = torch.bincount(idx, minlength=k).clamp_min(1).to(mu.dtype).unsqueeze(1)
    mu_hat = torch.zeros(k, mu.shape[1], dtype=mu.dtype, device=mu.device).index_add_(0, idx, m) / counts
    # log mean exp(2 log sigma) per instance, stabilised by the per-instance maximum: the
    # maximum's own term is exp(0) = 1, so every present instance's sum is >= 1
    two_ls = 2 * ls
    peak = torch.full((k, ls.shape[1]), -torch.inf, dtype=ls.dtype, device=ls.device)
    peak = peak.scatter_reduce(0, idx.unsqueeze(1).expand_as(two_ls), two_ls, "amax").detach()
    peak = torch.where(present, peak, torch.zeros_like(peak))
    sums = torch.zeros_like(peak).index_add_(0, idx, torch.exp(two_ls - peak[idx]))
    log_var = peak + torch.log(torch.where(present, sums, torch.ones_like(sums))) - torch.log(counts)
    return mu_hat, 0.5 * log_var
