"""Mean-shift grouping on hand-computed scenes: kernels at their bounds, binning, the weighted
GBMS step count, the greedy grouping of the anchors, the tau test of every point, points of
dropped cells, the defaults, and the device and dtype of everything the module creates.

Most scenes are 1-D with kernel parameters for which both heads' kernels are exactly
K(x, c) = exp(-(x - c)^2) between points of equal parameters (kernel length 1 / sqrt(2), binning
cell 1 / sqrt(8) = 0.354), so that kernels, modes and assignments can be worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from minkseg.inference.meanshift import (
    assign_to_modes,
    bin_anchors,
    blur_step,
    combine_params,
    gaussian_blurring_mean_shift,
    group_modes,
    log_kernel,
    meanshift_cluster,
)

# log sigma (sigma = 1 / sqrt(8): kappa = exp(-d^2 / (8 sigma^2))) and s~ (exp(10 s~) = 1) giving K = exp(-d^2)
UNIT_PARAM = {"bhattacharyya": -0.5 * math.log(8.0), "margin": 0.0}
KINDS = ["bhattacharyya", "margin"]


def column(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 1) embeddings of a 1-D scene."""
    return torch.tensor(values, dtype=dtype)[:, None]


def one_hot_probs(columns: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    probs = torch.zeros(len(columns), 20, dtype=dtype)
    probs[torch.arange(len(columns)), torch.tensor(columns)] = 1.0
    return probs


# ---------------------------------------------------------------------------------------------- log_kernel


def test_bhattacharyya_log_sigma_is_bounded_on_both_sides_for_both_points():
    # float32 bound: ln(finfo.max) / 8 = 11.09; outside it exp(2 log sigma) overflows to inf or underflows to 0
    bound = math.log(torch.finfo(torch.float32).max) / 8
    x, c = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    for px, pc in [(50.0, 0.0), (-50.0, 0.0), (0.0, 50.0), (0.0, -50.0)]:
        sx, sc = math.exp(max(-bound, min(bound, px))), math.exp(max(-bound, min(bound, pc)))
        s = sx**2 + sc**2  # Eq. (1) with the bounded sigmas, in float64
        want = 0.5 * math.log(2 * sx * sc / s) - 0.25 / (4 * s)
        got = log_kernel("bhattacharyya", x, torch.tensor([[px]]), c, torch.tensor([[pc]]))
        assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-5), (px, pc)


def test_margin_bandwidth_is_bounded_on_both_sides():
    # float32 bound of 10 s~: ln(finfo.max) / 2 = 44.36
    bound = math.log(torch.finfo(torch.float32).max) / 2
    for s, d in [(4.0, 1e-8), (10.0, 1e-9), (-20.0, 1e9)]:  # 10 s~ = 40 (inside), 100, -200 (bounded)
        want = -(d**2) * math.exp(max(-bound, min(bound, 10 * s)))
        got = log_kernel("margin", torch.tensor([[d]]), None, torch.tensor([[0.0]]), torch.tensor([[s]]))
        assert math.isfinite(got.item()) and got.item() == pytest.approx(want, rel=1e-5), s


def test_bhattacharyya_normalisation_counts_the_embedding_axes_of_batched_pairs(dtype):
    # (2, 1, 3) points against (1, 4, 3) centres, as the chunked callers pass them
    g = torch.Generator().manual_seed(7)
    x, px = torch.randn(2, 1, 3, generator=g).to(dtype), (0.3 * torch.randn(2, 1, 3, generator=g) - 1).to(dtype)
    c, pc = torch.randn(1, 4, 3, generator=g).to(dtype), (0.3 * torch.randn(1, 4, 3, generator=g) - 1).to(dtype)
    got = log_kernel("bhattacharyya", x, px, c, pc)
    assert got.shape == (2, 4)
    for i in range(2):
        for j in range(4):
            want = 0.0
            for d in range(3):
                sx, sc = math.exp(float(px[i, 0, d])), math.exp(float(pc[0, j, d]))
                s = sx**2 + sc**2
                want += 0.5 * math.log(2 * sx * sc / s) - float(x[i, 0, d] - c[0, j, d]) ** 2 / (4 * s)
            assert got[i, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_bhattacharyya_log_kernel_of_a_point_with_itself_is_exactly_zero(dtype):
    # kappa(e, e) = 1; the rounding of the rearranged sum must not make it exceed 1
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(2000, 3, generator=g)).to(dtype)
    ls = (2 * torch.randn(2000, 3, generator=g)).to(dtype)
    got = log_kernel("bhattacharyya", x, ls, x.clone(), ls.clone())
    assert (got <= 0).all() and (got > -1e-5).all()


