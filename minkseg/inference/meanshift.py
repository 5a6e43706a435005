"""Mean-shift grouping of per-voxel embeddings: Gaussian blurring mean shift (GBMS), an
alternative to greedy seeds (recurrent pixel embedding, Kong & Fowlkes, Sec. 4.1, Eq. 3).

GBMS (Eq. 3 with eta = 1): with the kernel matrix K between the current embeddings X and
the degree matrix D = diag(K^T 1), every iteration replaces the embeddings by their
kernel-weighted means, X <- X K D^-1, and then *recomputes* K on the moved points (the
"blurring": the density estimate follows the data). Clusters contract to their modes in a
few iterations (cubic convergence for compact clusters, Carreira-Perpinan 2006), so no seed
score and no seed threshold decide how many instances there are.

Affinity: each head's own kernel, so that the bandwidth means what training made it mean.

* probabilistic head: the Bhattacharyya kernel kappa(e_i, e_j) of Eq. (1) of the
  probabilistic-embedding paper (:func:`minkseg.losses.kernels.log_bhattacharyya_kernel`).
  Only the means mu are blurred; each point keeps its own sigma. A sigma is a voxel's
  uncertainty, not a position: blurring it would shrink the sigma of a boundary voxel
  towards its neighbours' and make it look certain. Members of a mode are then judged by
  kappa against the mode's distribution c_k (Eq. 3: mean of the means, mean of the
  variances), exactly the quantity the instance loss (Eq. 4) trains to be near 1.
* margin head: Neven's Gaussian phi_j(e_i) = exp(-sum_d (e_i^d - e_j^d)^2 exp(10 s~_j^d)),
  each point j acting as a centre with its own predicted bandwidth (a variable-bandwidth,
  "sample point" kernel density estimate), i.e. :func:`minkseg.losses.margin.margin_gaussian`.

``bandwidth`` h scales the kernel's length: the Bhattacharyya kernel with sigma -> h sigma
(log sigma + ln h; beta is unchanged since both sigmas scale), the margin kernel with
exp(10 s~) -> exp(10 s~) / h^2. h = 1 is the kernel the head was trained with; in 1-D and
for equal parameters the Bhattacharyya kernel is a Gaussian of standard deviation 2 h sigma
and the margin kernel one of 1 / (h sqrt(2 exp(10 s~))).

Scaling to 100k+ foreground voxels: the N x N affinity is never formed (binned GBMS). The
embeddings are binned on a grid of cell ``l / 2`` (l: the median kernel length above); each of
the ``max_anchors`` most populated cells becomes an anchor at its points' mean, weighted by
its point count. The anchors take the GBMS steps among themselves,

    a <- sum_b w_b K(a, b) b / sum_b w_b K(a, b)      (Eq. 3, D the weighted degree),

A x A work per step in row chunks of bounded size, on the device of the inputs, and every
point follows its cell's anchor (points closer than half a kernel length move together).
With one point per cell this is exactly GBMS. Points of the dropped, sparsely populated
cells (scattered boundary voxels) do not move; they join the best mode that holds at least
``min_size`` anchor weight if their kernel with it passes ``tau``. The normalised weights are
a softmax of log K + log w (log-sum-exp stable; K(a, a) = 1 keeps every row's sum positive).
Work: O(N) binning, O(A^2) per step, O(N) assignment.

Grouping after the iterations: the anchors are grouped by the greedy rule of
:func:`minkseg.inference.cluster.greedy_cluster` (visited in order of density, an anchor
joins a mode when the head's kernel with it is >= ``tau``, the threshold the head uses for
greedy members); a mode's centre is its anchors' weighted mean and its kernel parameters the
head's instance parameters (probabilistic: Eq. 3 mean of variances; margin: Neven's mean of
s~). A voxel joins its anchor's mode if the kernel between its blurred embedding (with its own
sigma / s~) and the mode is >= ``tau``, otherwise it stays unassigned. Instances under
``min_size`` voxels are dropped.

Class and confidence: as greedy clustering, the class is the arg-max of the mean
instance-class probability over the instance, but the confidence is that probability times
the *mean* seed score over the instance's voxels, as there is no single seed voxel.
"""

from __future__ import annotations

import math

import torch

