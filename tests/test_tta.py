"""Test-time augmentation: poses map back to the identity voxels through the vertices exactly."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from minkseg.config import Config
from minkseg.inference.predict import cluster_output, forward_scene
from minkseg.inference.tta import average_outputs, log_mean_exp_per_group, pose_matrix, transform_scene, tta_poses
from minkseg.models.heads import MarginOutput, ProbabilisticOutput
from minkseg.models.model import ModelOutput, SegmentationModel

VOXEL = 0.1
SEM_W = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.5, -1.0]]).repeat(10, 1)[:20]  # (20, 3): any fixed map


class ColourModel(nn.Module):
    """Outputs that depend on each voxel's colour only, so they do not change with the pose."""

    def __init__(self, head: str):
        super().__init__()
        self.head = head

    def forward(self, batch) -> ModelOutput:
        f = batch.feats[:, :3]
        sem = 4 * f @ SEM_W.T
        if self.head == "margin":
            inst = MarginOutput(batch.centers, torch.zeros_like(batch.centers), 6 * f[:, :1] @ torch.ones(1, 18))
        else:
            inst = ProbabilisticOutput(batch.centers, torch.zeros_like(batch.centers), 5 * f @ SEM_W[:19].T)
        return ModelOutput(sem, inst, f)


class PositionModel(ColourModel):
    """Semantic logits that are a function of the voxel centre in the pass's own frame."""

    def forward(self, batch) -> ModelOutput:
        out = super().forward(batch)
        c = batch.centers
        sem = torch.cat([torch.sin(3 * c), torch.cos(2 * c), c], 1) @ SEM_W[:, :3].repeat(1, 3).T
        return ModelOutput(sem, out.instance, out.features)


def scene_dict(xyz: np.ndarray, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = len(xyz)
    return {"scene": "scene_tta", "xyz": xyz.astype(np.float32),
            "rgb": rng.integers(0, 256, (n, 3)).astype(np.uint8),
            "normals": rng.normal(size=(n, 3)).astype(np.float32)}


def config(rotations: int, flip: bool = True) -> Config:
    cfg = Config()
    cfg.data.voxel_size = VOXEL
    cfg.cluster.tta, cfg.cluster.tta_flip = rotations, flip
    return cfg


def test_poses_and_their_matrices():
    assert tta_poses(1, flip=False) == [(False, 0.0)]
    assert tta_poses(2) == [(False, 0.0), (True, 0.0), (False, 180.0), (True, 180.0)]
    with pytest.raises(ValueError, match="rotation"):
        tta_poses(0)
    np.testing.assert_allclose(pose_matrix(True, 90.0) @ [1.0, 2.0, 3.0], [-2.0, -1.0, 3.0], atol=1e-12)
    for mirror, angle in tta_poses(5):
        m = pose_matrix(mirror, angle)
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)  # rigid: distances kept
        assert np.linalg.det(m) == pytest.approx(-1.0 if mirror else 1.0)
    s = scene_dict(np.eye(3))
    t = transform_scene(s, False, 90.0)
    np.testing.assert_allclose(t["xyz"], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-6)
    assert t["rgb"] is s["rgb"] and t["xyz"].dtype == np.float32


def test_log_mean_exp_per_group(dtype):
    values = torch.tensor([[0.0, -800.0], [math.log(3.0), -801.0], [-2.0, -2.0]], dtype=dtype)
    got = log_mean_exp_per_group(values, torch.tensor([0, 0, 2]), 3)
    assert torch.isfinite(got[[0, 2]]).all() and torch.isneginf(got[1]).all()  # group 1 has no rows
    torch.testing.assert_close(got[0, 0], torch.tensor(math.log(2.0), dtype=dtype))  # mean(1, 3)
    # exp(-800) underflows in both dtypes, its mean does not
    torch.testing.assert_close(got[0, 1], torch.tensor(-800.0 + math.log((1 + math.exp(-1)) / 2), dtype=dtype))
    torch.testing.assert_close(got[2], values[2])


