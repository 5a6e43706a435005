"""Gaussian blurring mean shift (seed paper Sec. 4.1, Eq. 3) with both heads' kernels."""

import math

import pytest
import torch

from minkseg.config import ClusterConfig
from minkseg.inference.meanshift import (
    assign_to_modes,
    bin_anchors,
    blur_step,
    combine_params,
    gaussian_blurring_mean_shift,
    kernel_length,
    log_kernel,
    meanshift_cluster,
    meanshift_margin,
    meanshift_probabilistic,
    scale_bandwidth,
)
from minkseg.inference.predict import cluster_output
from minkseg.losses.kernels import bhattacharyya_kernel
from minkseg.losses.margin import margin_gaussian
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput
from tests.test_cluster import planted_scene, same_partition

# the kernel parameters of each kind that give a 1-D kernel length of 0.2 (see kernel_length)
PARAMS_FOR_LENGTH_02 = {"bhattacharyya": math.log(0.1), "margin": -2 * math.log(0.2 * math.sqrt(2)) / 10}


def mixture(dtype, seed=0, n_per=150, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 2.0, 0.5], [3.0, 3.0, 1.0]], dtype=dtype)
    label = torch.arange(len(centres)).repeat_interleave(n_per)
    x = centres[label] + spread * torch.randn(len(label), 3, generator=g, dtype=torch.float64).to(dtype)
    return x, label, centres


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_log_kernel_is_the_log_of_the_heads_kernel(kind, dtype):
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(40, 3, generator=g).to(dtype), torch.randn(40, 3, generator=g).to(dtype)
    px, pc = 0.3 * torch.randn(40, 3, generator=g).to(dtype), 0.3 * torch.randn(40, 3, generator=g).to(dtype)
    want = bhattacharyya_kernel(x, px, c, pc) if kind == "bhattacharyya" else margin_gaussian(x, c, pc)
    torch.testing.assert_close(log_kernel(kind, x, px, c, pc).exp(), want)
    # far apart: the log stays finite where the kernel itself underflows to 0
    far = log_kernel(kind, x * 1e4, px, c, pc)
    assert torch.isfinite(far).all() and (far < -1e3).all()


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_bandwidth_scales_the_kernel_length(kind, dtype):
    p = torch.full((5, 3), PARAMS_FOR_LENGTH_02[kind], dtype=dtype)
    torch.testing.assert_close(kernel_length(kind, p), torch.full((5,), 0.2, dtype=dtype))
    torch.testing.assert_close(kernel_length(kind, scale_bandwidth(kind, p, 2.5)), torch.full((5,), 0.5, dtype=dtype))
    # kernel length l means K = exp(-d^2 / (2 l^2)) along one axis for equal parameters
    x, c = torch.zeros(1, 3, dtype=dtype), torch.tensor([[0.2, 0.0, 0.0]], dtype=dtype)
    torch.testing.assert_close(log_kernel(kind, x, p[:1], c, p[:1]), torch.tensor([-0.5], dtype=dtype))
    with pytest.raises(ValueError, match="bandwidth"):
        scale_bandwidth(kind, p, 0.0)


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_blur_step_is_the_weighted_mean_of_eq3(kind, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, generator=g).to(dtype)
    px = (0.2 * torch.randn(30, 3, generator=g) - 0.5).to(dtype)
    a, pa = x[:12], px[:12]
    w = torch.arange(1, 13).to(dtype)
    # Eq. 3 written out: X K D^-1 with K[a, i] = w_a kernel(x_i, a)
    if kind == "bhattacharyya":
        k = bhattacharyya_kernel(x[:, None], px[:, None], a[None], pa[None])
    else:
        k = margin_gaussian(x[:, None], a[None], pa[None])
    k = k * w
    want = (k @ a) / k.sum(1, keepdim=True)
    got = blur_step(kind, x, px, a, pa, w.log(), chunk_elements=25)  # chunks of 2 rows
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_gbms_converges_to_the_modes_of_a_planted_mixture(kind, dtype):
    x, label, centres = mixture(dtype)
    p = torch.full_like(x, PARAMS_FOR_LENGTH_02[kind])
    blurred, point_anchor, anchors, _, weight = gaussian_blurring_mean_shift(x, p, kind, iterations=10)
    assert weight.sum() == len(x) and (point_anchor >= 0).all()
    for k in range(len(centres)):
        pts = blurred[label == k]
        # each cluster collapsed to one point (GBMS contracts it) ...
        assert (pts - pts.mean(0)).norm(dim=1).max() < 1e-3
        # ... at the mode of its Gaussian: its centre, up to the sample mean's error (0.05 / sqrt(150) per axis)
        assert (pts.mean(0) - centres[k]).norm() < 0.02
    # anchors collapsed onto the same modes
    nearest = torch.cdist(anchors.double(), centres.double()).min(1).values
    assert (nearest < 0.02).all()


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_one_point_per_cell_is_exact_gbms(kind, dtype):
    x, _, _ = mixture(dtype, seed=5, n_per=15, spread=0.3)
    p = torch.full_like(x, PARAMS_FOR_LENGTH_02[kind])
    blurred, point_anchor, *_ = gaussian_blurring_mean_shift(x, p, kind, iterations=3, cell_fraction=1e-6)
    assert len(point_anchor.unique()) == len(x)  # every point its own anchor
    want = x
    for _ in range(3):  # Eq. 3 with eta = 1 and K recomputed each step, written out
        if kind == "bhattacharyya":
            k = bhattacharyya_kernel(want[:, None], p[:, None], want[None], p[None])
        else:
            k = margin_gaussian(want[:, None], want[None], p[None])
        want = (k @ want) / k.sum(1, keepdim=True)
    torch.testing.assert_close(blurred, want)


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_sparse_cells_beyond_max_anchors_stay_put(kind, dtype):
    x, label, centres = mixture(dtype, seed=3)
    lone = torch.tensor([[10.0, 10.0, 10.0], [-10.0, 5.0, 0.0]], dtype=dtype)
    x = torch.cat([x, lone])
    p = torch.full_like(x, PARAMS_FOR_LENGTH_02[kind])
    blurred, point_anchor, anchors, _, weight = gaussian_blurring_mean_shift(x, p, kind, iterations=10,
                                                                            max_anchors=30)
    assert len(anchors) == 30 and (point_anchor[-2:] == -1).all()
    torch.testing.assert_close(blurred[-2:], lone)  # dropped: not moved
    assert weight.min() >= 2  # the kept cells are the most populated ones
    for k in range(len(centres)):  # every blob keeps cells, and its kept points reach its mode
        kept = (label == k) & (point_anchor[:-2] >= 0)
        assert kept.sum() > 50 and (blurred[:-2][kept] - centres[k]).norm(dim=1).max() < 0.05


