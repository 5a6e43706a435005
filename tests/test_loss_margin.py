"""The learnable-margin head's loss (Neven et al. 2019, as re-implemented for voxels) on tiny
hand-built scenes against a pure-Python transcription: the Gaussian, the Lovasz hinge (against
its definition as the Lovasz extension of the Jaccard loss), smoothness, seeds, the total's
composition, degenerate and extreme inputs (sigma_logit +-10 and beyond, huge and zero offsets,
one-voxel instances) in float32 and float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minkseg.losses.margin as margin_module
from minkseg.losses.margin import MarginLossWeights, lovasz_hinge, margin_gaussian, margin_loss
from tests.meta_device import assert_loss_follows_the_inputs_device

IGNORE = -100



def tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a loss over a handful of voxels in ``dtype``."""
    return 2e-5 if dtype == torch.float32 else 1e-11


def jaccard_loss_of_mistakes(mistakes: set[int], labels: list[bool]) -> float:
    """Berman et al.'s Delta_J: 1 - |y* n y~| / |y* u y~| when the voxels in ``mistakes`` are mispredicted."""
    positives = {i for i, y in enumerate(labels) if y}
    predicted = (positives - mistakes) | {i for i in mistakes if not labels[i]}
    union = positives | predicted
    return 1 - len(positives & predicted) / len(union) if union else 0.0


def lovasz_hinge_ref(logits: list[float], labels: list[bool]) -> float:
    """The Lovasz extension of Delta_J at the hinge errors max(0, 1 - logit * sign): sum over the
    errors in decreasing order of error * (Delta_J(top i) - Delta_J(top i-1))."""
    errors = [1 - x * (1 if y else -1) for x, y in zip(logits, labels)]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, prefix, previous = 0.0, set(), 0.0
    for i in order:
        prefix.add(i)
        current = jaccard_loss_of_mistakes(prefix, labels)
        total += max(errors[i], 0.0) * (current - previous)
        previous = current
    return total


def reference_terms(emb: list[list[float]], sig: list[list[float]], seed: list[list[float]],
                    sem: list[list[float]], semantic: list[int], instance: list[int], instance_class: list[int],
                    seed_foreground: float = 1.0, known: list[bool] | None = None) -> dict[str, float]:
    """Neven et al.'s terms for one scene in float64 Python: per instance k the centre C_k (mean
    embedding), s_k (mean sigma logit), phi_k(e) = exp(-sum_d (e - C_k)^2 exp(10 s_k)); Lovasz hinge
    of 2 phi_k - 1 against the mask of k, mean over instances; smoothness mean over instances of
    mean_i mean_d (s_i - s_k)^2; seeds regressed to phi_{z_i}(e_i) in the column of z_i's class."""
    n_all = len(emb)
    known = known or [True] * n_all
    rows = [i for i in range(n_all) if semantic[i] != IGNORE and known[i]]
    present = sorted({instance[i] for i in rows if instance[i] >= 0})
    centre, s_k = {}, {}
    for k in present:
        members = [i for i in rows if instance[i] == k]
        centre[k] = [sum(emb[i][d] for i in members) / len(members) for d in range(3)]
        s_k[k] = [sum(sig[i][d] for i in members) / len(members) for d in range(3)]

    def phi(i: int, k: int) -> float:
        return math.exp(-sum((emb[i][d] - centre[k][d]) ** 2 * math.exp(10 * s_k[k][d]) for d in range(3)))

    out = {"lovasz": 0.0, "smooth": 0.0, "seed": 0.0}
    if present:
        out["lovasz"] = sum(lovasz_hinge_ref([2 * phi(i, k) - 1 for i in rows], [instance[i] == k for i in rows])
                            for k in present) / len(present)
        out["smooth"] = sum(
            sum(sum((sig[i][d] - s_k[k][d]) ** 2 for d in range(3)) / 3 for i in rows if instance[i] == k)
            / sum(1 for i in rows if instance[i] == k) for k in present) / len(present)
    if rows:
        total = 0.0
        for i in rows:
            for c in range(len(seed[0])):
                p = 1 / (1 + math.exp(-seed[i][c]))
                own = instance[i] >= 0 and instance_class[instance[i]] == c
                target, weight = (phi(i, instance[i]), seed_foreground) if own else (0.0, 1.0)
                total += weight * (p - target) ** 2
        out["seed"] = total / len(rows)
    labelled = [i for i in range(n_all) if semantic[i] != IGNORE]
    out["semantic"] = 0.0
    if labelled:
        ce = 0.0
        for i in labelled:
            top = max(sem[i])
            ce += top + math.log(sum(math.exp(v - top) for v in sem[i])) - sem[i][semantic[i]]
        out["semantic"] = ce / len(labelled)
    return out