# ------------------------------------------------------------------------------- binning and parameters


def test_cells_start_at_each_axis_own_minimum():
    # x from 0.6: both points in the cell [0.6, 1.6); cells counted from the overall minimum 0 would split them
    x = torch.tensor([[0.6, 0.0], [1.4, 0.0]])
    pos, _, w, point_anchor = bin_anchors(x, torch.zeros_like(x), "margin", 1.0, 10)
    assert w.tolist() == [2.0] and point_anchor.tolist() == [0, 0]
    torch.testing.assert_close(pos, torch.tensor([[1.0, 0.0]]))


def test_equally_populated_cells_are_kept_in_cell_order():
    # 150 single-point cells and 100 anchors: the ties are broken by the cell order (lowest x first),
    # whatever the order of the points (an unstable sort scrambles ties from ~100 elements on)
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(3))
    x = perm.to(torch.float32)[:, None]
    pos, _, w, point_anchor = bin_anchors(x, torch.zeros_like(x), "margin", 0.5, 100)
    assert pos[:, 0].tolist() == list(range(100)) and (w == 1).all()
    assert point_anchor.tolist() == [int(v) if v < 100 else -1 for v in perm]


@pytest.mark.parametrize("via", ["bin_anchors", "gaussian_blurring_mean_shift"])
def test_anchor_parameters_follow_the_kernel_kind(via):
    # two points in one cell with sigmas 0.1 and 0.3: the anchor's sigma^2 is their mean variance 0.05 (Eq. 3)
    x = torch.tensor([[0.0, 0.0], [0.01, 0.0]], dtype=torch.float64)
    ls = torch.log(torch.tensor([[0.1, 0.1], [0.3, 0.3]], dtype=torch.float64))
    if via == "bin_anchors":
        pa = bin_anchors(x, ls, "bhattacharyya", 1.0, 10)[1]
    else:
        pa = gaussian_blurring_mean_shift(x, ls, "bhattacharyya", iterations=0)[3]
    torch.testing.assert_close(pa, torch.full((1, 2), 0.5 * math.log(0.05), dtype=torch.float64))
    # margin: the mean of s~
    s = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)
    pa = bin_anchors(x, s, "margin", 1.0, 10)[1]
    torch.testing.assert_close(pa, torch.tensor([[0.2, -0.1]], dtype=torch.float64))


def test_combine_params_accepts_integer_counts_as_weights(dtype):
    ls = torch.tensor([[0.0], [math.log(2.0)], [1.0]], dtype=dtype)
    group, counts = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 5])
    # (1 * 1 + 3 * 4) / 4 = 13 / 4: sigma^2 of group 0
    want = torch.tensor([[0.5 * math.log(13 / 4)], [1.0]], dtype=dtype)
    torch.testing.assert_close(combine_params("bhattacharyya", ls, group, counts, 2), want)
    want = torch.tensor([[3 * math.log(2.0) / 4], [1.0]], dtype=dtype)
    torch.testing.assert_close(combine_params("margin", ls, group, counts, 2), want)


# ---------------------------------------------------------------------------------------------- GBMS steps


def two_point_gaps(d0: float, steps: int) -> list[float]:
    """Gap between two unit-weight points under K = exp(-d^2) after 0..steps GBMS steps: each moves to
    (x + K y) / (1 + K), so d <- d (1 - K) / (1 + K)."""
    gaps = [d0]
    for _ in range(steps):
        k = math.exp(-gaps[-1] ** 2)
        gaps.append(gaps[-1] * (1 - k) / (1 + k))
    return gaps