def test_bin_anchors_preserve_count_and_mean(dtype):
    x, _, _ = mixture(dtype, seed=4)
    ls = torch.full_like(x, -2.0)
    for max_anchors in (1, 5, 50, 10_000):
        pos, pa, w, point_anchor = bin_anchors(x, ls, "bhattacharyya", 0.05, max_anchors)
        inside = point_anchor >= 0
        assert len(pos) <= max_anchors and w.sum() == inside.sum()
        assert torch.equal(torch.bincount(point_anchor[inside], minlength=len(pos)).to(dtype), w)
        torch.testing.assert_close((w[:, None] * pos).sum(0) / w.sum(), x[inside].mean(0))
        torch.testing.assert_close(pa, torch.full_like(pa, -2.0))
        assert (w[:-1] >= w[1:]).all()  # the most populated cells, in that order
    assert inside.all()  # 10_000 anchors: nothing dropped
    with pytest.raises(ValueError, match="max_anchors"):
        bin_anchors(x, ls, "bhattacharyya", 0.01, 0)


def test_combine_params_follow_each_heads_instance_rule(dtype):
    ls = torch.tensor([[0.0, -1.0, 2.0], [1.0, -3.0, 2.0], [-30.0, -30.0, -30.0]], dtype=dtype)
    group, weight = torch.tensor([0, 0, 1]), torch.tensor([1.0, 3.0, 2.0], dtype=dtype)
    # Eq. 3: log sigma of the weighted mean variance; a group of tiny sigmas stays finite and exact
    var = (1 * torch.exp(2 * ls[0]) + 3 * torch.exp(2 * ls[1])) / 4
    want = torch.stack([0.5 * var.log(), ls[2]])
    torch.testing.assert_close(combine_params("bhattacharyya", ls, group, weight, 2), want)
    # Neven: the mean of s~
    want = torch.stack([(ls[0] + 3 * ls[1]) / 4, ls[2]])
    torch.testing.assert_close(combine_params("margin", ls, group, weight, 2), want)


def planted_inputs(head):
    mu, truth, classes, sem = planted_scene(seed=0 if head == "probabilistic" else 1)
    fg = truth >= 0
    if head == "probabilistic":
        score = torch.full((len(mu), 19), -5.0)
        score[fg, classes[truth[fg]]] = 5.0
        return mu, torch.full_like(mu, math.log(0.05)), score, sem, truth, classes
    seed = torch.full((len(mu), 18), -5.0)
    seed[fg, classes[truth[fg]]] = 5.0
    return mu, torch.full_like(mu, 0.3), seed, sem, truth, classes


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
@pytest.mark.parametrize("max_anchors", [4096, 40])
def test_meanshift_recovers_planted_instances(head, max_anchors, dtype):
    emb, params, score, sem, truth, classes = (t.to(dtype) if t.is_floating_point() else t
                                               for t in planted_inputs(head))
    fn = meanshift_probabilistic if head == "probabilistic" else meanshift_margin
    c = fn(emb, params, score, sem, max_anchors=max_anchors)
    assert c.num_instances == 6 and same_partition(c.voxel_instance, truth)
    assert (c.voxel_instance[truth < 0] == -1).all()
    for i in range(6):
        assert c.classes[i] == classes[truth[c.voxel_instance == i][0]] + 2
    assert ((c.scores > 0.9) & (c.scores <= 1)).all() and c.scores.dtype == torch.float32


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_cluster_output_dispatches_on_grouping(head):
    emb, params, score, sem, truth, _ = planted_inputs(head)
    inst = ProbabilisticOutput(emb, params, score) if head == "probabilistic" else MarginOutput(emb, params, score)
    out = ModelOutput(sem, inst)
    c = cluster_output(out, ClusterConfig(grouping="meanshift", min_size=10, meanshift_iterations=3))
    assert c.num_instances == 6 and same_partition(c.voxel_instance, truth)
    # a tiny bandwidth leaves every point its own mode: nothing reaches min_size
    c = cluster_output(out, ClusterConfig(grouping="meanshift", min_size=10, meanshift_bandwidth=1e-3))
    assert c.num_instances == 0