# instance 0 = voxels 0, 1, 2; instance 1 = voxels 3, 4; voxel 5 background; voxel 6 ignored
# (claims instance 1 from afar: must not move C_1); classes 0..2, seed maps (N, 3)
EMB = [[0.0, 0.1, 0.0], [0.2, 0.0, 0.1], [0.1, 0.3, -0.1], [0.6, 0.5, 0.1], [0.8, 0.4, 0.0], [0.4, 0.2, 0.3],
       [5.0, 5.0, 5.0]]
SIG = [[0.10, 0.05, 0.12], [0.08, 0.11, 0.10], [0.12, 0.09, 0.07], [0.02, 0.06, 0.04], [0.05, 0.01, 0.08],
       [0.3, -0.2, 0.1], [0.9, 0.9, 0.9]]
SEED = [[0.5, -1.0, 0.3], [1.2, 0.2, -0.4], [0.0, -0.5, 0.9], [-0.3, 0.7, 0.1], [0.4, 1.5, -1.1],
        [0.2, -0.2, 0.6], [1.0, 1.0, 1.0]]
SEM = [[0.1, 0.2, 0.3, 1.1], [0.4, -0.3, 0.0, 0.6], [0.0, 0.5, -0.2, 0.1], [-0.4, 0.3, 0.2, 0.0],
       [0.3, 1.0, -0.1, 0.2], [0.9, 0.0, 0.1, -0.5], [0.5, 0.5, 0.5, 0.5]]
SEMANTIC = [2, 2, 2, 3, 3, 0, IGNORE]
INSTANCE = [0, 0, 0, 1, 1, -1, 1]
CLASSES = [2, 0]


def tiny_scene(dtype: torch.dtype, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    tensors = [torch.tensor(v, dtype=dtype, requires_grad=requires_grad) for v in (EMB, SIG, SEED, SEM)]
    return (*tensors, torch.tensor(SEMANTIC), torch.tensor(INSTANCE), torch.tensor(CLASSES))


def test_lovasz_hinge_by_hand(dtype):
    """Labels (1, 0), logits (0.5, 0.2): hinge errors 0.5 and 1.2; the negative's error comes first,
    Delta_J goes 0 -> 1/2 -> 1, so the loss is 1.2 * 1/2 + 0.5 * 1/2 = 0.85."""
    labels = torch.tensor([[True, False]])
    assert lovasz_hinge(torch.tensor([[0.5, 0.2]]), labels).item() == pytest.approx(0.85, rel=tol(dtype))
    # two rows at once, each its own loss; errors below 0 cost nothing
    logits = torch.tensor([[0.5, 0.2, -3.0], [2.0, -2.0, 0.0]])
    labels = torch.tensor([[True, False, False], [True, False, True]])
    assert lovasz_hinge(logits, labels).tolist() == pytest.approx(
        [lovasz_hinge_ref([0.5, 0.2, -3.0], [True, False, False]), 1.0 * (1 - 0.5)], rel=tol(dtype))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(-3, 3), st.booleans()), min_size=1, max_size=9))