@pytest.mark.parametrize("head", ["margin", "probabilistic"])
def test_pose_invariant_outputs_average_to_the_identity_maps(head):
    # one vertex per voxel in every pose (points 5 voxels apart), so each pose's voxel holds the same vertex
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(5), np.arange(3), indexing="ij"), -1).reshape(-1, 3)
    xyz = grid * 5 * VOXEL + 0.3 * VOXEL
    scene, model = scene_dict(xyz), ColourModel(head)
    plain = forward_scene(model, scene, config(0))
    tta = forward_scene(model, scene, config(3))
    assert len(plain.out.semantic_logits) == len(xyz)
    torch.testing.assert_close(tta.out.semantic_logits, torch.log_softmax(plain.out.semantic_logits, 1))
    if head == "margin":
        torch.testing.assert_close(tta.out.instance.seed_logits, plain.out.instance.seed_logits)
    else:
        torch.testing.assert_close(tta.out.instance.score_logits, torch.log_softmax(plain.out.instance.score_logits, 1))
    # embeddings are the identity pass's, untouched
    assert torch.equal(tta.out.instance.log_sigma if head == "probabilistic" else tta.out.instance.sigma_logit,
                       torch.zeros(len(xyz), 3))
    assert torch.equal(tta.inverse, plain.inverse) and torch.equal(tta.batch.coords, plain.batch.coords)


def test_averaged_probabilities_equal_a_hand_average_over_vertices_and_poses():
    rng = np.random.default_rng(5)
    xyz = rng.uniform(0, 0.8, size=(400, 3))  # many vertices share voxels, differently in every pose
    scene, model = scene_dict(xyz, seed=1), PositionModel("margin")
    cfg = config(3)
    tta = forward_scene(model, scene, cfg)
    got = tta.out.semantic_logits.exp()[tta.inverse].double().numpy()  # per vertex: its identity voxel's average
    # by hand: each pose's voxel of every vertex, the model's probabilities there, then the mean over poses
    # and over the vertices of the vertex's identity-pose cell
    cells0 = np.floor((xyz - xyz.min(0)) / VOXEL).astype(np.int64)
    _, cell_of_vertex = np.unique(cells0, axis=0, return_inverse=True)
    per_vertex = np.zeros((len(xyz), 20))
    poses = tta_poses(3)
    for mirror, angle in poses:
        t = np.radians(angle)
        p = xyz * np.array([-1.0 if mirror else 1.0, 1.0, 1.0])
        p = np.stack([np.cos(t) * p[:, 0] - np.sin(t) * p[:, 1], np.sin(t) * p[:, 0] + np.cos(t) * p[:, 1], p[:, 2]], 1)
        p = p.astype(np.float32).astype(np.float64)
        centre = (np.floor((p - p.min(0)) / VOXEL) + 0.5) * VOXEL
        batch = type("B", (), {})()
        batch.centers = torch.from_numpy(centre).float()
        batch.feats = torch.zeros(len(xyz), 3)
        logits = model(batch).semantic_logits.double()
        per_vertex += torch.softmax(logits, 1).numpy() / len(poses)
    sums = np.zeros((cell_of_vertex.max() + 1, 20))
    np.add.at(sums, cell_of_vertex, per_vertex)
    want = sums[cell_of_vertex] / np.bincount(cell_of_vertex)[cell_of_vertex, None]
    np.testing.assert_allclose(got, want, atol=2e-5)
    # the augmentation changed something: the identity pass alone differs from the average
    plain = forward_scene(model, scene, config(0))
    assert not np.allclose(torch.softmax(plain.out.semantic_logits, 1)[plain.inverse].numpy(), want, atol=1e-3)


