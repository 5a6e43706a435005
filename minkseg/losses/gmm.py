"""The ParAE pretext (Eckart et al., "Self-Supervised Learning on 3D Point Clouds by Learning
Discrete Generative Models", Sec. 3): soft partitions of a scene define a Gaussian mixture in
closed form, and the loss is the negative log-likelihood of the scene's points under it.

With logits ``S`` (N x J) of a point-wise network and points ``p_i`` (N x D):

* gamma_ij = softmax_j(s_ij)                                   (Eqs. 2-4)
* pi_j = 1/N sum_i gamma_ij                                    (Eq. 5)
* mu_j = 1/(N pi_j) sum_i gamma_ij p_i                          (Eq. 6)
* Sigma_j = 1/(N pi_j) sum_i gamma_ij (p_i - mu_j)(p_i - mu_j)^T  (Eq. 7)
* -log p(P) = -sum_i log sum_j pi_j N(p_i; mu_j, Sigma_j)       (Eqs. 8-10)

The paper takes the likelihood over xyz with full covariances and J = 32 partitions; it names
no numerical safeguards. Ours, each needed in float32:

* covariance floor: ``Sigma_j + diag(floor)``. Voxel centres lie on a grid, so a partition
  holding one voxel-thick wall has zero variance across it and an unbounded likelihood;
  the floor for xyz defaults to s^2 / 12, the variance of a uniform distribution over one
  voxel of width s, i.e. of the quantisation the voxel centres carry;
* empty components: pi_j and the mass N pi_j are clamped to a tiny positive value before
  the division and the log, so a component no point belongs to has a finite mean (0), the
  floor as covariance and a log-weight of about -88 instead of -inf (no 0/0, no inf - inf
  in the gradients);
* log-sum-exp over components for Eq. 10, and the Gaussian log-density through a Cholesky
  factor (log-determinant as twice its log-diagonal, Mahalanobis term by a triangular
  solve), never the density itself nor an explicit inverse. The D x D factorisations run in
  float64 (J tiny matrices) and the result is cast back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: smallest mass / weight a component keeps (float32's smallest normal number is 1.2e-38)
TINY = 1e-30


@dataclass
class Mixture:
    """A Gaussian mixture of J components in D dimensions (one scene)."""

    log_weights: torch.Tensor  # (J,) log pi_j
    means: torch.Tensor  # (J, D)
    covariances: torch.Tensor  # (J, D, D), floor included


def mixture_from_partitions(points: torch.Tensor, responsibilities: torch.Tensor,
                            floor: torch.Tensor | float) -> Mixture:
    """Closed-form mixture parameters of soft partitions (Eqs. 5-7, the paper's M-step).

    ``points`` (N, D), ``responsibilities`` gamma (N, J) with rows summing to 1, ``floor`` a
    scalar or (D,) variance added to every covariance diagonal (module docstring).
    """
    n, d = points.shape
    mass = responsibilities.sum(0)  # (J,) = N pi_j
    safe_mass = mass.clamp_min(TINY)
    log_weights = safe_mass.log() - math.log(max(n, 1))  # Eq. 5
    means = (responsibilities.T @ points) / safe_mass[:, None]  # Eq. 6
    diff = points[None, :, :] - means[:, None, :]  # (J, N, D)
    weighted = diff * responsibilities.T[:, :, None]
    cov = weighted.transpose(1, 2) @ diff / safe_mass[:, None, None]  # Eq. 7
    cov = 0.5 * (cov + cov.transpose(1, 2))  # exactly symmetric despite rounding
    floor_t = torch.as_tensor(floor, dtype=points.dtype, device=points.device).expand(d)
    return Mixture(log_weights, means, cov + torch.diag_embed(floor_t).expand_as(cov))


def gaussian_log_density(points: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor) -> torch.Tensor:
    """log N(p_i; mu_j, Sigma_j) for every point and component, (N, J).

    log N = -1/2 (D log 2 pi + log det Sigma + ||L^{-1} (p - mu)||^2) with Sigma = L L^T.
    ``cholesky_ex`` does not synchronise with the host (``cholesky`` checks its info flag);
    the covariances are positive definite by the floor.
    """
    d = points.shape[1]
    chol, _ = torch.linalg.cholesky_ex(covariances.double())
    log_det = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(1).to(points.dtype)  # (J,)
    diff = (points[None, :, :] - means[:, None, :]).transpose(1, 2)  # (J, D, N)
    z = torch.linalg.solve_triangular(chol.to(points.dtype), diff, upper=False)
    mahalanobis = z.square().sum(1)  # (J, N)
    return (-0.5 * (d * math.log(2 * math.pi) + log_det[:, None] + mahalanobis)).T


def mixture_log_likelihood(points: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log g(p_i) = log sum_j pi_j N(p_i; mu_j, Sigma_j) per point (Eq. 10), (N,), by log-sum-exp."""
    log_joint = mixture.log_weights[None, :] + gaussian_log_density(points, mixture.means, mixture.covariances)
    return torch.logsumexp(log_joint, dim=1)


def partition_nll(points: torch.Tensor, logits: torch.Tensor, floor: torch.Tensor | float) -> torch.Tensor:
    """Mean negative log-likelihood per point of one scene under the mixture its logits define
    (Eqs. 2-10): softmax, closed-form M-step, log-likelihood. Differentiable in ``logits``."""
    gamma = torch.softmax(logits, dim=1)
    return -mixture_log_likelihood(points, mixture_from_partitions(points, gamma, floor)).mean()


def batch_partition_nll(points: torch.Tensor, logits: torch.Tensor, counts: Sequence[int],
                        floor: torch.Tensor | float) -> torch.Tensor:
    """Eq. 11 on a batch: the mean over scenes of :func:`partition_nll`, each scene its own mixture.

    Rows are the scenes concatenated in order with ``counts`` rows each (host integers, so
    splitting the batch needs no device synchronisation).
    """
    if sum(counts) != len(points) or len(points) != len(logits):
        raise ValueError(f"{len(points)} points, {len(logits)} logit rows and scene sizes summing to {sum(counts)}")
    losses = [partition_nll(p, s, floor) for p, s in zip(points.split(list(counts)), logits.split(list(counts)))
              if len(p)]
    return torch.stack(losses).mean()