def test_lovasz_hinge_is_the_lovasz_extension_of_the_jaccard_loss(row):
    logits, labels = [x for x, _ in row], [y for _, y in row]
    ours = lovasz_hinge(torch.tensor([logits], dtype=torch.float64), torch.tensor([labels])).item()
    assert ours == pytest.approx(lovasz_hinge_ref(logits, labels), rel=1e-9, abs=1e-12)


def test_margin_gaussian_by_hand(dtype):
    """phi = exp(-sum_d (e - C)^2 exp(10 s~)): s~ = 0 gives exp(-|e - C|^2), s~ = ln(2) / 10 doubles it."""
    e = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    c = torch.tensor([0.5, 2.0, 1.0])
    assert margin_gaussian(e, c, torch.zeros(3)).tolist() == pytest.approx([math.exp(-0.5), math.exp(-5.25)],
                                                                            rel=tol(dtype))
    s = torch.tensor([math.log(2) / 10, 0.0, -math.log(4) / 10])
    assert margin_gaussian(e[0], c, s).item() == pytest.approx(math.exp(-(0.25 * 2 + 0.25 / 4)), rel=tol(dtype))
    # broadcast (g, N, 3) against (g, 1, 3): one row per centre
    phi = margin_gaussian(e[None], torch.stack([c, torch.zeros(3)])[:, None], torch.zeros(2, 1, 3))
    assert phi.shape == (2, 2)
    assert phi.flatten().tolist() == pytest.approx([math.exp(-0.5), math.exp(-5.25), math.exp(-5.25), 1.0],
                                                   rel=tol(dtype))


def test_margin_gaussian_bandwidth_is_bounded_per_dtype(dtype):
    """10 s~ is clamped to +-ln(finfo.max) / 2 (44.36 in float32, 354.9 in float64): beyond it phi is
    that of the bound, and the gradient w.r.t. s~ is the one at the bound (straight-through)."""
    bound = math.log(torch.finfo(dtype).max) / 2
    for s_tilde in (bound / 10 + 1.0, bound / 10 + 50.0):
        d = math.exp(-bound / 2) * 0.5  # (e - C)^2 exp(bound) = 0.25
        s = torch.full((3,), s_tilde, requires_grad=True)
        phi = margin_gaussian(torch.tensor([d, 0.0, 0.0]), torch.zeros(3), s)
        assert phi.item() == pytest.approx(math.exp(-0.25), rel=1e-4)
        phi.backward()
        # d phi / d s~_0 = -phi * 0.25 * 10 at the bound
        assert s.grad[0].item() == pytest.approx(-math.exp(-0.25) * 0.25 * 10, rel=1e-4)
    # far below the bound: the bandwidth is exp(-bound) (zero in effect), phi = 1
    assert margin_gaussian(torch.tensor([1e3, 0.0, 0.0]), torch.zeros(3), torch.full((3,), -bound / 10 - 5)).item() \
        == pytest.approx(1.0)


def test_each_term_of_a_tiny_scene_is_neven_et_al(dtype):
    out = margin_loss(*tiny_scene(dtype))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name
        assert out[name].dtype == dtype
    assert min(abs(v) for v in ref.values()) > 1e-4


@pytest.mark.parametrize("weights", [MarginLossWeights(),
                                     MarginLossWeights(instance=0.6, smooth=3.0, seed=1.7, semantic=0.4,
                                                       seed_foreground=10.0)])
def test_total_is_lovasz_plus_weighted_smoothness_seed_and_semantics(weights, dtype):
    """total = w_ins Lovasz + w_smooth smooth + w_seed seed + w_sem CE; Neven's w_var = 10 by default."""
    out = margin_loss(*tiny_scene(dtype), weights=weights)
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES, seed_foreground=weights.seed_foreground)
    expected = (weights.instance * ref["lovasz"] + weights.smooth * ref["smooth"] + weights.seed * ref["seed"]
                + weights.semantic * ref["semantic"])
    assert out["seed"].item() == pytest.approx(ref["seed"], rel=tol(dtype))
    assert out["total"].item() == pytest.approx(expected, rel=tol(dtype))


