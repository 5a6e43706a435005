"""Property tests of the Bhattacharyya kernel (paper Sec. 3.2, Eqs. 1-3, 6), in float32 and float64.

Float32 is the training dtype; float64 is the reference. Every test runs in both.
"""

import decimal
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
    log_sigma_bound,
    straight_through_clamp,
)


def rel(dtype):
    """Relative tolerance of a few-operation result in ``dtype``."""
    return 2e-6 if dtype == torch.float32 else 1e-12


def _gauss(x, mu, sigma):
    return np.exp(-0.5 * (((x - mu) / sigma) ** 2).sum(-1)) / np.prod(np.sqrt(2 * np.pi) * sigma)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_matches_3d_numerical_integration(seed, dtype):
    rng = np.random.default_rng(seed)
    mu_i, mu_j = rng.uniform(-0.6, 0.6, 3), rng.uniform(-0.6, 0.6, 3)
    s_i, s_j = rng.uniform(0.35, 1.0, 3), rng.uniform(0.35, 1.0, 3)
    # Eq. (1) by the midpoint rule on a 3-D grid covering both densities to many sigmas
    n, lim = 121, 7.0
    h = 2 * lim / n
    g = -lim + h * (np.arange(n) + 0.5)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    numeric = np.sqrt(_gauss(x, mu_i, s_i) * _gauss(x, mu_j, s_j)).sum() * h**3
    closed = bhattacharyya_kernel(torch.tensor(mu_i, dtype=dtype), torch.tensor(np.log(s_i), dtype=dtype),
                                  torch.tensor(mu_j, dtype=dtype), torch.tensor(np.log(s_j), dtype=dtype))
    assert closed.dtype == dtype
    assert abs(numeric - closed.item()) < 1e-4
    assert 0 < closed.item() < 1


def test_printed_formula_without_the_square_is_wrong(dtype):
    """The paper prints sum (mu_i - mu_j)/alpha; only the squared form integrates correctly."""
    mu_i, mu_j, s = torch.tensor([0.0, 0, 0]), torch.tensor([0.9, 0, 0]), torch.zeros(3)
    ours = bhattacharyya_kernel(mu_i, s, mu_j, s).item()
    assert ours == pytest.approx(math.exp(-0.81 / 8), rel=rel(dtype))  # alpha = 4 (1 + 1) = 8
    assert ours != pytest.approx(math.exp(-0.9 / 8), rel=1e-3)


def test_symmetry_range_and_identity(dtype):
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    ls_a, ls_b = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)
    k_ab = bhattacharyya_kernel(mu_a, ls_a, mu_b, ls_b)
    k_ba = bhattacharyya_kernel(mu_b, ls_b, mu_a, ls_a)
    assert torch.equal(k_ab, k_ba)  # the closed form is symmetric operation by operation
    log_k = log_bhattacharyya_kernel(mu_a, ls_a, mu_b, ls_b)  # kappa > 0 even where exp underflows float32
    assert torch.isfinite(log_k).all() and (log_k < 0).all() and (k_ab < 1).all()
    same = bhattacharyya_kernel(mu_a, ls_a, mu_a, ls_a)
    assert (same <= 1).all()  # never above 1, even by rounding
    torch.testing.assert_close(same, torch.ones(500))
    # equal to 1 only for equal distributions: perturbing either parameter lowers it
    assert (bhattacharyya_kernel(mu_a, ls_a, mu_a + 1e-2, ls_a) < 1).all()
    assert (bhattacharyya_kernel(mu_a, ls_a, mu_a, ls_a + 1e-2) < 1).all()


@pytest.mark.parametrize("spread", [1e-3, 1e-4, 1e-5, 0.0])
@pytest.mark.parametrize("log_sigma", [-1.0, 0.0, -11.0, 11.0])
def test_kernel_of_nearly_identical_gaussians(spread, log_sigma, dtype):
    """Means within ``spread`` and equal sigmas: log kappa is the closed form (-> 0, kappa -> 1, as
    spread -> 0), never above 0, with finite gradients."""
    mu_i = torch.zeros(8, 3, requires_grad=True)
    mu_j = torch.full((8, 3), spread)
    ls = torch.full((8, 3), log_sigma, requires_grad=True)
    log_k = log_bhattacharyya_kernel(mu_i, ls, mu_j, ls.detach())
    expected = -3 * spread**2 / (8 * math.exp(2 * log_sigma))  # beta = 1, alpha = 8 sigma^2
    assert (log_k <= 0).all()
    torch.testing.assert_close(log_k, torch.full((8,), expected), rtol=1e-4, atol=1e-30)
    (-log_k).sum().backward()
    assert torch.isfinite(mu_i.grad).all() and torch.isfinite(ls.grad).all()


