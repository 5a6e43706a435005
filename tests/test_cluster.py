"""Greedy clustering recovers planted instances exactly (Sec. 3.4, Eq. 11)."""

import numpy as np
import torch

from minkseg.cluster import cluster_margin, cluster_probabilistic, greedy_cluster


def planted_scene(seed=0, k=6, n_per=50, n_bg=200):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(k, 3, generator=g) * 8
    centers[:, 0] += torch.arange(k) * 3.0  # well separated
    inst = torch.arange(k).repeat_interleave(n_per)
    mu = centers[inst] + 0.01 * torch.randn(len(inst), 3, generator=g)
    classes = torch.arange(k) % 18
    sem_logits = torch.full((len(inst) + n_bg, 20), -5.0)
    sem_logits[torch.arange(len(inst)), classes[inst] + 2] = 5.0
    sem_logits[len(inst):, 0] = 5.0  # background: wall
    mu = torch.cat([mu, torch.rand(n_bg, 3, generator=g) * 30 + 50])
    truth = torch.cat([inst, torch.full((n_bg,), -1)])
    return mu, truth, classes, sem_logits


def same_partition(pred: torch.Tensor, truth: torch.Tensor) -> bool:
    pairs = set(zip(pred.tolist(), truth.tolist()))
    fg = [(p, t) for p, t in pairs if t >= 0]
    return len(fg) == len({t for _, t in fg}) == len({p for p, _ in fg}) and all(p >= 0 for p, _ in fg)


def test_probabilistic_clustering_recovers_planted_instances():
    mu, truth, classes, sem = planted_scene()
    ls = torch.full_like(mu, np.log(0.05))
    score = torch.full((len(mu), 19), -5.0)
    fg = truth >= 0
    score[fg, classes[truth[fg]]] = 5.0
    c = cluster_probabilistic(mu, ls, score, sem, tau=0.35)
    assert c.num_instances == 6
    assert same_partition(c.voxel_instance, truth)
    assert (c.voxel_instance[~fg] == -1).all()
    # each recovered instance carries its planted class
    for i in range(6):
        t = truth[c.voxel_instance == i][0]
        assert c.classes[i] == classes[t] + 2
    assert ((c.scores > 0.9) & (c.scores <= 1)).all()


def test_margin_clustering_recovers_planted_instances():
    mu, truth, classes, sem = planted_scene(seed=1)
    sigma = torch.full_like(mu, 0.3)  # bandwidth exp(3): phi(0.1 m) = exp(-0.2)
    seed = torch.full((len(mu), 18), -5.0)
    fg = truth >= 0
    seed[fg, classes[truth[fg]]] = 5.0
    c = cluster_margin(mu, sigma, seed, sem, tau=0.5)
    assert c.num_instances == 6 and same_partition(c.voxel_instance, truth)


def test_min_size_and_seed_threshold():
    score = torch.tensor([0.9, 0.8, 0.3, 0.95])
    pos = torch.tensor([[0.0], [0.0], [0.0], [10.0]])
    probs = torch.zeros(4, 20)
    probs[:, 5] = 1

    def kernel(i0, idx):
        return (-(pos[idx, 0] - pos[i0, 0]).abs()).exp()

    c = greedy_cluster(score, torch.ones(4, dtype=torch.bool), kernel, probs, tau=0.5, seed_threshold=0.5, min_size=2)
    # voxel 3 is a lone seed (rejected by min_size); voxels 0-2 form one instance
    assert c.num_instances == 1 and c.voxel_instance.tolist() == [0, 0, 0, -1]
    c = greedy_cluster(score, torch.ones(4, dtype=torch.bool), kernel, probs, tau=0.5, seed_threshold=0.99)
    assert c.num_instances == 0
