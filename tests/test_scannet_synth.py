"""The synthetic generator's building blocks with hand-computed values, and the raw files it writes.

tests/test_synth.py checks whole rooms (sizes, placement, surfaces); these tests pin down each piece:
the box geometry and its placement along the walls, the triangle grids and their orientation, hidden
surfaces, superpoint keys, and the exact content of every file of the raw ScanNet layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData

from scannet_tools import synth
from scannet_tools.labels import bundled_label_table, read_label_table
from scannet_tools.prepare import vertex_normals
from scannet_tools.reader import read_scene
from scannet_tools.synth import (
    _CURTAIN_FACES,
    BASE_COLOURS,
    CONTACT,
    RAW_NAMES,
    SURFACE_NOISE,
    SynthObject,
    SynthScene,
    _chair,
    _extent,
    _finish_mesh,
    _furniture_parts,
    _grid,
    _hidden,
    _overlap_area,
    _place_along,
    _rotate_xy,
    _surface_area,
    _table_group,
    _tessellate,
    _vertex_count,
    _visible_surfaces,
    _wall_span,
    box,
    generate_scene,
    layout_room,
    synthesize,
    write_scene,
)

LABEL_MAP = read_label_table(bundled_label_table())


def _triangle_normals(xyz: np.ndarray, tris: np.ndarray) -> np.ndarray:
    return np.cross(xyz[tris[:, 1]] - xyz[tris[:, 0]], xyz[tris[:, 2]] - xyz[tris[:, 0]])


# --------------------------------------------------------------------------- boxes and their placement


def test_box_corners_and_faces():
    b = box(1, 2, 3, 4, 5, 6)
    assert b.lo.tolist() == [1, 2, 3] and b.size.tolist() == [4, 5, 6] and b.hi.tolist() == [5, 7, 9]
    assert b.faces == (0, 1, 2, 3, 4, 5) and b.lo.dtype == float
    assert box(0, 0, 0, 1, 1, 1, faces=[5]).faces == (5,)
    assert SynthObject("chair", [b]).annotated and not SynthObject("clutter", [b]).annotated
    assert SynthObject("chair", [b]).raw_name == "" and SynthObject("chair", [b]).rotate_about is None


# A local part 1 m along the wall, 0.5 m deep, 2 m high; a W x D = 8 x 6 room; 2 m along the wall, 1 cm gap.
@pytest.mark.parametrize("wall, lo, hi, front", [
    (0, [2, 0.01, 0], [3, 0.51, 2], 3),  # y = 0, runs +x: the front (local +y) looks +y
    (1, [7.49, 2, 0], [7.99, 3, 2], 0),  # x = W, runs +y: the front looks -x
    (2, [5, 5.49, 0], [6, 5.99, 2], 2),  # y = D, runs -x: the front looks -y
    (3, [0.01, 3, 0], [0.51, 4, 2], 1),  # x = 0, runs -y: the front looks +x
])
def test_place_along_each_wall(wall, lo, hi, front):
    local = box(0, 0, 0, 1, 0.5, 2)
    (placed,) = _place_along([local], wall, 2.0, 8.0, 6.0, gap=0.01)
    np.testing.assert_allclose(placed.lo, lo, atol=1e-12)
    np.testing.assert_allclose(placed.hi, hi, atol=1e-12)
    # local faces -x +x -y +y -z +z: the front is local face 3, the bottom and top keep 4 and 5
    assert placed.faces[3] == front and placed.faces[4:] == (4, 5)
    assert sorted(placed.faces) == [0, 1, 2, 3, 4, 5]
    assert local.lo.tolist() == [0, 0, 0] and local.hi.tolist() == [1, 0.5, 2]  # the input is not moved
    # the local -x end is where the wall's run starts: 2 m from its first corner
    start = {0: (0, 2.0), 1: (1, 2.0), 2: (0, 6.0), 3: (1, 4.0)}[wall]
    end_face = placed.faces[0]
    end = placed.lo if end_face % 2 == 0 else placed.hi
    assert end[start[0]] == pytest.approx(start[1]) and end_face // 2 == start[0]


def test_place_along_without_gap_and_a_wall_span():
    (placed,) = _place_along([box(0.5, 0.1, 1, 1, 0.2, 1, faces=(3,))], 1, 0.0, 8.0, 6.0)
    np.testing.assert_allclose(placed.lo, [7.7, 0.5, 1])
    np.testing.assert_allclose(placed.hi, [7.9, 1.5, 2])
    assert placed.faces == (0,)
    span = _wall_span(1.0, 2.5, 0.5, 2.0, 0.04, 2, 8.0, 6.0, gap=0.01, faces=(3, 4))
    np.testing.assert_allclose(span.lo, [5.5, 5.95, 0.5])
    np.testing.assert_allclose(span.hi, [7.0, 5.99, 2.0])
    assert span.faces == (2, 4)
    default = _wall_span(1.0, 2.5, 0.5, 2.0, 0.04, 0, 8.0, 6.0)
    np.testing.assert_allclose(default.lo, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(default.hi, [2.5, 0.04, 2.0])
    assert default.faces == (0, 1, 2, 3, 4, 5)


def test_extent_and_overlap_area():
    lo, hi = _extent([box(0, 1, 2, 1, 1, 1), box(-1, 3, 0, 0.5, 0.5, 5)])
    assert lo.tolist() == [-1, 1, 0] and hi.tolist() == [1, 3.5, 5]
    a, b = np.array([0.0, 0.0]), np.array([2.0, 2.0])
    assert _overlap_area(a, b, []) == 0.0
    assert _overlap_area(a, b, [(np.array([1.0, 1.0]), np.array([3.0, 3.0]))]) == 1.0
    assert _overlap_area(a, b, [(np.array([1.0, 1.5]), np.array([3.0, 3.0])),
                                (np.array([-1.0, -1.0]), np.array([0.5, 4.0]))]) == 0.5 + 1.0
    assert _overlap_area(a, b, [(np.array([2.0, 0.0]), np.array([3.0, 2.0]))]) == 0.0  # touching edges
    assert _overlap_area(a, b, [(np.array([3.0, 3.0]), np.array([4.0, 4.0]))]) == 0.0  # apart: no negative area


# --------------------------------------------------------------------------- furniture


def test_furniture_parts_per_kind():
    assert [(p.lo.tolist(), p.size.tolist()) for p in _furniture_parts("bed", 1.5, 2.0, 0.5)] == \
        [([0, 0, 0], [1.5, 2.0, 0.5]), ([0, 0, 0.5], [1.5, 0.08, 0.5])]  # the headboard against the wall
    sofa = _furniture_parts("sofa", 2.0, 0.9, 0.8)
    np.testing.assert_allclose([p.size for p in sofa], [[2.0, 0.9, 0.42], [2.0, 0.2, 0.38], [0.18, 0.7, 0.2],
                                                        [0.18, 0.7, 0.2]])
    assert sofa[3].lo.tolist() == pytest.approx([1.82, 0.2, 0.42])
    shelf = _furniture_parts("bookshelf", 2.0, 0.35, 1.9)
    # back, two sides, ceil(1.9 / 0.4) + 1 = 6 shelves from the floor to the top, a middle upright
    assert len(shelf) == 3 + 6 + 1
    assert [p.lo[2] for p in shelf[3:9]] == pytest.approx(np.linspace(0, 1.88, 6))
    assert shelf[-1].lo.tolist() == pytest.approx([0.99, 0.02, 0]) and shelf[-1].size[2] == 1.9
    assert len(_furniture_parts("bookshelf", 1.2, 0.35, 1.9)) == 3 + 6  # no middle upright up to 1.2 m
    desk = _furniture_parts("desk", 1.2, 0.6, 0.75)
    assert desk[0].lo.tolist() == pytest.approx([0, 0, 0.71]) and desk[1].faces == (0, 1, 2, 3)
    assert desk[2].lo.tolist() == pytest.approx([1.15, 0, 0]) and desk[2].size[2] == pytest.approx(0.71)
    toilet = _furniture_parts("toilet", 0.45, 0.7, 0.75)
    assert toilet[1].lo.tolist() == pytest.approx([0.08, 0.2, 0]) and toilet[1].size.tolist() == pytest.approx(
        [0.29, 0.45, 0.4])
    tub = _furniture_parts("bathtub", 1.6, 0.75, 0.55)
    assert len(tub) == 5 and tub[4].lo.tolist() == pytest.approx([1.52, 0.08, 0])
    assert tub[4].size.tolist() == pytest.approx([0.08, 0.59, 0.55])
    (curtain,) = _furniture_parts("curtain", 3.0, 0.1, 2.3)
    assert curtain.faces == _CURTAIN_FACES == (0, 1, 3, 4) and curtain.size.tolist() == [3.0, 0.1, 2.3]
    (cabinet,) = _furniture_parts("cabinet", 0.8, 0.5, 0.9)
    assert cabinet.lo.tolist() == [0, 0, 0] and cabinet.size.tolist() == [0.8, 0.5, 0.9]
    assert cabinet.faces == (0, 1, 2, 3, 4, 5)


def test_chair_is_centred_on_its_seat_and_turns_about_it():
    rng = np.random.default_rng(5)
    chair = _chair(2.0, 3.0, 0.7, rng)
    assert chair.kind == "chair" and chair.rotate_about == (2.0, 3.0, 0.7) and len(chair.parts) == 6
    seat, legs, back = chair.parts[0], chair.parts[1:5], chair.parts[5]
    s, h = seat.size[0], seat.hi[2]
    assert 0.42 <= s <= 0.5 and 0.42 <= h <= 0.48 and seat.size[1] == s and seat.size[2] == pytest.approx(0.05)
    np.testing.assert_allclose((seat.lo[:2] + seat.hi[:2]) / 2, [2.0, 3.0])
    for leg in legs:  # in the seat's corners, from the floor to the seat
        assert leg.faces == (0, 1, 2, 3) and leg.lo[2] == 0 and leg.hi[2] == pytest.approx(seat.lo[2])
        assert leg.size[:2].tolist() == pytest.approx([0.04, 0.04])
        assert (leg.lo[:2] >= seat.lo[:2] - 1e-12).all() and (leg.hi[:2] <= seat.hi[:2] + 1e-12).all()
    corners = {(bool(leg.lo[0] == seat.lo[0]), bool(leg.lo[1] == seat.lo[1])) for leg in legs}
    assert len(corners) == 4
    assert back.lo.tolist() == pytest.approx([seat.lo[0], seat.lo[1], h]) and 0.4 <= back.size[2] <= 0.5
    assert back.size[:2].tolist() == pytest.approx([0.05, s])


def test_table_group_chairs_face_the_table():
    objs = _table_group(4.0, 3.0, np.random.default_rng(11))
    table, rest = objs[0], objs[1:]
    top = table.parts[0]
    lx, ly, h = top.size[0], top.size[1], top.hi[2]
    assert table.kind == "table" and len(table.parts) == 5 and top.size[2] == pytest.approx(0.04)
    np.testing.assert_allclose((top.lo[:2] + top.hi[:2]) / 2, [4.0, 3.0])
    for leg in table.parts[1:]:
        assert leg.lo[2] == 0 and leg.hi[2] == pytest.approx(top.lo[2]) and leg.faces == (0, 1, 2, 3)
    chairs = [o for o in rest if o.kind == "chair"]
    clutter = [o for o in rest if o.kind == "clutter"]
    assert len(chairs) + len(clutter) == len(rest) and 1 <= len(clutter) <= 3
    assert len(chairs) == (5 if lx > 1.4 else 3)
    for c in clutter:
        (b,) = c.parts
        assert b.lo[2] == pytest.approx(h) and abs(b.lo[0] - 4.0) <= lx / 3 and abs(b.lo[1] - 3.0) <= ly / 3
    sides = sorted((round(c.rotate_about[2], 6), round(c.rotate_about[1] - 3.0, 6)) for c in chairs)
    # facing +y from below, -y from above, -x at the head (+x end) of the table
    assert {yaw for yaw, _ in sides} == {round(np.pi / 2, 6), round(-np.pi / 2, 6), round(np.pi, 6)}
    for c in chairs:
        x, y, yaw = c.rotate_about
        if yaw == np.pi:
            assert (x, y) == pytest.approx((4.0 + lx / 2 + 0.18, 3.0))
        else:
            assert y == pytest.approx(3.0 - np.sign(yaw) * (ly / 2 + 0.18))


# --------------------------------------------------------------------------- meshing


@pytest.mark.parametrize("face, axis, sign", [(0, 0, -1), (1, 0, 1), (2, 1, -1), (3, 1, 1), (4, 2, -1), (5, 2, 1)])
def test_grid_triangles_face_outwards(face, axis, sign):
    b = box(1, 2, 3, 1.0, 2.0, 0.5)
    pts, tris, uv = _grid(b, face, 0.5)
    n = _triangle_normals(pts, tris)
    expected = np.zeros(3)
    expected[axis] = sign
    np.testing.assert_allclose(n / np.linalg.norm(n, axis=1, keepdims=True), np.tile(expected, (len(n), 1)),
                               atol=1e-12)
    # the face's plane
    assert (pts[:, axis] == (b.hi if sign > 0 else b.lo)[axis]).all()


def test_grid_points_triangles_and_patch_coordinates():
    b = box(1, 2, 3, 1.0, 2.0, 0.5)
    pts, tris, uv = _grid(b, 5, 0.5)  # the top: u along x (3 points), v along y (5 points)
    assert pts.shape == (15, 3) and tris.shape == (16, 3) and uv.shape == (15, 2)
    assert (pts[:, 2] == 3.5).all()
    assert pts[:5, :2].tolist() == [[1, 2], [1, 2.5], [1, 3], [1, 3.5], [1, 4]]  # row by row, v fastest
    assert pts[5].tolist() == [1.5, 2, 3.5] and pts[-1].tolist() == [2, 4, 3.5]
    np.testing.assert_allclose(uv, pts[:, :2] - [1, 2])
    assert tris[0].tolist() == [0, 5, 1] and tris[8].tolist() == [1, 5, 6]
    assert tris.min() == 0 and tris.max() == 14
    side, _, side_uv = _grid(b, 1, 0.3)  # +x: u along y (ceil(2 / 0.3) + 1 = 8), v along z (ceil(0.5 / 0.3) + 1 = 3)
    assert side.shape == (24, 3) and (side[:, 0] == 2).all()
    assert np.unique(side[:, 1]).tolist() == pytest.approx(np.linspace(2, 4, 8).tolist())
    assert np.unique(side[:, 2]).tolist() == pytest.approx([3, 3.25, 3.5])
    tiny, tiny_tris, _ = _grid(box(0, 0, 0, 0.01, 0.01, 0.01), 2, 1.0)  # smaller than the spacing: 2 x 2 points
    assert tiny.shape == (4, 3) and tiny_tris.shape == (2, 3)
    assert _vertex_count([SynthObject("x", [b])], 0.5) == 15 + 15 + 2 * (5 * 2) + 2 * (3 * 2)


def test_rotate_xy_turns_about_the_given_centre():
    pts = np.array([[2.0, 1.0, 7.0], [1.0, 1.0, -1.0]])
    out = _rotate_xy(pts, 1.0, 1.0, np.pi / 2)
    np.testing.assert_allclose(out, [[1.0, 2.0, 7.0], [1.0, 1.0, -1.0]], atol=1e-12)
    assert pts.tolist() == [[2.0, 1.0, 7.0], [1.0, 1.0, -1.0]]  # a copy
    np.testing.assert_allclose(_rotate_xy(pts, 0.0, 0.0, np.pi), [[-2.0, -1.0, 7.0], [-1.0, -1.0, -1.0]],
                               atol=1e-12)


def test_surface_area_counts_only_meshed_faces():
    objs = [SynthObject("a", [box(0, 0, 0, 1, 2, 3)]), SynthObject("b", [box(0, 0, 0, 1, 2, 3, faces=(5,)),
                                                                        box(0, 0, 0, 1, 2, 3, faces=(0, 3))])]
    assert _surface_area(objs) == 2 * (2 * 3 + 1 * 3 + 1 * 2) + 1 * 2 + (2 * 3 + 1 * 3)


def test_tessellate_numbers_objects_parts_and_faces():
    turned = SynthObject("chair", [box(0, 0, 0, 1, 1, 1, faces=(5,))], rotate_about=(0.0, 0.0, np.pi / 2))
    objs = [SynthObject("floor", [box(0, 0, 0, 1, 1, 1, faces=(4, 5)), box(5, 5, 5, 1, 1, 1, faces=(1,))]), turned]
    s = _tessellate(objs, 1.0)  # 4 points per face
    assert len(s.xyz) == 16 and len(s.tris) == 8
    assert s.obj_of.tolist() == [0] * 12 + [1] * 4
    assert s.part_of.tolist() == [0] * 8 + [1] * 4 + [2] * 4
    assert s.face_of.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert s.top.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4
    assert s.tris[2:4].min() == 4 and s.tris[4:6].min() == 8 and s.tris.max() == 15  # offset per face
    # (x, y) -> (-y, x): turned by 90 degrees about the origin
    np.testing.assert_allclose(s.xyz[12:, :2], [[0, 0], [-1, 0], [0, 1], [-1, 1]], atol=1e-12)
    assert s.uv[12:].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_surfaces_touching_another_solid_are_hidden():
    floor = SynthObject("floor", [box(0, 0, -0.02, 2, 2, 0.02, faces=(5,))])
    cube = SynthObject("cabinet", [box(0.5, 0.5, 0, 1, 1, 1, faces=(4, 5))])
    s = _tessellate([floor, cube], 0.25)
    hidden = _hidden([floor, cube], s.xyz, s.part_of)
    on_floor = s.obj_of == 0
    under = np.all((s.xyz[:, :2] >= 0.5 - CONTACT) & (s.xyz[:, :2] <= 1.5 + CONTACT), axis=1)
    np.testing.assert_array_equal(hidden[on_floor], under[on_floor])  # the floor under the cube
    bottom = (s.obj_of == 1) & (s.xyz[:, 2] == 0)
    assert hidden[bottom].all() and not hidden[(s.obj_of == 1) & (s.xyz[:, 2] == 1)].any()  # its bottom, not its top
    assert under[on_floor].sum() == 25  # 0.5 .. 1.5 in steps of 0.25, both ways
    visible = _visible_surfaces([floor, cube], 0.25)
    assert len(visible.xyz) == len(s.xyz) - 25 - 25
    assert visible.tris.max() == len(visible.xyz) - 1 and visible.obj_of.tolist().count(1) == 25


def test_hidden_by_a_turned_object_uses_its_own_frame():
    # a 2 x 0.2 m plank turned by 90 degrees about (1, 1): it covers x in [0.9, 1.1], y in [0, 2]
    floor = SynthObject("floor", [box(0, 0, -0.02, 2, 2, 0.02, faces=(5,))])
    plank = SynthObject("table", [box(0, 0.9, 0, 2, 0.2, 0.1, faces=(5,))], rotate_about=(1.0, 1.0, np.pi / 2))
    s = _tessellate([floor, plank], 0.1)
    hidden = _hidden([floor, plank], s.xyz, s.part_of)
    on_floor = s.obj_of == 0
    expected = (np.abs(s.xyz[:, 0] - 1.0) <= 0.1 + CONTACT + 1e-9) & on_floor
    np.testing.assert_array_equal(hidden & on_floor, expected)
    assert not hidden[s.obj_of == 1].any()


def test_visible_surfaces_drop_triangles_of_hidden_vertices_and_orphans():
    # a wall face and a thin slab standing against it: the wall's vertices behind the slab go, and so do the
    # wall's triangles that used them; the slab's own faces stay
    wall = SynthObject("wall", [box(0, -0.1, 0, 1, 0.1, 1, faces=(3,))])
    slab = SynthObject("picture", [box(0.25, 0.0, 0.25, 0.5, 0.02, 0.5, faces=(3,))])
    full = _tessellate([wall, slab], 0.25)
    vis = _visible_surfaces([wall, slab], 0.25)
    hidden = _hidden([wall, slab], full.xyz, full.part_of)
    used = np.zeros(len(full.xyz), bool)
    kept_tris = full.tris[(~hidden)[full.tris].all(1)]
    used[kept_tris.ravel()] = True
    np.testing.assert_array_equal(vis.xyz, full.xyz[used])
    np.testing.assert_array_equal(vis.xyz[vis.tris], full.xyz[kept_tris])
    for name in ("obj_of", "part_of", "face_of", "uv", "top"):
        np.testing.assert_array_equal(getattr(vis, name), getattr(full, name)[used])
    assert hidden.sum() == 9 and (~hidden & ~used).sum() > 0  # some visible wall vertices lose all triangles


def test_finish_mesh_colours_noise_and_superpoint_keys():
    objs = [SynthObject("floor", [box(0, 0, 0, 1, 1, 1, faces=(5,))]),
            SynthObject("chair", [box(0, 0, 0, 0.6, 0.4, 1, faces=(1,))])]
    s = _tessellate(objs, 0.2)
    xyz, tris, cols, obj_of, keys = _finish_mesh(objs, s, patch=0.25, rng=np.random.default_rng(3))
    # the same draws, in the same order: tint per object, colour noise per vertex, then position noise
    rng = np.random.default_rng(3)
    tint = rng.normal(0, 12, (2, 3))
    colour_noise = rng.normal(0, 6, (len(s.xyz), 3))
    position_noise = rng.normal(0, 0.005, s.xyz.shape)
    base = np.array([BASE_COLOURS["floor"], BASE_COLOURS["chair"]], float) + tint
    shade = np.where(s.top, 1.0, 0.85)[:, None]
    np.testing.assert_array_equal(cols, np.clip(base[s.obj_of] * shade + colour_noise, 0, 255).astype(np.uint8))
    assert cols.dtype == np.uint8
    np.testing.assert_array_equal(xyz, s.xyz + position_noise)
    assert SURFACE_NOISE == 0.005
    assert tris is s.tris and obj_of is s.obj_of
    # keys: face * 1e6 + patch cell along u * 1000 + along v, cells of 0.25 m
    cell = np.floor(s.uv / 0.25).astype(int)
    np.testing.assert_array_equal(keys, s.face_of * 1_000_000 + cell[:, 0] * 1000 + cell[:, 1])
    # the chair's +x face: u along y (0, 0.2, 0.4: cells 0, 0, 1), v along z (0 .. 1: cells 0 .. 4)
    assert keys[s.face_of == 1].min() == 1_000_000 and keys.max() == 1_000_000 + 1 * 1000 + 4
    assert sorted(set(keys[s.face_of == 0].tolist())) == [u * 1000 + v for u in range(5) for v in range(5)]


# --------------------------------------------------------------------------- a whole small scene


@pytest.fixture(scope="module")
def small_scene() -> SynthScene:
    return generate_scene("scene0000_00", np.random.default_rng([9, 0]), LABEL_MAP, 2_000, small=True)


def test_small_room_layout_and_raw_names():
    objs, (W, D, H) = layout_room(np.random.default_rng(2), small=True)
    assert (W, D, H) == (8.0, 6.5, 2.5)
    assert objs[0].kind == "floor" and objs[0].parts[0].faces == (5,)
    walls = objs[1:5]
    assert [o.kind for o in walls] == ["wall"] * 4
    assert [o.parts[0].faces for o in walls] == [(3,), (0,), (2,), (1,)]  # each wall's face looking into the room
    for o in objs:
        if o.annotated:
            assert o.raw_name in RAW_NAMES[o.kind]
        else:
            assert o.raw_name == ""
    kinds = [o.kind for o in objs]
    assert kinds.count("door") == 1 and kinds.count("sink") == 1 and kinds.count("table") == 1
    assert kinds.count("counter") == 1 and _extent(objs[kinds.index("counter")].parts)[1][2] <= 0.92
    counter = objs[kinds.index("counter")]
    lo, hi = _extent(counter.parts)
    assert max(hi[:2] - lo[:2]) <= 3.4  # small rooms take the short end of the counters' range
    big_W, big_D, big_H = layout_room(np.random.default_rng(2))[1]
    assert 7.5 <= big_W <= 9.0 and 6.0 <= big_D <= 7.5 and big_H == 2.7


def test_small_scene_ground_truth_and_annotation(small_scene):
    s = small_scene
    assert s.scene == "scene0000_00" and s.xyz.dtype == np.float32 and s.faces.dtype == np.int32
    assert s.rgb.dtype == np.uint8 and len(s.rgb) == len(s.xyz) == len(s.nyu40) == len(s.seg_indices)
    # the segGroups are the ground truth: every annotated object's segments and label
    seg_nyu40 = np.zeros(len(s.xyz), np.int64)
    seg_instance = np.zeros(len(s.xyz), np.int64)
    for g in s.seg_groups:
        assert g["id"] == g["objectId"] and set(g) == {"id", "objectId", "segments", "label"}
        on = np.isin(s.seg_indices, g["segments"])
        seg_nyu40[on] = LABEL_MAP[g["label"]]
        seg_instance[on] = g["objectId"] + 1
    np.testing.assert_array_equal(seg_nyu40, s.nyu40)
    np.testing.assert_array_equal(seg_instance, s.instance)
    assert [g["objectId"] for g in s.seg_groups] == list(range(len(s.seg_groups)))
    assert (s.nyu40 == 0).any() and (s.instance[s.nyu40 == 0] == 0).all()  # clutter is unannotated
    # superpoint ids are arbitrary: not contiguous, and below 40 per superpoint
    ids = np.unique(s.seg_indices)
    assert ids.max() < 40 * len(ids) and ids.max() + 1 > len(ids)
    # the alignment maps the scan frame to the room: floor at z = 0 within the vertex noise
    a = s.axis_alignment
    room = s.xyz.astype(np.float64) @ a[:3, :3].T + a[:3, 3]
    assert abs(room[s.nyu40 == 2, 2].mean()) < 0.002 and room[:, 2].max() <= 2.5 + 0.03
    assert a[2, :3].tolist() == [0, 0, 1]  # a turn about z only
    assert np.allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3)) and a[3].tolist() == [0, 0, 0, 1]
    assert abs(a[2, 3]) <= 0.3 and not np.allclose(a, np.eye(4))


def test_small_scene_normals_point_out_of_the_surfaces(small_scene):
    s = small_scene
    a = s.axis_alignment
    room = s.xyz.astype(np.float64) @ a[:3, :3].T + a[:3, 3]
    normals = vertex_normals(room, s.faces.astype(np.int64))
    floor = s.nyu40 == 2
    assert (normals[floor, 2] > 0.9).mean() > 0.95  # the floor faces up
    walls = s.nyu40 == 1
    centre = np.array([4.0, 3.25])  # the small room is 8 x 6.5 m
    inward = np.sum(normals[walls, :2] * (centre - room[walls, :2]), axis=1)
    assert (inward > 0).mean() > 0.95  # the walls face into the room


def test_vertex_count_aims_at_the_target(small_scene):
    assert 1_700 <= len(small_scene.xyz) <= 2_300
    assert len(np.unique(small_scene.faces)) == len(small_scene.xyz)


# --------------------------------------------------------------------------- the files on disk


def _tiny_synth_scene() -> SynthScene:
    xyz = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.5]], np.float32)
    return SynthScene("scene0009_00", xyz, np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [250, 251, 252]], np.uint8),
                      np.array([[0, 1, 2], [1, 3, 2]], np.int32), np.array([40, 40, 7, 7]),
                      [{"id": 0, "objectId": 0, "segments": [40], "label": "chair"},
                       {"id": 1, "objectId": 1, "segments": [7], "label": "floor"}],
                      np.array([[0.0, -1, 0, 1.25], [1, 0, 0, -0.5], [0, 0, 1, 0.125], [0, 0, 0, 1]]),
                      np.array([5, 5, 2, 300]), np.array([1, 1, 2, 2]))


def test_write_scene_files_are_the_raw_scannet_layout(tmp_path):
    s = _tiny_synth_scene()
    d = write_scene(s, tmp_path / "scans")
    assert d == tmp_path / "scans" / "scene0009_00"
    names = sorted(p.name for p in d.iterdir())
    assert names == ["scene0009_00.aggregation.json", "scene0009_00.txt", "scene0009_00_vh_clean_2.0.010000.segs.json",
                     "scene0009_00_vh_clean_2.labels.ply", "scene0009_00_vh_clean_2.ply"]
    mesh = PlyData.read(str(d / "scene0009_00_vh_clean_2.ply"))
    assert not mesh.text and mesh.byte_order == "<"
    v = mesh["vertex"].data
    assert v.dtype.names == ("x", "y", "z", "red", "green", "blue", "alpha")
    assert [v.dtype[k].str for k in v.dtype.names] == ["<f4", "<f4", "<f4", "|u1", "|u1", "|u1", "|u1"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), s.xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), s.rgb)
    assert (v["alpha"] == 255).all()
    face = mesh["face"]
    assert face.properties[0].name == "vertex_indices" and face.properties[0].len_dtype == "u1"
    assert face.properties[0].val_dtype == "i4"
    assert np.stack(face.data["vertex_indices"]).tolist() == [[0, 1, 2], [1, 3, 2]]
    labels = PlyData.read(str(d / "scene0009_00_vh_clean_2.labels.ply"))
    assert labels["vertex"].data.dtype.names[-1] == "label" and labels["vertex"].data.dtype["label"].str == "<u2"
    assert labels["vertex"].data["label"].tolist() == [5, 5, 2, 300]
    assert len(labels["face"].data) == 2
    segs = json.loads((d / "scene0009_00_vh_clean_2.0.010000.segs.json").read_text())
    assert segs == {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "30000",
                               "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02", "maxLength": "1"},
                    "sceneId": "scene0009_00_vh_clean_2", "segIndices": [40, 40, 7, 7]}
    agg_text = (d / "scene0009_00.aggregation.json").read_text()
    assert json.loads(agg_text) == {"sceneId": "scannet.scene0009_00", "appId": "minkseg.synth.v1",
                                    "segGroups": s.seg_groups,
                                    "segmentsFile": "scannet.scene0009_00_vh_clean_2.0.010000.segs.json"}
    assert agg_text.startswith('{\n "sceneId"')  # indented by one, as ScanNet's aggregation files
    assert (d / "scene0009_00.txt").read_text() == (
        "axisAlignment = 0.000000 -1.000000 0.000000 1.250000 1.000000 0.000000 0.000000 -0.500000 "
        "0.000000 0.000000 1.000000 0.125000 0.000000 0.000000 0.000000 1.000000\n"
        "numColorFrames = 0\nnumDepthFrames = 0\nsceneType = Apartment\n")
    raw = read_scene(d)  # and the reader takes it as a real scan
    np.testing.assert_array_equal(raw.xyz, s.xyz)
    np.testing.assert_array_equal(raw.axis_alignment, s.axis_alignment)
    write_scene(s, tmp_path / "scans")  # the folder may exist already
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def _split(root: Path, name: str) -> str:
    return (root / f"scannetv2_{name}.txt").read_text()


def test_synthesize_writes_generated_scenes_and_the_label_table(tmp_path, small_scene, monkeypatch):
    draws = []

    def fake_generate(name, rng, label_map, n_verts, small):
        draws.append((name, rng.random(), n_verts, small))  # the generator's next draw tells its seed
        return small_scene

    monkeypatch.setattr(synth, "generate_scene", fake_generate)
    assert synthesize(tmp_path, 2, seed=9, target_vertices=2_000, small=True, progress=False) == \
        ["scene0000_00", "scene0001_00"]
    # scene i is generate_scene with the generator seeded by (seed, i) and the vertex target given
    assert draws == [(f"scene000{i}_00", np.random.default_rng([9, i]).random(), 2_000, True) for i in range(2)]
    assert [p.name for p in (tmp_path / "scans").iterdir()] == ["scene0000_00"]  # what write_scene was given
    assert (tmp_path / "scannetv2-labels.combined.tsv").read_bytes() == bundled_label_table().read_bytes()
    raw = read_scene(tmp_path / "scans" / "scene0000_00")
    np.testing.assert_array_equal(raw.xyz, small_scene.xyz)
    np.testing.assert_array_equal(raw.seg_indices, small_scene.seg_indices)
    assert raw.seg_groups == small_scene.seg_groups


@pytest.mark.parametrize("n, fraction, val", [(1, 0.5, 0), (2, 0.25, 1), (2, 0.8, 2), (5, 0.25, 1), (5, 0.3, 2),
                                              (4, 0.25, 1), (3, 1.0, 3)])
def test_synthesize_split_sizes(n, fraction, val, tmp_path, monkeypatch):
    """val = round(n * fraction), at least one, none when there is a single scene (it goes to training)."""
    made = []

    def fake_generate(name, rng, label_map, n_verts, small):
        made.append((name, n_verts, small, label_map["chair"]))
        return SynthScene(name, *[None] * 8)

    monkeypatch.setattr(synth, "generate_scene", fake_generate)
    monkeypatch.setattr(synth, "write_scene", lambda s, scans: scans / s.scene)
    names = [f"scene{i:04d}_00" for i in range(n)]
    assert synthesize(tmp_path, n, seed=3, small=True, progress=False, val_fraction=fraction) == names
    assert made == [(name, 4_000, True, 5) for name in names]  # --small: 4k vertices
    assert _split(tmp_path, "train") == ("".join(f"{s}\n" for s in names[: n - val]) or "\n")
    assert _split(tmp_path, "val") == ("".join(f"{s}\n" for s in names[n - val:]) or "\n")


def test_synthesize_default_sizes_and_an_existing_table(tmp_path, monkeypatch):
    sizes = []
    monkeypatch.setattr(synth, "generate_scene", lambda name, rng, lm, n_verts, small: sizes.append(n_verts) or
                        SynthScene(name, *[None] * 8))
    monkeypatch.setattr(synth, "write_scene", lambda s, scans: scans / s.scene)
    synthesize(str(tmp_path), 3, seed=6, progress=False)
    # a default scene: 50k-200k vertices, drawn first from the scene's own generator
    assert sizes == [int(np.random.default_rng([6, i]).integers(50_000, 200_000)) for i in range(3)]
    assert (tmp_path / "scans").is_dir()
    (tmp_path / "scannetv2-labels.combined.tsv").write_text("id\traw_category\tnyu40id\n")  # not overwritten...
    with pytest.raises(ValueError, match="label table has no rows"):  # ...and used
        synthesize(tmp_path, 1, seed=0, progress=False)
