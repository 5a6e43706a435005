"""The ParAE mixture math (minkseg.losses.gmm): closed-form M-step, log-likelihood, safeguards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minkseg.losses.gmm import (
    Mixture,
    batch_partition_nll,
    mixture_from_partitions,
    mixture_log_likelihood,
    partition_nll,
)


def test_m_step_of_hard_partitions_by_hand(dtype):
    # component 0: (0,0,0), (2,0,0) -> mean (1,0,0), variances (1,0,0)
    # component 1: (0,0,5), (0,0,7) -> mean (0,0,6), variances (0,0,1)
    p = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 0, 5], [0, 0, 7]], dtype=dtype)
    g = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=dtype)
    m = mixture_from_partitions(p, g, floor=0.1)
    assert m.log_weights.exp().tolist() == pytest.approx([0.5, 0.5])
    torch.testing.assert_close(m.means, torch.tensor([[1, 0, 0], [0, 0, 6]], dtype=dtype))
    expected = torch.tensor(np.stack([np.diag([1.1, 0.1, 0.1]), np.diag([0.1, 0.1, 1.1])]), dtype=dtype)
    torch.testing.assert_close(m.covariances, expected)


def test_m_step_of_soft_partitions_matches_a_direct_sum(dtype):
    """Eqs. 5-7 written out point by point in float64 numpy."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(7, 3)) * [1.0, 2.0, 0.5]
    g = rng.dirichlet(np.ones(3), size=7)
    floor = np.array([0.01, 0.02, 0.03])
    m = mixture_from_partitions(torch.tensor(p, dtype=dtype), torch.tensor(g, dtype=dtype), torch.tensor(floor))
    for j in range(3):
        mass = sum(g[i, j] for i in range(7))
        mu = sum(g[i, j] * p[i] for i in range(7)) / mass
        cov = sum(g[i, j] * np.outer(p[i] - mu, p[i] - mu) for i in range(7)) / mass + np.diag(floor)
        assert math.exp(m.log_weights[j]) == pytest.approx(mass / 7, rel=1e-5)
        np.testing.assert_allclose(m.means[j].double().numpy(), mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.covariances[j].double().numpy(), cov, rtol=1e-5, atol=1e-6)


def test_log_likelihood_of_an_isotropic_mixture_by_hand(dtype):
    # pi = (0.25, 0.75), means (0,0,0) and (3,0,0), Sigma = s^2 I with s = (1, 2)
    mix = Mixture(torch.tensor([0.25, 0.75], dtype=dtype).log(), torch.tensor([[0, 0, 0], [3, 0, 0]], dtype=dtype),
                  torch.stack([torch.eye(3, dtype=dtype), 4 * torch.eye(3, dtype=dtype)]))
    x = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, -2.0]], dtype=dtype)
    for row, value in zip(x.tolist(), mixture_log_likelihood(x, mix).tolist()):
        d0 = sum(c * c for c in row)
        d1 = (row[0] - 3) ** 2 + row[1] ** 2 + row[2] ** 2
        density = (0.25 * (2 * math.pi) ** -1.5 * math.exp(-d0 / 2)
                   + 0.75 * (2 * math.pi * 4) ** -1.5 * math.exp(-d1 / 8))
        assert value == pytest.approx(math.log(density), rel=1e-5)


def test_far_points_stay_finite_through_log_sum_exp(dtype):
    """A point 1000 standard deviations away: exp of its log-density underflows, the log-sum-exp does not."""
    mix = Mixture(torch.tensor([0.5, 0.5], dtype=dtype).log(), torch.zeros(2, 3, dtype=dtype),
                  torch.eye(3, dtype=dtype).expand(2, 3, 3) * 1e-2)
    ll = mixture_log_likelihood(torch.tensor([[100.0, 0.0, 0.0]], dtype=dtype), mix)
    expected = -0.5 * (3 * math.log(2 * math.pi * 1e-2) + 100.0 ** 2 / 1e-2)
    assert torch.isfinite(ll).all() and ll.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", ["empty component", "all in one", "planar", "one point"])
def test_degenerate_partitions_have_finite_float32_gradients(case):
    torch.manual_seed(0)
    n, j = 50, 4
    p = torch.rand(n, 3)
    logits = torch.randn(n, j)
    if case == "empty component":
        logits[:, 2] = -1e4  # softmax is exactly 0 there in float32
    elif case == "all in one":
        logits = torch.zeros(n, j)
        logits[:, 1] = 1e4
    elif case == "planar":
        p[:, 2] = 0.05  # one voxel layer: zero variance across it, only the floor remains
    else:
        p, logits = p[:1], logits[:1]
    logits.requires_grad_(True)
    loss = partition_nll(p, logits, floor=0.1 ** 2 / 12)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_the_floor_bounds_the_likelihood_of_a_plane():
    """Without a floor a flat partition's density is unbounded; with it the NLL is bounded below
    by that of a Gaussian with the floor's variance across the plane."""
    p = torch.rand(200, 3)
    p[:, 2] = 0.0
    logits = torch.zeros(200, 1)
    floor = 0.01
    nll = partition_nll(p, logits, floor).item()
    # the z factor alone contributes at least 0.5 log(2 pi floor) to the NLL; x, y are uniform on [0, 1]
    assert nll > 0.5 * math.log(2 * math.pi * floor) + 0.5 * 2 * math.log(2 * math.pi * (1 / 12))