def test_default_weights_are_neven_et_al():
    w = MarginLossWeights()
    assert (w.instance, w.smooth, w.seed, w.semantic, w.seed_foreground) == (1.0, 10.0, 1.0, 1.0, 1.0)
    out = margin_loss(*tiny_scene(torch.float64))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    expected = ref["lovasz"] + 10 * ref["smooth"] + ref["seed"] + ref["semantic"]
    assert out["total"].item() == pytest.approx(expected, rel=1e-11)


def test_pseudo_labelled_voxels_enter_only_semantics(dtype):
    known = [True, False, True, True, True, False, True]
    out = margin_loss(*tiny_scene(dtype), instance_known=torch.tensor(known))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES, known=known)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name


def test_custom_ignore_index(dtype):
    emb, sig, seed, sem, _, inst, cls = tiny_scene(dtype)
    out = margin_loss(emb, sig, seed, sem, torch.tensor([2, 2, 2, 3, 3, 0, 250]), inst, cls, ignore_index=250)
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name


def test_no_voxel_with_a_known_instance(dtype):
    """Every voxel pseudo-labelled: instance, smoothness and seed terms 0 (not NaN), semantic CE over all."""
    emb, sig, seed, sem, semantic, inst, cls = tiny_scene(dtype, requires_grad=True)
    out = margin_loss(emb, sig, seed, sem, semantic, inst, cls, instance_known=torch.zeros(7, dtype=torch.bool))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name in ("lovasz", "smooth", "seed"):
        assert out[name].item() == 0, name
    assert out["total"].item() == pytest.approx(ref["semantic"], rel=tol(dtype))
    out["total"].backward()
    assert (emb.grad == 0).all() and (sig.grad == 0).all() and (seed.grad == 0).all()


def test_all_voxels_ignored_gives_zero(dtype):
    emb, sig, seed, sem, _, inst, cls = tiny_scene(dtype, requires_grad=True)
    out = margin_loss(emb, sig, seed, sem, torch.full((7,), IGNORE), inst, cls)
    assert all(v.item() == 0 for v in out.values())
    out["total"].backward()
    # every input gets a zero gradient, the semantic logits included: DDP stalls on a parameter without one
    assert all(t.grad is not None and (t.grad == 0).all() for t in (emb, sig, seed, sem))


def test_background_only_scene_regresses_seeds_to_zero(dtype):
    """No instance: Lovasz and smoothness 0, seeds regressed to 0 everywhere: mean_i sum_l sigmoid^2."""
    emb, sig, seed, sem, semantic, _, _ = tiny_scene(dtype)
    out = margin_loss(emb, sig, seed, sem, semantic, torch.full((7,), -1), torch.zeros(0, dtype=torch.long))
    expected = sum(sum((1 / (1 + math.exp(-v))) ** 2 for v in SEED[i]) for i in range(6)) / 6
    assert out["lovasz"].item() == 0 and out["smooth"].item() == 0
    assert out["seed"].item() == pytest.approx(expected, rel=tol(dtype))


def test_instances_present_are_renumbered_in_order(dtype):
    """Instance 2 listed but cropped away, or instance 0 cropped away: the same loss as without it,
    and each present instance keeps its class."""
    emb, sig, seed, sem, semantic, inst, _ = tiny_scene(dtype)
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    last_empty = margin_loss(emb, sig, seed, sem, semantic, inst, torch.tensor([2, 0, 1]))
    shifted = torch.where(inst >= 0, inst + 1, inst)
    first_empty = margin_loss(emb, sig, seed, sem, semantic, shifted, torch.tensor([1, 2, 0]))
    for out in (last_empty, first_empty):
        for name, value in ref.items():
            assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name


