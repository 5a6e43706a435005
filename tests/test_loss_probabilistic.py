"""The probabilistic head's loss on tiny hand-built scenes, against a pure-Python transcription of
the paper's equations (Eqs. 1-5, 7-10, 15): each term's value, how the total is composed, which
voxels each term sees, degenerate and extreme inputs, and the chunked pair sums' checkpointing.

The reference below uses only ``math`` on Python floats (no torch, no code under test).
"""

from __future__ import annotations

import math

import pytest
import torch

import minkseg.losses.probabilistic as probabilistic_module
from minkseg.losses.kernels import log_sigma_bound
from minkseg.losses.probabilistic import (
    ProbabilisticLossWeights,
    chunked_pair_sums,
    entropy_regularizer,
    instance_loss,
    probabilistic_loss,
    score_loss,
    score_targets,
)
from tests.meta_device import assert_loss_follows_the_inputs_device

IGNORE = -100



def tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a loss over a handful of voxels in ``dtype``."""
    return 2e-5 if dtype == torch.float32 else 1e-11


def kappa_ref(mu_i: list[float], s_i: list[float], mu_j: list[float], s_j: list[float]) -> float:
    """Bhattacharyya kernel of two diagonal Gaussians (Sec. 3.2, squared mean difference), from sigmas."""
    beta = math.prod(0.5 * (a / b + b / a) for a, b in zip(s_i, s_j)) ** -0.5
    maha = sum((x - y) ** 2 / (4 * (a * a + b * b)) for x, y, a, b in zip(mu_i, mu_j, s_i, s_j))
    return beta * math.exp(-maha)


def log_softmax_ref(row: list[float]) -> list[float]:
    top = max(row)
    log_norm = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_norm for v in row]


def reference_terms(mu: list[list[float]], log_sigma: list[list[float]], score_logits: list[list[float]],
                    sem_logits: list[list[float]], semantic: list[int], instance: list[int],
                    instance_class: list[int], known: list[bool] | None = None) -> dict[str, float]:
    """Eqs. (3)-(5), (8)-(10) with Q's background column, (7) averaged, and the semantic CE, in float64 Python."""
    n_all = len(mu)
    known = known or [True] * n_all
    rows = [i for i in range(n_all) if semantic[i] != IGNORE and known[i]]
    sigma = [[math.exp(v) for v in r] for r in log_sigma]
    present = sorted({instance[i] for i in rows if instance[i] >= 0})
    out: dict[str, float] = {}
    own_kappa = {i: 0.0 for i in rows}
    if present:
        kappa = {}
        for k in present:
            members = [i for i in rows if instance[i] == k]
            c_mu = [sum(mu[i][d] for i in members) / len(members) for d in range(3)]
            c_s = [math.sqrt(sum(sigma[i][d] ** 2 for i in members) / len(members)) for d in range(3)]
            for i in rows:
                kappa[i, k] = kappa_ref(mu[i], sigma[i], c_mu, c_s)
        n, kk = len(rows), len(present)
        ce = sum(-math.log(kappa[i, k]) if instance[i] == k else -math.log(1 - kappa[i, k])
                 for i in rows for k in present) / (n * kk)
        own = sum(kappa[i, instance[i]] for i in rows if instance[i] >= 0)
        n_own = sum(1 for i in rows if instance[i] >= 0)
        out["ins_ce"] = ce
        out["log_dice"] = -math.log(2 * own / (sum(kappa.values()) + n_own))
        own_kappa = {i: kappa[i, instance[i]] if instance[i] >= 0 else 0.0 for i in rows}
    else:
        out["ins_ce"] = out["log_dice"] = 0.0
    num_classes = len(score_logits[0]) - 1
    score = 0.0
    for i in rows:
        q = [0.0] * (num_classes + 1)
        if instance[i] >= 0:
            q[instance_class[instance[i]]] = own_kappa[i]
        q[-1] = 1 - sum(q[:-1])
        score -= sum(a * b for a, b in zip(q, log_softmax_ref(score_logits[i])))
    out["score"] = score / len(rows) if rows else 0.0
    # Eq. (7): entropy of N(mu, diag(sigma^2)) = 3/2 ln(2 pi e) + sum_d ln sigma, over every voxel
    out["entropy"] = 1.5 * math.log(2 * math.pi * math.e) + sum(sum(r) for r in log_sigma) / n_all
    labelled = [i for i in range(n_all) if semantic[i] != IGNORE]
    out["semantic"] = (-sum(log_softmax_ref(sem_logits[i])[semantic[i]] for i in labelled) / len(labelled)
                       if labelled else 0.0)
    return out


