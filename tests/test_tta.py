"""Test-time augmentation: poses map back to the identity voxels through the vertices exactly."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from minkseg.config import Config
from minkseg.inference.predict import cluster_output, forward_scene
from minkseg.inference.tta import log_mean_exp_per_group, pose_matrix, transform_scene, tta_poses
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
