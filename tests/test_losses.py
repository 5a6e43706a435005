"""Losses of both heads and of Psi, in float32 (training) and float64 (reference).

Ideal vs bad embeddings, Eqs. 4-5 against a dense transcription, chunking, packed
instances down to a 0 m spread and sigmas at the extremes (finite losses and gradients),
empty and one-voxel instances, the composition of each head's total (Eqs. 10, 15;
Neven et al. 2019) and the score loss's softmax axis.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from minkseg.losses.kernels import log_sigma_bound
from minkseg.losses.margin import MarginLossWeights, lovasz_hinge, margin_gaussian, margin_loss
from minkseg.losses.probabilistic import (
    ProbabilisticLossWeights,
    chunked_pair_sums,
    entropy_regularizer,
    instance_loss,
    probabilistic_loss,
    score_loss,
    score_targets,
)
from minkseg.losses.recorrect import proposal_targets, recorrection_loss


def rel(dtype):
    """Relative tolerance of a sum of a few thousand terms in ``dtype``."""
    return 1e-4 if dtype == torch.float32 else 1e-10


def planted(n_per=60, k=4, spread=0.02, seed=0):
    """K well-separated instances plus background voxels (instance -1) around them."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[i * 3.0, (i % 2) * 3.0, 0.0] for i in range(k)])
    inst = torch.arange(k).repeat_interleave(n_per)
    x = centers[inst] + spread * torch.randn(len(inst), 3, generator=g)
    bg = torch.rand(80, 3, generator=g) * 10 + torch.tensor([0.0, 8.0, 0.0])
    x = torch.cat([x, bg])
    inst = torch.cat([inst, torch.full((80,), -1)])
    return x, inst, centers


def dense_eq4_eq5(mu, ls, inst, k):
    """Eqs. (3)-(5) transcribed densely in float64: (L_InsCE, -log Dice) as 0-d tensors."""
    var_hat = torch.stack([torch.exp(2 * ls[inst == j]).mean(0) for j in range(k)])
    mu_hat = torch.stack([mu[inst == j].mean(0) for j in range(k)])
    s_i, s_k = ls.exp()[:, None], var_hat.sqrt()[None]
    beta = (0.5 * (s_i / s_k + s_k / s_i)).prod(-1) ** -0.5
    kappa = beta * torch.exp(-((mu[:, None] - mu_hat[None]) ** 2 / (4 * (s_i**2 + s_k**2))).sum(-1))
    own = inst[:, None] == torch.arange(k)[None]
    ce = torch.where(own, -torch.log(kappa), -torch.log1p(-kappa)).sum() / (len(mu) * k)
    dice = 2 * (kappa * own).sum() / (kappa.sum() + own.sum())
    return ce, -torch.log(dice)


def test_instance_loss_small_at_ideal_large_at_bad(dtype):
    x, inst, _ = planted()
    ls = torch.full_like(x, np.log(0.1))
    good = instance_loss(x, ls, inst, 4)
    # bad: every voxel at the same place with the same sigma -> kernel 1 everywhere
    bad = instance_loss(torch.zeros_like(x), ls, inst, 4)
    assert good.ins_ce < 0.01 and good.log_dice < 0.05
    assert bad.ins_ce > 5 and bad.log_dice > 1
    assert (good.own_kernel[inst >= 0] > 0.9).all()
    assert good.ins_ce.dtype == dtype


@pytest.mark.parametrize("term", [0, 1])
def test_instance_loss_and_its_gradients_are_eq4_and_eq5(term, dtype):
    """Values and gradients of L_InsCE (term 0) and -log Dice (term 1) against the dense float64 transcription."""
    x, inst, _ = planted(n_per=30)
    g = torch.Generator().manual_seed(5)
    mu = (x + 0.3 * torch.randn(x.shape, generator=g)).requires_grad_()
    ls = (-1 + 0.3 * torch.randn(x.shape, generator=g)).requires_grad_()
    t = instance_loss(mu, ls, inst, 4)
    ours = (t.ins_ce, t.log_dice)[term]
    ours.backward()
    mu64, ls64 = mu.detach().double().requires_grad_(), ls.detach().double().requires_grad_()
    ref = dense_eq4_eq5(mu64, ls64, inst, 4)[term]
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=rel(dtype))
    for grad, grad64 in ((mu.grad, mu64.grad), (ls.grad, ls64.grad)):
        tol = 10 * rel(dtype)
        torch.testing.assert_close(grad.double(), grad64, rtol=tol, atol=tol * grad64.abs().max())


