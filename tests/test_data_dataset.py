"""minkseg.data.dataset with hand-made prepared scenes: what an item holds (coordinates, features,
labels, pseudo labels, weight), which augmentation it draws, the worker-count rule, the sampler
and the loaders' settings. test_dataloader.py runs the loaders with real worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from minkseg.data import dataset as dataset_module
from minkseg.data.augment import AugmentConfig, augment
from minkseg.data.dataset import (
    EpochBatchSampler,
    PreparedFiles,
    PreparedScenes,
    default_workers,
    iterate_prepared,
    load_pseudo_labels,
    resolve_workers,
    training_loader,
)
from minkseg.data.voxelize import collate, voxelize

# three vertices in three voxels of 0.5 m once the scene is moved to the origin
XYZ = np.array([[10.2, 20.1, 1.0], [10.9, 20.1, 1.0], [10.2, 21.3, 1.7]], np.float32)
RGB = np.array([[255, 0, 51], [0, 255, 102], [51, 102, 255]], np.uint8)
NORMALS = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
SEMANTIC = np.array([5, 5, 0], np.int64)
INSTANCE = np.array([3, 3, -1], np.int64)


def write_scene(folder: Path, name: str, xyz: np.ndarray = XYZ) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, scene=name, xyz=xyz, rgb=RGB, normals=NORMALS, semantic=SEMANTIC, instance=INSTANCE)
    return path


def write_labels(path: Path, semantic, instance) -> Path:
    np.savez(path, semantic=np.asarray(semantic, np.int64), instance=np.asarray(instance, np.int64))
    return path


def by_vertex(values: torch.Tensor, inverse: torch.Tensor) -> np.ndarray:
    """A per-voxel tensor read at each vertex's voxel."""
    return values[inverse].numpy()


def test_an_item_without_augmentation_is_the_scene_moved_to_the_origin(tmp_path):
    ds = PreparedScenes([write_scene(tmp_path, "scene0001_00")], voxel_size=0.5)
    vox = ds[0]
    assert vox.scene == "scene0001_00" and vox.voxel_size == 0.5 and len(vox.coords) == 3
    # (xyz - min) / 0.5, floored: (0, 0, 0), (1.4 -> 1, 0, 0), (0, 2.4 -> 2, 1.4 -> 1)
    np.testing.assert_array_equal(by_vertex(vox.coords, vox.inverse), [[0, 0, 0], [1, 0, 0], [0, 2, 1]])
    np.testing.assert_allclose(by_vertex(vox.feats, vox.inverse), RGB / 255.0 - 0.5, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(by_vertex(vox.semantic, vox.inverse), [5, 5, 0])
    inst = by_vertex(vox.instance, vox.inverse)
    assert inst[0] == inst[1] == 0 and inst[2] == -1 and vox.instance_class.tolist() == [5]
    assert vox.labeled is True and vox.weight == 1.0 and type(vox.weight) is float


def test_normals_follow_the_colours_when_asked(tmp_path):
    ds = PreparedScenes([write_scene(tmp_path, "scene0001_00")], voxel_size=0.5, use_normals=True)
    feats = by_vertex(ds[0].feats, ds[0].inverse)
    np.testing.assert_allclose(feats, np.concatenate([RGB / 255.0 - 0.5, NORMALS], 1), rtol=0, atol=1e-7)


def test_constructor_defaults(tmp_path):
    ds = PreparedScenes([str(write_scene(tmp_path, "scene0001_00"))])
    assert (ds.voxel_size, ds.augment, ds.use_normals, ds.seed, ds.epoch) == (0.02, None, False, 0, 0)
    assert ds.files == [tmp_path / "scene0001_00.npz"] and ds.label_files == [None] and ds.weights == [1.0]
    assert len(ds) == 1 and ds[0].feats.shape == (3, 3) and ds[0].voxel_size == 0.02


def test_constructor_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"^no prepared scenes given$"):
        PreparedScenes([])
    f = write_scene(tmp_path, "scene0001_00")
    for kw in ({"label_files": [None, None]}, {"weights": [1.0, 2.0]}, {"label_files": [], "weights": []}):
        with pytest.raises(ValueError, match=r"^files, label_files and weights must have the same length$"):
            PreparedScenes([f], **kw)


def test_pseudo_labels_replace_the_ground_truth_and_the_weight_scales_the_scene(tmp_path):
    files = [write_scene(tmp_path, "scene0001_00"), write_scene(tmp_path, "scene0002_00")]
    labels = write_labels(tmp_path / "pl.npz", [0, 7, 7], [-1, 4, 4])
    ds = PreparedScenes(files, voxel_size=0.5, label_files=[None, labels], weights=[1, 0.25])
    truth, pseudo = ds[0], ds[1]
    assert truth.labeled is True and truth.weight == 1.0 and type(truth.weight) is float
    assert pseudo.labeled is False and pseudo.weight == 0.25
    np.testing.assert_array_equal(by_vertex(pseudo.semantic, pseudo.inverse), [0, 7, 7])
    inst = by_vertex(pseudo.instance, pseudo.inverse)
    assert inst[0] == -1 and inst[1] == inst[2] == 0 and pseudo.instance_class.tolist() == [7]