@pytest.mark.parametrize("kind", KINDS)
def test_gbms_takes_five_steps_by_default(kind, dtype):
    gaps = two_point_gaps(2.5, 6)  # 2.5, 2.490, ..., a slow contraction: each step is visible
    x = column([0.0, 2.5], dtype)
    blurred, point_anchor, anchors, _, weight = gaussian_blurring_mean_shift(x, torch.full_like(x, UNIT_PARAM[kind]),
                                                                            kind)
    want = column([1.25 - gaps[5] / 2, 1.25 + gaps[5] / 2], dtype)
    torch.testing.assert_close(blurred, want, rtol=0, atol=1e-5)
    assert point_anchor.tolist() == [0, 1] and weight.tolist() == [1.0, 1.0]
    torch.testing.assert_close(anchors, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_meanshift_cluster_defaults_five_steps_at_the_heads_bandwidth(kind, dtype):
    # tau between the kernels of the gap after 5 and after 6 steps: two modes after 5 steps, one after 6
    # (and one at bandwidth 2, where the points attract each other from further away)
    gaps = two_point_gaps(2.5, 6)
    tau = math.exp(-(gaps[5] ** 2 + gaps[6] ** 2) / 2)
    x = column([0.0, 2.5], dtype)
    c = meanshift_cluster(x, torch.full_like(x, UNIT_PARAM[kind]), kind, torch.tensor([0.5, 0.5], dtype=dtype),
                          torch.ones(2, dtype=torch.bool), one_hot_probs([4, 4], dtype), tau, min_size=1)
    assert c.num_instances == 2 and sorted(c.voxel_instance.tolist()) == [0, 1]
    c = meanshift_cluster(x, torch.full_like(x, UNIT_PARAM[kind]), kind, torch.tensor([0.5, 0.5], dtype=dtype),
                          torch.ones(2, dtype=torch.bool), one_hot_probs([4, 4], dtype), tau, min_size=1, iterations=6)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [0, 0]


def test_gbms_keeps_2048_anchors_by_default():
    # 2049 single-point cells, all equally populated: the one of the highest cell is dropped and stays put
    x = column([10.0 * i for i in range(2049)])
    blurred, point_anchor, anchors, _, _ = gaussian_blurring_mean_shift(x, torch.zeros_like(x), "margin", iterations=0)
    assert len(anchors) == 2048 and point_anchor.tolist() == list(range(2048)) + [-1]
    assert torch.equal(blurred, x)


def test_blur_step_of_no_points_and_in_any_chunk_size(dtype):
    anchors = column([0.0, 1.0, 3.0], dtype)
    pa = torch.zeros_like(anchors)
    log_w = torch.log(torch.tensor([1.0, 2.0, 1.0], dtype=dtype))
    none = blur_step("margin", anchors[:0], pa[:0], anchors, pa, log_w)
    assert none.shape == (0, 1) and none.dtype == dtype
    # x = 0.5: weights 1 * e^-0.25, 2 * e^-0.25, 1 * e^-6.25 on 0, 1, 3
    k = [math.exp(-0.25), 2 * math.exp(-0.25), math.exp(-6.25)]
    want = (k[1] + 3 * k[2]) / sum(k)
    x = column([0.5, 0.5, 0.5], dtype)
    for chunk in (1, 2, 3, 1 << 22):
        got = blur_step("margin", x, torch.zeros_like(x), anchors, pa, log_w, chunk_elements=chunk)
        torch.testing.assert_close(got, torch.full((3, 1), want, dtype=dtype))


def test_gbms_of_no_points():
    x, p = torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)
    blurred, point_anchor, anchors, pa, weight = gaussian_blurring_mean_shift(x, p, "margin")
    assert blurred.shape == anchors.shape == pa.shape == (0, 3)
    assert point_anchor.shape == weight.shape == (0,)
    assert point_anchor.dtype == torch.long and weight.dtype == blurred.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- modes