def test_chunked_sums_equal_unchunked_and_gradients_agree(dtype):
    x, inst, _ = planted(n_per=40)
    mu = (x + 0.1 * torch.randn_like(x)).requires_grad_()
    ls = torch.full_like(x, -1.0).requires_grad_()
    grads = []
    for chunk_elements in (7 * 4, 1 << 22):  # 7-row blocks with checkpointing, then one block
        t = instance_loss(mu, ls, inst, 4, chunk_elements=chunk_elements)
        (t.ins_ce + t.log_dice).backward()
        grads.append((mu.grad.clone(), ls.grad.clone(), t.ins_ce.item(), t.log_dice.item()))
        mu.grad, ls.grad = None, None
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][2] == pytest.approx(grads[1][2], rel=rel(dtype))
    assert grads[0][3] == pytest.approx(grads[1][3], rel=rel(dtype))


def test_pair_sums_match_dense_matrix_and_skip_own_pairs(dtype):
    g = torch.Generator().manual_seed(3)
    mu, ls = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g) * 0.3
    mu_hat, ls_hat = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 0.3
    own = torch.randint(-1, 5, (30,), generator=g)
    s_i, s_j = ls.double().exp()[:, None], ls_hat.double().exp()[None]
    beta = (0.5 * (s_i / s_j + s_j / s_i)).prod(-1) ** -0.5
    k = beta * torch.exp(-((mu.double()[:, None] - mu_hat.double()[None]) ** 2 / (4 * (s_i**2 + s_j**2))).sum(-1))
    is_own = own[:, None] == torch.arange(5)[None]
    for rows in (own, torch.full_like(own, -1)):  # with own pairs, and with none (all negatives)
        neg, kern = chunked_pair_sums(mu, ls, rows, mu_hat, ls_hat, chunk_elements=4 * 5)
        mask = is_own if rows is own else torch.zeros_like(is_own)
        assert kern.item() == pytest.approx(k.sum().item(), rel=rel(dtype))
        assert neg.item() == pytest.approx(-torch.log1p(-k[~mask]).sum().item(), rel=rel(dtype))


@pytest.mark.parametrize("spread", [1e-3, 1e-4, 1e-5, 0.0])
@pytest.mark.parametrize("log_sigma", [-1.0, 0.0, -11.0, 11.0, -40.0, 40.0])
def test_packed_instance_gives_finite_loss_and_gradients(spread, log_sigma, dtype):
    """A converged model packs an instance's embeddings within ``spread`` metres (kernel -> 1).

    Before own pairs were masked this gave NaN gradients in float32 at log sigma -1 and 0
    for spreads of 1e-3 to 1e-5 m. +-11 are float32's log sigma bound, +-40 far beyond it.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.cat([spread * torch.randn(50, 3, generator=g), 3 + spread * torch.randn(50, 3, generator=g),
                   torch.rand(20, 3, generator=g) * 10 + torch.tensor([0.0, 8.0, 0.0])])
    inst = torch.cat([torch.zeros(50), torch.ones(50), -torch.ones(20)]).long()
    mu = x.clone().requires_grad_()
    ls = torch.full_like(x, log_sigma).requires_grad_()
    score = torch.randn(len(x), 19, generator=g).requires_grad_()
    sem = torch.randn(len(x), 20, generator=g).requires_grad_()
    labels = torch.where(inst >= 0, 4, 0)
    out = probabilistic_loss(mu, ls, score, sem, labels, inst, torch.tensor([2, 5]))
    out["total"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    for t in (mu, ls, score, sem):
        assert torch.isfinite(t.grad).all()
    if abs(log_sigma) <= 1:  # the own pairs' gradient is O(1 / (N K)), not ~1e7
        assert mu.grad.abs().max() < 1e-2 and ls.grad.abs().max() < 1e-2


@pytest.mark.parametrize("spread", [1e-3, 1e-4, 1e-5])
@pytest.mark.parametrize("log_sigma", [-1.0, 0.0])
def test_float32_gradient_of_a_packed_instance_matches_float64(spread, log_sigma):
    """Adding each own pair as a negative and subtracting it again cancels ~1 / (1 - kappa)
    gradients in float32 and leaves their rounding error, larger than the true gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([spread * torch.randn(40, 3, generator=g, dtype=torch.float64),
                   0.5 + spread * torch.randn(40, 3, generator=g, dtype=torch.float64)])
    inst = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    grads = {}
    for dt in (torch.float32, torch.float64):
        mu = x.to(dt).requires_grad_()
        ls = torch.full((80, 3), log_sigma, dtype=dt, requires_grad=True)
        t = instance_loss(mu, ls, inst, 2)
        (t.ins_ce + t.log_dice).backward()
        grads[dt] = (mu.grad.double(), ls.grad.double())
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        torch.testing.assert_close(g32, g64, rtol=1e-3, atol=1e-3 * g64.abs().max().item())