def test_beta_formula_and_isotropic_form(dtype):
    s_i, s_j = torch.tensor([0.3, 1.0, 2.0]), torch.tensor([0.6, 1.0, 0.5])
    expected = np.prod(0.5 * (s_i / s_j + s_j / s_i).double().numpy()) ** -0.5
    assert log_beta(s_i.log(), s_j.log()).exp().item() == pytest.approx(expected, rel=10 * rel(dtype))
    # isotropic: beta = ((s_i/s_j + s_j/s_i)/2)^(-3/2), alpha = 4 (s_i^2 + s_j^2)
    si, sj, d = 0.4, 0.9, torch.tensor([0.3, -0.2, 0.5])
    k = bhattacharyya_kernel(torch.zeros(3), torch.full((3,), math.log(si)), d, torch.full((3,), math.log(sj)))
    iso = (0.5 * (si / sj + sj / si)) ** -1.5 * math.exp(-(d.double() ** 2).sum().item() / (4 * (si**2 + sj**2)))
    assert k.item() == pytest.approx(iso, rel=10 * rel(dtype))


def test_limit_of_eq6_large_equal_sigmas_give_one(dtype):
    mu_i, mu_j = torch.tensor([0.0, 0, 0]), torch.tensor([5.0, -3, 2])
    log_values = [log_bhattacharyya_kernel(mu_i, torch.full((3,), ls), mu_j, torch.full((3,), ls)).item()
                  for ls in (0.0, 2.0, 5.0, 10.0, 50.0)]
    assert all(a < b for a, b in zip(log_values, log_values[1:]))
    assert math.exp(log_values[-1]) == pytest.approx(1.0, abs=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("extreme", [40.0, 60.0, 1e4])
def test_extreme_sigmas_stay_finite_with_finite_gradients(extreme, dtype):
    mu_i = torch.zeros(4, 3, requires_grad=True)
    ls_i = torch.tensor([[-extreme] * 3, [extreme] * 3, [-extreme] * 3, [0.0] * 3], requires_grad=True)
    mu_j = torch.ones(4, 3)
    ls_j = torch.tensor([[extreme] * 3, [-extreme] * 3, [-extreme] * 3, [0.0] * 3])
    log_k = log_bhattacharyya_kernel(mu_i, ls_i, mu_j, ls_j)
    assert torch.isfinite(log_k).all() and log_k[2] < -1e8  # tiny sigmas, distinct means: kernel 0
    loss = (-log1mexp(log_k)).sum() - log_k[[0, 1, 3]].sum()
    loss.backward()
    assert torch.isfinite(mu_i.grad).all() and torch.isfinite(ls_i.grad).all()


def test_out_of_range_sigma_is_still_pulled_back(dtype):
    """Beyond the log sigma bound the gradient is the one at the bound (straight-through), not zero:
    a too-small sigma around distinct means is pushed up, a too-large one between equal
    means (Eq. 6's degeneration, as a negative pair) is pushed down."""
    bound = log_sigma_bound(dtype)
    ls = torch.full((1, 3), -(bound + 20), requires_grad=True)
    (-log_bhattacharyya_kernel(torch.zeros(1, 3), ls, torch.full((1, 3), 0.01), ls)).sum().backward()
    assert (ls.grad < 0).all()  # descent raises sigma
    ls = torch.full((1, 3), bound + 20, requires_grad=True)
    log_k = log_bhattacharyya_kernel(torch.zeros(1, 3), ls, torch.full((1, 3), 5.0), ls)
    (-log1mexp(log_k)).sum().backward()  # a negative pair
    assert torch.isfinite(ls.grad).all() and (ls.grad > 0).all()  # descent lowers sigma


def test_log1mexp_accuracy(dtype):
    values = [-1e-30, -1e-10, -1e-5, -0.5, -math.log(2), -1.0, -20.0, -700.0]
    x = torch.tensor(values)
    with decimal.localcontext() as ctx:  # 1 - e^-700 needs ~300 digits before its logarithm
        ctx.prec = 350
        ref = torch.tensor([float((1 - decimal.Decimal(v).exp()).ln()) for v in x.double().tolist()])
    # atol: exp(-700) underflows float32, whose result -1e-304 then rounds to 0
    torch.testing.assert_close(log1mexp(x), ref.to(dtype), rtol=10 * rel(dtype), atol=torch.finfo(dtype).tiny)


def test_log1mexp_both_branches_finite_at_every_input(dtype):
    """torch.where differentiates both branches: a non-finite unused branch would make the gradient NaN."""
    tiny = torch.finfo(dtype).tiny
    x = torch.tensor([0.0, -tiny, -1e-30, -1e-12, -1e-7, -0.69, -0.7, -50.0, -1e30, -math.inf],
                     requires_grad=True)
    y = log1mexp(x)
    assert torch.isfinite(y[:-1]).all() and y[-1] == 0
    assert y[0].item() == pytest.approx(math.log(tiny), rel=1e-6)  # x = 0 saturates instead of -inf
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[1:-2] < 0).all()  # d/dx log(1 - e^x) = -1 / expm1(-x) < 0 inside the domain