def test_anchors_are_visited_in_order_of_weighted_density(dtype):
    # K = exp(-d^2), tau = e^-1 (gaps up to 1 join). Densities sum_b w_b K(a, b):
    # A (0, w 10): 10.48; B (0.9, w 1): 5.89; C (1.8, w 1): 1.84. A first: it takes B (gap 0.9), not C (1.8).
    # (Were B visited first, it would take both.)
    anchors = column([0.0, 0.9, 1.8], dtype)
    weight = torch.tensor([10.0, 1.0, 1.0], dtype=dtype)
    for chunk in (1, 3, 1 << 22):
        mode, centres, pc = group_modes("margin", anchors, torch.zeros_like(anchors), weight, math.exp(-1),
                                        chunk_elements=chunk)
        assert mode.tolist() == [0, 0, 1]
        torch.testing.assert_close(centres, column([0.9 / 11, 1.8], dtype))
        torch.testing.assert_close(pc, torch.zeros(2, 1, dtype=dtype))


def test_mode_parameters_are_the_heads_instance_parameters(dtype):
    # one mode of two anchors (weights 1, 3): sigma^2 = (1 * 0.2^2 + 3 * 0.4^2) / 4 = 0.13
    anchors = column([0.0, 0.1], dtype)
    ls = torch.log(torch.tensor([[0.2], [0.4]], dtype=dtype))
    _, centres, pc = group_modes("bhattacharyya", anchors, ls, torch.tensor([1.0, 3.0], dtype=dtype), 0.5)
    torch.testing.assert_close(centres, column([0.075], dtype))
    torch.testing.assert_close(pc, torch.tensor([[0.5 * math.log(0.13)]], dtype=dtype))


def test_every_one_of_many_isolated_anchors_is_a_mode():
    # more anchors than greedy_cluster's default seed (5000) and instance (500) limits: all are modes,
    # visited in index order (equal densities)
    anchors = column([10.0 * i for i in range(5001)])
    mode, centres, _ = group_modes("margin", anchors, torch.zeros_like(anchors), torch.ones(5001), 0.5)
    assert torch.equal(mode, torch.arange(5001)) and torch.equal(centres, anchors)


# ------------------------------------------------------------------------------------ assignment to modes


@pytest.mark.parametrize("kind", KINDS)
def test_assign_to_modes_by_hand_for_both_kernels(kind, dtype):
    x = column([0.0, 1.0, 5.0, 1.2], dtype)
    centres = column([0.0, 1.2], dtype)
    px, pc = torch.full_like(x, UNIT_PARAM[kind]), torch.full_like(centres, UNIT_PARAM[kind])
    # K: x0 -> (1, e^-1.44); x1 -> (e^-1, e^-0.04); x2 -> (e^-25, e^-14.44); x3 -> (e^-1.44, 1)
    for chunk in (1, 2, 3, 1 << 22):
        assert assign_to_modes(kind, x, px, centres, pc, 0.5, chunk).tolist() == [0, 1, -1, 1]
    # a point exactly on a centre has K = 1: it passes tau = 1
    zero_x, zero_c = torch.zeros_like(x), torch.zeros_like(centres)
    assert assign_to_modes("margin", x, zero_x, centres, zero_c, 1.0).tolist() == [0, -1, -1, 1]
    # the Bhattacharyya kernel also depends on the point's own sigma: sigma_x = sigma_c / 10 at distance 0
    # gives sqrt(2 * 0.1 / 1.01) = 0.445
    if kind == "bhattacharyya":
        narrow = torch.full_like(x, UNIT_PARAM[kind] - math.log(10.0))
        assert assign_to_modes(kind, x, narrow, centres, pc, 0.5).tolist() == [-1, -1, -1, -1]
        assert assign_to_modes(kind, x, narrow, centres, pc, 0.44).tolist() == [0, -1, -1, 1]


# ------------------------------------------------------------------------------------ meanshift_cluster