def test_load_pseudo_labels_checks_both_lengths(tmp_path):
    good = write_labels(tmp_path / "a.npz", [1, 2, 3], [0, 0, -1])
    sem, inst = load_pseudo_labels(good, 3)
    assert sem.tolist() == [1, 2, 3] and inst.tolist() == [0, 0, -1]
    for name, sem, inst in (("b", [1, 2], [0, 0, 0]), ("c", [1, 2, 3], [0, 0])):
        path = write_labels(tmp_path / f"{name}.npz", sem, inst)
        with pytest.raises(ValueError) as err:
            load_pseudo_labels(path, 3)
        assert str(err.value) == f"{path}: {len(sem)} pseudo labels for a scene of 3 vertices"


def test_augmentation_is_drawn_from_seed_epoch_and_item(tmp_path):
    xyz = np.random.default_rng(0).uniform(0, 2, (50, 3)).astype(np.float32)
    files = [write_scene(tmp_path, f"scene000{i}_00") for i in range(2)]
    big = tmp_path / "scene0009_00.npz"
    np.savez(big, scene="scene0009_00", xyz=xyz, rgb=np.zeros((50, 3), np.uint8), normals=np.zeros((50, 3)),
             semantic=np.zeros(50, np.int64), instance=np.full(50, -1))
    files.append(big)
    cfg = AugmentConfig(voxel_size=0.1, max_voxels=20)  # a crop: the keep mask goes to voxelize
    ds = PreparedScenes(files, voxel_size=0.1, augment=cfg, seed=11)

    def expected(epoch: int) -> torch.Tensor:
        a_xyz, a_rgb, keep = augment(xyz, np.zeros((50, 3), np.uint8), cfg, np.random.default_rng([11, epoch, 2]))
        assert not keep.all()
        ref = voxelize(a_xyz, a_rgb.astype(np.float32) / 255 - 0.5, None, None, 0.1, keep=keep)
        return ref.coords[ref.inverse.clamp(min=0)] * (ref.inverse >= 0)[:, None]

    def got(vox) -> torch.Tensor:
        return vox.coords[vox.inverse.clamp(min=0)] * (vox.inverse >= 0)[:, None]

    torch.testing.assert_close(got(ds[(3, 2)]), expected(3), rtol=0, atol=0)
    ds.epoch = 5
    torch.testing.assert_close(got(ds[2]), expected(5), rtol=0, atol=0)
    torch.testing.assert_close(got(ds[(3, 2)]), expected(3), rtol=0, atol=0)  # the key's epoch wins
    assert not torch.equal(got(ds[(3, 2)]), got(ds[(4, 2)]))


def test_from_dir_lists_the_folders_scenes_or_the_named_ones(tmp_path):
    for name in ("scene0002_00", "scene0001_00"):
        write_scene(tmp_path, name)
    (tmp_path / "other.npz").write_bytes(b"")
    ds = PreparedScenes.from_dir(tmp_path, voxel_size=0.5, seed=4)
    assert [f.name for f in ds.files] == ["scene0001_00.npz", "scene0002_00.npz"] and ds.seed == 4
    assert ds.voxel_size == 0.5
    named = PreparedScenes.from_dir(str(tmp_path), ["scene0002_00"])
    assert named.files == [tmp_path / "scene0002_00.npz"]
    with pytest.raises(FileNotFoundError) as err:
        PreparedScenes.from_dir(tmp_path, ["scene0001_00", "scene0007_00", "scene0008_00", "scene0005_00",
                                           "scene0006_00"])
    assert str(err.value) == (f"{tmp_path}: 4 prepared scenes missing, e.g. ['scene0007_00.npz', "
                              "'scene0008_00.npz', 'scene0005_00.npz']")


# ------------------------------------------------------------------------------ workers


@pytest.mark.parametrize("cpus, local, workers", [(20, "1", 8), (20, "2", 8), (20, "4", 5), (6, "x", 6),
                                                   (6, "0", 6), (3, "4", 0), (16, "2", 8), (17, "2", 8)])
