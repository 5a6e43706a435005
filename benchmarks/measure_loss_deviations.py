"""Numbers behind the README section "Deviations from the papers" (losses), on planted scenes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/measure_loss_deviations.py

Prints, in float32 (the training dtype):

1. Eq. 7 (entropy regulariser), summed over points as printed vs averaged over voxels as
   here, both with Eq. 15's weight 0.001: the mean |gradient| it puts on each log sigma,
   against that of the instance terms (Eqs. 4-5), at the head's initialisation.
2. Eq. 10 with and without its 1/L: the score loss's gradient on the score logits against
   the semantic cross-entropy's gradient on the semantic logits, at initialisation.
3. Eq. 3 as printed (mean of the variances) vs the variance of a mean of independent
   Gaussians (1/n^2 sum): the best own kernel kappa(e_i, c_k) an instance of n voxels can reach.
4. The margin head's sigma bias: Neven's initialisation (bias 1, exp(10) = 1 / (2 sigma^2))
   vs ours (PyTorch's default, ~0) on a 1 m object at 2 cm voxels with zero offsets.
5. The probabilistic head's seed threshold 0.5 (Neven's) vs the paper's "until no point is
   left" (threshold 0), with the score map at the score loss's optimum P = Q and partly
   converged embeddings: instances found, matched (IoU >= 0.5) and unmatched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minkseg.inference.cluster import cluster_probabilistic
from minkseg.losses.margin import lovasz_hinge, margin_gaussian
from minkseg.losses.probabilistic import instance_loss, score_loss, score_targets


def planted_scene(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the voxels in K blobs (0.3 m std) spread over an 8 x 8 m room, half background."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 3, generator=g) * torch.tensor([8.0, 8.0, 1.0])
    n_fg = n // 2
    inst = torch.randint(0, k, (n_fg,), generator=g)
    fg = centres[inst] + 0.3 * torch.randn(n_fg, 3, generator=g)
    bg = torch.rand(n - n_fg, 3, generator=g) * torch.tensor([8.0, 8.0, 3.0])
    return torch.cat([fg, bg]), torch.cat([inst, torch.full((n - n_fg,), -1)])


def entropy_vs_instance(n: int, k: int) -> None:
    x, inst = planted_scene(n, k)
    g = torch.Generator().manual_seed(1)
    mu = x + 0.02 * torch.randn(x.shape, generator=g)  # offsets near 0 at initialisation
    ls = torch.full_like(x, -2.0, requires_grad=True)  # ProbabilisticHead's init_log_sigma
    t = instance_loss(mu, ls, inst, k)
    (t.ins_ce + t.log_dice).backward()
    g_ins = ls.grad.abs().mean().item()
    g_mean = 0.001 / n  # d/d log sigma of 0.001 * mean_i sum_d log sigma_i^d
    g_sum = 0.001  # of 0.001 * sum_i sum_d log sigma_i^d (Eq. 7 as printed)
    print(f"  N={n:>6} K={k:>2}: instance terms {g_ins:.2e} | entropy mean x0.001 {g_mean:.2e} "
          f"(ratio {g_mean / g_ins:.1e}) | entropy sum x0.001 {g_sum:.2e} (ratio {g_sum / g_ins:.1e})")


def score_vs_semantic(n: int = 20000, k: int = 20) -> None:
    x, inst = planted_scene(n, k)
    g = torch.Generator().manual_seed(2)
    cls = torch.randint(0, 18, (k,), generator=g)
    own = torch.where(inst >= 0, torch.rand(n, generator=g), torch.zeros(n))
    q = score_targets(own, inst, cls, 18)
    score_logits = (0.1 * torch.randn(n, 19, generator=g)).requires_grad_()
    sem_logits = (0.1 * torch.randn(n, 20, generator=g)).requires_grad_()
    sem = torch.where(inst >= 0, cls[inst.clamp_min(0)] + 2, torch.randint(0, 2, (n,), generator=g))
    score_loss(score_logits, q).backward()
    F.cross_entropy(sem_logits, sem).backward()
    ratio = score_logits.grad.norm().item() / sem_logits.grad.norm().item()
    print(f"  |grad score| / |grad semantic CE| at init: {ratio:.2f} without 1/L (ours), "
          f"{ratio / 19:.3f} with the printed 1/L (L = 19 columns)")


def eq3_variance() -> None:
    for n in (10, 100, 1000, 10000):
        r = math.sqrt(n)  # sigma_i / sigma_k when Sigma_k = (1/n^2) sum Sigma_i with equal Sigma_i
        best = (0.5 * (r + 1 / r)) ** -1.5
        print(f"  n={n:>5}: best own kernel 1.000 (printed, mean of variances) vs {best:.4f} (1/n^2 form)")


def margin_sigma_init() -> None:
    side = torch.arange(0, 1.0, 0.02)
    xy = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
    obj = torch.cat([xy, torch.zeros(len(xy), 1)], 1)  # a 1 m x 1 m table top, 2 cm voxels
    ring = torch.rand(2000, 3, generator=torch.Generator().manual_seed(3)) * 3 - 1  # other voxels
    e = torch.cat([obj, ring + torch.tensor([0.0, 0.0, 0.5])])
    labels = torch.cat([torch.ones(len(obj), dtype=torch.bool), torch.zeros(len(ring), dtype=torch.bool)])
    centre = obj.mean(0)
    for bias in (1.0, 0.0):
        s = torch.full((len(e), 3), bias, requires_grad=True)
        phi = margin_gaussian(e, centre, s[labels].mean(0))
        loss = lovasz_hinge((2 * phi - 1)[None], labels[None]).sum()
        loss.backward()
        print(f"  sigma bias {bias:g} (sigma = {math.sqrt(0.5 * math.exp(-10 * bias)) * 100:.2f} cm): "
              f"object voxels with phi > 0.5: {(phi[labels] > 0.5).float().mean().item():.3f}, "
              f"Lovasz {loss.item():.3f}, |d Lovasz / d s| summed {s.grad.abs().sum().item():.2e}")


def seed_threshold(n: int = 20000, k: int = 20) -> None:
    x, inst = planted_scene(n, k)
    g = torch.Generator().manual_seed(4)
    fg = inst >= 0
    centres = torch.stack([x[inst == j].mean(0) for j in range(k)])
    mu = x.clone()
    mu[fg] = centres[inst[fg]] + 0.5 * (x[fg] - centres[inst[fg]]) + 0.05 * torch.randn(int(fg.sum()), 3, generator=g)
    ls = torch.full_like(x, -2.0)
    own = instance_loss(mu, ls, inst, k).own_kernel
    cls = torch.randint(0, 18, (k,), generator=g)
    q = score_targets(own, inst, cls, 18)
    score_logits = torch.log(q.clamp_min(1e-6))
    sem_logits = torch.zeros(n, 20)
    sem_logits[torch.arange(n), torch.where(fg, cls[inst.clamp_min(0)] + 2, 0)] = 5.0
    for threshold in (0.5, 0.0):
        c = cluster_probabilistic(mu, ls, score_logits, sem_logits, tau=0.35, seed_threshold=threshold, min_size=10)
        matched = 0
        for j in range(c.num_instances):
            members = c.voxel_instance == j
            best = max(((members & (inst == t)).sum() / (members | (inst == t)).sum()).item() for t in range(k))
            matched += best >= 0.5
        print(f"  seed threshold {threshold}: {c.num_instances} instances, {matched} matched, "
              f"{c.num_instances - matched} unmatched (of {k} planted)")


def main() -> None:
    torch.set_default_dtype(torch.float32)
    print("1. Eq. 7: mean |d loss / d log sigma| per element at initialisation (log sigma = -2)")
    entropy_vs_instance(10_000, 10)
    entropy_vs_instance(100_000, 30)
    print("2. Eq. 10's 1/L")
    score_vs_semantic()
    print("3. Eq. 3's covariance")
    eq3_variance()
    print("4. Margin head sigma bias initialisation (Neven: 1)")
    margin_sigma_init()
    print("5. Probabilistic head seed threshold")
    seed_threshold()


if __name__ == "__main__":
    main()
