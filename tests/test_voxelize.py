"""Voxelization, augmentation and devoxelization."""

import numpy as np
import pytest
import torch

from minkseg.data.augment import AugmentConfig, augment, crop_mask
from minkseg.data.voxelize import VoxelScene, collate, input_features, majority_vote, voxelize
from minkseg.inference.devoxelize import devoxelize, resolve_inverse
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, IGNORE_ID, SEMANTIC_NAMES
from scannet_tools.prepare import load_prepared


def test_majority_vote_ignores_ignore():
    group = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([3, 3, 5, IGNORE_ID, 7, IGNORE_ID])
    assert majority_vote(group, labels, 3, IGNORE_ID).tolist() == [3, 7, IGNORE_ID]


def test_voxelize_devoxelize_round_trip(prepared_dir):
    s = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    xyz = s["xyz"] - s["xyz"].min(0)
    v = voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], voxel_size=0.05)
    assert (v.inverse >= 0).all() and len(v.coords) <= len(xyz)
    # each vertex lies inside its voxel
    np.testing.assert_array_equal(np.floor(xyz / 0.05).astype(np.int32), v.coords[v.inverse].numpy())
    # devoxelized voxel labels agree with the vertices' own labels almost everywhere
    sem_v = devoxelize(v.semantic, v.inverse).numpy()
    known = s["semantic"] != IGNORE_ID
    assert (sem_v[known] == s["semantic"][known]).mean() > 0.95
    # instances renumbered 0..K-1 with one class each, all of them instance classes
    assert v.instance.max() + 1 == v.num_instances and (v.instance_class >= 2).all()


def test_crop_keeps_a_window_and_devoxelize_falls_back_to_nearest(prepared_dir):
    s = load_prepared(sorted(prepared_dir.glob("*.npz"))[0])
    xyz = s["xyz"] - s["xyz"].min(0)
    keep = crop_mask(xyz, 200, 0.05, np.random.default_rng(0))
    assert 0 < keep.sum() < len(xyz)
    v = voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], 0.05, keep=keep)
    assert (v.inverse[~torch.from_numpy(keep)] == -1).all()
    with pytest.raises(ValueError, match="no voxel"):
        resolve_inverse(v.inverse)
    full = resolve_inverse(v.inverse, xyz, v.centers.numpy())
    assert (full >= 0).all()
    far = np.flatnonzero(~keep)[:50]
    d = np.linalg.norm(v.centers.numpy()[full[far].numpy()] - xyz[far], axis=1)
    d_min = np.linalg.norm(v.centers.numpy()[None] - xyz[far][:, None], axis=2).min(1)
    np.testing.assert_allclose(d, d_min, rtol=1e-6)