def test_collapsed_negatives_still_get_a_gradient(dtype):
    """Two instances 1 m apart with huge equal sigmas (Eq. 6's degeneration: kappa within eps of 1):
    the capped -log(1 - kappa) keeps a gradient, and it points towards smaller sigma."""
    mu = torch.cat([torch.zeros(10, 3), torch.ones(10, 3)]).requires_grad_()
    ls = torch.full((20, 3), log_sigma_bound(dtype) - 1, requires_grad=True)
    inst = torch.arange(2).repeat_interleave(10)
    t = instance_loss(mu, ls, inst, 2)
    assert t.ins_ce.item() == pytest.approx(-math.log(torch.finfo(dtype).eps) / 2, rel=0.1)
    t.ins_ce.backward()
    assert torch.isfinite(ls.grad).all() and (ls.grad > 0).all()


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_empty_instance_set_gives_zero_instance_terms_and_finite_gradients(head, dtype):
    x = torch.rand(30, 3)
    emb, sig = x.clone().requires_grad_(), torch.zeros(30, 3, requires_grad=True)
    sem = torch.randn(30, 20, requires_grad=True)
    labels = torch.zeros(30, dtype=torch.long)
    inst, cls = torch.full((30,), -1), torch.zeros(0, dtype=torch.long)
    if head == "probabilistic":
        out = probabilistic_loss(emb, sig, torch.randn(30, 19), sem, labels, inst, cls)
        instance_terms = ("ins_ce", "log_dice")
    else:
        out = margin_loss(emb, sig, torch.randn(30, 18), sem, labels, inst, cls)
        instance_terms = ("lovasz", "smooth")
    for key in instance_terms:
        assert out[key].item() == 0
    out["total"].backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(sig.grad).all() and torch.isfinite(sem.grad).all()


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_instances_without_voxels_are_left_out(head, dtype):
    """An instance listed for the scene but with no voxel here (cropped, or unlabelled) has no
    centre: the loss equals the loss without it."""
    x, inst, _ = planted(n_per=20, k=3)
    g = torch.Generator().manual_seed(4)
    emb = x + 0.1 * torch.randn(x.shape, generator=g)
    sig = -1 + 0.1 * torch.randn(x.shape, generator=g)
    labels = torch.where(inst >= 0, 6, 1)
    # instance 1 of 0..3 is empty: shift ids 1, 2 up by one
    shifted = torch.where(inst >= 1, inst + 1, inst)
    fn = probabilistic_loss if head == "probabilistic" else margin_loss
    scores = torch.randn(len(x), 19 if head == "probabilistic" else 18, generator=g)
    sem = torch.randn(len(x), 20, generator=g)
    with_empty = fn(emb, sig, scores, sem, labels, shifted, torch.tensor([2, 7, 2, 4]))
    without = fn(emb, sig, scores, sem, labels, inst, torch.tensor([2, 2, 4]))
    for key in with_empty:
        assert with_empty[key].item() == pytest.approx(without[key].item(), rel=rel(dtype), abs=1e-12)