def test_smoothness_gradient_does_not_flow_through_the_instance_mean(dtype):
    """d smooth / d s_i = 2 (s_i - s_k) / (3 |k| K): s_k is a fixed target (Neven's code detaches it)."""
    emb, sig, seed, sem, semantic, inst, cls = tiny_scene(dtype)
    sig.requires_grad_()
    margin_loss(emb, sig, seed, sem, semantic, inst, cls)["smooth"].backward()
    expected = []
    for i in range(7):
        k = INSTANCE[i]
        if SEMANTIC[i] == IGNORE or k < 0:
            expected.append([0.0] * 3)
            continue
        members = [j for j in range(6) if INSTANCE[j] == k]
        mean = [sum(SIG[j][d] for j in members) / len(members) for d in range(3)]
        expected.append([2 * (SIG[i][d] - mean[d]) / (3 * len(members) * 2) for d in range(3)])
    torch.testing.assert_close(sig.grad.double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-4, atol=1e-7)


def test_instances_are_processed_in_groups_bounded_by_the_budget(monkeypatch):
    """chunk_elements // N instances per Lovasz call (at least one), so the (group, N) buffers stay
    bounded; the result does not depend on the grouping."""
    calls = []
    original = margin_module.lovasz_hinge
    monkeypatch.setattr(margin_module, "lovasz_hinge", lambda x, y: calls.append(tuple(x.shape)) or original(x, y))
    inputs = tiny_scene(torch.float64)
    n = 6  # known voxels
    results = {}
    for budget, expected in ((2 * n, [(2, n)]), (2 * n - 1, [(1, n), (1, n)]), (1, [(1, n), (1, n)]),
                             (0, [(1, n), (1, n)])):
        calls.clear()
        results[budget] = margin_loss(*inputs, chunk_elements=budget)["lovasz"].item()
        assert calls == expected, budget
    calls.clear()
    margin_loss(*inputs)
    assert calls == [(2, n)]  # the default budget (4 M pairs) holds both
    assert len(set(results.values())) == 1


@pytest.mark.parametrize("sigma_logit", [-100.0, -10.0, 10.0, 100.0, 1e6])
@pytest.mark.parametrize("offset", [0.0, 1e-3, 1e4])
def test_extreme_margins_and_offsets_give_finite_loss_and_gradients(sigma_logit, offset, dtype):
    """Embeddings exactly on (offset 0), near, or 10 km from their centres, with bandwidths from
    exp(-1000) to exp(1e7): every term and every gradient finite, phi in [0, 1]."""
    emb = torch.tensor([[0.0, 0, 0], [offset, 0, 0], [5.0, 5, 5], [5.0, 5, 5 - offset], [2.0, 2, 2]],
                       requires_grad=True)
    sig = torch.full((5, 3), sigma_logit, requires_grad=True)
    seed = torch.zeros(5, 2, requires_grad=True)
    sem = torch.zeros(5, 3, requires_grad=True)
    out = margin_loss(emb, sig, seed, sem, torch.tensor([1, 1, 2, 2, 0]), torch.tensor([0, 0, 1, 1, -1]),
                      torch.tensor([0, 1]))
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()
    for t in (emb, sig, seed, sem):
        assert torch.isfinite(t.grad).all()
    if offset == 0.0:
        # members on their centre (phi = 1), everything else 10 km / 5 m away with a huge bandwidth
        # (phi = 0): perfect masks cost nothing; tiny bandwidths make phi = 1 everywhere
        expected = 0.0 if sigma_logit > 0 else lovasz_hinge_ref([1.0] * 5, [True, True, False, False, False])
        assert out["lovasz"].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("sigma_logit", [-10.0, 0.0, 10.0])