# six voxels: instance 0 = voxels 0, 1; instance 1 = voxels 2, 3; voxel 4 background; voxel 5 has
# an ignored semantic label but claims instance 0 from far away (it must not move c_0)
MU = [[0.0, 0.1, 0.0], [0.2, 0.0, 0.1], [0.9, 0.8, 0.1], [1.1, 0.7, 0.0], [0.5, 0.4, 0.6], [3.0, 3.0, 3.0]]
LOG_SIGMA = [[-1.0, -0.8, -1.2], [-0.9, -1.1, -1.0], [-0.7, -0.7, -0.9], [-1.2, -0.6, -0.8],
             [-0.5, -1.0, -0.7], [0.3, 0.2, 0.1]]
SCORE = [[0.5, -0.2, 1.0, 0.1], [0.0, 0.3, -0.4, 0.8], [1.2, 0.1, -0.3, 0.2], [-0.6, 0.4, 0.9, 0.0],
         [0.2, 0.2, -1.0, 1.5], [0.7, -0.7, 0.1, 0.3]]
SEM = [[0.1, 0.2, 0.3, 1.1, -0.5], [0.4, -0.3, 0.0, 0.6, 0.2], [0.0, 0.5, -0.2, 0.1, 0.9],
       [-0.4, 0.3, 0.2, 0.0, 0.7], [0.3, 1.0, -0.1, 0.2, 0.0], [0.5, 0.5, 0.5, 0.5, 0.5]]
SEMANTIC = [3, 3, 4, 4, 1, IGNORE]
INSTANCE = [0, 0, 1, 1, -1, 0]
CLASSES = [1, 2]  # instance classes 0..L-1 with L = 3: score logits have L + 1 = 4 columns


def tiny_scene(dtype: torch.dtype, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    tensors = [torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for v in (MU, LOG_SIGMA, SCORE, SEM)]
    return (*tensors, torch.tensor(SEMANTIC), torch.tensor(INSTANCE), torch.tensor(CLASSES))


def test_each_term_of_a_tiny_scene_is_the_papers_equation(dtype):
    out = probabilistic_loss(*tiny_scene(dtype))
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name
        assert out[name].dtype == dtype
    # the scene is not degenerate: every term contributes to the total
    assert min(abs(v) for v in ref.values()) > 0.05


@pytest.mark.parametrize("weights", [ProbabilisticLossWeights(),
                                     ProbabilisticLossWeights(instance=0.7, score=1.9, entropy=0.05, semantic=2.3)])
def test_total_is_eq15_plus_semantic_cross_entropy(weights, dtype):
    """L = w_ins (L_InsCE + L_logDice) + w_score L_Score + w_ent L_Reg + w_sem L_CE, with the
    paper's weights (1, 1, 0.001) as defaults: log-Dice is in the total, not only reported."""
    out = probabilistic_loss(*tiny_scene(dtype), weights=weights)
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    expected = (weights.instance * (ref["ins_ce"] + ref["log_dice"]) + weights.score * ref["score"]
                + weights.entropy * ref["entropy"] + weights.semantic * ref["semantic"])
    assert out["total"].item() == pytest.approx(expected, rel=tol(dtype))


def test_default_weights_are_the_papers():
    w = ProbabilisticLossWeights()
    assert (w.instance, w.score, w.entropy, w.semantic) == (1.0, 1.0, 0.001, 1.0)
    out = probabilistic_loss(*tiny_scene(torch.float64))
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    expected = ref["ins_ce"] + ref["log_dice"] + ref["score"] + 0.001 * ref["entropy"] + ref["semantic"]
    assert out["total"].item() == pytest.approx(expected, rel=1e-11)


def test_gradient_of_the_total_matches_float64_autograd_of_the_transcription():
    """Float32 gradients of the whole loss against float64 ones (both from the same loss; the
    float64 values are pinned to the transcription above), with float32 tolerances."""
    grads = {}
    for dt in (torch.float32, torch.float64):
        inputs = tiny_scene(dt, requires_grad=True)
        probabilistic_loss(*inputs)["total"].backward()
        grads[dt] = [t.grad.double() for t in inputs[:4]]
    for g32, g64 in zip(grads[torch.float32], grads[torch.float64]):
        assert torch.isfinite(g32).all()
        torch.testing.assert_close(g32, g64, rtol=1e-4, atol=1e-5)
    # the ignored voxel gets no gradient except through the entropy term (d/d log sigma = w_ent / N)
    assert (grads[torch.float64][0][5] == 0).all() and (grads[torch.float64][2][5] == 0).all()
    torch.testing.assert_close(grads[torch.float64][1][5], torch.full((3,), 0.001 / 6, dtype=torch.float64))


def test_pseudo_labelled_voxels_enter_only_semantics_and_entropy(dtype):
    known = [True, True, False, True, False, True]
    out = probabilistic_loss(*tiny_scene(dtype), instance_known=torch.tensor(known))
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES, known=known)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name