def dropped_cells_scene(kind: str, dtype: torch.dtype = torch.float32):
    """Three populated cells A (4 points at 0), B (3 at 5), C (2 at 10) kept as anchors (max_anchors 3), four
    single points in dropped cells, one background voxel; K = exp(-d^2), tau 0.5, min_size 3.

    Modes A, B, C (densest first); A (4) and B (3 = min_size) can take points of dropped cells, C (2) cannot.
    o1 (0.5): K to A e^-0.25 -> A. o2 (4.3): K to B e^-0.49 -> B. o3 (2.4): e^-5.76, e^-6.76 -> none.
    o4 (10.4): only A and B are eligible, e^-29.16 -> none (C itself, at e^-0.16, is not eligible).
    Instances: A + o1 (5), B + o2 (4); C (2) is under min_size.
    """
    names = ["o3", "A", "B", "o1", "C", "A", "bg", "B", "o4", "A", "C", "B", "o2", "A"]
    place = {"A": 0.0, "B": 5.0, "C": 10.0, "o1": 0.5, "o2": 4.3, "o3": 2.4, "o4": 10.4, "bg": 0.0}
    x = column([place[n] for n in names], dtype)
    params = torch.full_like(x, UNIT_PARAM[kind])
    fg = torch.tensor([n != "bg" for n in names])
    # A: class column 5 (0.8) / 6 (0.2), o1: 0.3 / 0.7 -> means 0.7 / 0.3; B: column 9, o2: column 12 -> 0.75
    probs = torch.zeros(len(names), 20, dtype=dtype)
    rows = {"A": {5: 0.8, 6: 0.2}, "o1": {5: 0.3, 6: 0.7}, "B": {9: 1.0}, "o2": {12: 1.0}, "C": {3: 1.0},
            "o3": {3: 1.0}, "o4": {3: 1.0}, "bg": {0: 1.0}}
    for i, n in enumerate(names):
        for col, p in rows[n].items():
            probs[i, col] = p
    seeds = {"A": 0.9, "o1": 0.4, "B": 0.6, "o2": 0.2, "C": 0.5, "o3": 0.5, "o4": 0.5, "bg": 0.5}
    seed = torch.tensor([seeds[n] for n in names], dtype=dtype)
    instance = {"A": 0, "o1": 0, "B": 1, "o2": 1}
    want = [instance.get(n, -1) for n in names]
    # confidence: mean class probability x mean seed score: A 0.7 * (4 * 0.9 + 0.4) / 5; B 0.75 * (3 * 0.6 + 0.2) / 4
    return (x, params, kind, seed, fg, probs, 0.5), want, [5, 9], [0.7 * 0.8, 0.75 * 0.5]


@pytest.mark.parametrize("kind", KINDS)
def test_points_of_dropped_cells_join_the_best_eligible_mode(kind, dtype):
    args, want, classes, scores = dropped_cells_scene(kind, dtype)
    c = meanshift_cluster(*args, iterations=2, min_size=3, max_anchors=3)
    assert c.voxel_instance.tolist() == want
    assert c.classes.tolist() == classes and c.scores.tolist() == pytest.approx(scores, rel=1e-5)
    # one instance at most: the densest
    c = meanshift_cluster(*args, iterations=2, min_size=3, max_anchors=3, max_instances=1)
    assert c.voxel_instance.tolist() == [v if v == 0 else -1 for v in want]


def test_points_of_dropped_cells_stay_out_when_no_mode_is_eligible():
    # A (3 points at 0) and B (2 at 5) kept, two single points near B dropped; min_size 4: neither A (3) nor
    # B (2) may take them, and neither reaches min_size alone
    x = column([0.0, 0.0, 0.0, 5.0, 5.0, 5.5, 4.5])
    c = meanshift_cluster(x, torch.zeros_like(x), "margin", torch.full((7,), 0.5), torch.ones(7, dtype=torch.bool),
                          one_hot_probs([4] * 7), 0.5, iterations=0, min_size=4, max_anchors=2)
    assert c.num_instances == 0 and c.voxel_instance.tolist() == [-1] * 7
    assert c.classes.dtype == torch.long and c.scores.dtype == torch.float32