@pytest.mark.parametrize("head", ["probabilistic", "margin"])
def test_tta_with_the_small_network_keeps_shapes_and_clusters(head, prepared_dir):
    from scannet_tools.prepare import load_prepared

    scene = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    torch.manual_seed(0)
    model = SegmentationModel.build(head, backbone="MinkUNet14A")
    cfg = config(2)
    cfg.data.voxel_size = 0.05
    plain, tta = forward_scene(model, scene, _with(cfg, 0)), forward_scene(model, scene, cfg)
    assert tta.out.semantic_logits.shape == plain.out.semantic_logits.shape
    assert torch.isfinite(tta.out.semantic_logits).all()
    torch.testing.assert_close(tta.out.semantic_logits.exp().sum(1), torch.ones(len(tta.out.semantic_logits)))
    for f in ("mu", "log_sigma") if head == "probabilistic" else ("embedding", "sigma_logit"):
        assert torch.equal(getattr(tta.out.instance, f), getattr(plain.out.instance, f))
    for grouping in ("greedy", "meanshift"):
        cfg.cluster.grouping = grouping
        c = cluster_output(tta.out, cfg.cluster)
        assert c.voxel_instance.shape == (len(tta.out.semantic_logits),)


def _with(cfg: Config, rotations: int) -> Config:
    import copy

    out = copy.deepcopy(cfg)
    out.cluster.tta = rotations
    return out


def probability_rows(first: list[float], width: int) -> np.ndarray:
    """Rows of ``width`` probabilities: column 0 from ``first``, column 1 the rest of 0.9, 0.1 spread evenly."""
    p = np.full((len(first), width), 0.1 / (width - 2))
    p[:, 0] = first
    p[:, 1] = 0.9 - np.asarray(first)
    return p


def test_average_outputs_by_hand_through_the_vertices(dtype):
    # identity pass: 2 voxels, vertices 0 and 1 in voxel 0, vertex 2 in voxel 1; two more poses
    inverse = [torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0])]
    sem = [probability_rows(a, 20) for a in ([0.8, 0.2], [0.6, 0.4, 0.1], [0.5, 0.3])]
    score = [probability_rows(a, 20) for a in ([0.7, 0.1], [0.3, 0.5, 0.8], [0.2, 0.4])]
    seed = [np.array(a)[:, None] * np.ones(18) for a in ([0.9, 0.2], [0.5, 0.7, 0.1], [0.6, 0.3])]

    def outputs(head: str) -> list[ModelOutput]:
        outs = []
        for s, c, d in zip(sem, score, seed):
            n = len(s)
            emb = torch.full((n, 3), float(n))
            if head == "probabilistic":
                inst = ProbabilisticOutput(emb, -emb, torch.tensor(np.log(c), dtype=dtype))
            else:
                inst = MarginOutput(emb, -emb, torch.tensor(np.log(d / (1 - d)), dtype=dtype))
            outs.append(ModelOutput(torch.tensor(np.log(s), dtype=dtype), inst, emb + 1))
        return outs

    def by_hand(maps: list[np.ndarray]) -> np.ndarray:
        # each identity voxel j: mean over poses of the mean over j's vertices v of pose p's map at inverse_p[v]
        owner = inverse[0].numpy()
        return np.stack([np.mean([m[inv.numpy()[owner == j]].mean(0) for m, inv in zip(maps, inverse)], 0)
                         for j in range(2)])

    for head in ("probabilistic", "margin"):
        outs = outputs(head)
        avg = average_outputs(outs[0], inverse[0], ((o, i) for o, i in zip(outs[1:], inverse[1:])))
        assert avg.semantic_logits.dtype == dtype
        torch.testing.assert_close(avg.semantic_logits.exp().double(), torch.tensor(by_hand(sem)))
        if head == "probabilistic":
            torch.testing.assert_close(avg.instance.score_logits.exp().double(), torch.tensor(by_hand(score)))
        else:
            m = by_hand(seed)
            torch.testing.assert_close(avg.instance.seed_logits.double(), torch.tensor(np.log(m / (1 - m))))
        # embeddings and features are the identity pass's objects
        ident = outs[0]
        emb = (ident.instance.mu, ident.instance.log_sigma) if head == "probabilistic" else (
            ident.instance.embedding, ident.instance.sigma_logit)
        got = (avg.instance.mu, avg.instance.log_sigma) if head == "probabilistic" else (
            avg.instance.embedding, avg.instance.sigma_logit)
        assert got[0] is emb[0] and got[1] is emb[1] and avg.features is ident.features
    # no other pose: the identity's own maps, as log-probabilities
    outs = outputs("margin")
    alone = average_outputs(outs[0], inverse[0], [])
    torch.testing.assert_close(alone.semantic_logits.exp().double(), torch.tensor(sem[0]))
    torch.testing.assert_close(alone.instance.seed_logits.double(), torch.tensor(np.log(seed[0] / (1 - seed[0]))))