def test_batches_are_the_mean_over_their_scenes(dtype):
    torch.manual_seed(0)
    p, s = torch.rand(30, 3, dtype=dtype), torch.randn(30, 5, dtype=dtype)
    both = batch_partition_nll(p, s, [12, 18], 0.01)
    separate = (partition_nll(p[:12], s[:12], 0.01) + partition_nll(p[12:], s[12:], 0.01)) / 2
    assert both.item() == pytest.approx(separate.item(), rel=1e-6)
    # one mixture for both scenes is another (a worse-fitting) model
    assert both.item() != pytest.approx(partition_nll(p, s, 0.01).item(), rel=1e-6)
    with pytest.raises(ValueError, match="scene sizes"):
        batch_partition_nll(p, s, [12, 17], 0.01)


def test_mixture_fitting_its_clusters_beats_a_mixed_up_one(dtype):
    """The likelihood the loss maximises prefers the partition that follows the data's clusters."""
    torch.manual_seed(0)
    a = torch.randn(40, 3, dtype=dtype) * 0.1
    b = torch.randn(40, 3, dtype=dtype) * 0.1 + torch.tensor([2.0, 0, 0], dtype=dtype)
    p = torch.cat([a, b])
    good = torch.cat([torch.tensor([[9.0, -9.0]]).expand(40, 2), torch.tensor([[-9.0, 9.0]]).expand(40, 2)]).to(dtype)
    shuffled = good[torch.randperm(80)]
    assert partition_nll(p, good, 1e-4) < partition_nll(p, shuffled, 1e-4) - 1.0


def nll_by_hand(p: np.ndarray, logits: np.ndarray, floor: float) -> float:
    """Eqs. 2-10 point by point in float64 numpy, with an explicit inverse and determinant."""
    n, d = p.shape
    gamma = np.exp(logits - logits.max(1, keepdims=True))
    gamma /= gamma.sum(1, keepdims=True)  # softmax over the partitions of each point
    total = 0.0
    for i in range(n):
        density = 0.0
        for j in range(logits.shape[1]):
            mass = gamma[:, j].sum()
            mu = (gamma[:, j, None] * p).sum(0) / mass
            cov = sum(gamma[k, j] * np.outer(p[k] - mu, p[k] - mu) for k in range(n)) / mass + floor * np.eye(d)
            diff = p[i] - mu
            density += mass / n * np.exp(-0.5 * diff @ np.linalg.inv(cov) @ diff) / np.sqrt(
                (2 * np.pi) ** d * np.linalg.det(cov))
        total -= np.log(density)
    return total / n


def test_partition_nll_by_hand_with_soft_asymmetric_partitions(dtype):
    """Three points, two partitions with different soft memberships: the softmax is over each
    point's partitions (a softmax over the points would give other weights)."""
    p = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.5, -1.0, 1.0]])
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    expected = nll_by_hand(p, logits, 0.3)
    ours = partition_nll(torch.tensor(p, dtype=dtype), torch.tensor(logits, dtype=dtype), 0.3)
    assert ours.item() == pytest.approx(expected, rel=1e-5)