def test_augment_is_seeded_and_preserves_shape():
    xyz = np.random.default_rng(0).uniform(0, 3, (500, 3)).astype(np.float32)
    rgb = np.full((500, 3), 128, np.uint8)
    cfg = AugmentConfig(elastic=True)
    a = augment(xyz, rgb, cfg, np.random.default_rng(5))
    b = augment(xyz, rgb, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == xyz.shape and a[0].min() >= 0 and a[2].all()
    # distances are preserved up to scale and small jitter/elastic noise
    d0 = np.linalg.norm(xyz[0] - xyz[1])
    d1 = np.linalg.norm(a[0][0] - a[0][1])
    assert 0.6 * d0 < d1 < 1.4 * d0


def test_collate_offsets_instances(prepared_dir):
    files = sorted(prepared_dir.glob("*.npz"))[:2]
    scenes = []
    for f in files:
        s = load_prepared(f)
        xyz = s["xyz"] - s["xyz"].min(0)
        scenes.append(voxelize(xyz, input_features(s["rgb"]), s["semantic"], s["instance"], 0.05))
    b = collate(scenes)
    assert b.coords.shape[1] == 4 and b.batch.max() == 1
    k0 = scenes[0].num_instances
    assert b.instance[b.batch == 1].max() == k0 + scenes[1].num_instances - 1
    assert len(b.instance_class) == k0 + scenes[1].num_instances


@pytest.mark.parametrize("dense_limit", [0, 1 << 23])  # the sorted-pairs path and the dense table
def test_majority_vote_breaks_ties_towards_the_smaller_label(dense_limit):
    group = np.array([0, 0, 1, 1, 1, 1, 3])
    labels = np.array([10, 0, 4, 4, 2, 2, IGNORE_ID])
    assert majority_vote(group, labels, 4, IGNORE_ID, dense_limit).tolist() == [0, 2, IGNORE_ID, IGNORE_ID]


def test_majority_vote_paths_agree():
    rng = np.random.default_rng(0)
    group, labels = rng.integers(0, 300, 5000), rng.integers(-3, 12, 5000)
    np.testing.assert_array_equal(majority_vote(group, labels, 301, -1, dense_limit=0),
                                  majority_vote(group, labels, 301, -1))


SEM = {name: i for i, name in enumerate(SEMANTIC_NAMES)}


def sheet(u0: float, u1: float, z0: float, z1: float, y: float, step: float = 0.01) -> np.ndarray:
    """Vertices every ``step`` of the rectangle [u0, u1) x [z0, z1) in the plane y (x = u)."""
    u, z = np.meshgrid(np.arange(u0, u1, step), np.arange(z0, z1, step), indexing="ij")
    return np.stack([u.ravel(), np.full(u.size, y), z.ravel()], 1)


def wall_with_thin_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """A 4 m x 2.5 m wall (plane y = 0, a vertex per cm, as in a ScanNet mesh) carrying
    1-vertex-thick objects: a window in the wall plane (no wall behind it), a picture 5 mm
    proud of the wall, a door frame of three 6 cm strips 1 cm proud around an opening, and
    a curtain 8 cm in front. Returns xyz, semantic, instance and {instance id: class}."""
    window, door = (0.2, 1.2, 1.0, 2.0), (2.2, 3.0, 0.0, 2.1)
    wall = sheet(0, 4, 0, 2.5, 0.0)
    in_window = ((wall[:, 0] >= window[0]) & (wall[:, 0] < window[1]) & (wall[:, 2] >= window[2])
                 & (wall[:, 2] < window[3]))
    in_door = (wall[:, 0] >= door[0]) & (wall[:, 0] < door[1]) & (wall[:, 2] < door[3])
    parts = [(wall[~in_window & ~in_door], SEM["wall"], -1), (sheet(*window, 0.0), SEM["window"], 1),
             (sheet(1.4, 2.0, 1.3, 1.8, -0.005), SEM["picture"], 2),
             (np.concatenate([sheet(2.14, 2.2, 0, 2.16, -0.01), sheet(3.0, 3.06, 0, 2.16, -0.01),
                              sheet(2.2, 3.0, 2.1, 2.16, -0.01)]), SEM["door"], 3),
             (sheet(3.2, 3.9, 0.2, 2.4, -0.08), SEM["curtain"], 4)]
    xyz = np.concatenate([p for p, _, _ in parts])
    semantic = np.concatenate([np.full(len(p), c) for p, c, _ in parts])
    instance = np.concatenate([np.full(len(p), k) for p, _, k in parts])
    return xyz, semantic, instance, {k: c for _, c, k in parts if k >= 0}


@pytest.mark.parametrize("voxel_size", [0.02, 0.05, 0.10])
def test_thin_wall_objects_never_become_wall_instances(voxel_size):
    xyz0, semantic, instance, true_class = wall_with_thin_objects()
    rng = np.random.default_rng(int(voxel_size * 100))
    for _ in range(4):
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        xyz = (xyz0 @ rot.T + rng.uniform(-1, 1, 3)).astype(np.float32)
        v = voxelize(xyz, np.zeros((len(xyz), 3), np.float32), semantic, instance, voxel_size)
        member = v.instance >= 0
        # every instance is one of the objects, with that object's class: never wall, floor or negative
        assert (v.instance_class >= FIRST_INSTANCE_TRAIN_ID).all()
        vertex_instance = v.instance[v.inverse].numpy()
        for k in range(v.num_instances):
            ids = instance[(vertex_instance == k) & (instance >= 0)]
            source = np.bincount(ids).argmax()
            assert v.instance_class[k] == true_class[source], (voxel_size, k, source)
        # a voxel is a member exactly when it carries its instance's class
        assert torch.equal(v.semantic[member], v.instance_class[v.instance[member]])
        assert (v.semantic[~member] < FIRST_INSTANCE_TRAIN_ID).all()
        collate([v])  # passes the batch-time label check
        survivors = {true_class[int(np.bincount(instance[(vertex_instance == k) & (instance >= 0)]).argmax())]
                     for k in range(v.num_instances)}
        assert SEM["window"] in survivors  # not vacuous: objects with voxels of their own stay
        if voxel_size <= 0.05:  # a 5 cm cube spans at most 7.1 cm across the wall: the curtain keeps its voxels
            assert SEM["curtain"] in survivors


def test_an_object_that_loses_every_voxel_to_the_wall_disappears():
    # a sparse picture 3 mm in front of a dense wall: every 10 cm voxel votes wall
    wall = sheet(0, 1, 0, 1, 0.001)
    picture = sheet(0.2, 0.8, 0.2, 0.8, 0.004, step=0.02)
    xyz = np.concatenate([wall, picture]).astype(np.float32)
    semantic = np.r_[np.full(len(wall), SEM["wall"]), np.full(len(picture), SEM["picture"])]
    instance = np.r_[np.full(len(wall), -1), np.full(len(picture), 0)]
    v = voxelize(xyz, np.zeros((len(xyz), 3), np.float32), semantic, instance, 0.1)
    assert (v.semantic == SEM["wall"]).all()
    assert v.num_instances == 0 and (v.instance == -1).all()


def test_instance_class_is_voted_over_vertices_not_voxels():
    # instance 5: 2 voxels of 10 sofa vertices, 3 voxels holding one (mislabelled) chair vertex each
    xyz = np.concatenate([np.full((10, 3), 0.05), np.full((10, 3), 0.15),
                          [[0.35, 0.05, 0.05], [0.55, 0.05, 0.05], [0.75, 0.05, 0.05]]]).astype(np.float32)
    semantic = np.r_[np.full(20, SEM["sofa"]), np.full(3, SEM["chair"])]
    v = voxelize(xyz, np.zeros((23, 3), np.float32), semantic, np.full(23, 5), 0.1)
    assert v.num_instances == 1 and v.instance_class.tolist() == [SEM["sofa"]]
    assert (v.instance == 0).all()


def test_wall_vertices_do_not_lend_their_voxel_to_an_instance():
    # one voxel: 3 wall vertices and 1 chair vertex; another: chair only
    xyz = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.03, 0, 0], [0.04, 0, 0], [0.15, 0, 0]], np.float32)
    semantic = np.array([0, 0, 0, 4, 4])
    instance = np.array([-1, -1, -1, 2, 2])
    v = voxelize(xyz, np.zeros((5, 3), np.float32), semantic, instance, 0.1)
    assert v.semantic[v.inverse].tolist() == [0, 0, 0, 0, 4]
    assert v.instance[v.inverse].tolist() == [-1, -1, -1, -1, 0] and v.instance_class.tolist() == [4]


