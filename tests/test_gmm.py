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