from minkseg.inference.cluster import KERNEL_CHUNK_ELEMENTS, Clusters, foreground_mask, greedy_cluster
from minkseg.losses.kernels import log_sigma_bound
from minkseg.losses.margin import SIGMA_SCALE
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID

KERNELS = ("bhattacharyya", "margin")


def log_kernel(kind: str, x: torch.Tensor, px: torch.Tensor, c: torch.Tensor, pc: torch.Tensor) -> torch.Tensor:
    """log K(x, c) for broadcastable (..., D) embeddings and kernel parameters; shape (...). Inference only.

    ``bhattacharyya``: log kappa of Eq. (1) (:func:`minkseg.losses.kernels.log_bhattacharyya_kernel`)
    with log sigmas ``px``, ``pc``, rearranged so that the per-pair work is one sum, one log and
    one division per axis (with v = sigma^2 and s = v_x + v_c):
    log kappa = sum_d [ -1/2 log(4 s) - (x - c)^2 / (4 s) + (log sigma_x + log sigma_c) / 2 + 3/2 log 2 ].
    log sigma is bounded as the training kernel bounds it. ``margin``: log of Neven's
    phi_c(x) = -sum_d (x^d - c^d)^2 exp(10 s~_c^d), the centre's bandwidth only (``px`` unused),
    10 s~ bounded as in :func:`minkseg.losses.margin.margin_gaussian`. Both are taken in log
    space so that far pairs do not underflow to -inf; the tests check them against the heads' kernels.
    """
    if kind == "bhattacharyya":
        bound = log_sigma_bound(x.dtype)
        px, pc = px.clamp(-bound, bound), pc.clamp(-bound, bound)
        d = x - c
        four_s = 4 * (torch.exp(2 * px) + torch.exp(2 * pc))  # broadcast to the pairs' shape
        d.mul_(d).div_(four_s).add_(four_s.log_().mul_(0.5))  # in place: one pair-sized temporary each
        const = 0.5 * (px.sum(-1) + pc.sum(-1)) + 1.5 * x.shape[-1] * math.log(2.0)
        return (const - d.sum(-1)).clamp_max(0.0)
    if kind == "margin":
        bound = math.log(torch.finfo(x.dtype).max) / 2
        d = x - c
        return -d.mul_(d).mul_(torch.exp((SIGMA_SCALE * pc).clamp(-bound, bound))).sum(-1)
    raise ValueError(f"unknown mean-shift kernel {kind!r}; choose one of {KERNELS}")