def test_no_voxel_with_a_known_instance_leaves_semantics_and_entropy(dtype):
    """Instance_known all False: the instance and score terms are 0 (not NaN), with gradients."""
    mu, ls, score, sem, semantic, inst, cls = tiny_scene(dtype, requires_grad=True)
    out = probabilistic_loss(mu, ls, score, sem, semantic, inst, cls, instance_known=torch.zeros(6, dtype=torch.bool))
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    assert out["ins_ce"].item() == 0 and out["log_dice"].item() == 0 and out["score"].item() == 0
    assert out["semantic"].item() == pytest.approx(ref["semantic"], rel=tol(dtype))
    assert out["total"].item() == pytest.approx(ref["semantic"] + 0.001 * ref["entropy"], rel=tol(dtype))
    out["total"].backward()
    assert (score.grad == 0).all() and (mu.grad == 0).all() and torch.isfinite(ls.grad).all()


def test_all_voxels_ignored_gives_only_the_entropy(dtype):
    """Every semantic label ignored: cross-entropy over no voxel would be NaN; the loss is 0 there."""
    mu, ls, score, sem, _, inst, cls = tiny_scene(dtype, requires_grad=True)
    out = probabilistic_loss(mu, ls, score, sem, torch.full((6,), IGNORE), inst, cls)
    entropy = 1.5 * math.log(2 * math.pi * math.e) + sum(map(sum, LOG_SIGMA)) / 6
    for name in ("ins_ce", "log_dice", "score", "semantic"):
        assert out[name].item() == 0, name
    assert out["entropy"].item() == pytest.approx(entropy, rel=tol(dtype))
    assert out["total"].item() == pytest.approx(0.001 * entropy, rel=tol(dtype))
    out["total"].backward()
    assert (sem.grad == 0).all() and torch.isfinite(ls.grad).all()


def test_a_custom_ignore_index(dtype):
    semantic = torch.tensor([3, 3, 4, 4, 1, 255])
    mu, ls, score, sem, _, inst, cls = tiny_scene(dtype)
    out = probabilistic_loss(mu, ls, score, sem.clone(), semantic, inst, cls, ignore_index=255)
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name


def test_score_loss_by_hand(dtype):
    """Two voxels, two columns: P = softmax over the row. Voxel 0: logits (0, ln 3) give P = (1/4, 3/4);
    voxel 1: equal logits give P = (1/2, 1/2). Mean over voxels (1/N, not 1/(N L))."""
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    q = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    v0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    v1 = math.log(2.0)
    assert score_loss(logits, q).item() == pytest.approx((v0 + v1) / 2, rel=tol(dtype))
    # a softmax over the voxel axis instead would give P[:, 0] = (e^-2, 1) / (1 + e^-2) etc.
    assert score_loss(logits.T.contiguous(), q.T.contiguous()).item() != pytest.approx((v0 + v1) / 2, rel=1e-3)


def test_score_loss_gradient_is_softmax_minus_target(dtype):
    """d/dlogits of -sum_l Q log softmax = (P sum_l Q - Q) / N per voxel; Q gets no gradient."""
    logits = torch.tensor([[0.0, math.log(3.0), 0.0], [1.0, -1.0, 0.5]], requires_grad=True)
    q = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.6, 0.4]], requires_grad=True)
    score_loss(logits, q).backward()
    p = torch.softmax(logits.detach().double(), 1)
    expected = (p - q.detach().double()) / 2
    torch.testing.assert_close(logits.grad.double(), expected, rtol=tol(dtype), atol=1e-7)
    assert q.grad is None


