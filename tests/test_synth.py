"""The synthetic scene generator: room-sized objects, valid rooms, real-mesh-like surfaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from scannet_tools.labels import INSTANCE_NYU40_IDS, bundled_label_table, read_label_table
from scannet_tools.synth import CONTACT, SynthObject, _rotate_xy, generate_scene, layout_room

LABEL_MAP = read_label_table(bundled_label_table())
SEEDS = range(12)


def _corners(o: SynthObject) -> list[np.ndarray]:
    """The 8 room-frame corners of each part of an object."""
    out = []
    for b in o.parts:
        c = np.array([[x, y, z] for x in (b.lo[0], b.hi[0]) for y in (b.lo[1], b.hi[1]) for z in (b.lo[2], b.hi[2])])
        out.append(c if o.rotate_about is None else _rotate_xy(c, *o.rotate_about))
    return out


def _footprint(o: SynthObject) -> tuple[np.ndarray, np.ndarray]:
    c = np.concatenate(_corners(o))
    return c.min(0)[:2], c.max(0)[:2]


def _length(o: SynthObject) -> float:
    lo, hi = _footprint(o)
    return float((hi - lo).max())


def _room_frame(scene) -> np.ndarray:
    """Vertices back in the generator's room frame (the files hold the scan frame)."""
    a = scene.axis_alignment
    return scene.xyz.astype(np.float64) @ a[:3, :3].T + a[:3, 3]


@pytest.mark.parametrize("small", [True, False])
def test_rooms_contain_room_sized_objects(small):
    counters, curtains = [], []
    for seed in SEEDS:
        objs, _ = layout_room(np.random.default_rng([seed, 0]), small=small)
        by_kind = {}
        for o in objs:
            by_kind.setdefault(o.kind, []).append(o)
        for kind, shortest in (("bed", 2.0), ("sofa", 2.0), ("bookshelf", 2.0), ("counter", 3.0)):
            assert len(by_kind[kind]) == 1 and _length(by_kind[kind][0]) >= shortest, (seed, kind)
        counters.append(_length(by_kind["counter"][0]))
        curtains.append(max(_length(o) for o in by_kind["curtain"]))
    assert min(curtains) >= 3.0
    assert max(counters) <= 5.0 and max(curtains) <= 4.5
    if not small:  # the full range is used, up to 4-5 m
        assert max(counters) > 4.0 and max(curtains) > 4.0


@pytest.mark.parametrize("small", [True, False])
def test_objects_stay_inside_the_walls_and_apart(small):
    for seed in SEEDS:
        objs, (W, D, H) = layout_room(np.random.default_rng([seed, 0]), small=small)
        for o in objs:
            if o.kind in ("wall", "floor"):
                continue
            c = np.concatenate(_corners(o))
            assert (c.min(0) >= [-1e-9, -1e-9, -1e-9]).all() and (c.max(0) <= [W + 1e-9, D + 1e-9, H]).all(), \
                (seed, o.kind)
        # furniture along the walls never shares floor with other furniture
        standing = [_footprint(o) for o in objs if o.kind not in ("wall", "floor", "door", "window", "picture",
                                                                   "clutter", "chair", "table", "sink",
                                                                   "shower curtain")
                    and min(b.lo[2] for b in o.parts) < 0.05]
        for i, (lo_a, hi_a) in enumerate(standing):
            for lo_b, hi_b in standing[i + 1:]:
                shared = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
                assert np.prod(shared) < 1e-6, seed


def test_every_instance_class_is_present_in_small_rooms():
    for seed in SEEDS:
        s = generate_scene("scene0000_00", np.random.default_rng([seed, 0]), LABEL_MAP, 4_000, small=True)
        assert set(INSTANCE_NYU40_IDS) <= set(np.unique(s.nyu40).tolist()), seed


def test_generation_is_deterministic_per_seed():
    a = generate_scene("scene0000_00", np.random.default_rng([3, 1]), LABEL_MAP, 4_000, small=True)
    b = generate_scene("scene0000_00", np.random.default_rng([3, 1]), LABEL_MAP, 4_000, small=True)
    c = generate_scene("scene0000_00", np.random.default_rng([3, 2]), LABEL_MAP, 4_000, small=True)
    for name in ("xyz", "rgb", "faces", "seg_indices", "nyu40", "instance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.seg_groups == b.seg_groups
    assert len(a.xyz) != len(c.xyz) or not np.array_equal(a.xyz, c.xyz)


@pytest.fixture(scope="module")
def full_scene():
    """A default-sized scene (the demo's 50k-200k vertices)."""
    return generate_scene("scene0000_00", np.random.default_rng([0, 0]), LABEL_MAP, 80_000)


def test_vertex_count_and_spacing_like_a_real_scan(full_scene):
    # real _vh_clean_2 meshes: vertices every 2-5 cm on surfaces (81k for scene0000_00)
    assert abs(len(full_scene.xyz) - 80_000) < 0.05 * 80_000
    d, _ = cKDTree(full_scene.xyz).query(full_scene.xyz, k=2)
    spacing = np.median(d[:, 1])
    assert 0.02 <= spacing <= 0.05, spacing
    # every triangle uses existing vertices, and no vertex is left without a triangle
    assert full_scene.faces.max() < len(full_scene.xyz)
    assert len(np.unique(full_scene.faces)) == len(full_scene.xyz)


def test_hidden_surfaces_are_not_meshed(full_scene):
    """Nothing under furniture or behind wall-mounted objects, as a scanner sees a room."""
    xyz = _room_frame(full_scene)
    floor, wall = full_scene.nyu40 == 2, full_scene.nyu40 == 1
    W, D = full_scene.objects[0].parts[0].size[:2]  # the floor
    margin = CONTACT + 0.02  # vertex noise is a few mm
    under, behind = 0, 0
    for o in full_scene.objects:
        lo, hi = _footprint(o)
        if o.kind in ("bed", "bookshelf", "counter", "sofa", "cabinet", "refrigerator", "bathtub"):
            inner = np.all((xyz[:, :2] > lo + margin) & (xyz[:, :2] < hi - margin), axis=1)
            assert not (inner & floor).any(), o.kind
            under += 1
        if o.kind in ("picture", "window", "door", "bookshelf", "refrigerator", "curtain"):
            along = 1 if lo[0] < 0.05 or hi[0] > W - 0.05 else 0  # the axis along the wall it hangs on
            zlo, zhi = min(b.lo[2] for b in o.parts), max(b.hi[2] for b in o.parts)
            inner = ((xyz[:, along] > lo[along] + margin) & (xyz[:, along] < hi[along] - margin)
                     & (xyz[:, 2] > zlo + margin) & (xyz[:, 2] < zhi - margin))
            plane = 1 - along
            wall_at = 0.0 if lo[plane] < 0.05 else (W, D)[plane]
            near = np.abs(xyz[:, plane] - wall_at) < 0.05
            assert not (inner & near & wall).any(), o.kind
            behind += 1
    assert under >= 5 and behind >= 6
    # objects meet the floor along one edge: no box bottoms and no side rows on the floor
    instance_vertices = np.isin(full_scene.nyu40, INSTANCE_NYU40_IDS)
    assert (xyz[instance_vertices, 2] < 0.005).mean() < 0.001  # every box face meshed: 12 % of them at z = 0


def test_annotations_cover_only_seen_objects(full_scene):
    ids = {g["objectId"] for g in full_scene.seg_groups}
    assert ids == set(np.unique(full_scene.instance[full_scene.instance > 0]) - 1)
    assert all(g["segments"] for g in full_scene.seg_groups)
