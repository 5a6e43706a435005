"""Property tests of the Bhattacharyya kernel (paper Sec. 3.2, Eqs. 1-3, 6)."""

import math

import numpy as np
import pytest
import torch

from minkseg.losses.kernels import (
    bhattacharyya_kernel,
    instance_distribution,
    log1mexp,
    log_beta,
    log_bhattacharyya_kernel,
)

pytestmark = pytest.mark.usefixtures("float64")


def _gauss(x, mu, sigma):
    return np.exp(-0.5 * (((x - mu) / sigma) ** 2).sum(-1)) / np.prod(np.sqrt(2 * np.pi) * sigma)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_matches_3d_numerical_integration(seed):
    rng = np.random.default_rng(seed)
    mu_i, mu_j = rng.uniform(-0.6, 0.6, 3), rng.uniform(-0.6, 0.6, 3)
    s_i, s_j = rng.uniform(0.35, 1.0, 3), rng.uniform(0.35, 1.0, 3)
    # Eq. (1) by the midpoint rule on a 3-D grid covering both densities to many sigmas
    n, lim = 121, 7.0
    h = 2 * lim / n
    g = -lim + h * (np.arange(n) + 0.5)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    numeric = np.sqrt(_gauss(x, mu_i, s_i) * _gauss(x, mu_j, s_j)).sum() * h**3
    closed = bhattacharyya_kernel(torch.tensor(mu_i), torch.tensor(np.log(s_i)),
                                  torch.tensor(mu_j), torch.tensor(np.log(s_j))).item()
    assert abs(numeric - closed) < 1e-4
    assert 0 < closed < 1


def test_printed_formula_without_the_square_is_wrong():
    """The paper prints sum (mu_i - mu_j)/alpha; only the squared form integrates correctly."""
    mu_i, mu_j, s = torch.tensor([0.0, 0, 0]), torch.tensor([0.9, 0, 0]), torch.zeros(3)
    ours = bhattacharyya_kernel(mu_i, s, mu_j, s).item()
    assert ours == pytest.approx(math.exp(-0.81 / 8))  # alpha = 4 (1 + 1) = 8
    assert ours != pytest.approx(math.exp(-0.9 / 8))


def test_symmetry_range_and_identity():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    ls_a, ls_b = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    k_ab = bhattacharyya_kernel(mu_a, ls_a, mu_b, ls_b)
    k_ba = bhattacharyya_kernel(mu_b, ls_b, mu_a, ls_a)
    torch.testing.assert_close(k_ab, k_ba)
    assert (k_ab > 0).all() and (k_ab < 1).all()
    torch.testing.assert_close(bhattacharyya_kernel(mu_a, ls_a, mu_a, ls_a), torch.ones(500))
    # equal to 1 only for equal distributions: perturbing either parameter lowers it
    assert (bhattacharyya_kernel(mu_a, ls_a, mu_a + 1e-3, ls_a) < 1).all()
    assert (bhattacharyya_kernel(mu_a, ls_a, mu_a, ls_a + 1e-3) < 1).all()


def test_beta_formula_and_isotropic_form():
    s_i, s_j = torch.tensor([0.3, 1.0, 2.0]), torch.tensor([0.6, 1.0, 0.5])
    expected = np.prod(0.5 * (s_i / s_j + s_j / s_i).numpy()) ** -0.5
    assert log_beta(s_i.log(), s_j.log()).exp().item() == pytest.approx(expected, rel=1e-12)
    # isotropic: beta = ((s_i/s_j + s_j/s_i)/2)^(-3/2), alpha = 4 (s_i^2 + s_j^2)
    si, sj, d = 0.4, 0.9, torch.tensor([0.3, -0.2, 0.5])
    k = bhattacharyya_kernel(torch.zeros(3), torch.full((3,), math.log(si)), d, torch.full((3,), math.log(sj)))
    iso = (0.5 * (si / sj + sj / si)) ** -1.5 * math.exp(-(d**2).sum().item() / (4 * (si**2 + sj**2)))
    assert k.item() == pytest.approx(iso, rel=1e-12)


def test_limit_of_eq6_large_equal_sigmas_give_one():
    mu_i, mu_j = torch.tensor([0.0, 0, 0]), torch.tensor([5.0, -3, 2])
    values = [bhattacharyya_kernel(mu_i, torch.full((3,), ls), mu_j, torch.full((3,), ls)).item()
              for ls in (0.0, 2.0, 5.0, 10.0, 50.0)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1.0, abs=1e-12)


def test_extreme_sigmas_stay_finite_with_finite_gradients():
    mu_i = torch.zeros(4, 3, requires_grad=True)
    ls_i = torch.tensor([[-60.0] * 3, [60.0] * 3, [-60.0] * 3, [0.0] * 3], requires_grad=True)
    mu_j = torch.ones(4, 3)
    ls_j = torch.tensor([[60.0] * 3, [-60.0] * 3, [-60.0] * 3, [0.0] * 3])
    log_k = log_bhattacharyya_kernel(mu_i, ls_i, mu_j, ls_j)
    assert torch.isfinite(log_k).all() and log_k[2] < -1e40  # tiny sigmas, distinct means: kernel 0
    loss = (-log1mexp(log_k.clamp(min=-80))).sum() - log_k[[0, 1, 3]].sum()
    loss.backward()
    assert torch.isfinite(mu_i.grad).all() and torch.isfinite(ls_i.grad).all()


def test_log1mexp_accuracy():
    x = torch.tensor([-1e-10, -1e-5, -0.5, -1.0, -20.0, -700.0])
    ref = torch.tensor([math.log(-math.expm1(v)) for v in x.tolist()])
    torch.testing.assert_close(log1mexp(x), ref, rtol=1e-9, atol=1e-12)


def test_instance_distribution_is_eq3():
    g = torch.Generator().manual_seed(1)
    mu, ls = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    inst = torch.randint(-1, 4, (50,), generator=g)
    mu_hat, ls_hat = instance_distribution(mu, ls, inst, 4)
    for k in range(4):
        m = inst == k
        torch.testing.assert_close(mu_hat[k], mu[m].mean(0))
        torch.testing.assert_close(torch.exp(2 * ls_hat[k]), torch.exp(2 * ls[m]).mean(0))