def test_score_targets_columns_and_valid_class_range(dtype):
    """Q puts kappa in the column of the voxel's instance class (0 and L-1 are valid classes) and
    1 - that in the last one; background voxels get a pure "not a centre" row."""
    own = torch.tensor([0.25, 0.5, 0.0, 0.75, 1.0])
    inst = torch.tensor([0, 1, -1, 1, 2])
    q = score_targets(own, inst, torch.tensor([0, 2, 1]), num_classes=3)
    expected = torch.tensor([[0.25, 0, 0, 0.75], [0, 0, 0.5, 0.5], [0, 0, 0, 1], [0, 0, 0.75, 0.25], [0, 1, 0, 0]])
    torch.testing.assert_close(q, expected)
    with pytest.raises(ValueError, match="0..2"):
        score_targets(own, inst, torch.tensor([0, 3, 1]), num_classes=3)
    assert score_targets(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                         num_classes=3).shape == (0, 4)


def test_entropy_of_one_voxel(dtype):
    ls = torch.tensor([[0.5, -1.0, 2.0]])
    expected = 1.5 * math.log(2 * math.pi * math.e) + 1.5
    assert entropy_regularizer(ls).item() == pytest.approx(expected, rel=tol(dtype))


def test_own_kernel_is_the_kernel_to_the_own_instance(dtype):
    mu, ls, *_ = tiny_scene(dtype)
    rows = torch.arange(5)
    t = instance_loss(mu[rows], ls[rows], torch.tensor(INSTANCE[:5]), 2)
    c0 = [[sum(MU[i][d] for i in (0, 1)) / 2 for d in range(3)],
          [math.sqrt(sum(math.exp(2 * LOG_SIGMA[i][d]) for i in (0, 1)) / 2) for d in range(3)]]
    c1 = [[sum(MU[i][d] for i in (2, 3)) / 2 for d in range(3)],
          [math.sqrt(sum(math.exp(2 * LOG_SIGMA[i][d]) for i in (2, 3)) / 2) for d in range(3)]]
    sig = [[math.exp(v) for v in r] for r in LOG_SIGMA]
    expected = [kappa_ref(MU[0], sig[0], *c0), kappa_ref(MU[1], sig[1], *c0),
                kappa_ref(MU[2], sig[2], *c1), kappa_ref(MU[3], sig[3], *c1), 0.0]
    assert t.own_kernel.tolist() == pytest.approx(expected, rel=tol(dtype))
    assert not t.own_kernel.requires_grad


def test_instances_present_are_renumbered_in_order(dtype):
    """Listed instances 0, 1 present and 2 empty (cropped): the same as listing only 0 and 1,
    and each voxel keeps its own instance (the empty one is not in between)."""
    mu, ls, score, sem, semantic, inst, _ = tiny_scene(dtype)
    three = probabilistic_loss(mu, ls, score, sem, semantic, inst, torch.tensor([1, 2, 0]))
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert three[name].item() == pytest.approx(value, rel=tol(dtype)), name
    # instance 0 empty, 1 and 2 present: ids shift, classes follow their instances
    shifted = torch.where(inst >= 0, inst + 1, inst)
    first_empty = probabilistic_loss(mu, ls, score, sem, semantic, shifted, torch.tensor([0, 1, 2]))
    for name, value in ref.items():
        assert first_empty[name].item() == pytest.approx(value, rel=tol(dtype)), name


@pytest.mark.parametrize("log_sigma", [-11.0, -3.0, -1.0])
def test_one_voxel_instances_far_apart_cost_nothing(log_sigma, dtype):
    """Each instance one voxel, 10 m apart: c_k = e_i, own kappa = 1, every other kappa ~ 0 (below
    float64's smallest number at these sigmas), so L_InsCE = 0 and the Dice ratio is 2K / (K + K) = 1."""
    mu = torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [0.0, 10, 0]], requires_grad=True)
    ls = torch.full((3, 3), log_sigma, requires_grad=True)
    t = instance_loss(mu, ls, torch.tensor([0, 1, 2]), 3)
    assert t.ins_ce.item() == pytest.approx(0.0, abs=1e-30)
    assert t.log_dice.item() == pytest.approx(0.0, abs=1e-6 if dtype == torch.float32 else 1e-15)
    assert t.own_kernel.tolist() == [1.0, 1.0, 1.0]
    (t.ins_ce + t.log_dice).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()