def test_instance_distribution_is_eq3(dtype):
    g = torch.Generator().manual_seed(1)
    mu, ls = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    inst = torch.randint(-1, 4, (50,), generator=g)
    mu_hat, ls_hat = instance_distribution(mu, ls, inst, 5)  # instance 4 has no voxel
    for k in range(4):
        m = inst == k
        torch.testing.assert_close(mu_hat[k], mu[m].mean(0))
        torch.testing.assert_close(torch.exp(2 * ls_hat[k]), torch.exp(2 * ls[m]).mean(0))
    assert (mu_hat[4] == 0).all() and (ls_hat[4] == 0).all()


def test_instance_distribution_with_extreme_sigmas_is_finite(dtype):
    mu = torch.zeros(6, 3)
    ls = torch.tensor([[-80.0] * 3, [80.0] * 3, [0.0] * 3, [-80.0] * 3, [-80.0] * 3, [-80.0] * 3])
    inst = torch.tensor([0, 0, 0, 1, 1, 1])
    _, ls_hat = instance_distribution(mu, ls, inst, 2)
    assert torch.isfinite(ls_hat).all()
    # the mean of the variances is dominated by the largest: 0.5 log(e^160 / 3), and exact for equal ones
    assert ls_hat[0, 0].item() == pytest.approx(80 - 0.5 * math.log(3), rel=1e-5)
    assert ls_hat[1, 0].item() == pytest.approx(-80, rel=1e-6)


def test_log_sigma_bound_is_an_eighth_of_the_largest_log(dtype):
    assert log_sigma_bound(torch.float32) == pytest.approx(88.72283905206835 / 8, rel=1e-12)
    assert log_sigma_bound(torch.float64) == pytest.approx(709.782712893384 / 8, rel=1e-12)
    assert log_sigma_bound(dtype) == math.log(torch.finfo(dtype).max) / 8


def test_straight_through_clamp_forward_is_clamped_backward_is_identity(dtype):
    x = torch.tensor([-5.0, -2.0, 0.5, 2.0, 7.0], requires_grad=True)
    y = straight_through_clamp(x, 2.0)
    assert y.tolist() == [-2.0, -2.0, 0.5, 2.0, 2.0]
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_log_beta_by_hand_per_row(dtype):
    """log beta = -1/2 sum_d log((r + 1/r) / 2), r = sigma_i / sigma_j, summed over the last axis only."""
    ls_i = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, -math.log(4.0)], [5.0, -5.0, 30.0],
                         [-30.0, 0.0, 0.0]])
    ls_j = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 30.0], [30.0, 0.0, 0.0]])

    def log_beta_ref(t: float) -> float:  # log cosh(t) for large |t| is |t| - log 2
        return -0.5 * (abs(t) - math.log(2) if abs(t) > 30 else math.log(math.cosh(t)))

    expected = [0.0, -0.5 * (math.log(1.25) + math.log(17 / 8)), 0.0, log_beta_ref(60.0)]
    torch.testing.assert_close(log_beta(ls_i, ls_j), torch.tensor(expected), rtol=10 * rel(dtype), atol=0)
    assert (log_beta(ls_i, ls_j) <= 0).all()


@pytest.mark.parametrize("rows", [1, 3, 5])
def test_log_kernel_by_hand_for_anisotropic_rows(rows, dtype):
    """log kappa = log beta - sum_d dmu_d^2 / (4 (sigma_i^2 + sigma_j^2)) for each of ``rows`` rows."""
    s_i, s_j = [0.5, 1.0, 2.0], [1.0, 0.25, 2.0]
    d = [0.3, -0.4, 1.0]
    log_beta_ref = -0.5 * sum(math.log(0.5 * (a / b + b / a)) for a, b in zip(s_i, s_j))
    maha = sum(x * x / (4 * (a * a + b * b)) for x, a, b in zip(d, s_i, s_j))
    mu_i = torch.zeros(rows, 3)
    mu_j = torch.tensor(d).expand(rows, 3)
    log_k = log_bhattacharyya_kernel(mu_i, torch.tensor(s_i).log().expand(rows, 3), mu_j,
                                     torch.tensor(s_j).log().expand(rows, 3))
    assert log_k.shape == (rows,)
    torch.testing.assert_close(log_k, torch.full((rows,), log_beta_ref - maha), rtol=10 * rel(dtype), atol=0)