def test_default_workers_share_the_cpus_among_the_nodes_ranks(monkeypatch, cpus, local, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_workers() == workers


def test_default_workers_without_affinity_count_the_cpus(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert default_workers() == 5
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1


def test_default_workers_read_this_process_affinity(monkeypatch):
    asked = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: asked.append(pid) or {0, 1, 2}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 3 and asked == [0]


def test_resolve_workers(monkeypatch):
    monkeypatch.setattr(dataset_module, "default_workers", lambda: 6)
    assert [resolve_workers(w) for w in (-1, 0, 3)] == [6, 0, 3]
    with pytest.raises(ValueError) as err:
        resolve_workers(-2)
    assert str(err.value) == "train.workers=-2: use -1 (from the CPU count), 0 (no workers) or a count"


# ------------------------------------------------------------------------------ sampler and loaders


def test_sampler_yields_epoch_keys_of_the_fixed_batches():
    sampler = EpochBatchSampler()
    assert (sampler.epoch, sampler.batches, len(sampler), list(sampler)) == (0, [], 0, [])
    sampler.set_epoch(4, [np.array([2, 0]), (1,)])
    assert sampler.epoch == 4 and sampler.batches == [[2, 0], [1]] and len(sampler) == 2
    got = list(sampler)
    assert got == [[(4, 2), (4, 0)], [(4, 1)]] and all(type(i) is int for b in got for _, i in b)


def test_training_loader_settings(tmp_path):
    ds = PreparedScenes([write_scene(tmp_path, "scene0001_00")], voxel_size=0.5)
    sampler = EpochBatchSampler()
    plain = training_loader(ds, sampler)
    assert (plain.num_workers, plain.persistent_workers, plain.pin_memory) == (0, False, False)
    assert plain.batch_sampler is sampler and plain.collate_fn is collate and plain.dataset is ds
    pooled = training_loader(ds, sampler, workers=2, prefetch=5, pin_memory=True)
    assert (pooled.num_workers, pooled.persistent_workers, pooled.prefetch_factor, pooled.pin_memory) == (
        2, True, 5, True)
    assert training_loader(ds, sampler, workers=1, prefetch=1).prefetch_factor == 1
    assert training_loader(ds, sampler, workers=1).prefetch_factor == 2  # the default: two batches ahead
    with pytest.raises(ValueError) as err:
        training_loader(ds, sampler, workers=2, prefetch=0)
    assert str(err.value) == "train.prefetch=0: each worker must prepare at least one batch ahead"
    sampler.set_epoch(1, [[0], [0]])
    batches = list(plain)
    assert len(batches) == 2 and [s.scene for s in batches[0].scenes] == ["scene0001_00"]


def test_prepared_files_yield_arrays_or_errors(tmp_path):
    good = write_scene(tmp_path, "scene0001_00")
    bad = tmp_path / "scene0002_00.npz"
    bad.write_bytes(b"PK\x03\x04 broken")
    files = PreparedFiles([str(good), bad], errors_as_values=True)
    assert len(files) == 2 and files.files == [good, bad]
    assert files[0]["scene"] == "scene0001_00"
    np.testing.assert_array_equal(files[0]["xyz"], XYZ)
    assert isinstance(files[1], Exception)
    with pytest.raises(Exception):  # noqa: B017 - whatever numpy raises for a broken archive
        PreparedFiles([bad])[0]


def test_iterate_prepared_in_this_process_keeps_the_order_and_the_errors(tmp_path):
    files = [write_scene(tmp_path, "scene0002_00"), write_scene(tmp_path, "scene0001_00")]
    assert [s["scene"] for s in iterate_prepared(files)] == ["scene0002_00", "scene0001_00"]
    assert list(iterate_prepared([])) == []
    missing = tmp_path / "scene0003_00.npz"
    got = list(iterate_prepared(files + [missing], errors_as_values=True))
    assert [g["scene"] for g in got[:2]] == ["scene0002_00", "scene0001_00"] and isinstance(got[2], OSError)
    with pytest.raises(OSError):
        list(iterate_prepared([missing]))


def test_iterate_prepared_loader_settings(monkeypatch, tmp_path):
    made = []

    class Recorder:
        def __init__(self, dataset, **kw):
            made.append((dataset, kw))

        def __iter__(self):
            return iter(["scene"])

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recorder)
    files = [tmp_path / "a.npz", tmp_path / "b.npz"]
    assert list(iterate_prepared(files, workers=5, prefetch=3, errors_as_values=True)) == ["scene"]
    dataset, kw = made[-1]
    assert isinstance(dataset, PreparedFiles) and dataset.files == files and dataset.errors_as_values is True
    assert kw == {"batch_size": None, "collate_fn": dataset_module._as_is, "num_workers": 2, "prefetch_factor": 3}
    list(iterate_prepared(files))
    dataset, kw = made[-1]
    assert dataset.errors_as_values is False
    assert kw == {"batch_size": None, "collate_fn": dataset_module._as_is, "num_workers": 0}
    list(iterate_prepared(files, workers=1))
    assert made[-1][1] == {"batch_size": None, "collate_fn": dataset_module._as_is, "num_workers": 1,
                           "prefetch_factor": 2}
    item = {"xyz": np.zeros(1)}
    assert dataset_module._as_is(item) is item