def test_identical_instances_hit_the_capped_negative_exactly(dtype):
    """Two one-voxel instances with the same mean and sigma: kappa = 1 for the negative pairs too.
    Each negative costs -log(1 - e^-eps) + eps / expm1(eps) (the linear continuation above -eps),
    own pairs 0, so L_InsCE = 2 of those over N K = 4; the Dice ratio is 2 * 2 / (4 + 2)."""
    eps = torch.finfo(dtype).eps
    mu = torch.zeros(2, 3, requires_grad=True)
    ls = torch.zeros(2, 3, requires_grad=True)
    t = instance_loss(mu, ls, torch.tensor([0, 1]), 2)
    per_negative = -math.log(-math.expm1(-eps)) + eps / math.expm1(eps)
    assert t.ins_ce.item() == pytest.approx(2 * per_negative / 4, rel=tol(dtype))
    assert t.log_dice.item() == pytest.approx(-math.log(4 / 6), rel=tol(dtype))
    (t.ins_ce + t.log_dice).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()


def test_nearly_collapsed_negative_follows_the_linear_continuation(dtype):
    """A negative pair with log kappa = -eps / 2 (between -eps and 0): -log(1 - kappa) is continued
    with the slope at -eps, value -log(1 - e^-eps) + (eps / 2) / expm1(eps) and gradient
    d/dlog kappa = 1 / expm1(eps); both instances are single voxels, so only that pair costs."""
    eps = torch.finfo(dtype).eps
    # log kappa = -3 d^2 / (8 sigma^2) with sigma = 1 on all three axes and the offset d on each
    d = math.sqrt(eps / 2 * 8 / 3)
    mu = torch.tensor([[0.0, 0.0, 0.0], [d, d, d]], requires_grad=True)
    ls = torch.zeros(2, 3)
    own = torch.tensor([-1, 0])  # voxel 0 a negative of instance 0, voxel 1 its own (masked out)
    neg, kern = chunked_pair_sums(mu, ls, own, mu[1:].detach(), ls[1:])
    log_k = -3 * d * d / 8
    assert neg.item() == pytest.approx(-math.log(-math.expm1(-eps)) + (log_k + eps) / math.expm1(eps), rel=tol(dtype))
    assert kern.item() == pytest.approx(math.exp(log_k) + 1, rel=tol(dtype))
    neg.backward()
    # d neg / d mu_0 = (1 / expm1(eps)) * d log kappa / d mu_0 = (1 / expm1(eps)) * 2 d / 8 per axis
    torch.testing.assert_close(mu.grad[0].double(), torch.full((3,), (2 * d / 8) / math.expm1(eps),
                                                                dtype=torch.float64), rtol=1e-3, atol=0)


@pytest.mark.parametrize("log_sigma", [-60.0, -11.0, 11.0, 60.0])
def test_extreme_sigmas_of_a_probabilistic_head_give_finite_values_and_gradients(log_sigma, dtype):
    """Tiny or huge sigmas (beyond the float32 bound): every term and every gradient finite, and the
    entropy term keeps the unbounded log sigma (its gradient w_ent / N pulls it back)."""
    mu, _, score, sem, semantic, inst, cls = tiny_scene(dtype)
    mu.requires_grad_()
    ls = torch.full((6, 3), log_sigma, requires_grad=True)
    out = probabilistic_loss(mu, ls, score, sem, semantic, inst, cls)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["entropy"].item() == pytest.approx(1.5 * math.log(2 * math.pi * math.e) + 3 * log_sigma,
                                                  rel=tol(dtype))
    out["total"].backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()
    bound = log_sigma_bound(dtype)
    if abs(log_sigma) > bound:  # only the entropy term sees sigma beyond the bound (straight-through)
        assert (ls.grad != 0).all()


def test_small_sigmas_separate_everything(dtype):
    """sigma = e^-11 (2e-5 m) around distinct means: every negative kernel is 0 and every own one
    ~0 except one-voxel instances; L_InsCE is the own pairs' -log kappa = Mahalanobis / (N K)."""
    mu = torch.tensor([[0.0, 0, 0], [0.001, 0, 0], [5.0, 0, 0]])
    ls = torch.full((3, 3), -11.0)
    t = instance_loss(mu, ls, torch.tensor([0, 0, 1]), 2)
    # voxels 0, 1 are 0.0005 m from c_0; alpha = 4 * 2 sigma^2 per axis
    alpha = 8 * math.exp(-22)
    assert t.ins_ce.item() == pytest.approx(2 * 0.0005**2 / alpha / 6, rel=tol(dtype))