def test_kernel_is_clamped_at_the_sigma_bound_in_the_forward_pass(dtype):
    """Beyond the bound both sigmas act as the bound: distinct tiny sigmas e^-100 and e^-200 give
    beta = 1 and alpha = 8 e^(-2 bound); huge ones act as e^(+bound)."""
    bound = log_sigma_bound(dtype)
    mu_i, mu_j = torch.zeros(3), torch.tensor([1e-12, 0.0, 0.0])
    tiny = log_bhattacharyya_kernel(mu_i, torch.full((3,), -100.0), mu_j, torch.full((3,), -200.0))
    assert tiny.item() == pytest.approx(-1e-24 / (8 * math.exp(-2 * bound)), rel=1e-5)
    huge = log_bhattacharyya_kernel(mu_i, torch.full((3,), 100.0), torch.tensor([1e12, 0.0, 0.0]),
                                    torch.full((3,), 200.0))
    assert huge.item() == pytest.approx(-1e24 / (8 * math.exp(2 * bound)), rel=1e-5)


def test_log1mexp_at_the_branch_point_and_its_gradient(dtype):
    """Both branches meet at -log 2 (value log(1/2)); d/dx log(1 - e^x) = -e^x / (1 - e^x), = -1 there."""
    x = torch.tensor([-math.log(2.0), -0.5, -2.0], requires_grad=True)
    y = log1mexp(x)
    assert y.tolist() == pytest.approx([math.log(0.5), math.log(1 - math.exp(-0.5)), math.log(1 - math.exp(-2.0))],
                                       rel=10 * rel(dtype))
    y.sum().backward()
    expected = [-math.exp(v) / (1 - math.exp(v)) for v in (-math.log(2.0), -0.5, -2.0)]
    assert x.grad.tolist() == pytest.approx(expected, rel=100 * rel(dtype))


def test_instance_distribution_of_one_voxel_instances_and_gradients(dtype):
    """A one-voxel instance is that voxel (mean and sigma exactly, even at log sigma -80); the
    gradient of log sigma_hat w.r.t. each member's log sigma is its share sigma_i^2 / sum sigma^2."""
    mu = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], requires_grad=True)
    ls = torch.tensor([[-80.0, 0.5, 2.0], [0.0, 0.0, 0.0], [math.log(3.0)] * 3, [3.0, -1.0, 0.0]],
                      requires_grad=True)
    inst = torch.tensor([0, 1, 1, -1])
    mu_hat, ls_hat = instance_distribution(mu, ls, inst, 3)
    assert mu_hat.tolist() == [[1.0, 2.0, 3.0], [2.0, 2.5, 3.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(ls_hat[0], ls[0].detach())
    torch.testing.assert_close(ls_hat[1], torch.full((3,), 0.5 * math.log(5.0)))  # mean of variances 1 and 9
    assert ls_hat[2].tolist() == [0.0, 0.0, 0.0]
    ls_hat[1].sum().backward(retain_graph=True)
    torch.testing.assert_close(ls.grad[1:3], torch.tensor([[0.1] * 3, [0.9] * 3]))
    assert (ls.grad[0] == 0).all() and (ls.grad[3] == 0).all()
    mu_hat[1].sum().backward()
    torch.testing.assert_close(mu.grad, torch.tensor([[0.0] * 3, [0.5] * 3, [0.5] * 3, [0.0] * 3]))


def test_instance_distribution_without_members_or_voxels(dtype):
    mu_hat, ls_hat = instance_distribution(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)
    assert mu_hat.tolist() == [[0.0] * 3] * 2 and ls_hat.tolist() == [[0.0] * 3] * 2


def test_instance_distribution_follows_the_inputs_device(dtype):
    """With the default device elsewhere ("meta", standing in for a GPU/CPU mismatch) the
    per-instance tensors are made on the inputs' device, with the same values."""
    g = torch.Generator().manual_seed(3)
    mu, ls = torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g)
    inst = torch.randint(-1, 3, (20,), generator=g)
    expected = instance_distribution(mu, ls, inst, 4)
    with torch.device("meta"):
        got = instance_distribution(mu, ls, inst, 4)
    for a, b in zip(got, expected):
        assert a.device.type == "cpu" and torch.equal(a, b)