def scale_bandwidth(kind: str, params: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Kernel parameters whose kernel length is ``bandwidth`` times the head's (module docstring)."""
    if not bandwidth > 0:
        raise ValueError(f"mean-shift bandwidth must be > 0, got {bandwidth}")
    if kind == "bhattacharyya":
        return params + math.log(bandwidth)  # sigma -> h sigma
    return params - 2 * math.log(bandwidth) / SIGMA_SCALE  # exp(10 s~) -> exp(10 s~) / h^2


def kernel_length(kind: str, params: torch.Tensor) -> torch.Tensor:
    """(N,) standard deviation of each point's kernel seen as a 1-D Gaussian (geometric mean over axes).

    Bhattacharyya with equal sigmas: exp(-d^2 / (8 sigma^2)), i.e. 2 sigma; margin:
    exp(-d^2 exp(10 s~)), i.e. exp(-5 s~) / sqrt(2).
    """
    if kind == "bhattacharyya":
        return 2 * params.mean(1).exp()
    return (-0.5 * SIGMA_SCALE * params.mean(1)).exp() / math.sqrt(2)


def combine_params(kind: str, params: torch.Tensor, group: torch.Tensor, weight: torch.Tensor, k: int
                   ) -> torch.Tensor:
    """Kernel parameters of ``k`` groups from their members' (weighted by ``weight``, e.g. counts).

    Bhattacharyya: the log sigma of the weighted mean variance (Eq. 3); margin: the weighted
    mean of s~ (Neven's instance bandwidth). Every group must have a member.
    """
    w = weight.to(params.dtype)[:, None]
    total = torch.zeros(k, 1, dtype=params.dtype, device=params.device).index_add_(0, group, w)
    if kind == "bhattacharyya":
        # log sum w exp(2 ls) stabilised by each group's maximum, whose own term is w exp(0) = w > 0
        two_ls = 2 * params
        peak = torch.full((k, params.shape[1]), -torch.inf, dtype=params.dtype, device=params.device)
        peak = peak.scatter_reduce(0, group[:, None].expand_as(two_ls), two_ls, "amax")
        var = torch.zeros_like(peak).index_add_(0, group, w * torch.exp(two_ls - peak[group]))
        return 0.5 * (torch.log(var / total) + peak)
    return torch.zeros(k, params.shape[1], dtype=params.dtype, device=params.device).index_add_(
        0, group, w * params) / total


def bin_anchors(points: torch.Tensor, params: torch.Tensor, kind: str, cell: float, max_anchors: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted anchors of the module docstring: (positions (A, D), parameters (A, P), weights (A,),
    anchor of every point (N,), -1 where its cell is not among the ``max_anchors`` most populated)."""
    if max_anchors < 1:
        raise ValueError(f"max_anchors must be >= 1, got {max_anchors}")
    if not (cell > 0 and math.isfinite(cell)):
        cell = 1.0
    cells = torch.floor((points - points.amin(0)) / cell).to(torch.int64)
    _, point_cell, counts = torch.unique(cells, dim=0, return_inverse=True, return_counts=True)
    # the most populated cells first; stable, so equal counts keep the lower cell (deterministic)
    kept = torch.sort(counts, descending=True, stable=True).indices[:max_anchors]
    anchor_of_cell = torch.full((len(counts),), -1, dtype=torch.long, device=points.device)
    anchor_of_cell[kept] = torch.arange(len(kept), device=points.device)
    point_anchor = anchor_of_cell[point_cell]
    inside = point_anchor >= 0
    a, members = len(kept), point_anchor[inside]
    weight = counts[kept].to(points.dtype)
    pos = torch.zeros(a, points.shape[1], dtype=points.dtype, device=points.device).index_add_(
        0, members, points[inside]) / weight[:, None]
    ones = torch.ones(len(members), dtype=points.dtype, device=points.device)
    return pos, combine_params(kind, params[inside], members, ones, a), weight, point_anchor


def blur_step(kind: str, x: torch.Tensor, px: torch.Tensor, anchors: torch.Tensor, pa: torch.Tensor,
              log_weight: torch.Tensor, chunk_elements: int = KERNEL_CHUNK_ELEMENTS) -> torch.Tensor:
    """One mean-shift step of ``x`` against weighted anchors: x_i <- sum_a w_a K(x_i, a) a / sum_a w_a K(x_i, a)
    (Eq. 3 of the seed paper with eta = 1, D the weighted degree), in row chunks of ~``chunk_elements`` pairs."""
    rows = max(1, chunk_elements // max(1, len(anchors)))
    out = []
    for s in range(0, len(x), rows):
        logk = log_kernel(kind, x[s:s + rows, None], px[s:s + rows, None], anchors[None], pa[None])
        out.append(torch.softmax(logk + log_weight, dim=1) @ anchors)
    return torch.cat(out) if out else x.clone()


def gaussian_blurring_mean_shift(points: torch.Tensor, params: torch.Tensor, kind: str, iterations: int = 5,
                                 max_anchors: int = 2048, cell_fraction: float = 0.5,
                                 chunk_elements: int = KERNEL_CHUNK_ELEMENTS
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binned GBMS (module docstring): the anchors take ``iterations`` steps of Eq. 3 among
    themselves, and every point follows its cell's anchor.

    Returns the blurred points (N, D) (a point outside the kept cells stays where it is), the
    anchor of each point (N,) (-1 outside), and the final anchors: positions (A, D),
    parameters (A, P), weights (A,). ``params`` are each point's kernel parameters (log sigma,
    or s~ for ``margin``), already scaled by :func:`scale_bandwidth`; they are not blurred.
    The cell is ``cell_fraction`` times the median kernel length.
    """
    if len(points) == 0:
        none = torch.zeros(0, dtype=torch.long, device=points.device)
        return points.clone(), none, points.clone(), params.clone(), points.new_zeros(0)
    cell = cell_fraction * float(kernel_length(kind, params).median())
    anchors, pa, weight, point_anchor = bin_anchors(points, params, kind, cell, max_anchors)
    log_weight = weight.log()
    for _ in range(iterations):
        anchors = blur_step(kind, anchors, pa, anchors, pa, log_weight, chunk_elements)
    blurred = torch.where((point_anchor >= 0)[:, None], anchors[point_anchor.clamp_min(0)], points)
    return blurred, point_anchor, anchors, pa, weight


def group_modes(kind: str, anchors: torch.Tensor, pa: torch.Tensor, weight: torch.Tensor, tau: float,
                chunk_elements: int = KERNEL_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Modes of converged anchors: (mode of each anchor (A,), centres (K, D), parameters (K, P)), densest first.

    Anchors are visited in order of their density sum_b w_b K(a, b); each unclaimed one starts a
    mode that claims every unclaimed anchor whose kernel with it is >= ``tau``
    (:func:`greedy_cluster` with every anchor a seed candidate).
    """
    a = len(anchors)
    rows = max(1, chunk_elements // max(1, a))
    density = torch.cat([torch.logsumexp(log_kernel(kind, anchors[s:s + rows, None], pa[s:s + rows, None],
                                                    anchors[None], pa[None]) + weight.log(), dim=1)
                         for s in range(0, a, rows)])

    def kernel(seeds: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return log_kernel(kind, anchors[idx], pa[idx], anchors[seeds], pa[seeds]).exp()

    # greedy_cluster only needs instance-class columns for its class output, which is not used here
    dummy = anchors.new_zeros(a, FIRST_INSTANCE_TRAIN_ID + 1)
    ones = torch.ones(a, dtype=torch.bool, device=anchors.device)
    # large blocks and chunks: the same modes (greedy_cluster's guarantee) with far fewer Python steps when
    # most anchors are modes of their own (scattered voxels)
    grouped = greedy_cluster(density, ones, kernel, dummy, tau, seed_threshold=-math.inf, min_size=1,
                             max_instances=a, max_seeds=a, block_size=256, rows_per_chunk=64)
    mode = grouped.voxel_instance
    k = grouped.num_instances
    centres = torch.zeros(k, anchors.shape[1], dtype=anchors.dtype, device=anchors.device).index_add_(
        0, mode, weight[:, None] * anchors)
    mass = torch.zeros(k, dtype=anchors.dtype, device=anchors.device).index_add_(0, mode, weight)
    return mode, centres / mass[:, None], combine_params(kind, pa, mode, weight, k)


def assign_to_modes(kind: str, x: torch.Tensor, px: torch.Tensor, centres: torch.Tensor, pc: torch.Tensor,
                    tau: float, chunk_elements: int = KERNEL_CHUNK_ELEMENTS) -> torch.Tensor:
    """(N,) mode with the largest kernel K(x_i, centre) when it is >= ``tau``, else -1."""
    if len(centres) == 0:
        return torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    rows = max(1, chunk_elements // len(centres))
    out = []
    log_tau = math.log(tau) if tau > 0 else -math.inf
    for s in range(0, len(x), rows):
        best = log_kernel(kind, x[s:s + rows, None], px[s:s + rows, None], centres[None], pc[None]).max(1)
        out.append(torch.where(best.values >= log_tau, best.indices, -1))
    return torch.cat(out)


def meanshift_cluster(embedding: torch.Tensor, params: torch.Tensor, kind: str, seed_score: torch.Tensor,
                      foreground: torch.Tensor, semantic_probs: torch.Tensor, tau: float, bandwidth: float = 1.0,
                      iterations: int = 5, min_size: int = 10, max_instances: int = 500, max_anchors: int = 2048
                      ) -> Clusters:
    """GBMS grouping of the foreground voxels (module docstring) into :class:`Clusters`.

    ``embedding`` (M, D) and ``params`` (M, P) per voxel (log sigma for ``bhattacharyya``, s~
    for ``margin``), ``seed_score`` (M,) in [0, 1] (ranking only), ``semantic_probs`` (M, 20).
    Instances come densest mode first; at most ``max_instances`` are kept.
    """
    dev = embedding.device
    voxel_instance = torch.full((len(embedding),), -1, dtype=torch.long, device=dev)
    empty = Clusters(voxel_instance, torch.zeros(0, dtype=torch.long, device=dev),
                     torch.zeros(0, dtype=torch.float32, device=dev))
    cand = foreground.nonzero(as_tuple=True)[0]
    if len(cand) == 0:
        return empty
    p = scale_bandwidth(kind, params[cand], bandwidth)
    x, point_anchor, anchors, pa, weight = gaussian_blurring_mean_shift(embedding[cand], p, kind, iterations,
                                                                       max_anchors)
    anchor_mode, centres, pc = group_modes(kind, anchors, pa, weight, tau)
    # a point of a kept cell belongs to its anchor's mode if its own kernel with the mode passes tau
    inside = point_anchor >= 0
    mode = torch.full((len(cand),), -1, dtype=torch.long, device=dev)
    own = anchor_mode[point_anchor[inside]]
    passes = log_kernel(kind, x[inside], p[inside], centres[own], pc[own]) >= (math.log(tau) if tau > 0 else -math.inf)
    mode[inside] = torch.where(passes, own, -1)
    # a point of a dropped (sparsely populated) cell joins the best mode that can become an instance
    outside = (~inside).nonzero(as_tuple=True)[0]
    mass = torch.zeros(len(centres), dtype=weight.dtype, device=dev).index_add_(0, anchor_mode, weight)
    eligible = (mass >= min_size).nonzero(as_tuple=True)[0]
    if len(outside) and len(eligible):
        best = assign_to_modes(kind, x[outside], p[outside], centres[eligible], pc[eligible], tau)
        mode[outside] = torch.where(best >= 0, eligible[best.clamp_min(0)], -1)
    sizes = torch.bincount(mode[mode >= 0], minlength=len(centres))
    kept = (sizes >= max(1, min_size)).nonzero(as_tuple=True)[0][:max_instances]
    if len(kept) == 0:
        return empty
    new_id = torch.full((len(centres) + 1,), -1, dtype=torch.long, device=dev)  # last slot: unassigned
    new_id[kept] = torch.arange(len(kept), device=dev)
    inst = new_id[torch.where(mode >= 0, mode, len(centres))]
    voxel_instance[cand] = inst
    member = inst >= 0
    k = len(kept)
    count = sizes[kept].to(semantic_probs.dtype)[:, None]
    probs = semantic_probs[cand[member], FIRST_INSTANCE_TRAIN_ID:]
    mean_probs = torch.zeros(k, probs.shape[1], dtype=probs.dtype, device=dev).index_add_(
        0, inst[member], probs) / count
    mean_seed = torch.zeros(k, dtype=seed_score.dtype, device=dev).index_add_(
        0, inst[member], seed_score[cand[member]]) / count[:, 0].to(seed_score.dtype)
    best = mean_probs.argmax(1)
    confidence = mean_probs.gather(1, best[:, None])[:, 0] * mean_seed
    return Clusters(voxel_instance, best + FIRST_INSTANCE_TRAIN_ID, confidence.to(torch.float32))


@torch.no_grad()
def meanshift_probabilistic(mu: torch.Tensor, log_sigma: torch.Tensor, score_logits: torch.Tensor,
                            semantic_logits: torch.Tensor, tau: float = 0.35, bandwidth: float = 1.0,
                            iterations: int = 5, min_size: int = 10, max_instances: int = 500,
                            max_anchors: int = 2048) -> Clusters:
    """GBMS with the Bhattacharyya kernel (means blurred, sigmas kept); seed score = max centre probability."""
    probs = torch.softmax(semantic_logits, 1)
    seed = torch.softmax(score_logits, 1)[:, :-1].max(1).values
    return meanshift_cluster(mu, log_sigma, "bhattacharyya", seed, foreground_mask(probs), probs, tau, bandwidth,
                             iterations, min_size, max_instances, max_anchors)


@torch.no_grad()
def meanshift_margin(embedding: torch.Tensor, sigma_logit: torch.Tensor, seed_logits: torch.Tensor,
                     semantic_logits: torch.Tensor, tau: float = 0.5, bandwidth: float = 1.0, iterations: int = 5,
                     min_size: int = 10, max_instances: int = 500, max_anchors: int = 2048) -> Clusters:
    """GBMS with Neven's Gaussian (each point a centre with its own bandwidth); seed score = max seed map."""
    probs = torch.softmax(semantic_logits, 1)
    seed = torch.sigmoid(seed_logits).max(1).values
    return meanshift_cluster(embedding, sigma_logit, "margin", seed, foreground_mask(probs), probs, tau, bandwidth,
                             iterations, min_size, max_instances, max_anchors)