def test_transform_scene_maps_normals_too_and_leaves_the_scene_alone():
    s = scene_dict(np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    s["normals"] = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    t = transform_scene(s, True, 90.0)  # mirror x, then rotate by 90 degrees: (x, y) -> (-y, -x)
    np.testing.assert_allclose(t["xyz"], [[0, -1, 0], [-2, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(t["normals"], [[-1, 0, 0], [0, -1, 0]], atol=1e-6)
    assert t["normals"].dtype == np.float32
    np.testing.assert_array_equal(s["normals"], [[0, 1, 0], [1, 0, 0]])  # the input scene is not modified
    np.testing.assert_array_equal(s["xyz"], [[1, 0, 0], [0, 2, 0]])
    bare = {"xyz": np.array([[0.0, 3.0, 1.0]])}  # no normals: only xyz is mapped
    t = transform_scene(bare, False, 180.0)
    assert sorted(t) == ["xyz"]
    np.testing.assert_allclose(t["xyz"], [[0, -3, 1]], atol=1e-12)
    with pytest.raises(ValueError, match=r"^test-time augmentation needs >= 1 rotation, got 0$"):
        tta_poses(0)


def test_log_mean_exp_keeps_the_values_dtype_and_counts_trailing_empty_groups():
    # float64 values under the float32 default dtype: no step may fall back to float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        values = torch.tensor([[0.0], [math.log(2.0)], [math.log(6.0)], [-1.5]], dtype=torch.float64)
        got = log_mean_exp_per_group(values, torch.tensor([0, 0, 0, 1]), 3)  # group 2 (the last) empty
    finally:
        torch.set_default_dtype(old)
    assert got.dtype == torch.float64 and got.shape == (3, 1)
    assert abs(float(got[0, 0]) - math.log(3.0)) < 1e-14  # mean(1, 2, 6) = 3
    assert float(got[1, 0]) == -1.5 and torch.isneginf(got[2]).all()


def test_log_mean_exp_and_averaging_make_their_tensors_on_the_inputs_device():
    # under PyTorch's meta default device, a tensor made without the inputs' device lands on meta and fails
    # against the CPU inputs (see tests/meta_device.py); the values must be those made at home
    values = torch.tensor([[0.0, -1.0], [math.log(3.0), -2.0], [-2.0, 0.5]])
    group = torch.tensor([0, 0, 2])
    sem = torch.log_softmax(torch.tensor([[1.0] + [0.0] * 19, [0.0] * 19 + [2.0]]), 1)
    seed = torch.tensor([[0.5] * 18, [-1.0] * 18])
    identity = ModelOutput(sem, MarginOutput(torch.zeros(2, 3), torch.zeros(2, 3), seed))
    other = ModelOutput(sem.flip(0), MarginOutput(torch.zeros(2, 3), torch.zeros(2, 3), seed.flip(0)))
    inverse, other_inverse = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 0])
    with torch.device("meta"):
        got = log_mean_exp_per_group(values, group, 3)
        avg = average_outputs(identity, inverse, [(other, other_inverse)])
    assert got.device.type == "cpu" and avg.semantic_logits.device.type == avg.instance.seed_logits.device.type == "cpu"
    want = torch.tensor([[math.log(2.0), math.log((math.exp(-1) + math.exp(-2)) / 2)],
                         [-math.inf, -math.inf], [-2.0, 0.5]])
    torch.testing.assert_close(got, want)
    # the other pose holds the same maps with its voxels swapped, and its vertices too: the averages are the
    # identity's own maps
    torch.testing.assert_close(avg.semantic_logits, sem)
    torch.testing.assert_close(avg.instance.seed_logits, seed)