@pytest.mark.parametrize("log_sigma", [-1.0, -11.0, 11.0])
def test_one_voxel_instances(log_sigma, dtype):
    """Each instance a single voxel: c_k = e_i exactly, so every own kernel is 1 and -log kappa = 0."""
    g = torch.Generator().manual_seed(2)
    mu = (torch.rand(6, 3, generator=g) * 6).requires_grad_()
    ls = torch.full((6, 3), log_sigma, requires_grad=True)
    inst = torch.tensor([0, 1, 2, 3, -1, -1])
    t = instance_loss(mu, ls, inst, 4)
    assert (t.own_kernel[:4] == 1).all()
    assert torch.isfinite(t.ins_ce) and t.ins_ce >= 0 and torch.isfinite(t.log_dice)
    (t.ins_ce + t.log_dice).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()


def test_score_targets_eq8_9_with_background_column(dtype):
    own = torch.tensor([0.9, 0.5, 0.0, 0.7])
    inst = torch.tensor([0, 1, -1, 0])
    cls = torch.tensor([3, 7])
    q = score_targets(own, inst, cls, num_classes=18)
    assert q.shape == (4, 19)
    assert q[0, 3] == own[0] and q[1, 7] == own[1] and q[3, 3] == own[3]
    torch.testing.assert_close(q.sum(1), torch.ones(4))
    assert q[2, -1] == 1 and q[0, -1].item() == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("bad_class", [-1, -2, 18])
def test_invalid_instance_class_is_one_clear_error(bad_class):
    """A wall/floor instance mapped to class -2/-1 would silently write into another column."""
    with pytest.raises(ValueError, match="instance classes must lie in 0..17"):
        score_targets(torch.ones(2), torch.tensor([0, 1]), torch.tensor([3, bad_class]), num_classes=18)
    x, inst, _ = planted(n_per=5, k=2)
    with pytest.raises(ValueError, match="instance classes must lie in 0..17"):
        margin_loss(x, torch.zeros_like(x), torch.zeros(len(x), 18), torch.zeros(len(x), 20),
                    torch.zeros(len(x), dtype=torch.long), inst, torch.tensor([3, bad_class]))
    with pytest.raises(ValueError, match="instance classes must lie in 0..17"):
        proposal_targets(torch.arange(4), torch.tensor([0, 0, 1, 1]), 2, torch.tensor([0, 0, 1, 1]),
                         torch.tensor([3, bad_class]), num_classes=18)