@pytest.mark.parametrize("kind", ["bhattacharyya", "margin"])
def test_degenerate_inputs(kind, dtype):
    probs = torch.zeros(5, 20, dtype=dtype)
    probs[:, 3] = 1.0
    seed = torch.full((5,), 0.8, dtype=dtype)
    emb, params = torch.zeros(5, 3, dtype=dtype), torch.full((5, 3), -1.0, dtype=dtype)
    # no foreground voxel
    c = meanshift_cluster(emb, params, kind, seed, torch.zeros(5, dtype=torch.bool), probs, 0.5, min_size=1)
    assert c.num_instances == 0 and (c.voxel_instance == -1).all()
    # one foreground voxel: an instance of its own, or none under min_size
    one = torch.tensor([False, False, True, False, False])
    c = meanshift_cluster(emb, params, kind, seed, one, probs, 0.5, min_size=1)
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [-1, -1, 0, -1, -1]
    assert c.classes.tolist() == [3] and c.scores.tolist() == pytest.approx([0.8])
    assert meanshift_cluster(emb, params, kind, seed, one, probs, 0.5, min_size=2).num_instances == 0
    # all voxels identical: one instance of all of them
    c = meanshift_cluster(emb, params, kind, seed, torch.ones(5, dtype=torch.bool), probs, 0.5, min_size=5)
    assert c.num_instances == 1 and (c.voxel_instance == 0).all()
    assert torch.isfinite(c.scores).all()


def test_config_rejects_bad_grouping():
    from minkseg.config import ConfigError

    with pytest.raises(ConfigError, match="grouping"):
        ClusterConfig(grouping="dbscan")
    with pytest.raises(ConfigError, match="meanshift_bandwidth"):
        ClusterConfig(meanshift_bandwidth=0.0)
    with pytest.raises(ConfigError, match="tta"):
        ClusterConfig(tta=-1)


def test_assign_to_modes_by_hand(dtype):
    # margin kernel with s~ = 0: log K = -|x - c|^2
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=dtype)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]], dtype=dtype)
    px, pc = torch.zeros_like(x), torch.zeros_like(centres)
    # K: x0 -> (1, e^-1.44); x1 -> (e^-1, e^-0.04); x2 -> (e^-25, e^-14.44)
    for chunk in (2, 1000):  # one row per chunk, and all at once
        assert assign_to_modes("margin", x, px, centres, pc, 0.5, chunk).tolist() == [0, 1, -1]
        assert assign_to_modes("margin", x, px, centres, pc, 0.0, chunk).tolist() == [0, 1, 1]
    # exactly at tau: K(x1, c1) = e^-0.04 passes tau = e^-0.04, not a hair above
    tau = math.exp(-0.04)
    assert assign_to_modes("margin", x, px, centres, pc, tau * (1 - 1e-4)).tolist() == [0, 1, -1]
    assert assign_to_modes("margin", x, px, centres, pc, tau * (1 + 1e-4)).tolist() == [0, -1, -1]
    none = assign_to_modes("margin", x, px, centres[:0], pc[:0], 0.5)
    assert none.tolist() == [-1, -1, -1] and none.dtype == torch.long


def test_meanshift_error_messages():
    p = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^unknown mean-shift kernel 'gauss'; choose one of "
                                         r"\('bhattacharyya', 'margin'\)$"):
        log_kernel("gauss", p, p, p, p)
    with pytest.raises(ValueError, match=r"^mean-shift bandwidth must be > 0, got -1.0$"):
        scale_bandwidth("margin", p, -1.0)
    with pytest.raises(ValueError, match=r"^max_anchors must be >= 1, got 0$"):
        bin_anchors(p, p, "margin", 0.5, 0)


@pytest.mark.parametrize("cell", [0.0, math.inf, math.nan])
def test_bin_anchors_fall_back_to_unit_cells(cell):
    x = torch.tensor([[0.1, 0.0, 0.0], [0.9, 0.0, 0.0], [1.5, 0.0, 0.0], [2.2, 0.0, 0.0]])
    pos, _, w, point_anchor = bin_anchors(x, torch.zeros_like(x), "margin", cell, 10)
    # cells of 1 from the minimum corner: [0.1, 1.1) holds two points, then one each
    assert w.tolist() == [2.0, 1.0, 1.0] and point_anchor.tolist() == [0, 0, 1, 2]
    torch.testing.assert_close(pos[:, 0], torch.tensor([0.5, 1.5, 2.2]))