def test_one_gaussian_by_hand(dtype):
    """One partition: the maximum-likelihood Gaussian of the points plus the floor. Points (0,0,0) and
    (2,0,0), floor 0.5: mean (1,0,0), Sigma = diag(1.5, 0.5, 0.5), each point 1 / 1.5 Mahalanobis."""
    p = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    expected = 0.5 * (3 * math.log(2 * math.pi) + math.log(1.5 * 0.25) + 1 / 1.5)
    assert partition_nll(p, torch.zeros(2, 1), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_log_density_of_a_correlated_gaussian_by_hand(dtype):
    """Sigma = [[2, 1, 0], [1, 2, 0], [0, 0, 1]]: det 3, Sigma^-1's 2x2 block [[2, -1], [-1, 2]] / 3, so
    the Mahalanobis term of (x, y, z) is (2x^2 - 2xy + 2y^2) / 3 + z^2 (a triangular solve with the
    wrong triangle would give another value for a non-diagonal Sigma)."""
    cov = torch.tensor([[[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])
    mix = Mixture(torch.zeros(1), torch.tensor([[1.0, 0.0, -1.0]]), cov)
    x = torch.tensor([[2.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    for row, value in zip(x.tolist(), mixture_log_likelihood(x, mix).tolist()):
        dx, dy, dz = row[0] - 1, row[1], row[2] + 1
        maha = (2 * dx * dx - 2 * dx * dy + 2 * dy * dy) / 3 + dz * dz
        assert value == pytest.approx(-0.5 * (3 * math.log(2 * math.pi) + math.log(3.0) + maha), rel=1e-5)


def test_log_likelihood_in_two_dimensions(dtype):
    """D = 2: the normalisation is (2 pi)^(D/2) with this D, not 3."""
    mix = Mixture(torch.zeros(1), torch.zeros(1, 2), torch.eye(2)[None] * 4)
    ll = mixture_log_likelihood(torch.tensor([[2.0, 0.0]]), mix).item()
    assert ll == pytest.approx(-0.5 * (2 * math.log(2 * math.pi) + 2 * math.log(4.0) + 1.0), rel=1e-6)


def test_one_point_and_an_empty_component_by_hand(dtype):
    """One point: weight 1 (log 0) for its component; a component with no mass keeps mean 0, the floor as
    covariance and log weight log(1e-30) - log N instead of -inf."""
    p = torch.tensor([[1.0, 2.0, 3.0]])
    m = mixture_from_partitions(p, torch.tensor([[1.0, 0.0]]), floor=0.2)
    assert m.log_weights[0].item() == 0
    assert m.log_weights[1].item() == pytest.approx(math.log(1e-30), rel=1e-6)
    assert m.means.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(m.covariances, 0.2 * torch.eye(3).expand(2, 3, 3))
    two = mixture_from_partitions(torch.cat([p, p]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), floor=0.2)
    assert two.log_weights.tolist() == pytest.approx([0.0, math.log(1e-30) - math.log(2)], rel=1e-6)
    # a one-point scene's likelihood: the floor's Gaussian at its mean
    expected = 0.5 * (3 * math.log(2 * math.pi) + 3 * math.log(0.2))
    assert partition_nll(p, torch.tensor([[0.0, -1e4]]), 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_per_axis_floor(dtype):
    p = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    m = mixture_from_partitions(p, torch.ones(2, 1), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(m.covariances[0], torch.diag(torch.tensor([0.1, 0.2, 0.3])))


def test_batch_skips_empty_scenes_and_checks_every_length(dtype):
    torch.manual_seed(0)
    p, s = torch.rand(30, 3, dtype=dtype), torch.randn(30, 5, dtype=dtype)
    with_empty = batch_partition_nll(p, s, [0, 12, 0, 18], 0.01)
    assert with_empty.item() == pytest.approx(batch_partition_nll(p, s, [12, 18], 0.01).item(), rel=1e-6)
    with pytest.raises(ValueError, match="30 points, 29 logit rows"):
        batch_partition_nll(p, s[:29], [12, 18], 0.01)


def test_mixture_follows_the_inputs_device_and_dtype(dtype):
    """With the default device elsewhere ("meta", standing in for a GPU/CPU mismatch) and a float64
    floor, the mixture and the likelihood keep the points' device and dtype (float32 in training)."""
    torch.manual_seed(0)
    p, s = torch.rand(12, 3, dtype=dtype), torch.randn(12, 4, dtype=dtype)
    floor = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)
    expected = partition_nll(p, s, floor)
    with torch.device("meta"):
        m = mixture_from_partitions(p, torch.softmax(s, 1), floor)
        nll = partition_nll(p, s, floor)
        scalar_floor = mixture_from_partitions(p, torch.softmax(s, 1), 0.01)
    assert m.covariances.device.type == "cpu" and m.covariances.dtype == dtype
    assert scalar_floor.covariances.device.type == "cpu" and scalar_floor.covariances.dtype == dtype
    assert nll.device.type == "cpu" and nll.dtype == dtype and nll.item() == expected.item()
    ll = mixture_log_likelihood(p, m)
    assert ll.dtype == dtype


def test_covariances_are_exactly_symmetric(dtype):
    """Cholesky reads one triangle only: Eq. 7's matrix is symmetrised so that rounding in the
    product cannot make the two triangles (and so the factor used) disagree."""
    torch.manual_seed(1)
    p = torch.randn(50, 3, dtype=dtype) * torch.tensor([3.0, 0.1, 7.0], dtype=dtype)
    m = mixture_from_partitions(p, torch.softmax(torch.randn(50, 6, dtype=dtype), 1), 1e-3)
    assert torch.equal(m.covariances, m.covariances.transpose(1, 2))
