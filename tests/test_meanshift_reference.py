"""Mean-shift grouping against a plain-loop transcription of the rules of its module docstring.

The transcription works point by point in float64 numpy with the kernels written from the
papers (Bhattacharyya kernel of Eq. (1) of the probabilistic-embedding paper, Neven's Gaussian),
the binning, the weighted GBMS steps (Eq. 3 of the recurrent pixel embedding paper with eta = 1),
the greedy grouping of the anchors, the per-point tau test and the joining of points of dropped
cells. Random small scenes (hypothesis) then cover the combinations of kept and dropped cells,
failed tau tests, modes under ``min_size`` and the ``max_instances`` cut that hand scenes
cannot enumerate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minkseg.inference.meanshift import meanshift_cluster

FIRST_INSTANCE_COLUMN = 2  # training ids 0, 1: wall, floor; the 18 instance classes follow


def reference_log_kernel(kind: str, x: np.ndarray, px: np.ndarray, c: np.ndarray, pc: np.ndarray) -> float:
    """log K(x, c): Bhattacharyya kappa = prod_d sqrt(2 s_x s_c / (s_x^2 + s_c^2)) exp(-(x - c)^2 / (4 (s_x^2 + s_c^2)))
    with log sigmas px, pc; margin: -sum_d (x - c)^2 exp(10 pc) (the centre's bandwidth only)."""
    if kind == "bhattacharyya":
        sx, sc = np.exp(px), np.exp(pc)
        s = sx**2 + sc**2
        return float(np.sum(0.5 * np.log(2 * sx * sc / s) - (x - c) ** 2 / (4 * s)))
    return float(-np.sum((x - c) ** 2 * np.exp(10 * pc)))


def reference_instance_params(kind: str, params: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bhattacharyya: log sigma of the weighted mean variance (Eq. 3); margin: the weighted mean of s~."""
    if kind == "bhattacharyya":
        return 0.5 * np.log((weights[:, None] * np.exp(2 * params)).sum(0) / weights.sum())
    return (weights[:, None] * params).sum(0) / weights.sum()


@dataclass
class ReferenceClusters:
    voxel_instance: list[int]
    classes: list[int]
    scores: list[float]
    # two anchors of (nearly) equal density: their visiting order is decided by rounding (e.g. two single
    # points with the symmetric Bhattacharyya kernel), so the expected grouping is not determined
    ambiguous_order: bool = False


def reference_meanshift(emb: np.ndarray, params: np.ndarray, kind: str, seed: np.ndarray, fg: np.ndarray,
                        probs: np.ndarray, tau: float, bandwidth: float, iterations: int, min_size: int,
                        max_instances: int, max_anchors: int) -> ReferenceClusters:
    voxel_instance = [-1] * len(emb)
    cand = [i for i in range(len(emb)) if fg[i]]
    if not cand:
        return ReferenceClusters(voxel_instance, [], [])
    x = emb[cand]
    n = len(cand)
    # bandwidth h: sigma -> h sigma, or exp(10 s~) -> exp(10 s~) / h^2
    p = params[cand] + (math.log(bandwidth) if kind == "bhattacharyya" else -2 * math.log(bandwidth) / 10)
    # kernel length: 2 sigma, or exp(-5 s~) / sqrt(2), of the geometric-mean parameter; the lower median
    length = [2 * math.exp(p[i].mean()) if kind == "bhattacharyya" else math.exp(-5 * p[i].mean()) / math.sqrt(2)
              for i in range(n)]
    cell = 0.5 * sorted(length)[(n - 1) // 2]
    lowest = x.min(0)
    key = [tuple(int(v) for v in np.floor((x[i] - lowest) / cell)) for i in range(n)]
    members = {k: [i for i in range(n) if key[i] == k] for k in sorted(set(key))}
    # most populated first; Python's sort is stable, so equal counts keep the lexicographic cell order
    kept_cells = sorted(members, key=lambda k: -len(members[k]))[:max_anchors]
    anchor_of = [-1] * n
    for a, k in enumerate(kept_cells):
        for i in members[k]:
            anchor_of[i] = a
    pos = [x[members[k]].mean(0) for k in kept_cells]
    weight = np.array([float(len(members[k])) for k in kept_cells])
    pa = [reference_instance_params(kind, p[members[k]], np.ones(len(members[k]))) for k in kept_cells]
    num_anchors = len(kept_cells)

    def log_k(xa: np.ndarray, pxa: np.ndarray, b: int) -> float:
        return reference_log_kernel(kind, xa, pxa, pos[b], pa[b])

    for _ in range(iterations):  # every anchor moves to its weighted kernel mean, all at once
        new_pos = []
        for a in range(num_anchors):
            logw = np.array([log_k(pos[a], pa[a], b) + math.log(weight[b]) for b in range(num_anchors)])
            w = np.exp(logw - logw.max())
            new_pos.append(sum(w[b] * pos[b] for b in range(num_anchors)) / w.sum())
        pos = new_pos
    density = [sum(weight[b] * math.exp(log_k(pos[a], pa[a], b)) for b in range(num_anchors))
               for a in range(num_anchors)]
    ranked = sorted(density)
    ambiguous = any(hi - lo <= 1e-9 * hi for lo, hi in zip(ranked, ranked[1:]))
    # greedy: the densest unclaimed anchor claims every unclaimed anchor whose kernel with it is >= tau
    mode = [-1] * num_anchors
    num_modes = 0
    for s in sorted(range(num_anchors), key=lambda a: -density[a]):
        if mode[s] >= 0:
            continue
        for j in range(num_anchors):
            if mode[j] < 0 and math.exp(log_k(pos[j], pa[j], s)) >= tau:
                mode[j] = num_modes
        num_modes += 1
    centre, pc, mass = [], [], []
    for k in range(num_modes):
        ids = [a for a in range(num_anchors) if mode[a] == k]
        w = weight[ids]
        centre.append(sum(w[t] * pos[a] for t, a in enumerate(ids)) / w.sum())
        pc.append(reference_instance_params(kind, np.stack([pa[a] for a in ids]), w))
        mass.append(w.sum())
    log_tau = math.log(tau) if tau > 0 else -math.inf
    point_mode = [-1] * n
    for i in range(n):
        if anchor_of[i] >= 0:  # follows its anchor, and must pass tau against its anchor's mode
            k = mode[anchor_of[i]]
            if reference_log_kernel(kind, pos[anchor_of[i]], p[i], centre[k], pc[k]) >= log_tau:
                point_mode[i] = k
        else:  # stays where it is and joins the best mode of at least min_size anchor weight
            eligible = [k for k in range(num_modes) if mass[k] >= min_size]
            if eligible:
                logs = [reference_log_kernel(kind, x[i], p[i], centre[k], pc[k]) for k in eligible]
                best = int(np.argmax(logs))
                if logs[best] >= log_tau:
                    point_mode[i] = eligible[best]
    sizes = [point_mode.count(k) for k in range(num_modes)]
    kept_modes = [k for k in range(num_modes) if sizes[k] >= max(1, min_size)][:max_instances]
    classes, scores = [], []
    for new_id, k in enumerate(kept_modes):
        ids = [cand[i] for i in range(n) if point_mode[i] == k]
        for v in ids:
            voxel_instance[v] = new_id
        mean_probs = probs[ids, FIRST_INSTANCE_COLUMN:].mean(0)
        best_class = int(np.argmax(mean_probs))
        classes.append(best_class + FIRST_INSTANCE_COLUMN)
        scores.append(float(mean_probs[best_class] * seed[ids].mean()))
    return ReferenceClusters(voxel_instance, classes, scores, ambiguous)


def random_scene(rng: np.random.Generator, kind: str, n: int, dims: int, blobs: int):
    centres = rng.uniform(0.0, 2.5, size=(blobs, dims))
    spread = rng.uniform(0.02, 0.4)
    emb = centres[rng.integers(0, blobs, size=n)] + spread * rng.standard_normal((n, dims))
    if kind == "bhattacharyya":  # sigmas 0.1 .. 0.5: kernel lengths 0.2 .. 1
        params = np.log(rng.uniform(0.1, 0.5, size=(n, dims)))
    else:  # s~ -0.1 .. 0.2: kernel lengths 0.26 .. 1.17
        params = rng.uniform(-0.1, 0.2, size=(n, dims))
    seed = rng.uniform(0.0, 1.0, size=n)
    fg = rng.uniform(size=n) < 0.85
    logits = 2.0 * rng.standard_normal((n, 20))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return emb, params, seed, fg, probs


@settings(max_examples=80, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["bhattacharyya", "margin"]), n=st.integers(1, 14), dims=st.integers(1, 3),
       blobs=st.integers(1, 3), iterations=st.integers(0, 3), tau=st.floats(0.05, 0.95),
       bandwidth=st.floats(0.5, 2.0), min_size=st.integers(1, 4), max_instances=st.integers(1, 4),
       max_anchors=st.integers(1, 15), seed=st.integers(0, 2**32 - 1))
def test_meanshift_cluster_matches_a_plain_loop_transcription(kind, n, dims, blobs, iterations, tau, bandwidth,
                                                              min_size, max_instances, max_anchors, seed):
    rng = np.random.default_rng(seed)
    emb, params, seed_score, fg, probs = random_scene(rng, kind, n, dims, blobs)
    want = reference_meanshift(emb, params, kind, seed_score, fg, probs, tau, bandwidth, iterations, min_size,
                               max_instances, max_anchors)
    assume(not want.ambiguous_order)
    t = torch.from_numpy
    got = meanshift_cluster(t(emb), t(params), kind, t(seed_score), t(fg), t(probs), tau, bandwidth=bandwidth,
                            iterations=iterations, min_size=min_size, max_instances=max_instances,
                            max_anchors=max_anchors)
    assert got.voxel_instance.tolist() == want.voxel_instance
    assert got.classes.tolist() == want.classes
    assert got.scores.dtype == torch.float32
    np.testing.assert_allclose(got.scores.numpy(), np.array(want.scores, np.float32), rtol=1e-6)