def test_a_point_of_a_kept_cell_must_pass_tau_against_its_mode():
    # margin: cell S, 3 points at 0 with s~ = 0; cell B, 1 point at 0.9 with s~ = 0.3 (exp(10 s~) = e^3).
    # Densities: S 3 + e^(-0.81 e^3) = 3.0, B 1 + 3 e^-0.81 = 2.33: S is visited first and takes B with its own
    # bandwidth, K = e^-0.81 = 0.445 >= tau 0.4. The mode's centre is (3 * 0 + 0.9) / 4 = 0.225 and its s~
    # (3 * 0 + 0.3) / 4 = 0.075: against it, B has K = exp(-0.675^2 e^0.75) = 0.381 < 0.4 and stays out, the
    # points of S have exp(-0.225^2 e^0.75) = 0.898.
    x = column([0.0, 0.9, 0.0, 0.0])
    s = column([0.0, 0.3, 0.0, 0.0])
    args = (x, s, "margin", torch.full((4,), 0.5), torch.ones(4, dtype=torch.bool), one_hot_probs([4] * 4))
    c = meanshift_cluster(*args, 0.4, iterations=0, min_size=1)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [0, -1, 0, 0]
    # tau = 0 takes every point (and has no logarithm)
    c = meanshift_cluster(*args, 0.0, iterations=0, min_size=1)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [0, 0, 0, 0]


def test_a_point_with_a_much_narrower_sigma_than_its_mode_stays_out(dtype):
    # Bhattacharyya: 4 points at 0 in one cell, sigmas 0.35, 0.35, 0.35, 0.035: the mode's sigma^2 is the mean
    # variance 0.09218; kappa of the narrow point with it is sqrt(2 * 0.035 * 0.3036 / (0.035^2 + 0.09218))
    # = 0.477, of the others 0.9949
    x = column([0.0, 0.0, 0.0, 0.0], dtype)
    ls = torch.log(torch.tensor([[0.35], [0.035], [0.35], [0.35]], dtype=dtype))
    args = (x, ls, "bhattacharyya", torch.full((4,), 0.5, dtype=dtype), torch.ones(4, dtype=torch.bool),
            one_hot_probs([4] * 4, dtype))
    assert meanshift_cluster(*args, 0.5, min_size=1).voxel_instance.tolist() == [0, -1, 0, 0]
    assert meanshift_cluster(*args, 0.47, min_size=1).voxel_instance.tolist() == [0, 0, 0, 0]


def test_the_first_anchor_is_judged_against_its_own_mode():
    # margin, single-point cells (three narrow far points shrink the median kernel length, hence the cell, to
    # 0.079). a0 (0.5, s~ 0) is anchor 0 (equal counts: lowest cell first); S (1.0, s~ 0.15) and M (1.2,
    # s~ -0.25). Densities: S 2.78, M 2.45, a0 2.29. S takes M (exp(-0.04 e^1.5) = 0.84) but not a0
    # (exp(-0.25 e^1.5) = 0.33 < tau 0.5): modes {S, M} (centre 1.1, s~ -0.05) and {a0}. a0 passes against its
    # own mode, which stays under min_size 2; that a0 would pass against {S, M} (exp(-0.36 e^-0.5) = 0.80) does
    # not matter: only points of dropped cells go to the best eligible mode
    x = column([0.5, 1.0, 1.2, 10.0, 20.0, 30.0])
    s = column([0.0, 0.15, -0.25, 0.3, 0.3, 0.3])
    c = meanshift_cluster(x, s, "margin", torch.full((6,), 0.5), torch.ones(6, dtype=torch.bool),
                          one_hot_probs([4] * 6), 0.5, iterations=0, min_size=2)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [-1, 0, 0, -1, -1, -1]


def test_identical_points_pass_tau_one():
    # K = 1 exactly between identical points (margin): tau = 1 keeps them together
    x = column([2.0, 2.0, 2.0])
    c = meanshift_cluster(x, torch.zeros_like(x), "margin", torch.full((3,), 0.5), torch.ones(3, dtype=torch.bool),
                          one_hot_probs([4] * 3), 1.0, min_size=1)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [0, 0, 0]