def test_one_voxel_instances(sigma_logit, dtype):
    """Each instance one voxel: C_k = e_i, so phi = 1 on it, smoothness 0, the seed target 1; 4 m
    apart with s~ >= 0 phi of the others is ~0 and the Lovasz hinge 0."""
    emb = torch.tensor([[0.0, 0, 0], [4.0, 0, 0], [0.0, 4, 0]], requires_grad=True)
    sig = torch.full((3, 3), sigma_logit, requires_grad=True)
    seed = torch.full((3, 2), 20.0)  # sigmoid = 1 - 2e-9
    out = margin_loss(emb, sig, seed, torch.zeros(3, 3), torch.tensor([2, 2, 2]), torch.tensor([0, 1, 2]),
                      torch.tensor([0, 1, 1]))
    assert out["smooth"].item() == 0
    # each voxel: its own class column's target is 1, the other column's 0 (sigmoid(20)^2 ~ 1)
    assert out["seed"].item() == pytest.approx(1.0, rel=1e-6)
    if sigma_logit >= 0:
        assert out["lovasz"].item() == pytest.approx(0.0, abs=1e-6)
    out["total"].backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(sig.grad).all()


def test_invalid_instance_class_raises_and_boundary_classes_are_valid(dtype):
    emb, sig, seed, sem, semantic, inst, _ = tiny_scene(dtype)
    margin_loss(emb, sig, seed, sem, semantic, inst, torch.tensor([0, 2]))  # 0 and L - 1 are valid
    for bad in ([3, 0], [0, -1]):
        with pytest.raises(ValueError, match=r"0\.\.2"):
            margin_loss(emb, sig, seed, sem, semantic, inst, torch.tensor(bad))


def test_every_tensor_follows_the_inputs_device(dtype):
    """With the default device elsewhere ("meta", standing in for a GPU/CPU mismatch), every tensor
    the loss creates is made on the inputs' device: same values and gradients."""
    assert_loss_follows_the_inputs_device(margin_loss, tiny_scene(dtype, requires_grad=True), 4, chunk_elements=6)


@pytest.mark.parametrize("inputs_dtype, default", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_the_inputs_dtype_decides_not_the_default_one(inputs_dtype, default):
    """Created tensors and the bandwidth bound follow the inputs' dtype, whatever the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        out = margin_loss(*tiny_scene(inputs_dtype))
        bound = math.log(torch.finfo(inputs_dtype).max) / 2
        d = math.exp(-bound / 2) * 0.5
        phi = margin_gaussian(torch.tensor([d, 0.0, 0.0], dtype=inputs_dtype), torch.zeros(3, dtype=inputs_dtype),
                              torch.full((3,), bound / 10 + 1.0, dtype=inputs_dtype))
    finally:
        torch.set_default_dtype(old)
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, CLASSES)
    for name, value in ref.items():
        assert out[name].dtype == inputs_dtype and out[name].item() == pytest.approx(value, rel=tol(inputs_dtype))
    assert phi.item() == pytest.approx(math.exp(-0.25), rel=1e-4)


def test_a_single_instance_and_a_single_voxel(dtype):
    """K = 1 (one instance and background) and N = 1 (one labelled voxel) are scenes like any other."""
    emb, sig, seed, sem, semantic, inst, _ = tiny_scene(dtype)
    one_instance = [k if k == 1 else -1 for k in INSTANCE]
    out = margin_loss(emb, sig, seed, sem, semantic, torch.tensor(one_instance), torch.tensor([2, 0]))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, one_instance, [2, 0])
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name
    assert ref["lovasz"] > 0.01 and ref["smooth"] > 0
    single = [i == 3 for i in range(7)]
    out = margin_loss(emb, sig, seed, sem, semantic, inst, torch.tensor([2, 0]), instance_known=torch.tensor(single))
    ref = reference_terms(EMB, SIG, SEED, SEM, SEMANTIC, INSTANCE, [2, 0], known=single)
    for name, value in ref.items():
        assert out[name].item() == pytest.approx(value, rel=tol(dtype)), name
    assert ref["seed"] > 0.1
