"""Every tensor the clustering creates lands on its inputs' device, and the device defaults.

There is no GPU in CI, so the device is checked with PyTorch's ``meta`` default device: inside
``with torch.device("meta")`` a factory call (``torch.full``, ``torch.zeros``, ``torch.arange``,
``torch.tensor``, ...) without an explicit ``device=`` makes a meta tensor, so a tensor that the
code forgets to place on its inputs' device either fails when mixed with the CPU inputs or comes
back on ``meta``. On a GPU the same omission makes a CPU tensor that fails against CUDA inputs.
"""

import pytest
import torch

import minkseg.inference.cluster as cluster_module
from minkseg.inference.cluster import (
    KERNEL_CHUNK_ELEMENTS,
    Clusters,
    claims,
    cluster_margin,
    cluster_probabilistic,
    default_block_size,
    default_rows_per_chunk,
    greedy_cluster,
    members_of_seeds,
)
from tests.test_cluster import CHAIR, planted_scene

# groups of a 9-voxel scene: {0, 1, 2}, {3, 4}, {5, 6}, {7} (rejected by min_size 2), 8 background
GROUP = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, -1])
SCORES = torch.tensor([0.9, 0.6, 0.6, 0.8, 0.6, 0.7, 0.6, 0.95, 0.1])


def group_kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """1 between voxels of one group, else 0; made only from its (CPU) inputs, no factory call."""
    return (GROUP[idx] == GROUP[i0]).float()


def chair_probs(n: int) -> torch.Tensor:
    probs = torch.zeros(n, 20)
    probs[:, CHAIR] = 1.0
    return probs


PROBS = chair_probs(9)  # made here, outside the tests' meta contexts


def run_group_scene(**kw) -> Clusters:
    return greedy_cluster(SCORES, GROUP >= 0, group_kernel, PROBS, 0.5, **{"min_size": 2, **kw})


def assert_on_cpu_and_equal(c: Clusters, expected: Clusters) -> None:
    for got, want in [(c.voxel_instance, expected.voxel_instance), (c.classes, expected.classes),
                      (c.scores, expected.scores)]:
        assert got.device.type == "cpu" and got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("block_size,rows", [(None, None), (1, None), (2, 1), (32, 3), (1024, 10_000)])
def test_greedy_cluster_creates_its_tensors_on_the_inputs_device(block_size, rows):
    expected = run_group_scene(block_size=block_size, rows_per_chunk=rows)
    # seed 7 (best score) is rejected by min_size, then seeds 0, 3, 5 make instances 0, 1, 2
    assert expected.voxel_instance.tolist() == [0, 0, 0, 1, 1, 2, 2, -1, -1]
    assert expected.classes.tolist() == [CHAIR, CHAIR, CHAIR]
    assert expected.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    with torch.device("meta"):
        assert_on_cpu_and_equal(run_group_scene(block_size=block_size, rows_per_chunk=rows), expected)


def test_no_instance_results_are_on_the_inputs_device():
    with torch.device("meta"):
        none = run_group_scene(min_size=4)
        below = run_group_scene(seed_threshold=0.99)
    for c in (none, below):
        assert c.voxel_instance.device.type == "cpu" and c.voxel_instance.tolist() == [-1] * 9
        assert c.classes.device.type == c.scores.device.type == "cpu"
        assert c.classes.shape == c.scores.shape == (0,)
        assert c.classes.dtype == torch.long and c.scores.dtype == torch.float32


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_both_heads_keep_the_inputs_device(head):
    mu, truth, classes, sem = planted_scene(seed=1, k=3, n_per=12, n_bg=5)
    if head == "probabilistic":
        score = torch.zeros(len(mu), 2)
        score[:, 0] = 3.0
        args = (mu, torch.full_like(mu, -3.0), score, sem)
        run = cluster_probabilistic
    else:
        args = (mu, torch.zeros_like(mu), torch.full((len(mu), 18), 2.0), sem)
        run = cluster_margin
    expected = run(*args)
    assert expected.num_instances == 3
    with torch.device("meta"):
        assert_on_cpu_and_equal(run(*args), expected)


def test_claims_of_no_seeds_is_an_empty_bool_matrix_on_the_voxels_device():
    voxels = torch.arange(5)
    with torch.device("meta"):
        out = claims(group_kernel, voxels[:0], voxels, 0.5)
    assert out.shape == (0, 5) and out.dtype == torch.bool and out.device.type == "cpu"


def test_claims_is_the_kernel_at_least_tau():
    voxels = torch.tensor([0, 3, 5, 7])
    with torch.device("meta"):
        out = claims(group_kernel, torch.tensor([3, 0], device="cpu"), voxels, 0.5)
    assert out.device.type == "cpu"
    assert out.tolist() == [[False, True, False, False], [True, False, False, False]]


@pytest.mark.parametrize("no_seeds", [True, False])
def test_members_of_no_seeds_or_no_free_voxels_are_empty_on_the_inputs_device(no_seeds):
    cand = torch.arange(9)
    seeds = cand[:0] if no_seeds else torch.tensor([0, 3])
    free_pos = torch.tensor([1, 2, 4]) if no_seeds else cand[:0]
    with torch.device("meta"):
        pos, row = members_of_seeds(group_kernel, cand, seeds, free_pos, 0.5)
    assert pos.shape == row.shape == (0,)
    assert pos.dtype == row.dtype == torch.long and pos.device.type == row.device.type == "cpu"


