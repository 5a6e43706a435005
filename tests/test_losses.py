"""Losses of both heads: ideal vs bad embeddings, chunking, extreme sigmas (Eqs. 4-10, 15; Neven 2019)."""

import numpy as np
import pytest
import torch

from minkseg.losses.margin import lovasz_hinge, margin_gaussian, margin_loss
from minkseg.losses.probabilistic import (
    chunked_pair_sums,
    entropy_regularizer,
    instance_loss,
    probabilistic_loss,
    score_targets,
)

pytestmark = pytest.mark.usefixtures("float64")


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


def test_instance_loss_small_at_ideal_large_at_bad():
    x, inst, _ = planted()
    ls = torch.full_like(x, np.log(0.1))
    good = instance_loss(x, ls, inst, 4)
    # bad: every voxel at the same place with the same sigma -> kernel 1 everywhere
    bad = instance_loss(torch.zeros_like(x), ls, inst, 4)
    assert good.ins_ce < 0.01 and good.log_dice < 0.05
    assert bad.ins_ce > 5 and bad.log_dice > 1
    assert (good.own_kernel[inst >= 0] > 0.9).all()


def test_chunked_sums_equal_unchunked_and_gradients_agree():
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
    assert grads[0][2] == pytest.approx(grads[1][2]) and grads[0][3] == pytest.approx(grads[1][3])


def test_pair_sums_match_dense_matrix():
    g = torch.Generator().manual_seed(3)
    mu, ls = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g) * 0.3
    mu_hat, ls_hat = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 0.3
    neg, kern = chunked_pair_sums(mu, ls, mu_hat, ls_hat, chunk_elements=4 * 5)
    s_i, s_j = ls.exp()[:, None], ls_hat.exp()[None]
    beta = (0.5 * (s_i / s_j + s_j / s_i)).prod(-1) ** -0.5
    k = beta * torch.exp(-((mu[:, None] - mu_hat[None]) ** 2 / (4 * (s_i**2 + s_j**2))).sum(-1))
    assert kern.item() == pytest.approx(k.sum().item(), rel=1e-10)
    assert neg.item() == pytest.approx(-torch.log(1 - k).sum().item(), rel=1e-10)


@pytest.mark.parametrize("log_sigma", [-40.0, 40.0])
def test_extreme_sigma_gives_finite_loss_and_gradients(log_sigma):
    x, inst, _ = planted(n_per=20)
    mu = x.clone().requires_grad_()
    ls = torch.full_like(x, log_sigma).requires_grad_()
    score = torch.randn(len(x), 19, requires_grad=True)
    sem = torch.randn(len(x), 20, requires_grad=True)
    labels = torch.where(inst >= 0, 4, 0)
    out = probabilistic_loss(mu, ls, score, sem, labels, inst, torch.full((4,), 2))
    out["total"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    for t in (mu, ls, score, sem):
        assert torch.isfinite(t.grad).all()


def test_score_targets_eq8_9_with_background_column():
    own = torch.tensor([0.9, 0.5, 0.0, 0.7])
    inst = torch.tensor([0, 1, -1, 0])
    cls = torch.tensor([3, 7])
    q = score_targets(own, inst, cls, num_classes=18)
    assert q.shape == (4, 19)
    assert q[0, 3] == 0.9 and q[1, 7] == 0.5 and q[3, 3] == 0.7
    torch.testing.assert_close(q.sum(1), torch.ones(4))
    assert q[2, -1] == 1 and q[0, -1] == pytest.approx(0.1)


def test_entropy_regularizer_is_gaussian_entropy():
    ls = torch.tensor([[0.1, -0.3, 0.7], [0.0, 0.0, 0.0]])
    cov = torch.diag_embed(torch.exp(2 * ls))
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, 3), cov).entropy().mean()
    torch.testing.assert_close(entropy_regularizer(ls), ref)


def test_lovasz_hinge_zero_for_perfect_and_positive_otherwise():
    labels = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    perfect = torch.where(labels, 2.0, -2.0)
    assert lovasz_hinge(perfect, labels).item() == 0
    wrong = -perfect
    assert lovasz_hinge(wrong, labels).item() > 1
    # with margins exactly at zero the surrogate equals 1 - IoU of the thresholded mask... at 1
    assert lovasz_hinge(torch.zeros(1, 5), labels).item() == pytest.approx(1.0)


def test_margin_loss_small_at_ideal_large_at_bad():
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


def test_margin_loss_chunked_over_instances_is_the_same():
    x, inst, _ = planted(n_per=30)
    g = torch.Generator().manual_seed(2)
    emb = (x + 0.2 * torch.randn(x.shape, generator=g)).requires_grad_()
    sig = (0.1 * torch.randn(x.shape, generator=g)).requires_grad_()
    seed, sem = torch.randn(len(x), 18, generator=g), torch.randn(len(x), 20, generator=g)
    labels = torch.where(inst >= 0, 5, 1)
    a = margin_loss(emb, sig, seed, sem, labels, inst, torch.full((4,), 3), chunk_elements=len(x))
    b = margin_loss(emb, sig, seed, sem, labels, inst, torch.full((4,), 3))
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item())
    a["total"].backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(sig.grad).all()


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_unknown_instance_voxels_only_train_semantics(head):
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
        assert with_unknown[key].item() == pytest.approx(alone[key].item())
    full_ce = torch.nn.functional.cross_entropy(sem, labels)
    assert with_unknown["semantic"].item() == pytest.approx(full_ce.item())
    instance_terms = sum(v for k, v in with_unknown.items() if k not in ("semantic", "total") + skip)
    instance_terms.backward()
    assert (emb.grad[len(x):] == 0).all() and emb.grad[:len(x)].abs().sum() > 0