@pytest.mark.parametrize("requires", ["both", "mu", "log_sigma", "none", "no_grad"])
def test_chunks_are_recomputed_in_backward_only_under_autograd(requires, monkeypatch):
    """With row blocks, each block runs once forward and, under autograd (checkpointing), once more in
    backward; without gradients it runs once and nothing is kept. The sums are the same either way."""
    calls = []
    original = probabilistic_module._pair_sums

    def counting(*args):
        calls.append(len(args[0]))
        return original(*args)

    monkeypatch.setattr(probabilistic_module, "_pair_sums", counting)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(10, 3, generator=g, requires_grad=requires in ("both", "mu", "no_grad"))
    ls = (0.3 * torch.randn(10, 3, generator=g)).requires_grad_(requires in ("both", "log_sigma"))
    own = torch.tensor([0, 0, 1, 1, -1, 0, 1, -1, 0, 1])
    mu_hat, ls_hat = torch.randn(2, 3, generator=g), torch.zeros(2, 3)
    with torch.set_grad_enabled(requires != "no_grad"):
        neg, kern = chunked_pair_sums(mu, ls, own, mu_hat, ls_hat, chunk_elements=8)  # blocks of 4 rows
    assert calls == [4, 4, 2]
    whole = original(mu.detach(), ls.detach(), own, mu_hat, ls_hat)
    assert neg.item() == pytest.approx(whole[0].item(), rel=1e-6)
    assert kern.item() == pytest.approx(whole[1].item(), rel=1e-6)
    if requires in ("both", "mu", "log_sigma"):
        leaf = mu if requires != "log_sigma" else ls
        (grad,) = torch.autograd.grad(neg + kern, leaf)  # checkpointing must allow autograd.grad
        assert calls[:3] == [4, 4, 2] and sorted(calls[3:]) == [2, 4, 4] and torch.isfinite(grad).all()
    else:
        assert neg.grad_fn is None


def test_one_block_when_the_budget_holds_the_matrix(monkeypatch):
    calls = []
    original = probabilistic_module._pair_sums
    monkeypatch.setattr(probabilistic_module, "_pair_sums", lambda *a: calls.append(len(a[0])) or original(*a))
    mu = torch.zeros(10, 3, requires_grad=True)
    own = torch.zeros(10, dtype=torch.long)
    for budget, expected in ((20, [10]), (19, [9, 1]), (1, [1] * 10), (0, [1] * 10)):
        calls.clear()
        neg, _ = chunked_pair_sums(mu, torch.zeros(10, 3), own, torch.ones(2, 3), torch.zeros(2, 3),
                                   chunk_elements=budget)
        assert calls == expected, budget
        neg.backward()
        # one block is kept for backward, not recomputed; several are checkpointed and recomputed
        assert sorted(calls) == sorted(expected if len(expected) == 1 else expected * 2), budget
    calls.clear()  # no instance at all: one row per pair budget, not a division by zero
    chunked_pair_sums(mu, torch.zeros(10, 3), own, torch.ones(0, 3), torch.zeros(0, 3), chunk_elements=4)
    assert calls == [4, 4, 2]


def test_every_tensor_follows_the_inputs_device(dtype):
    """With the default device elsewhere (here "meta", standing in for the GPU of a run whose
    default device is the CPU, or the reverse), every tensor the loss creates must still be made on
    the inputs' device: the same values and gradients as with the default device at home."""
    inputs = tiny_scene(dtype, requires_grad=True)
    assert_loss_follows_the_inputs_device(probabilistic_loss, inputs, 4, chunk_elements=8)