def test_score_loss_is_cross_entropy_over_the_class_axis(dtype):
    """Eq. (10) per voxel: -sum_l Q[i, l] log softmax_l(logits[i])[l]; the softmax is over classes (dim 1)."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(7, 19, generator=g) * 3
    q = torch.rand(7, 19, generator=g)
    q = q / q.sum(1, keepdim=True)
    expected = 0.0
    for i in range(7):
        log_norm = math.log(sum(math.exp(v) for v in logits[i].tolist()))
        expected += -sum(q[i, c].item() * (logits[i, c].item() - log_norm) for c in range(19)) / 7
    assert score_loss(logits, q).item() == pytest.approx(expected, rel=10 * rel(dtype))
    # a constant added to one voxel's logits changes nothing; one added to a class column does
    shifted_row = logits + torch.arange(7.0)[:, None]
    shifted_col = logits + torch.arange(19.0)[None]
    assert score_loss(shifted_row, q).item() == pytest.approx(expected, rel=10 * rel(dtype))
    assert abs(score_loss(shifted_col, q).item() - expected) > 0.1
    # the target is fixed: no gradient reaches it
    q_param, logits_param = q.clone().requires_grad_(), logits.clone().requires_grad_()
    score_loss(logits_param, q_param).backward()
    assert q_param.grad is None and logits_param.grad is not None


def test_entropy_regularizer_is_gaussian_entropy(dtype):
    ls = torch.tensor([[0.1, -0.3, 0.7], [0.0, 0.0, 0.0]])
    cov = torch.diag_embed(torch.exp(2 * ls))
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, 3), cov).entropy().mean()
    torch.testing.assert_close(entropy_regularizer(ls), ref)
    assert entropy_regularizer(torch.zeros(0, 3)).item() == 0


def _probabilistic_inputs():
    x, inst, _ = planted(n_per=20)
    g = torch.Generator().manual_seed(7)
    mu = x + 0.2 * torch.randn(x.shape, generator=g)
    ls = -1 + 0.2 * torch.randn(x.shape, generator=g)
    score, sem = torch.randn(len(x), 19, generator=g), torch.randn(len(x), 20, generator=g)
    labels = torch.where(inst >= 0, 5, 1)
    return mu, ls, score, sem, labels, inst, torch.tensor([3, 3, 8, 1])


def _margin_inputs():
    x, inst, _ = planted(n_per=20)
    g = torch.Generator().manual_seed(8)
    emb = x + 0.2 * torch.randn(x.shape, generator=g)
    sig = 0.1 * torch.randn(x.shape, generator=g)
    seed, sem = torch.randn(len(x), 18, generator=g), torch.randn(len(x), 20, generator=g)
    labels = torch.where(inst >= 0, 5, 1)
    return emb, sig, seed, sem, labels, inst, torch.tensor([3, 3, 8, 1])


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_total_is_the_weighted_sum_of_its_terms(head, dtype):
    """Each weight enters the total: raising it by delta raises the total by exactly delta * its term."""
    if head == "probabilistic":
        fn, inputs, weights_cls = probabilistic_loss, _probabilistic_inputs(), ProbabilisticLossWeights
        terms_of = {"instance": ("ins_ce", "log_dice"), "score": ("score",), "entropy": ("entropy",),
                    "semantic": ("semantic",)}
    else:
        fn, inputs, weights_cls = margin_loss, _margin_inputs(), MarginLossWeights
        terms_of = {"instance": ("lovasz",), "smooth": ("smooth",), "seed": ("seed",), "semantic": ("semantic",)}
    base_weights = weights_cls()
    base = fn(*inputs, weights=base_weights)
    for name, terms in terms_of.items():
        assert sum(base[t].item() for t in terms) != 0
        delta = 0.37
        changed = dataclasses.replace(base_weights, **{name: getattr(base_weights, name) + delta})
        out = fn(*inputs, weights=changed)
        expected = base["total"].item() + delta * sum(base[t].item() for t in terms)
        assert out["total"].item() == pytest.approx(expected, rel=10 * rel(dtype)), name
    weighted = sum(getattr(base_weights, name) * sum(base[t] for t in terms) for name, terms in terms_of.items())
    assert base["total"].item() == pytest.approx(weighted.item(), rel=10 * rel(dtype))


def test_lovasz_hinge_zero_for_perfect_and_positive_otherwise(dtype):
    labels = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    perfect = torch.where(labels, 2.0, -2.0)
    assert lovasz_hinge(perfect, labels).item() == 0
    wrong = -perfect
    assert lovasz_hinge(wrong, labels).item() > 1
    # with margins exactly at zero the surrogate equals 1 - IoU of the thresholded mask... at 1
    assert lovasz_hinge(torch.zeros(1, 5), labels).item() == pytest.approx(1.0)


def test_margin_loss_small_at_ideal_large_at_bad(dtype):
    x, inst, centers = planted()
    fg = inst >= 0
    # ideal: embeddings collapse onto instance centres, tight margins, seeds equal phi
    emb = x.clone()
    emb[fg] = centers[inst[fg]]
    sigma = torch.full_like(x, 0.3)  # exp(10*0.3) = 20 -> sigma ~ 0.16 m
    phi_target = torch.zeros(len(x), 18)
    phi_target[fg, 2] = 1.0
    seed_logits = torch.logit(phi_target.clamp(1e-6, 1 - 1e-6))
    sem_logits = torch.full((len(x), 20), -10.0)
    labels = torch.where(fg, 4, 0)
    sem_logits[torch.arange(len(x)), labels] = 10.0
    good = margin_loss(emb, sigma, seed_logits, sem_logits, labels, inst, torch.full((4,), 2))
    bad = margin_loss(torch.zeros_like(x), sigma, -seed_logits, -sem_logits, labels, inst, torch.full((4,), 2))
    assert good["lovasz"] < 0.05 and good["seed"] < 1e-3 and good["smooth"] < 1e-12 and good["semantic"] < 1e-3
    assert bad["lovasz"] > 0.5 and bad["seed"] > 0.5 and bad["semantic"] > 5
    assert margin_gaussian(emb[0], centers[0], sigma[0]).item() == pytest.approx(1.0)


def test_margin_loss_chunked_over_instances_is_the_same(dtype):
    x, inst, _ = planted(n_per=30)
    g = torch.Generator().manual_seed(2)
    emb = (x + 0.2 * torch.randn(x.shape, generator=g)).requires_grad_()
    sig = (0.1 * torch.randn(x.shape, generator=g)).requires_grad_()
    seed, sem = torch.randn(len(x), 18, generator=g), torch.randn(len(x), 20, generator=g)
    labels = torch.where(inst >= 0, 5, 1)
    a = margin_loss(emb, sig, seed, sem, labels, inst, torch.full((4,), 3), chunk_elements=len(x))
    b = margin_loss(emb, sig, seed, sem, labels, inst, torch.full((4,), 3))
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=rel(dtype))
    a["total"].backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(sig.grad).all()


@pytest.mark.parametrize("sigma_logit", [-10.0, 10.0, 100.0])
@pytest.mark.parametrize("identical", [True, False])
def test_margin_loss_at_extreme_sigma_is_finite(sigma_logit, identical, dtype):
    """exp(10 s~) overflows float32 at s~ = 10; with identical embeddings (e = C) that was 0 * inf = NaN."""
    x, inst, centers = planted(n_per=10)
    fg = inst >= 0
    emb = x.clone()
    if identical:
        emb[fg] = centers[inst[fg]]
    emb.requires_grad_()
    sig = torch.full_like(x, sigma_logit, requires_grad=True)
    seed = torch.randn(len(x), 18, requires_grad=True)
    sem = torch.randn(len(x), 20, requires_grad=True)
    labels = torch.where(fg, 4, 0)
    out = margin_loss(emb, sig, seed, sem, labels, inst, torch.full((4,), 2))
    out["total"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    for t in (emb, sig, seed, sem):
        assert torch.isfinite(t.grad).all()
    phi = margin_gaussian(emb[fg], centers[inst[fg]], sig[fg])
    assert torch.isfinite(phi).all() and (phi >= 0).all() and (phi <= 1).all()


def test_margin_smoothness_is_averaged_per_instance(dtype):
    """Neven: mean squared deviation of s~ from its instance mean, within each instance, then over
    instances, so a small instance weighs as much as a large one."""
    x, inst, _ = planted(n_per=1, k=2)
    # instance 0: 2 voxels with s~ = +-0.5 (mean squared deviation 0.25); instance 1: 100 equal voxels
    emb = torch.cat([torch.zeros(2, 3), torch.full((100, 3), 3.0)])
    sig = torch.cat([torch.tensor([[0.5] * 3, [-0.5] * 3]), torch.zeros(100, 3)])
    inst = torch.cat([torch.zeros(2), torch.ones(100)]).long()
    out = margin_loss(emb, sig, torch.zeros(102, 18), torch.zeros(102, 20), torch.full((102,), 4), inst,
                      torch.tensor([2, 2]))
    assert out["smooth"].item() == pytest.approx((0.25 + 0.0) / 2, rel=rel(dtype))


def test_margin_seed_foreground_weight_scales_only_the_instance_entries(dtype):
    emb, sig, seed, sem, labels, inst, cls = _margin_inputs()
    base = margin_loss(emb, sig, seed, sem, labels, inst, cls)
    heavy = margin_loss(emb, sig, seed, sem, labels, inst, cls, weights=MarginLossWeights(seed_foreground=10.0))
    # seed = mean_i sum_l w_il (p_il - t_il)^2: foreground entries (one per instance voxel) get w = 10
    fg = inst >= 0
    p = torch.sigmoid(seed)
    fg_entries = p[fg.nonzero(as_tuple=True)[0], cls[inst[fg]]]
    counts = torch.bincount(inst[fg]).to(emb.dtype)[:, None]
    center = torch.zeros(4, 3).index_add_(0, inst[fg], emb[fg]) / counts
    s_mean = torch.zeros(4, 3).index_add_(0, inst[fg], sig[fg]) / counts
    phi = margin_gaussian(emb[fg], center[inst[fg]], s_mean[inst[fg]])
    fg_part = ((fg_entries - phi) ** 2).sum() / len(emb)
    assert heavy["seed"].item() == pytest.approx(base["seed"].item() + 9 * fg_part.item(), rel=10 * rel(dtype))
    for key in ("lovasz", "smooth", "semantic"):
        assert heavy[key].item() == base[key].item()


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_unknown_instance_voxels_only_train_semantics(head, dtype):
    """Pseudo-labelled voxels of unknown instance membership: instance terms as if they were
    absent, semantic cross-entropy over all voxels; their embeddings get no gradient from
    the instance terms."""
    x, inst, _ = planted(n_per=30)
    g = torch.Generator().manual_seed(3)
    extra = torch.rand(40, 3, generator=g) * 4
    xs = torch.cat([x, extra])
    insts = torch.cat([inst, torch.full((40,), -1)])
    known = torch.cat([torch.ones(len(x), dtype=torch.bool), torch.zeros(40, dtype=torch.bool)])
    emb = (xs + 0.2 * torch.randn(xs.shape, generator=g)).requires_grad_()
    sig = (0.1 * torch.randn(xs.shape, generator=g) - 1).requires_grad_()
    labels = torch.where(insts >= 0, 5, 1)
    labels[len(x):] = 7  # an instance class, but no instance label
    cls = torch.full((4,), 3)
    if head == "probabilistic":
        scores, sem = torch.randn(len(xs), 19, generator=g), torch.randn(len(xs), 20, generator=g)
        fn = probabilistic_loss
        skip = ("entropy",)  # Eq. (7) regularizes every voxel's sigma
    else:
        scores, sem = torch.randn(len(xs), 18, generator=g), torch.randn(len(xs), 20, generator=g)
        fn = margin_loss
        skip = ()
    with_unknown = fn(emb, sig, scores, sem, labels, insts, cls, instance_known=known)
    alone = fn(emb[:len(x)], sig[:len(x)], scores[:len(x)], sem[:len(x)], labels[:len(x)], inst, cls)
    for key in with_unknown:
        if key in ("semantic", "total") + skip:
            continue
        assert with_unknown[key].item() == pytest.approx(alone[key].item(), rel=rel(dtype))
    full_ce = torch.nn.functional.cross_entropy(sem, labels)
    assert with_unknown["semantic"].item() == pytest.approx(full_ce.item(), rel=rel(dtype))
    instance_terms = sum(v for k, v in with_unknown.items() if k not in ("semantic", "total") + skip)
    instance_terms.backward()
    assert (emb.grad[len(x):] == 0).all() and emb.grad[:len(x)].abs().sum() > 0


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_recorrection_loss_is_finite_in_float32_at_any_logit_scale(scale, dtype):
    members = torch.arange(8)
    owner = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    instance = torch.tensor([0, 0, 0, -1, 1, 1, -1, -1])
    t = proposal_targets(members, owner, 2, instance, torch.tensor([4, 9]), num_classes=18)
    g = torch.Generator().manual_seed(9)
    logits = [(scale * torch.randn(shape, generator=g)).requires_grad_() for shape in ((2, 19), (8,), (2,))]
    out = recorrection_loss(*logits, owner, t)
    sum(out.values()).backward()
    assert all(torch.isfinite(v) and v.dtype == dtype for v in out.values())
    assert all(torch.isfinite(x.grad).all() for x in logits)
