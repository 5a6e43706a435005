"""voxelize -> devoxelize round trips on random point clouds under random crops (hypothesis).

Everything expected is computed here by a plain per-vertex / per-voxel transcription of
the rules in the docstrings of :mod:`minkseg.data.voxelize` and
:mod:`minkseg.inference.devoxelize`, never by the code under test:

* a kept vertex lies in the voxel ``floor(x / voxel_size)`` (float32, as training sees it),
  and the voxels are exactly the cells holding a kept vertex;
* a voxel's features are those of one of its own kept vertices (they follow the crop);
* labels: semantic majority (ties to the smaller id), instance majority among the vertices
  carrying the voxel's label, wall/floor/ignored never members, instance class voted over
  the instance's own vertices of instance classes;
* devoxelize: a kept vertex gets its own voxel's value, a cropped one the value of the
  voxel whose centre is nearest (its own cell's when that cell survived the crop).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from minkseg.data.augment import crop_mask
from minkseg.data.voxelize import UNKNOWN_INSTANCE, voxelize
from minkseg.inference.devoxelize import devoxelize
from scannet_tools.labels import FIRST_INSTANCE_TRAIN_ID, IGNORE_ID

# derandomized: the same examples every run (mutation testing compares runs); no shrinking: a
# failure shows its first falsifying example at once instead of minutes of shrinking a cloud
SETTINGS = settings(max_examples=50, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cell_of(xyz: np.ndarray, voxel_size: float) -> list[tuple[int, int, int]]:
    """Each vertex's grid cell, floor(x / voxel_size) in float32 (the voxelizer's arithmetic)."""
    q = np.floor(xyz.astype(np.float32) / np.float32(voxel_size)).astype(np.int64)
    return [tuple(c) for c in q.tolist()]


def vote(labels: list[int], ignore: int) -> int:
    """Most frequent label other than ``ignore``, ties to the smaller one; ``ignore`` if none."""
    counts = Counter(x for x in labels if x != ignore)
    if not counts:
        return ignore
    best = max(counts.values())
    return min(x for x, c in counts.items() if c == best)


def reference_labels(cells: list[tuple], kept: list[int], semantic: np.ndarray, instance: np.ndarray,
                     voxel_of_cell: dict[tuple, int]) -> tuple[list[int], list[int], list[int], list[bool]]:
    """Per voxel: semantic, instance id (original numbering), and known; per instance: class."""
    m = len(voxel_of_cell)
    members: list[list[int]] = [[] for _ in range(m)]
    for i in kept:
        members[voxel_of_cell[cells[i]]].append(i)
    sem = [vote([int(semantic[i]) for i in vs], IGNORE_ID) for vs in members]
    inst = []
    for v, vs in enumerate(members):
        winner = vote([int(instance[i]) for i in vs if semantic[i] == sem[v]], -1)
        if winner >= 0 and sem[v] < FIRST_INSTANCE_TRAIN_ID:
            winner = -1
        inst.append(winner)
    ids = sorted({k for k in inst if k >= 0})
    classes = [vote([int(semantic[i]) for i in kept if instance[i] == k and semantic[i] >= FIRST_INSTANCE_TRAIN_ID],
                    IGNORE_ID) for k in ids]
    return sem, [ids.index(k) if k >= 0 else -1 for k in inst], classes, [k != UNKNOWN_INSTANCE for k in inst]


@st.composite
def cropped_clouds(draw):
    """A random cloud, voxel size, per-vertex labels and a crop that drops part of the scene."""
    n = draw(st.integers(2, 60))
    extent = draw(st.sampled_from([0.25, 1.0, 2.5]))
    xyz = draw(st.lists(st.tuples(*[st.floats(0, extent, width=32)] * 3), min_size=n, max_size=n))
    xyz = np.array(xyz, np.float32)
    voxel_size = draw(st.sampled_from([0.05, 0.1, 0.25, 0.5]))
    # few labels on few vertices per voxel: ties, walls and unknowns are common
    semantic = np.array(draw(st.lists(st.sampled_from([IGNORE_ID, 0, 1, 2, 5, 19]), min_size=n, max_size=n)))
    instance = np.array(draw(st.lists(st.sampled_from([-1, UNKNOWN_INSTANCE, 0, 1, 7]), min_size=n, max_size=n)))
    occupied = len(set(cell_of(xyz, voxel_size)))
    if draw(st.booleans()) and occupied > 1:  # the training crop: an xy window of about max_voxels voxels
        max_voxels = draw(st.integers(1, occupied - 1))
        keep = crop_mask(xyz, max_voxels, voxel_size, np.random.default_rng(draw(st.integers(0, 2**16))))
    else:  # any subset: voxelize's contract does not depend on the crop's shape
        keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    assume(keep.any())
    return xyz, voxel_size, semantic, instance, keep


@SETTINGS
@given(cropped_clouds())
def test_voxelize_then_devoxelize_under_random_crops(case):
    xyz, voxel_size, semantic, instance, keep = case
    n = len(xyz)
    feats = np.stack([np.arange(n), 2 * np.arange(n), -np.arange(n)], 1).astype(np.float32)  # vertex i's own
    v = voxelize(xyz, feats, semantic, instance, voxel_size, keep=keep)
    cells = cell_of(xyz, voxel_size)
    kept = np.flatnonzero(keep).tolist()

    # the voxels are exactly the cells of the kept vertices, with their centres
    coords = [tuple(c) for c in v.coords.tolist()]
    assert v.coords.dtype == torch.int32 and len(set(coords)) == len(coords)
    assert set(coords) == {cells[i] for i in kept}
    voxel_of_cell = {c: j for j, c in enumerate(coords)}
    np.testing.assert_allclose(v.centers.numpy(), (np.array(coords, np.float64) + 0.5) * voxel_size, rtol=1e-6)

    # the inverse map: own voxel for kept vertices, -1 for cropped ones
    expected_inverse = [voxel_of_cell[cells[i]] if keep[i] else -1 for i in range(n)]
    assert v.inverse.tolist() == expected_inverse

    # features follow the crop index: one of the voxel's own kept vertices
    for j, row in enumerate(v.feats.tolist()):
        i = int(row[0])
        assert keep[i] and voxel_of_cell[cells[i]] == j and row == feats[i].tolist(), (j, row)

    sem, inst, classes, known = reference_labels(cells, kept, semantic, instance, voxel_of_cell)
    assert v.semantic.tolist() == sem
    assert v.instance.tolist() == inst
    assert v.instance_class.tolist() == classes
    if all(known):
        assert v.instance_known is None
    else:
        assert v.instance_known.tolist() == known

    # devoxelize: distinct per-voxel values show which voxel each vertex reads
    values = torch.arange(len(coords)) * 10 + 3
    got = devoxelize(values, v.inverse, xyz, v.centers.numpy())
    read = ((got - 3) // 10).numpy()
    centers = v.centers.numpy().astype(np.float64)
    dist = np.linalg.norm(xyz.astype(np.float64)[:, None] - centers[None], axis=2)  # (N, M)
    for i in range(n):
        if keep[i]:
            assert read[i] == voxel_of_cell[cells[i]]
            continue
        # nearest centre (any of them where several tie)
        assert dist[i, read[i]] <= dist[i].min() + 1e-9, (i, read[i], dist[i])
        own = voxel_of_cell.get(cells[i])
        if own is not None:  # the own cell survived: its centre is a nearest one
            assert dist[i, own] <= dist[i].min() + 1e-6 * voxel_size


def test_training_crop_of_a_prepared_scene_keeps_features_and_labels_with_their_vertices(prepared_dir):
    # every augmentation off except the crop, so the vertices' coordinates and colours are known here
    from minkseg.data.augment import AugmentConfig
    from minkseg.data.dataset import PreparedScenes
    from minkseg.data.voxelize import input_features
    from scannet_tools.prepare import load_prepared

    crop_only = AugmentConfig(rotate_z=False, flip=False, scale=[1.0, 1.0], jitter_std=0.0, color_jitter_std=0.0,
                              max_voxels=60, voxel_size=0.1)
    f = sorted(prepared_dir.glob("*.npz"))[0]
    v = PreparedScenes([f], voxel_size=0.1, augment=crop_only, seed=1)[0]
    s = load_prepared(f)
    kept = np.flatnonzero(v.inverse.numpy() >= 0)
    assert 0 < len(kept) < len(s["xyz"])  # the crop dropped part of the scene
    xyz = (s["xyz"].astype(np.float64) - s["xyz"].mean(0))
    xyz = (xyz - xyz.min(0)).astype(np.float32)
    cells = cell_of(xyz, 0.1)
    coords = [tuple(c) for c in v.coords.tolist()]
    assert set(coords) == {cells[i] for i in kept}
    assert all(coords[int(v.inverse[i])] == cells[i] for i in kept)
    feats = input_features(s["rgb"])
    members: dict[int, list[int]] = {}
    for i in kept:
        members.setdefault(int(v.inverse[i]), []).append(i)
    for j, row in enumerate(v.feats.numpy()):  # a kept vertex of the voxel, not whatever vertex has that index
        assert any(np.array_equal(row, feats[i]) for i in members[j]), j
    sem = [vote([int(s["semantic"][i]) for i in members[j]], IGNORE_ID) for j in range(len(coords))]
    assert v.semantic.tolist() == sem