@pytest.mark.parametrize("inputs_dtype, default", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_the_inputs_dtype_decides_not_the_default_one(inputs_dtype, default):
    """Created tensors, eps of the capped negatives and the sigma bound follow the inputs' dtype
    (float32 training under a float64 default, or the reverse)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        out = probabilistic_loss(*tiny_scene(inputs_dtype))
        eps = torch.finfo(inputs_dtype).eps
        collapsed = instance_loss(torch.zeros(2, 3, dtype=inputs_dtype), torch.zeros(2, 3, dtype=inputs_dtype),
                                  torch.tensor([0, 1]), 2)
        far = instance_loss(torch.tensor([[0.0, 0, 0], [1e-12, 0, 0]], dtype=inputs_dtype),
                            torch.full((2, 3), -100.0, dtype=inputs_dtype), torch.tensor([0, 0]), 1)
    finally:
        torch.set_default_dtype(old)
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].dtype == inputs_dtype and out[name].item() == pytest.approx(value, rel=tol(inputs_dtype))
    per_negative = -math.log(-math.expm1(-eps)) + eps / math.expm1(eps)
    assert collapsed.ins_ce.item() == pytest.approx(per_negative / 2, rel=tol(inputs_dtype))
    assert collapsed.own_kernel.dtype == inputs_dtype
    # both voxels 0.5e-12 from c_0, sigma clamped at e^-bound of the inputs' dtype: alpha = 8 e^(-2 bound)
    bound = log_sigma_bound(inputs_dtype)
    assert far.ins_ce.item() == pytest.approx(2 * 0.25e-24 / (8 * math.exp(-2 * bound)) / 2, rel=1e-4)


def test_background_only_and_single_voxel_scenes(dtype):
    """No instance voxel (log sigmas non-zero): the instance terms are exactly 0 and Q is the pure
    "not a centre" column. One labelled voxel forming one instance: c = e, kappa = 1, so L_InsCE
    and -log Dice are 0 and Q puts 1 in the instance's class column."""
    mu, ls, score, sem, semantic, _, cls = tiny_scene(dtype)
    out = probabilistic_loss(mu, ls, score, sem, semantic, torch.full((6,), -1), cls)
    ref = reference_terms(MU, LOG_SIGMA, SCORE, SEM, SEMANTIC, [-1] * 6, CLASSES)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype), abs=0), name
    single = torch.tensor([False, False, True, False, False, False])
    out = probabilistic_loss(mu, ls, score, sem, semantic, torch.tensor(INSTANCE), cls, instance_known=single)
    assert out["ins_ce"].item() == 0 and out["log_dice"].item() == pytest.approx(0.0, abs=1e-7)
    # voxel 2 is instance 1 of class 2: Q = (0, 0, 1, 0)
    assert out["score"].item() == pytest.approx(-log_softmax_ref(SCORE[2])[2], rel=tol(dtype))


@pytest.mark.parametrize("inputs_dtype, default", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_background_only_scene_keeps_the_inputs_device_and_dtype(inputs_dtype, default):
    """The shortcut for scenes without instance voxels creates its tensors like the main path:
    on the inputs' device ("meta" default device stands in for a mismatch) in their dtype."""
    mu, ls, score, sem, semantic, _, cls = tiny_scene(inputs_dtype)
    background = torch.full((6,), -1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        with torch.device("meta"):
            out = probabilistic_loss(mu, ls, score, sem, semantic, background, cls)
            terms = instance_loss(mu, ls, background, 2)
    finally:
        torch.set_default_dtype(old)
    assert all(v.device.type == "cpu" and v.dtype == inputs_dtype for v in out.values())
    assert terms.own_kernel.device.type == "cpu" and terms.own_kernel.dtype == inputs_dtype
    assert terms.own_kernel.tolist() == [0.0] * 6


def test_the_chunk_budget_reaches_the_pair_sums(monkeypatch):
    """probabilistic_loss and instance_loss pass chunk_elements on: with 2 instances and a budget of
    8 pairs the 5 labelled voxels go in blocks of 4 and 1."""
    calls = []
    original = probabilistic_module._pair_sums
    monkeypatch.setattr(probabilistic_module, "_pair_sums", lambda *a: calls.append(len(a[0])) or original(*a))
    with torch.no_grad():
        probabilistic_loss(*tiny_scene(torch.float32), chunk_elements=8)
        assert calls == [4, 1]
        calls.clear()
        mu, ls, *_ = tiny_scene(torch.float32)
        instance_loss(mu[:5], ls[:5], torch.tensor(INSTANCE[:5]), 2, chunk_elements=8)
        assert calls == [4, 1]
        calls.clear()
        probabilistic_loss(*tiny_scene(torch.float32))
        assert calls == [5]


def test_score_loss_names_its_softmax_axis():
    """log_softmax without an explicit dim is deprecated (and its implicit choice depends on the
    number of dimensions): the score loss must not rely on it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_loss(torch.randn(4, 3), torch.full((4, 3), 1 / 3))
