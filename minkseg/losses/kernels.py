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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG2 = math.log(2.0)


def log_beta(log_sigma_i: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """log beta_ij = -1/2 sum_d log cosh(log sigma_i^d - log sigma_j^d)  (Sec. 3.2).

    Uses (r + 1/r) / 2 = cosh(log r); log cosh(t) = |t| + log1p(exp(-2|t|)) - log 2 is exact
    and overflow-free for any t.
    """
    t = (log_sigma_i - log_sigma_j).abs()
    return -0.5 * (t + F.softplus(-2 * t) - LOG2).sum(-1)


def log_bhattacharyya_kernel(mu_i: torch.Tensor, log_sigma_i: torch.Tensor,
                             mu_j: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """log kappa(e_i, e_j) for broadcastable (..., D) inputs; returns shape (...)."""
    log_alpha = math.log(4.0) + torch.logaddexp(2 * log_sigma_i, 2 * log_sigma_j)
    mahalanobis = ((mu_i - mu_j) ** 2 * torch.exp(-log_alpha)).sum(-1)
    return log_beta(log_sigma_i, log_sigma_j) - mahalanobis


def bhattacharyya_kernel(mu_i: torch.Tensor, log_sigma_i: torch.Tensor,
                         mu_j: torch.Tensor, log_sigma_j: torch.Tensor) -> torch.Tensor:
    """kappa(e_i, e_j) in [0, 1], = 1 iff the two Gaussians are equal (Eq. 1)."""
    return log_bhattacharyya_kernel(mu_i, log_sigma_i, mu_j, log_sigma_j).exp()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x (Maechler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -LOG2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def instance_distribution(mu: torch.Tensor, log_sigma: torch.Tensor, instance: torch.Tensor, k: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log sigma of each instance's distribution c_k (Eq. 3).

    mu_hat_k = mean of mu_i, Sigma_hat_k = mean of Sigma_i over the voxels of instance k
    (Eq. 3 as printed: the mean of the variances). ``instance`` holds 0..k-1 or -1.
    """
    fg = instance >= 0
    idx, m, ls = instance[fg], mu[fg], log_sigma[fg]
    counts = torch.bincount(idx, minlength=k).clamp_min(1).to(mu.dtype).unsqueeze(1)
    mu_hat = torch.zeros(k, mu.shape[1], dtype=mu.dtype, device=mu.device).index_add_(0, idx, m) / counts
    # log mean exp(2 log sigma) per instance, stabilised by the per-instance maximum
    two_ls = 2 * ls
    peak = torch.full((k, ls.shape[1]), -torch.inf, dtype=ls.dtype, device=ls.device)
    peak = peak.scatter_reduce(0, idx.unsqueeze(1).expand_as(two_ls), two_ls, "amax").detach()
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = torch.zeros_like(peak).index_add_(0, idx, torch.exp(two_ls - peak[idx]))
    log_var = peak + torch.log(sums.clamp_min(1e-30)) - torch.log(counts)
    return mu_hat, 0.5 * log_var