@pytest.mark.parametrize("rows", [None, 1, 2, 10_000])
def test_members_of_seeds_on_the_inputs_device(rows):
    # seeds 0 and 3 (positions in cand); free voxels 0..6; seed 3 may not be taken by seed 0
    cand = torch.arange(9)
    with torch.device("meta"):
        pos, row = members_of_seeds(group_kernel, cand, torch.tensor([0, 3], device="cpu"),
                                    torch.arange(7, device="cpu"), 0.5, rows)
    assert pos.device.type == row.device.type == "cpu"
    assert pos.tolist() == [0, 1, 2, 3, 4] and row.tolist() == [0, 0, 0, 1, 1]


@pytest.mark.parametrize("rows", [0, -1])
def test_rows_per_chunk_must_be_positive(rows):
    # checked up front, even when there is no seed to chunk (a chunk of 0 rows would never advance)
    with pytest.raises(ValueError, match="rows_per_chunk must be >= 1, got " + str(rows)):
        members_of_seeds(group_kernel, torch.arange(9), torch.arange(9)[:0], torch.arange(9), 0.5, rows)


def test_device_defaults():
    # documented defaults: big blocks and memory-bound chunks on CUDA (each block or chunk costs a
    # sync), small blocks and one-seed chunks elsewhere (no sync cost, least kernel work)
    assert default_block_size(torch.device("cuda")) == 1024
    assert default_block_size(torch.device("cuda", 1)) == 1024
    assert default_block_size(torch.device("cpu")) == 32
    assert default_rows_per_chunk(torch.device("cuda")) == KERNEL_CHUNK_ELEMENTS == 1 << 22
    assert default_rows_per_chunk(torch.device("cpu")) == 1


def test_cpu_defaults_do_the_kernel_work_of_blocks_of_32_and_one_seed_chunks():
    # 40 candidates of one object, scores descending: the first block holds 32 candidates, (32, 32)
    # claims, whose first row is the only seed; it takes all 40 free voxels in one (1, 40) chunk
    n = 40
    shapes = []

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        shapes.append((len(i0), len(idx)))
        return (idx >= 0).float().expand(len(i0), len(idx))

    c = greedy_cluster(torch.linspace(0.9, 0.6, n), torch.ones(n, dtype=torch.bool), kernel, chair_probs(n), 0.5)
    assert c.voxel_instance.tolist() == [0] * n and shapes == [(32, 32), (1, n)]


def test_cpu_default_chunks_take_one_seed_at_a_time():
    # block of all 8 foreground candidates: (8, 8) claims; seeds 7, 0, 3, 5 (by score) then each
    # evaluates the still-free voxels: 8, then 7 (voxel 7 taken alone), then 4, then 2
    shapes = []

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        shapes.append((len(i0), len(idx)))
        return group_kernel(i0, idx)

    c = greedy_cluster(SCORES, GROUP >= 0, kernel, chair_probs(9), 0.5, min_size=2)
    assert c.voxel_instance.tolist() == [0, 0, 0, 1, 1, 2, 2, -1, -1]
    assert shapes == [(8, 8), (1, 8), (1, 7), (1, 4), (1, 2)]


def test_chunks_are_bounded_by_kernel_chunk_elements(monkeypatch):
    # with room for 4 kernel entries a chunk holds max(1, 4 // free) seed rows: 1 row while 8, 7
    # or 4 voxels are free, 2 rows when only 2 are, whatever rows_per_chunk allows beyond that
    monkeypatch.setattr(cluster_module, "KERNEL_CHUNK_ELEMENTS", 4)
    shapes = []

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        shapes.append((len(i0), len(idx)))
        return group_kernel(i0, idx)

    cand = torch.nonzero(GROUP >= 0, as_tuple=True)[0]
    pos, row = members_of_seeds(kernel, cand, torch.tensor([7, 0, 3, 5]), torch.arange(8), 0.5, 10_000)
    assert shapes == [(1, 8), (1, 7), (1, 4), (1, 2)]
    assert pos.tolist() == [7, 0, 1, 2, 3, 4, 5, 6] and row.tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    shapes.clear()
    members_of_seeds(kernel, cand, torch.tensor([7, 0, 3, 5]), torch.tensor([0, 1, 3, 5]), 0.5, 10_000)
    # 4 free: 1 row takes {0, 1}; 2 free: 2 rows (3 and 5) take 3 and 5 together
    assert shapes == [(1, 4), (1, 4), (2, 2)]


@pytest.mark.parametrize("block_size", [1, 256])
def test_a_block_seed_outside_its_own_kernel_stays_unassigned_on_the_inputs_device(block_size):
    # voxel 0 seeds {1} without itself; voxel 2, a later seed of the same block, reaches voxel 0
    # but may not take it (a used seed): seed_row, made on the inputs' device, marks it
    pos = torch.tensor([0.0, 1.0, 3.0, 4.0])
    reach = torch.tensor([1.2, 1.2, 3.5, 1.2])

    def kernel(i0: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        d = (pos[idx] - pos[i0]).abs()
        return ((d >= 0.5) & (d <= reach[i0])).float()

    args = (torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.ones(4, dtype=torch.bool), kernel, chair_probs(4), 0.5, 0.5, 1)
    with torch.device("meta"):
        c = greedy_cluster(*args, block_size=block_size)
    assert c.voxel_instance.device.type == "cpu" and c.voxel_instance.tolist() == [-1, 0, -1, 1]
