"""Greedy clustering recovers planted instances exactly (Sec. 3.4, Eq. 11)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minkseg.inference.cluster as cluster_module
from minkseg.inference.cluster import cluster_margin, cluster_probabilistic, greedy_cluster
from minkseg.losses.kernels import log_bhattacharyya_kernel
from minkseg.losses.margin import margin_gaussian


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


COUNTER, CHAIR, SOFA = 11, 4, 5  # train ids


def counter_and_chair(voxel: float = 0.05):
    """A 4 m x 0.6 m x 0.1 m counter of voxels with a chair (0.5 m cube) touching its long
    side, on a floor; ideal embeddings: every voxel of an object at that object's centre,
    so the counter's end voxels need 2 m offsets. Returns centres, truth, classes, logits."""
    def block(lo, hi):
        axes = [torch.arange(a + voxel / 2, b, voxel) for a, b in zip(lo, hi)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    counter, chair = block((0, 0, 0.8), (4.0, 0.6, 0.9)), block((1.5, 0.6, 0), (2.0, 1.1, 0.5))
    floor = block((0, 1.2, 0), (4.0, 2.0, voxel))
    x = torch.cat([counter, chair, floor])
    truth = torch.cat([torch.zeros(len(counter)), torch.ones(len(chair)), torch.full((len(floor),), -1.0)]).long()
    mu = x.clone()
    mu[truth == 0] = counter.mean(0)
    mu[truth == 1] = chair.mean(0)
    sem = torch.full((len(x), 20), -5.0)
    sem[truth == 0, COUNTER] = sem[truth == 1, CHAIR] = sem[truth == -1, 1] = 5.0
    return x, mu, truth, sem


def test_a_4m_counter_is_recovered_whole_by_both_heads():
    x, mu, truth, sem = counter_and_chair()
    assert (mu - x)[truth == 0].norm(dim=1).max() > 1.9  # beyond the old 1 m reach
    cls = torch.tensor([COUNTER, CHAIR])
    score = torch.full((len(x), 19), -5.0)
    score[truth >= 0, cls[truth[truth >= 0]] - 2] = 5.0
    seed = torch.full((len(x), 18), -5.0)
    seed[truth >= 0, cls[truth[truth >= 0]] - 2] = 5.0
    probabilistic = cluster_probabilistic(mu, torch.full_like(mu, np.log(0.05)), score, sem, tau=0.35)
    margin = cluster_margin(mu, torch.full_like(mu, 0.3), seed, sem, tau=0.5)
    for c in (probabilistic, margin):
        assert c.num_instances == 2 and same_partition(c.voxel_instance, truth)
        counter = c.voxel_instance[truth == 0]
        assert (counter == counter[0]).all() and c.classes[counter[0]] == COUNTER
        assert (c.voxel_instance[truth == -1] == -1).all()


def one_instance(n: int, seed_index: int, seed_score: float, seed_probs: dict[int, float],
                 member_probs: dict[int, float]):
    """n voxels embedded at one point; only voxel ``seed_index`` scores as a centre."""
    probs = torch.full((n, 20), 1e-4)
    for c, p in member_probs.items():
        probs[:, c] = p
    probs[seed_index] = 1e-4
    for c, p in seed_probs.items():
        probs[seed_index, c] = p
    probs = probs / probs.sum(1, keepdim=True)
    score = torch.full((n, 19), 0.0)
    score[:, -1] = 10.0  # "not a centre"
    score[seed_index, :-1] = -20.0
    score[seed_index, 0] = np.log(seed_score / (1 - seed_score)) + 10.0  # softmax gives seed_score
    return torch.zeros(n, 3), torch.full((n, 3), np.log(0.05)), score, probs.log(), probs


def test_class_is_the_cluster_mean_and_confidence_includes_the_seed_score():
    # the seed voxel leans chair; the 19 other voxels say sofa: the instance is a sofa
    mu, ls, score, sem_logits, probs = one_instance(20, 3, 0.8, {CHAIR: 0.6, SOFA: 0.4}, {SOFA: 0.9, CHAIR: 0.05})
    c = cluster_probabilistic(mu, ls, score, sem_logits, seed_threshold=0.5, min_size=1)
    assert c.num_instances == 1 and (c.voxel_instance == 0).all()
    assert c.classes.tolist() == [SOFA]
    expected = float(probs[:, SOFA].mean()) * 0.8
    assert float(c.scores[0]) == pytest.approx(expected, rel=1e-5)


def test_touching_instances_keep_their_voxels():
    # two instances whose embeddings are 0.25 m apart; B's seed is wide enough to cover A,
    # but A (the stronger seed) is clustered first and its voxels are never taken back
    n = 30
    emb = torch.cat([torch.zeros(n, 3), torch.tensor([0.25, 0, 0]).expand(n, 3)])
    truth = torch.arange(2).repeat_interleave(n)
    sigma = torch.where(truth[:, None] == 0, torch.tensor(0.4), torch.tensor(0.05)).expand(-1, 3).contiguous()
    # bandwidth exp(10 s~): A's seed exp(4) = 55 gives phi(0.25) = 0.03; B's exp(0.5) = 1.6 gives 0.90
    seed = torch.full((2 * n, 18), -5.0)
    seed[0, 0], seed[n, 0] = 3.0, 2.0  # A's seed first
    sem = torch.full((2 * n, 20), -5.0)
    sem[:, CHAIR] = 5.0
    c = cluster_margin(emb, sigma, seed, sem, tau=0.5, seed_threshold=0.5, min_size=1)
    assert c.voxel_instance[:n].tolist() == [0] * n and c.voxel_instance[n:].tolist() == [1] * n


def test_margin_membership_uses_the_seed_bandwidth():
    # seed at 0 with bandwidth exp(10 * 0.07) = 2: phi(0.3 m) = 0.84 joins, phi(0.6 m) = 0.49 does not;
    # each group's own bandwidth says the opposite (50: phi(0.3) = 0.01; 0.5: phi(0.6) = 0.84)
    near, far = torch.tensor([0.3, 0, 0]).expand(10, 3), torch.tensor([-0.6, 0, 0]).expand(10, 3)
    emb = torch.cat([torch.zeros(1, 3), near, far])
    s = torch.cat([torch.full((1,), np.log(2) / 10), torch.full((10,), np.log(50) / 10),
                   torch.full((10,), np.log(0.5) / 10)])[:, None].expand(-1, 3).contiguous()
    seed = torch.full((21, 18), -5.0)
    seed[0, 0] = 3.0  # only voxel 0 can seed
    sem = torch.full((21, 20), -5.0)
    sem[:, CHAIR] = 5.0
    c = cluster_margin(emb, s, seed, sem, tau=0.5, seed_threshold=0.5, min_size=1)
    assert c.voxel_instance.tolist() == [0] * 11 + [-1] * 10


# --- the blocked greedy loop equals the one-seed-at-a-time loop ------------------------------------------

def reference_greedy(seed_score, foreground, kernel_to_seed, semantic_probs, tau, seed_threshold=0.5,
                     min_size=10, max_instances=500, max_seeds=5000):
    """The textbook loop of Sec. 3.4: best free seed, its members, repeat (one seed per step).

    It is the clustering before the blocked loop, with several host syncs per seed;
    benchmarks/bench_gpu.py times it as "before"."""
    dev = seed_score.device
    voxel_instance = torch.full((len(seed_score),), -1, dtype=torch.long, device=dev)
    cand = foreground.nonzero(as_tuple=True)[0]
    free = torch.ones(len(cand), dtype=torch.bool, device=dev)
    score = seed_score[cand]
    classes, scores = [], []
    inst_probs = semantic_probs[:, 2:]
    for _ in range(max_seeds):
        if not free.any() or len(classes) >= max_instances:
            break
        masked = torch.where(free, score, torch.full_like(score, -1.0))
        j = int(masked.argmax())
        if masked[j] < seed_threshold:
            break
        idx = free.nonzero(as_tuple=True)[0]
        members = idx[kernel_to_seed(int(cand[j]), cand[idx]) >= tau]
        free[members] = False
        free[j] = False
        if len(members) < min_size:
            continue
        vox = cand[members]
        mean_prob = inst_probs[vox].mean(0)
        c = int(mean_prob.argmax())
        voxel_instance[vox] = len(classes)
        classes.append(c + 2)
        scores.append(float(mean_prob[c]) * float(masked[j]))
    return (voxel_instance, torch.tensor(classes, dtype=torch.long, device=dev),
            torch.tensor(scores, dtype=torch.float32, device=dev))


def assert_same_clusters(blocked, reference):
    voxel_instance, classes, scores = reference
    assert torch.equal(blocked.voxel_instance, voxel_instance)
    assert torch.equal(blocked.classes, classes)
    assert torch.equal(blocked.scores, scores)  # bitwise: same member order, same mean


def random_scene(seed: int, n: int, k: int, spread: float, tie_levels: int):
    """n voxels around k centres in 3D with float32 embeddings, seed scores drawn from
    ``tie_levels`` values (ties on purpose), some background voxels and random class logits."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 3, generator=g) * 2
    which = torch.randint(0, k, (n,), generator=g)
    mu = centres[which] + spread * torch.randn(n, 3, generator=g)
    log_sigma = -2.5 + 0.5 * torch.randn(n, 3, generator=g)
    levels = torch.rand(tie_levels, generator=g)
    seed_score = levels[torch.randint(0, tie_levels, (n,), generator=g)]
    sem_logits = 2 * torch.randn(n, 20, generator=g)
    sem_logits[torch.rand(n, generator=g) < 0.2, 0] = 10.0  # background voxels
    return mu, log_sigma, seed_score, sem_logits


scene_params = dict(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 120), k=st.integers(1, 8),
                    spread=st.sampled_from([0.0, 0.05, 0.2, 0.5]), tie_levels=st.integers(1, 6),
                    tau=st.sampled_from([0.0, 0.2, 0.35, 0.5, 0.9, 1.5]),
                    seed_threshold=st.sampled_from([0.0, 0.3, 0.6]),
                    min_size=st.integers(1, 12), max_instances=st.integers(0, 6), max_seeds=st.integers(0, 20),
                    block_size=st.sampled_from([1, 2, 3, 7, 256]), rows=st.sampled_from([None, 1, 2, 5, 10_000]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**scene_params)
def test_blocked_probabilistic_clustering_equals_the_one_seed_loop(seed, n, k, spread, tie_levels, tau,
                                                                   seed_threshold, min_size, max_instances,
                                                                   max_seeds, block_size, rows):
    mu, log_sigma, seed_score, sem_logits = random_scene(seed, n, k, spread, tie_levels)
    probs = torch.softmax(sem_logits, 1)
    fg = probs.argmax(1) >= 2

    def kernel(i0, idx):
        return log_bhattacharyya_kernel(mu[idx], log_sigma[idx], mu[i0], log_sigma[i0]).exp()

    args = (seed_score, fg, kernel, probs, tau, seed_threshold, min_size, max_instances, max_seeds)
    assert_same_clusters(greedy_cluster(*args, block_size=block_size, rows_per_chunk=rows), reference_greedy(*args))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**scene_params)
def test_blocked_margin_clustering_equals_the_one_seed_loop(seed, n, k, spread, tie_levels, tau, seed_threshold,
                                                            min_size, max_instances, max_seeds, block_size, rows):
    mu, log_sigma, seed_score, sem_logits = random_scene(seed, n, k, spread, tie_levels)
    sigma_logit = 0.3 + 0.05 * log_sigma  # bandwidths exp(10 s~) around exp(1.75)
    probs = torch.softmax(sem_logits, 1)
    fg = probs.argmax(1) >= 2

    def kernel(i0, idx):
        return margin_gaussian(mu[idx], mu[i0], sigma_logit[i0])

    args = (seed_score, fg, kernel, probs, tau, seed_threshold, min_size, max_instances, max_seeds)
    assert_same_clusters(greedy_cluster(*args, block_size=block_size, rows_per_chunk=rows), reference_greedy(*args))


@pytest.mark.parametrize("block_size,rows", [(1, None), (4, 3), (256, None), (256, 10_000)])
def test_both_heads_match_the_one_seed_loop_on_a_larger_scene(block_size, rows, monkeypatch):
    # 3000 voxels, 40 objects; (S, N) chunks capped at 3 rows for 3000 voxels, so seams are crossed
    monkeypatch.setattr(cluster_module, "KERNEL_CHUNK_ELEMENTS", 10_000)
    mu, log_sigma, _, sem_logits = random_scene(7, 3000, 40, 0.03, 1000)
    probs = torch.softmax(sem_logits, 1)
    score_logits = torch.randn(3000, 19, generator=torch.Generator().manual_seed(3))
    score_logits[:, :-1] += 2.0
    seed_logits = torch.randn(3000, 18, generator=torch.Generator().manual_seed(4))
    sigma_logit = torch.full_like(mu, 0.35)
    monkeypatch.setattr(cluster_module, "greedy_cluster",
                        lambda *a, **kw: greedy_cluster(*a, **kw, block_size=block_size, rows_per_chunk=rows))
    got = cluster_probabilistic(mu, log_sigma, score_logits, sem_logits, tau=0.35, min_size=5)

    def bhattacharyya(i0, idx):
        return log_bhattacharyya_kernel(mu[idx], log_sigma[idx], mu[i0], log_sigma[i0]).exp()

    seed = torch.softmax(score_logits, 1)[:, :-1].max(1).values
    want = reference_greedy(seed, probs.argmax(1) >= 2, bhattacharyya, probs, 0.35, 0.5, 5)
    assert len(want[1]) > 10
    assert_same_clusters(got, want)

    got = cluster_margin(mu, sigma_logit, seed_logits, sem_logits, tau=0.5, min_size=5)

    def gaussian(i0, idx):
        return margin_gaussian(mu[idx], mu[i0], sigma_logit[i0])

    want = reference_greedy(torch.sigmoid(seed_logits).max(1).values, probs.argmax(1) >= 2, gaussian, probs, 0.5,
                            0.5, 5)
    assert len(want[1]) > 10
    assert_same_clusters(got, want)


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        greedy_cluster(torch.ones(3), torch.ones(3, dtype=torch.bool), lambda i0, idx: idx * 0.0,
                       torch.ones(3, 20), tau=0.5, block_size=0)


@pytest.mark.parametrize("block_size", [1, 256])
def test_a_seed_outside_its_own_kernel_is_still_used(block_size):
    # a kernel that excludes the seed itself: voxel 0 seeds {1}; voxel 2's reach covers voxels 0
    # and 3, but voxel 0 was used as a seed, so it stays unassigned and voxel 2 seeds {3}
    pos = torch.tensor([0.0, 1.0, 3.0, 4.0])
    reach = torch.tensor([1.2, 1.2, 3.5, 1.2])

    def kernel(i0, idx):
        d = (pos[idx] - pos[i0]).abs()
        return ((d >= 0.5) & (d <= reach[i0])).float()

    probs = torch.zeros(4, 20)
    probs[:, CHAIR] = 1
    args = (torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.ones(4, dtype=torch.bool), kernel, probs, 0.5, 0.5, 1)
    c = greedy_cluster(*args, block_size=block_size)
    assert c.voxel_instance.tolist() == [-1, 0, -1, 1] and c.classes.tolist() == [CHAIR, CHAIR]
    assert_same_clusters(c, reference_greedy(*args))


def test_a_block_of_seeds_shares_two_kernel_evaluations():
    # 30 separated instances whose centre voxels score highest: one block holds all 30 seeds, so
    # the kernel runs twice (the block's (B, B) claims, then one (30, N) chunk), not once per seed
    mu, truth, classes, sem = planted_scene(seed=2, k=30, n_per=20, n_bg=100)
    seed_score = torch.where(truth >= 0, 0.6, 0.0)
    seed_score[torch.arange(30) * 20] = 0.9
    calls = []

    def kernel(i0, idx):
        calls.append(len(idx))
        return (-((mu[idx] - mu[i0]) ** 2).sum(-1)).exp()

    probs = torch.softmax(sem, 1)
    c = greedy_cluster(seed_score, probs.argmax(1) >= 2, kernel, probs, tau=0.5, block_size=256,
                       rows_per_chunk=10_000)
    assert c.num_instances == 30 and same_partition(c.voxel_instance, truth)
    assert len(calls) == 2
    calls.clear()
    greedy_cluster(seed_score, probs.argmax(1) >= 2, kernel, probs, tau=0.5, block_size=1)
    assert len(calls) == 60  # one seed per block: one (1, 1) and one (1, N) evaluation per instance


def test_no_host_read_per_seed():
    # a device-to-host read of a scalar (``.item()``, ``int(t)``, ``bool(t)``, indexing with a 0-d
    # tensor) dispatches aten._local_scalar_dense, a sync on CUDA; 30 seeds in one block need none
    from torch.utils._python_dispatch import TorchDispatchMode

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten._local_scalar_dense:
                ScalarReads.count += 1
            return func(*args, **(kwargs or {}))

    mu, truth, _, sem = planted_scene(seed=2, k=30, n_per=20, n_bg=100)
    seed_score = torch.where(truth >= 0, 0.6, 0.0)
    seed_score[torch.arange(30) * 20] = 0.9
    probs = torch.softmax(sem, 1)

    def kernel(i0, idx):
        return (-((mu[idx] - mu[i0]) ** 2).sum(-1)).exp()

    with ScalarReads():
        c = greedy_cluster(seed_score, probs.argmax(1) >= 2, kernel, probs, tau=0.5, block_size=256,
                           rows_per_chunk=10_000)
    assert c.num_instances == 30 and same_partition(c.voxel_instance, truth)
    assert ScalarReads.count == 0


# --- interpenetrating instances and ambiguous class probabilities, both heads ----------------------------

def interleaved_pair(n: int = 40, gap: float = 0.3):
    """A chair pushed into a table: their voxels alternate in the list (and in space), their ideal
    embeddings sit at the two centres ``gap`` apart, with 5 mm of noise. Returns embeddings, truth."""
    g = torch.Generator().manual_seed(5)
    truth = torch.arange(2 * n) % 2  # 0, 1, 0, 1, ...
    centre = torch.tensor([[1.0, 1.0, 0.5], [1.0 + gap, 1.0, 0.5]])
    return centre[truth] + 0.005 * torch.randn(2 * n, 3, generator=g), truth


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_interpenetrating_instances_are_separated_by_their_embeddings(head):
    emb, truth = interleaved_pair()
    n = len(truth)
    sem = torch.full((n, 20), -5.0)
    sem[truth == 0, CHAIR] = sem[truth == 1, SOFA] = 5.0
    # the sofa's seed (voxel 1) outscores the chair's (voxel 0); every other voxel is no centre
    if head == "probabilistic":
        # sigma 5 cm: kernel exp(-0.3^2 / (8 * 0.05^2)) = 0.011 across, > 0.9 within
        score = torch.full((n, 19), -5.0)
        score[:, -1] = 5.0
        score[0, CHAIR - 2], score[1, SOFA - 2] = 8.0, 9.0
        c = cluster_probabilistic(emb, torch.full_like(emb, np.log(0.05)), score, sem, tau=0.35, min_size=1)
        seed = torch.softmax(score, 1)[:, :-1].max(1).values
    else:
        # bandwidth exp(10 * 0.5) = 148: phi(0.3) = exp(-13) across, > 0.8 within
        seed_logits = torch.full((n, 18), -5.0)
        seed_logits[0, CHAIR - 2], seed_logits[1, SOFA - 2] = 2.0, 3.0
        c = cluster_margin(emb, torch.full_like(emb, 0.5), seed_logits, sem, tau=0.5, min_size=1)
        seed = torch.sigmoid(seed_logits).max(1).values
    assert c.voxel_instance.tolist() == [1 - int(t) for t in truth]  # the sofa (stronger seed) is instance 0
    assert c.classes.tolist() == [SOFA, CHAIR]
    p = float(torch.softmax(sem[0], 0)[CHAIR])
    np.testing.assert_allclose(c.scores.numpy(), [p * float(seed[1]), p * float(seed[0])], rtol=1e-6)


def test_ambiguous_voxels_take_the_class_of_the_mean_probability():
    # 6 voxels lean chair (0.55 / 0.45), 4 are sure of sofa (0.1 / 0.9): a per-voxel vote says
    # chair, the mean says sofa (0.63 against 0.37), and the confidence is 0.63 x seed score
    probs = torch.zeros(10, 20)
    probs[:6, CHAIR], probs[:6, SOFA] = 0.55, 0.45
    probs[6:, CHAIR], probs[6:, SOFA] = 0.1, 0.9
    score = torch.tensor([0.9] + [0.2] * 9)

    c = greedy_cluster(score, torch.ones(10, dtype=torch.bool), lambda i0, idx: torch.ones(len(i0), len(idx)), probs,
                       tau=0.5, min_size=1)
    assert c.voxel_instance.tolist() == [0] * 10 and c.classes.tolist() == [SOFA]
    assert float(c.scores[0]) == pytest.approx(0.63 * 0.9, rel=1e-6)


def test_equal_mean_probabilities_go_to_the_lower_class_and_stuff_is_not_a_class():
    # every voxel: wall 0.34, chair 0.33, sofa 0.33 (greedy_cluster takes the foreground from its
    # caller); wall, though largest, is not one of the 18 instance classes, and of those chair and
    # sofa tie, so the lower train id (chair) wins
    probs = torch.zeros(4, 20)
    probs[:, 0], probs[:, CHAIR], probs[:, SOFA] = 0.34, 0.33, 0.33
    c = greedy_cluster(torch.tensor([0.8, 0.1, 0.1, 0.1]), torch.ones(4, dtype=torch.bool),
                       lambda i0, idx: torch.ones(len(i0), len(idx)), probs, tau=0.5, min_size=1)
    assert c.classes.tolist() == [CHAIR]
    assert float(c.scores[0]) == pytest.approx(0.33 * 0.8, rel=1e-6)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_foreground_is_the_arg_max_over_all_twenty_classes(head):
    # one object of 3 voxels at one embedding: voxel 2's wall logit beats its chair logit, so
    # it is background and stays unassigned though its embedding is the object's
    sem = torch.full((3, 20), -5.0)
    sem[:, CHAIR] = 3.0
    sem[2, 0] = 4.0
    emb = torch.zeros(3, 3)
    if head == "probabilistic":
        score = torch.full((3, 19), -5.0)
        score[:, CHAIR - 2] = 5.0
        c = cluster_probabilistic(emb, torch.full_like(emb, np.log(0.05)), score, sem, min_size=1)
    else:
        c = cluster_margin(emb, torch.zeros(3, 3), torch.full((3, 18), 5.0), sem, min_size=1)
    assert c.voxel_instance.tolist() == [0, 0, -1] and c.classes.tolist() == [CHAIR]


# --- defaults, output types, the seed budget --------------------------------------------------------------

def many_objects(k: int = 501, n: int = 10):
    """k objects of n voxels each, every object's voxels at one embedding point 2 m from the next,
    certain chair semantics; the first voxel of each object is its only seed."""
    emb = (torch.arange(k, dtype=torch.float32) * 2.0).repeat_interleave(n)[:, None] * torch.tensor([[1.0, 0, 0]])
    sem = torch.full((k * n, 20), -5.0)
    sem[:, CHAIR] = 5.0
    is_seed = torch.arange(k * n) % n == 0
    return emb, sem, is_seed


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_default_settings_keep_500_instances_of_10_voxels(head, monkeypatch):
    # 501 objects of exactly 10 voxels, kernel 1 within: the defaults (tau 0.35 / 0.5, seed threshold
    # 0.5, min_size 10, max_instances 500) accept 500 of them; large blocks only save time
    monkeypatch.setattr(cluster_module, "greedy_cluster",
                        lambda *a, **kw: greedy_cluster(*a, **kw, block_size=1024, rows_per_chunk=10_000))
    emb, sem, is_seed = many_objects()
    if head == "probabilistic":
        score = torch.full((len(emb), 19), -5.0)
        score[:, -1] = 5.0
        score[is_seed, CHAIR - 2] = 8.0
        c = cluster_probabilistic(emb, torch.full_like(emb, np.log(0.05)), score, sem)
    else:
        seed = torch.full((len(emb), 18), -5.0)
        seed[is_seed, CHAIR - 2] = 5.0
        c = cluster_margin(emb, torch.zeros_like(emb), seed, sem)
    assert c.num_instances == 500
    assert c.voxel_instance.tolist() == list(np.repeat(np.arange(500), 10)) + [-1] * 10
    # the greedy loop's own defaults: the same 500
    probs = torch.softmax(sem, 1)
    g = greedy_cluster(is_seed.float(), torch.ones(len(emb), dtype=torch.bool),
                       lambda i0, idx: (emb[idx, 0] == emb[i0, 0]).float(), probs, tau=0.5, block_size=1024,
                       rows_per_chunk=10_000)
    assert g.num_instances == 500 and torch.equal(g.voxel_instance, c.voxel_instance)


def test_at_most_5000_seeds_are_tried_by_default():
    # 5000 lone voxels (rejected by min_size 2) outscore a pair: the pair's seed would be the 5001st
    pos = torch.cat([torch.arange(5000, dtype=torch.float32), torch.tensor([-1.0, -1.0])])
    score = torch.cat([torch.full((5000,), 0.9), torch.tensor([0.8, 0.1])])
    probs = torch.zeros(5002, 20)
    probs[:, CHAIR] = 1.0

    def kernel(i0, idx):
        return (pos[idx] == pos[i0]).float()

    # one block and one kernel chunk: the same clusters as small blocks (see above), in a fraction of the time
    args = (score, torch.ones(5002, dtype=torch.bool), kernel, probs)
    fast = dict(tau=0.5, min_size=2, block_size=8192, rows_per_chunk=10_000)
    assert greedy_cluster(*args, **fast).num_instances == 0
    assert greedy_cluster(*args, **fast, max_seeds=5001).num_instances == 1


def test_output_types_whatever_the_input_dtype(float64):
    probs = torch.zeros(3, 20)
    probs[:, CHAIR] = 1.0
    args = (torch.tensor([0.9, 0.1, 0.1]), torch.ones(3, dtype=torch.bool),
            lambda i0, idx: torch.ones(len(i0), len(idx)), probs)
    c = greedy_cluster(*args, tau=0.5, min_size=1)
    assert c.classes.dtype == torch.long and c.scores.dtype == torch.float32 and c.voxel_instance.dtype == torch.long
    assert c.classes.tolist() == [CHAIR] and c.scores.tolist() == [pytest.approx(0.9)]
    none = greedy_cluster(*args, tau=0.5, min_size=4)
    assert none.num_instances == 0 and none.voxel_instance.tolist() == [-1, -1, -1]
    assert none.classes.dtype == torch.long and none.scores.dtype == torch.float32


def test_the_first_instance_class_is_foreground():
    # cabinet is train id 2, the first of the 18 instance classes
    sem = torch.full((4, 20), -5.0)
    sem[:, 2] = 5.0
    sem[3, 1], sem[3, 2] = 5.0, 4.0  # floor
    seed = torch.full((4, 18), -5.0)
    seed[:, 0] = 5.0
    c = cluster_margin(torch.zeros(4, 3), torch.zeros(4, 3), seed, sem, min_size=1)
    assert c.voxel_instance.tolist() == [0, 0, 0, -1] and c.classes.tolist() == [2]


@pytest.mark.parametrize("block_size", [1, 32])
def test_a_kernel_exactly_at_tau_claims_the_voxel(block_size):
    # kernel 1 on itself, exactly 0.5 = tau one step away: voxel 1 (a would-be seed) and voxel 2 join voxel 0
    pos = torch.tensor([0.0, 1.0, -1.0, 5.0])

    def kernel(i0, idx):
        d = (pos[idx] - pos[i0]).abs()
        return torch.where(d == 0, 1.0, torch.where(d <= 1, 0.5, 0.0))

    probs = torch.zeros(4, 20)
    probs[:, CHAIR] = 1.0
    args = (torch.tensor([0.9, 0.8, 0.1, 0.7]), torch.ones(4, dtype=torch.bool), kernel, probs, 0.5, 0.5, 1)
    c = greedy_cluster(*args, block_size=block_size)
    assert c.voxel_instance.tolist() == [0, 0, 0, 1]
    assert_same_clusters(c, reference_greedy(*args))


def test_first_free_seeds_skips_claimed_rows_and_stops_at_the_limit():
    # row 0 claims row 1; row 1 (claimed) is skipped, not the end of the block; row 2 is free
    claim = np.array([[True, True, False], [True, True, True], [False, False, True]])
    assert cluster_module.first_free_seeds(claim, 5) == [0, 2]
    assert cluster_module.first_free_seeds(claim, 1) == [0]
    # a claimed row claims nothing: row 1 would claim row 2 but is not a seed
    assert cluster_module.first_free_seeds(np.eye(4, dtype=bool), 3) == [0, 1, 2]


def group_scene(group: list[int], scores: list[float]):
    """Kernel 1 within a group (-1: a voxel that claims nobody, itself included), else 0."""
    g = torch.tensor(group)

    def kernel(i0, idx):
        return ((g[idx] == g[i0]) & (g[i0] >= 0)).float()

    probs = torch.zeros(len(group), 20)
    probs[:, CHAIR] = 1.0
    return torch.tensor(scores), torch.ones(len(group), dtype=torch.bool), kernel, probs


def test_a_seed_score_exactly_at_the_threshold_is_a_seed():
    c = greedy_cluster(*group_scene([0, 0], [0.5, 0.25]), tau=0.5, seed_threshold=0.5, min_size=1)
    assert c.voxel_instance.tolist() == [0, 0] and c.scores.tolist() == [0.5]


@pytest.mark.parametrize("block_size", [1, 2, 32])
def test_max_seeds_counts_the_seeds_of_earlier_blocks(block_size):
    # four pairs whose first voxels are the seeds; with blocks of 2 the third seed is in the second
    # block, which may hold only max_seeds - 2 = 1 seed
    args = group_scene([0, 0, 1, 1, 2, 2, 3, 3], [0.9, 0.6, 0.8, 0.6, 0.7, 0.6, 0.65, 0.6])
    c = greedy_cluster(*args, tau=0.5, min_size=1, max_seeds=3, block_size=block_size)
    assert c.voxel_instance.tolist() == [0, 0, 1, 1, 2, 2, -1, -1]
    assert c.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])


@pytest.mark.parametrize("block_size", [1, 2, 32])
def test_a_seed_that_takes_no_voxel_still_counts_as_tried(block_size):
    # voxel 2 claims nobody (not even itself): it is the second seed tried, so max_seeds=3 leaves
    # room for one more seed (voxel 3), not two
    args = group_scene([0, 0, -1, 1, 1, 2, 2], [0.9, 0.6, 0.8, 0.7, 0.6, 0.65, 0.6])
    c = greedy_cluster(*args, tau=0.5, min_size=1, max_seeds=3, block_size=block_size)
    assert c.voxel_instance.tolist() == [0, 0, -1, 1, 1, -1, -1]
    assert c.scores.tolist() == pytest.approx([0.9, 0.7])


@pytest.mark.parametrize("block_size", [1, 32])
def test_no_kernel_work_after_max_instances(block_size):
    # the one-seed loop stops at max_instances: no further block claims or member chunks
    scores, foreground, kernel, probs = group_scene([0, 0, 1, 1, 2, 2], [0.9, 0.6, 0.8, 0.6, 0.7, 0.6])
    shapes = []

    def counting_kernel(i0, idx):
        shapes.append((len(i0), len(idx)))
        return kernel(i0, idx)

    c = greedy_cluster(scores, foreground, counting_kernel, probs, tau=0.5, min_size=1, max_instances=1,
                       block_size=block_size)
    assert c.voxel_instance.tolist() == [0, 0, -1, -1, -1, -1]
    # block of 1: (1, 1) claims, then seed 0 against the 6 free voxels; block of 32: (6, 6) claims
    # (seeds 0, 2, 4), seed 0's chunk, and the loop over the block's rows stops after instance 0
    assert shapes == ([(1, 1), (1, 6)] if block_size == 1 else [(6, 6), (1, 6), (1, 4), (1, 2)])