def hand_scene(semantic, instance, instance_class) -> VoxelScene:
    m = len(semantic)
    return VoxelScene(scene="scene_hand", coords=torch.zeros(m, 3, dtype=torch.int32), feats=torch.zeros(m, 3),
                      centers=torch.zeros(m, 3), semantic=torch.tensor(semantic), instance=torch.tensor(instance),
                      instance_class=torch.tensor(instance_class, dtype=torch.long),
                      inverse=torch.arange(m), voxel_size=0.1)


@pytest.mark.parametrize("semantic,instance,instance_class,message", [
    ([0, 4], [0, 0], [0], "scene_hand: instance 0 has class 0"),
    ([4, 4], [0, 0], [-1], "scene_hand: instance 0 has class -1"),
    ([4, 4], [0, 0], [IGNORE_ID], "scene_hand: instance 0 has class -100"),
    ([4, 0], [0, 0], [4], "scene_hand: 1 instance voxels are labelled wall"),
    ([4, 4], [0, 1], [4], "scene_hand: voxel instance index 1 but only 1"),
])
def test_collate_refuses_instances_that_are_not_of_an_instance_class(semantic, instance, instance_class, message):
    with pytest.raises(ValueError, match=message):
        collate([hand_scene(semantic, instance, instance_class)])
    collate([hand_scene([4, 0], [0, -1], [4])])  # agreeing labels pass
