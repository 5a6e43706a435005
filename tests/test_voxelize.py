"""Voxelization, augmentation and devoxelization."""

import numpy as np
import pytest
import torch

from minkseg.data.augment import AugmentConfig, augment, crop_mask
from minkseg.data.voxelize import collate, input_features, majority_vote, voxelize
from minkseg.devoxelize import devoxelize, resolve_inverse
from scannet_tools.labels import IGNORE_ID
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