def test_defaults_keep_instances_of_ten_voxels_and_at_most_500():
    # 501 blobs of 10 identical points, 10 apart (K = e^-100 between blobs): 501 instances of exactly min_size
    # voxels; the equal densities visit them in cell order, and the 501st is cut by max_instances
    n = 501
    x = column([10.0 * (i // 10) for i in range(10 * n)])
    c = meanshift_cluster(x, torch.zeros_like(x), "margin", torch.full((10 * n,), 0.5),
                          torch.ones(10 * n, dtype=torch.bool), one_hot_probs([4] * (10 * n)), 0.5)
    assert c.num_instances == 500
    assert c.voxel_instance.tolist() == [i // 10 for i in range(10 * (n - 1))] + [-1] * 10


def test_meanshift_cluster_keeps_2048_anchors_by_default():
    # 2049 single-point cells, each its own mode: the point of the highest cell is dropped and, with no mode
    # within reach, stays out
    n = 2049
    x = column([10.0 * i for i in range(n)])
    c = meanshift_cluster(x, torch.zeros_like(x), "margin", torch.full((n,), 0.5), torch.ones(n, dtype=torch.bool),
                          one_hot_probs([4] * n), 0.5, iterations=0, min_size=1, max_instances=5000)
    assert c.num_instances == 2048 and c.voxel_instance.tolist() == list(range(2048)) + [-1]


# ------------------------------------------------------------------------------------ devices and dtypes


def test_no_foreground_results_have_their_dtypes(dtype):
    x = column([0.0, 1.0], dtype)
    c = meanshift_cluster(x, torch.zeros_like(x), "margin", torch.full((2,), 0.5, dtype=dtype),
                          torch.zeros(2, dtype=torch.bool), one_hot_probs([4, 4], dtype), 0.5, min_size=1)
    assert c.voxel_instance.tolist() == [-1, -1] and c.voxel_instance.dtype == torch.long
    assert c.classes.shape == c.scores.shape == (0,)
    assert c.classes.dtype == torch.long and c.scores.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_everything_is_made_on_the_inputs_device_and_dtype(kind):
    """float64 CPU inputs under PyTorch's meta default device and the float32 default dtype: a tensor made
    without the inputs' device lands on meta (and fails against the CPU inputs or comes back there), one made
    without their dtype is float32 (and fails in index_add_ against float64)."""
    assert torch.get_default_dtype() == torch.float32
    args, want, classes, scores = dropped_cells_scene(kind, torch.float64)
    x = column([0.0, 0.0, 0.0, 5.0, 5.0, 5.5, 4.5], torch.float64)
    empty_args = (x, torch.zeros_like(x), "margin", torch.full((7,), 0.5, dtype=torch.float64),
                  torch.ones(7, dtype=torch.bool), one_hot_probs([4] * 7, torch.float64), 0.5)
    none = torch.zeros(0, 1, dtype=torch.float64)
    with torch.device("meta"):
        c = meanshift_cluster(*args, iterations=2, min_size=3, max_anchors=3)
        no_fg = meanshift_cluster(*args[:4], torch.zeros(len(want), dtype=torch.bool, device="cpu"), *args[5:])
        too_small = meanshift_cluster(*empty_args, iterations=0, min_size=4, max_anchors=2)
        gbms_none = gaussian_blurring_mean_shift(none, none, kind)
        assigned_none = assign_to_modes(kind, x, torch.zeros_like(x), none, none, 0.5)
        blurred_none = blur_step(kind, none, none, x, torch.zeros_like(x), torch.zeros(7, dtype=torch.float64,
                                                                                         device="cpu"))
    assert c.voxel_instance.tolist() == want and c.classes.tolist() == classes
    assert c.scores.tolist() == pytest.approx(scores, rel=1e-7)  # float32 scores
    for r in (c, no_fg, too_small):
        assert r.voxel_instance.device.type == r.classes.device.type == r.scores.device.type == "cpu"
        assert r.voxel_instance.dtype == r.classes.dtype == torch.long and r.scores.dtype == torch.float32
    assert no_fg.num_instances == too_small.num_instances == 0 and no_fg.scores.shape == (0,)
    assert all(t.device.type == "cpu" for t in gbms_none) and gbms_none[1].dtype == torch.long
    assert gbms_none[4].dtype == torch.float64 and gbms_none[4].shape == gbms_none[1].shape == (0,)
    assert assigned_none.device.type == "cpu" and assigned_none.tolist() == [-1] * 7
    assert blurred_none.device.type == "cpu" and blurred_none.shape == (0, 1)
