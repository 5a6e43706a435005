"""scannet_tools.reader on hand-made raw scenes: values known in advance, one clear line per bad input.

The helper :func:`write_tiny_scene` writes an eight-vertex scene in the raw ScanNet layout whose
labels can be read off by hand; the export-gt and prepare tests use it too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from scannet_tools import reader
from scannet_tools.reader import (
    RawScene,
    SceneError,
    ScenePaths,
    _dedupe_repeated_groups,
    _read_json,
    label_vertices,
    mesh_vertex_count,
    read_axis_alignment,
    read_mesh,
    read_scene,
    scene_vertex_counts,
    training_labels,
    unknown_category_warning,
    vertex_labels,
)

TINY = "scene0042_00"
# Two unit squares side by side at z = 0 and a third one raised, two triangles each.
TINY_XYZ = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                     [2, 0, 0], [2, 1, 0], [2, 0, 1], [2, 1, 1]], np.float32)
TINY_RGB = np.arange(24, dtype=np.uint8).reshape(8, 3) * 10
TINY_FACES = np.array([[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 2], [4, 6, 7], [4, 7, 5]], np.int64)
# Superpoint ids as a real segs.json has them: arbitrary and non-contiguous.
TINY_SEGS = [10, 10, 10, 10, 20, 20, 30, 30]
TINY_GROUPS = [
    {"id": 0, "objectId": 0, "segments": [20], "label": "chair"},
    {"id": 1, "objectId": 1, "segments": [10], "label": "wall"},
    {"id": 2, "objectId": 2, "segments": [30], "label": "table"},
]
TINY_TABLE = "id\traw_category\tnyu40id\n1\twall\t1\n2\tchair\t5\n3\ttable\t7\n4\tlamp\t35\n"
# By hand: wall (NYU40 1) on vertices 0-3 is object 1, chair (5) on 4-5 object 0, table (7) on 6-7 object 2.
TINY_NYU40 = [1, 1, 1, 1, 5, 5, 7, 7]
TINY_INSTANCE = [2, 2, 2, 2, 1, 1, 3, 3]  # objectId + 1
# A 90 degree turn about z and a shift, as a scene's .txt gives it (scan -> aligned frame).
TINY_ALIGN = np.array([[0, -1, 0, 5], [1, 0, 0, -2], [0, 0, 1, 0.5], [0, 0, 0, 1]], np.float64)


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray, faces: np.ndarray | None, label=None,
              text: bool = False) -> None:
    """A mesh PLY laid out as ScanNet's (x y z red green blue alpha [label], uchar-counted int faces)."""
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    if label is not None:
        fields.append(("label", "u2"))
    v = np.empty(len(xyz), dtype=fields)
    v["x"], v["y"], v["z"] = np.asarray(xyz, np.float32).T
    v["red"], v["green"], v["blue"] = np.asarray(rgb, np.uint8).T
    v["alpha"] = 255
    if label is not None:
        v["label"] = label
    elements = [PlyElement.describe(v, "vertex")]
    if faces is not None:
        f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        f["vertex_indices"] = faces
        elements.append(PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"}))
    PlyData(elements, text=text, byte_order="<").write(str(path))


def write_tiny_scene(scans: Path, scene: str = TINY, groups: list[dict] | None = None, annotated: bool = True,
                     align: np.ndarray | None = TINY_ALIGN) -> Path:
    """The eight-vertex scene under ``scans/<scene>/`` (``annotated=False``: mesh and .txt only, as a test scan)."""
    d = scans / scene
    d.mkdir(parents=True, exist_ok=True)
    write_ply(d / f"{scene}_vh_clean_2.ply", TINY_XYZ, TINY_RGB, TINY_FACES)
    if align is not None:
        alignment = " ".join(str(v) for v in align.ravel())
        (d / f"{scene}.txt").write_text(f"axisAlignment = {alignment}\nsceneType = Lab\n")
    if annotated:
        write_ply(d / f"{scene}_vh_clean_2.labels.ply", TINY_XYZ, TINY_RGB, TINY_FACES, label=np.array(TINY_NYU40))
        (d / f"{scene}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": TINY_SEGS}))
        (d / f"{scene}.aggregation.json").write_text(json.dumps({"segGroups": TINY_GROUPS if groups is None
                                                                 else groups}))
    return d


def write_tiny_table(root: Path) -> Path:
    p = root / "scannetv2-labels.combined.tsv"
    p.write_text(TINY_TABLE)
    return p


TINY_LABEL_MAP = {"wall": 1, "chair": 5, "table": 7, "lamp": 35}


@pytest.fixture
def tiny(tmp_path) -> Path:
    """scans/ holding the tiny annotated scene; its folder."""
    return write_tiny_scene(tmp_path / "scans")


def _message(fn, *args) -> str:
    with pytest.raises(SceneError) as err:
        fn(*args)
    return str(err.value)


# --------------------------------------------------------------------------- reading a good scene


def test_tiny_scene_reads_back_exactly(tiny):
    raw = read_scene(tiny)
    assert raw.scene == TINY and raw.annotated
    assert raw.xyz.dtype == np.float32 and raw.rgb.dtype == np.uint8 and raw.faces.dtype == np.int64
    np.testing.assert_array_equal(raw.xyz, TINY_XYZ)
    np.testing.assert_array_equal(raw.rgb, TINY_RGB)
    np.testing.assert_array_equal(raw.faces, TINY_FACES)
    assert raw.seg_indices.tolist() == TINY_SEGS and raw.seg_indices.dtype == np.int64
    assert raw.seg_groups == TINY_GROUPS
    np.testing.assert_array_equal(raw.axis_alignment, TINY_ALIGN)
    labels = label_vertices(raw, TINY_LABEL_MAP)
    assert labels.nyu40.tolist() == TINY_NYU40 and labels.instance.tolist() == TINY_INSTANCE
    assert labels.nyu40.dtype == np.int64 and labels.instance.dtype == np.int64 and labels.unknown == {}
    nyu40, instance = vertex_labels(raw, TINY_LABEL_MAP)
    assert nyu40.tolist() == TINY_NYU40 and instance.tolist() == TINY_INSTANCE


def test_ascii_ply_and_polygon_faces(tmp_path):
    d = write_tiny_scene(tmp_path / "scans", annotated=False)
    write_ply(d / f"{TINY}_vh_clean_2.ply", TINY_XYZ, TINY_RGB, TINY_FACES, text=True)
    xyz, rgb, faces = read_mesh(d / f"{TINY}_vh_clean_2.ply", TINY)
    np.testing.assert_array_equal(xyz, TINY_XYZ)
    np.testing.assert_array_equal(faces, TINY_FACES)
    # faces of varying length take the generic path: triangles of it are fine, a quad is refused
    tri = np.empty(2, dtype=[("vertex_indices", object)])
    tri["vertex_indices"] = [np.array([0, 1, 2], np.int32), np.array([0, 2, 3], np.int32)]
    v = PlyData.read(str(d / f"{TINY}_vh_clean_2.ply"))["vertex"].data
    p = d / "tri.ply"
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(tri, "face")], text=True).write(str(p))
    assert read_mesh(p, TINY)[2].tolist() == [[0, 1, 2], [0, 2, 3]]
    quad = np.empty(2, dtype=[("vertex_indices", object)])
    quad["vertex_indices"] = [np.array([0, 1, 2], np.int32), np.array([0, 1, 2, 3], np.int32)]
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(quad, "face")], text=True).write(str(p))
    assert _message(read_mesh, p, TINY) == f"{TINY}: tri.ply: mesh has faces that are not triangles"


def test_faces_under_another_property_name_and_meshes_without_faces(tmp_path):
    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"] = [0, 1, 0]
    v["y"] = [0, 0, 1]
    f = np.empty(1, dtype=[("vertex_index", "i4", (3,))])
    f["vertex_index"] = [[2, 1, 0]]
    p = tmp_path / "m.ply"
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")]).write(str(p))
    assert read_mesh(p, TINY)[2].tolist() == [[2, 1, 0]]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(p))  # a point cloud: no faces
    xyz, rgb, faces = read_mesh(p, TINY)
    assert faces.shape == (0, 3) and faces.dtype == np.int64 and xyz[:, 0].tolist() == [0, 1, 0]
    no_face = np.empty(0, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(no_face, "face")]).write(str(p))
    assert read_mesh(p, TINY)[2].shape == (0, 3)


def test_header_vertex_count_and_per_scene_counts(tmp_path, tiny):
    assert mesh_vertex_count(tiny / f"{TINY}_vh_clean_2.ply", TINY) == 8
    write_tiny_scene(tmp_path / "scans", "scene0043_00", annotated=False)
    assert scene_vertex_counts(tmp_path / "scans", [TINY, "scene0043_00"]) == {TINY: 8, "scene0043_00": 8}
    assert scene_vertex_counts(str(tmp_path / "scans"), []) == {}
    no_vertex = tmp_path / "nv.ply"
    no_vertex.write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\n"
                          b"end_header\n")
    assert _message(mesh_vertex_count, no_vertex, TINY) == f"{TINY}: nv.ply: PLY header has no vertex element"
    # only the first 64 header lines are read: the vertex element as line 64 is found, as line 65 it is not
    long_header = tmp_path / "long.ply"
    long_header.write_bytes(b"ply\nformat ascii 1.0\n" + b"comment x\n" * 61 + b"element vertex 3\nend_header\n")
    assert mesh_vertex_count(long_header, TINY) == 3
    long_header.write_bytes(b"ply\nformat ascii 1.0\n" + b"comment x\n" * 62 + b"element vertex 3\nend_header\n")
    assert "PLY header has no vertex element" in _message(mesh_vertex_count, long_header, TINY)
    after_header = tmp_path / "after.ply"  # the body is not header: a look-alike line there does not count
    after_header.write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nend_header\nelement vertex 3\n")
    assert "PLY header has no vertex element" in _message(mesh_vertex_count, after_header, TINY)
    short = tmp_path / "short.ply"
    short.write_bytes(b"ply\nformat ascii 1.0\ncomment x\nelement vertex 5\nend_header\n")
    assert mesh_vertex_count(short, TINY) == 5
    truncated = tmp_path / "cut.ply"
    truncated.write_bytes(b"ply\nformat ascii 1.0\n")
    assert "no vertex element" in _message(mesh_vertex_count, truncated, TINY)
    assert _message(mesh_vertex_count, tmp_path / "absent.ply", TINY) == f"{TINY}: absent.ply: file is missing"


def test_unannotated_read_skips_annotation_files(tmp_path, tiny):
    (tiny / f"{TINY}.aggregation.json").write_text("{ broken")
    (tiny / f"{TINY}_vh_clean_2.labels.ply").write_bytes(b"garbage")
    raw = read_scene(tiny, annotations=False)
    assert raw.seg_indices.tolist() == TINY_SEGS and raw.seg_groups == [] and not raw.annotated
    bare = write_tiny_scene(tmp_path / "other", annotated=False, align=None)
    raw = read_scene(str(bare), annotations=False)
    assert raw.seg_indices is None and not raw.annotated
    np.testing.assert_array_equal(raw.axis_alignment, np.eye(4))
    raw = read_scene(bare)  # annotations asked for, none there: a test scan
    assert raw.seg_indices is None and raw.seg_groups == [] and not raw.annotated
    assert label_vertices(raw, TINY_LABEL_MAP).nyu40.tolist() == [0] * 8
    assert label_vertices(raw, TINY_LABEL_MAP).instance.tolist() == [0] * 8


def test_annotated_requires_both_superpoints_and_groups():
    raw = RawScene(TINY, TINY_XYZ, TINY_RGB, TINY_FACES)
    assert not raw.annotated
    raw.seg_indices = np.array(TINY_SEGS)
    assert not raw.annotated  # segs but an empty aggregation
    raw.seg_groups = TINY_GROUPS
    assert raw.annotated
    raw.seg_indices = None
    assert not raw.annotated
    assert RawScene(TINY, TINY_XYZ, TINY_RGB, TINY_FACES).axis_alignment.tolist() == np.eye(4).tolist()


def test_scene_paths_follow_the_download_names(tmp_path):
    p = ScenePaths(tmp_path / "scene0007_01")
    assert p.scene == "scene0007_01"
    assert p.mesh == tmp_path / "scene0007_01" / "scene0007_01_vh_clean_2.ply"
    assert p.labels_mesh == tmp_path / "scene0007_01" / "scene0007_01_vh_clean_2.labels.ply"
    assert p.segs == tmp_path / "scene0007_01" / "scene0007_01_vh_clean_2.0.010000.segs.json"
    assert p.aggregation == tmp_path / "scene0007_01" / "scene0007_01.aggregation.json"
    assert p.meta == tmp_path / "scene0007_01" / "scene0007_01.txt"


# --------------------------------------------------------------------------- axis alignment


def test_axis_alignment_parsing(tmp_path):
    p = tmp_path / "s.txt"
    assert read_axis_alignment(p, TINY).tolist() == np.eye(4).tolist()  # no file: identity
    p.write_text("sceneType = Lab\n")
    assert read_axis_alignment(p, TINY).tolist() == np.eye(4).tolist()  # no line: identity
    p.write_text("colorHeight = 968\naxisAlignment = " + " ".join(map(str, range(16))) + "\naxisAlignment = 1\n")
    m = read_axis_alignment(p, TINY)
    assert m.dtype == np.float64 and m.tolist() == np.arange(16.0).reshape(4, 4).tolist()  # the first line counts
    p.write_text("axisAlignment = 1 0 0 0=0\n")
    with pytest.raises(SceneError) as err:
        read_axis_alignment(p, TINY)
    assert str(err.value) == f"{TINY}: s.txt: axisAlignment holds non-numbers"
    p.write_text("axisAlignment = " + " ".join(["1"] * 15) + "\n")
    assert _message(read_axis_alignment, p, TINY) == f"{TINY}: s.txt: axisAlignment has 15 values, expected 16"
    p.write_text(" axisAlignment = 1\n")  # not at the start of a line: not the alignment
    assert read_axis_alignment(p, TINY).tolist() == np.eye(4).tolist()
    # a stray non-UTF-8 byte elsewhere in the file does not stop the alignment being read
    p.write_bytes(b"sceneType = Caf\xe9\naxisAlignment = " + " ".join(["2"] * 16).encode() + b"\n")
    assert read_axis_alignment(p, TINY).tolist() == np.full((4, 4), 2.0).tolist()


def test_json_that_cannot_be_read_is_one_line(tmp_path):
    (tmp_path / "x.json").mkdir()
    msg = _message(_read_json, tmp_path / "x.json", TINY)
    assert msg.startswith(f"{TINY}: x.json: cannot read ([Errno 21] Is a directory") and "\n" not in msg


def test_segment_groups_listed_twice_are_read_once():
    a, b = {"objectId": 0, "label": "chair", "segments": [1]}, {"objectId": 1, "label": "wall", "segments": [2]}
    assert _dedupe_repeated_groups([a, b, a, b]) == [a, b]
    assert _dedupe_repeated_groups([a, a]) == [a]
    assert _dedupe_repeated_groups([a, b, b, a]) == [a, b, b, a]  # halves differ
    assert _dedupe_repeated_groups([a, b, a]) == [a, b, a]  # odd count
    assert _dedupe_repeated_groups([]) == []


# --------------------------------------------------------------------------- one clear line per bad input


def _corrupt(d: Path, name: str, data: bytes | str) -> None:
    p = d / name.format(S=TINY)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())


BAD_INPUTS = {
    # case: (file to write, its content, the one-line message after "<scene>: "); {S} is the scene
    "segs not JSON": ("{S}_vh_clean_2.0.010000.segs.json", '{"segIndices": [1,',
                      "{S}_vh_clean_2.0.010000.segs.json: invalid JSON (Expecting value at line 1 column 19)"),
    "segs a list": ("{S}_vh_clean_2.0.010000.segs.json", "[1, 2]",
                    "{S}_vh_clean_2.0.010000.segs.json: JSON top level is not an object"),
    "segs no list": ("{S}_vh_clean_2.0.010000.segs.json", '{"segIndices": 3}',
                     "{S}_vh_clean_2.0.010000.segs.json: no segIndices list"),
    "segs strings": ("{S}_vh_clean_2.0.010000.segs.json", '{"segIndices": [1, 1, 1, 1, 2, 2, "x", 3]}',
                     "{S}_vh_clean_2.0.010000.segs.json: segIndices holds non-integers"),
    "segs nested": ("{S}_vh_clean_2.0.010000.segs.json", '{"segIndices": [[1, 1], [1, 1], [2, 2], [3, 3]]}',
                    "{S}_vh_clean_2.0.010000.segs.json: has 8 segIndices, the mesh has 8 vertices"),
    "segs short": ("{S}_vh_clean_2.0.010000.segs.json", '{"segIndices": [10, 10, 10, 10, 20, 20, 30]}',
                   "{S}_vh_clean_2.0.010000.segs.json: has 7 segIndices, the mesh has 8 vertices"),
    "segs not UTF-8": ("{S}_vh_clean_2.0.010000.segs.json", b'{"segIndices": "\xff"}',
                       "{S}_vh_clean_2.0.010000.segs.json: cannot read ("),
    "agg not JSON": ("{S}.aggregation.json", "{\n  oops", "{S}.aggregation.json: invalid JSON (Expecting property name "
                     "enclosed in double quotes at line 2 column 3)"),
    "agg no groups": ("{S}.aggregation.json", '{"segGroups": {}}', "{S}.aggregation.json: no segGroups list"),
    "agg group no label": ("{S}.aggregation.json", '{"segGroups": [{"objectId": 0, "segments": [10]}]}',
                           "{S}.aggregation.json: a segGroup lacks objectId, label or segments"),
    "agg group not object": ("{S}.aggregation.json", '{"segGroups": [3]}',
                             "{S}.aggregation.json: a segGroup lacks objectId, label or segments"),
    "agg absent segment": ("{S}.aggregation.json", '{"segGroups": [{"objectId": 4, "label": "chair", "segments": '
                           '[10, 11, 12, 13, 14, 15, 16, 20]}]}',
                           "{S}.aggregation.json: segGroup objectId 4 (chair) names segment ids absent from "
                           "{S}_vh_clean_2.0.010000.segs.json: [11, 12, 13, 14, 15]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_annotation_files_give_one_line_naming_file_and_problem(case, tiny):
    name, content, expected = BAD_INPUTS[case]
    _corrupt(tiny, name, content)
    msg = _message(read_scene, tiny)
    assert msg.startswith(f"{TINY}: " + expected.format(S=TINY)) and "\n" not in msg


def test_missing_and_mismatched_files(tmp_path):
    d = write_tiny_scene(tmp_path / "a")
    (d / f"{TINY}.aggregation.json").unlink()
    assert _message(read_scene, d) == (f"{TINY}: {TINY}.aggregation.json: file is missing "
                                       "(the scene has the other annotation file)")
    d = write_tiny_scene(tmp_path / "b")
    (d / f"{TINY}_vh_clean_2.0.010000.segs.json").unlink()
    assert _message(read_scene, d) == (f"{TINY}: {TINY}_vh_clean_2.0.010000.segs.json: file is missing "
                                       "(the scene has the other annotation file)")
    d = write_tiny_scene(tmp_path / "c")
    write_ply(d / f"{TINY}_vh_clean_2.labels.ply", TINY_XYZ[:7], TINY_RGB[:7], None, label=np.ones(7))
    assert _message(read_scene, d) == f"{TINY}: {TINY}_vh_clean_2.labels.ply: has 7 vertices, the mesh has 8"
    # the labels.ply is checked even when the scene has no other annotation file
    for f in (f"{TINY}.aggregation.json", f"{TINY}_vh_clean_2.0.010000.segs.json"):
        (d / f).unlink()
    assert "has 7 vertices, the mesh has 8" in _message(read_scene, d)
    (d / f"{TINY}_vh_clean_2.labels.ply").unlink()
    assert read_scene(d).seg_indices is None
    (d / f"{TINY}_vh_clean_2.ply").unlink()
    assert _message(read_scene, d) == f"{TINY}: {TINY}_vh_clean_2.ply: file is missing"


def _mesh_message(tmp_path: Path, xyz, faces, **kw) -> str:
    p = tmp_path / f"{TINY}_vh_clean_2.ply"
    write_ply(p, xyz, np.zeros((len(xyz), 3)), faces, **kw)
    return _message(read_mesh, p, TINY)


def test_bad_meshes(tmp_path):
    xyz = TINY_XYZ.copy()
    xyz[2, 1] = np.nan
    xyz[5, 0] = np.inf
    xyz[6] = -np.inf
    m = f"{TINY}: {TINY}_vh_clean_2.ply: "
    assert _mesh_message(tmp_path, xyz, TINY_FACES) == m + "3 vertices have NaN or infinite coordinates"
    assert _mesh_message(tmp_path, TINY_XYZ[:0], TINY_FACES[:0]) == m + "mesh has no vertices"
    assert _mesh_message(tmp_path, TINY_XYZ, [[0, 1, 8]]) == m + "faces index vertices that do not exist"
    assert _mesh_message(tmp_path, TINY_XYZ, [[0, -1, 2]]) == m + "faces index vertices that do not exist"
    p = tmp_path / f"{TINY}_vh_clean_2.ply"
    write_ply(p, TINY_XYZ, TINY_RGB, [[0, 1, 7]])  # the highest index is fine
    assert read_mesh(p, TINY)[2].tolist() == [[0, 1, 7]]
    v = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])  # no colours
    PlyData([PlyElement.describe(v, "vertex")]).write(str(p))
    assert _message(read_mesh, p, TINY) == m + "PLY lacks element or property 'red'"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 8\nproperty float x\nend_header\n\x00\x00")
    assert _message(read_mesh, p, TINY).startswith(m + "cannot parse PLY (")
    p.write_bytes(b"not a ply at all")
    msg = _message(read_mesh, p, TINY)
    assert msg.startswith(m + "cannot parse PLY (") and "\n" not in msg


# --------------------------------------------------------------------------- labelling rules and warnings


def test_unknown_policy_must_be_one_of_three(tiny):
    with pytest.raises(ValueError) as err:
        label_vertices(read_scene(tiny), TINY_LABEL_MAP, "drop")
    assert str(err.value) == "unknown-category policy 'drop': expected one of error, otherprop, ignore"


def test_unknown_categories_under_each_policy(tiny):
    raw = read_scene(tiny)
    label_map = {"wall": 1, "table": 7}  # the chair (vertices 4-5, objectId 0) is unknown
    assert _message(label_vertices, raw, label_map) == (
        f"{TINY}: {TINY}.aggregation.json: unknown raw category 'chair' (not in the label table; "
        "--unknown-category otherprop or ignore maps such categories to ignored labels)")
    other = label_vertices(raw, label_map, "otherprop")
    assert other.nyu40.tolist() == [1, 1, 1, 1, 40, 40, 7, 7]
    assert other.instance.tolist() == [2, 2, 2, 2, 1, 1, 3, 3] and other.unknown == {"chair": 2}
    ignored = label_vertices(raw, label_map, "ignore")
    assert ignored.nyu40.tolist() == [1, 1, 1, 1, 0, 0, 7, 7]
    assert ignored.instance.tolist() == [2, 2, 2, 2, 0, 0, 3, 3] and ignored.unknown == {"chair": 2}


def test_repeated_objects_and_categories_paint_as_the_official_script(tiny):
    raw = read_scene(tiny)
    raw.seg_groups = [
        {"objectId": 9, "label": "table", "segments": [30]},
        {"objectId": 5, "label": "chair", "segments": [10]},
        # objectId 9 again: its list becomes [20] (keeping its first place); the chair list [10] is extended
        # in place to [10, 20], and that list is also objectId 5's (aliased in the script)
        {"objectId": 9, "label": "chair", "segments": [20]},
        {"objectId": 7, "label": "lamp", "segments": [10]},  # repaints the wall segment
    ]
    labels = label_vertices(raw, TINY_LABEL_MAP)
    # semantic, category by category: table on 30, chair on 10 and 20, then lamp (35) over 10
    assert labels.nyu40.tolist() == [35, 35, 35, 35, 5, 5, 7, 7]
    # instances in first-appearance order: id 10 paints 20, id 6 paints 10 and 20, id 8 paints 10; 30 keeps none
    assert labels.instance.tolist() == [8, 8, 8, 8, 6, 6, 0, 0]


def test_unknown_counts_are_the_vertices_each_category_finally_labels(tiny):
    raw = read_scene(tiny)
    raw.seg_groups = [
        {"objectId": 0, "label": "stick", "segments": [10, 20]},
        {"objectId": 1, "label": "trashcan", "segments": [30]},
        {"objectId": 2, "label": "wall", "segments": [20]},  # repaints half of the stick
    ]
    labels = label_vertices(raw, TINY_LABEL_MAP, "otherprop")
    assert labels.nyu40.tolist() == [40, 40, 40, 40, 1, 1, 40, 40]
    assert labels.unknown == {"stick": 4, "trashcan": 2}
    assert unknown_category_warning(TINY, labels.unknown, "otherprop") == (
        f"{TINY}: 2 raw categories not in the label table labelled otherprop (NYU40 40, ignored): "
        "'stick' 4 vertices, 'trashcan' 2 vertices")
    assert unknown_category_warning(TINY, {"a": 1, "b": 1_234_567}, "ignore") == (
        f"{TINY}: 2 raw categories not in the label table labelled unannotated (ignored): "
        "'b' 1,234,567 vertices, 'a' 1 vertices")
    assert unknown_category_warning(TINY, {"stick": 3}, "ignore") == (
        f"{TINY}: 1 raw category not in the label table labelled unannotated (ignored): 'stick' 3 vertices")
    assert unknown_category_warning(TINY, {}, "otherprop") is None


def test_training_labels_drop_stuff_and_non_benchmark_instances():
    nyu40 = np.array([1, 2, 5, 5, 40, 0, 39, 7, 13])
    instance = np.array([1, 2, 3, 0, 4, 0, 6, 7, 8])
    semantic, inst = training_labels(nyu40, instance)
    assert semantic.tolist() == [0, 1, 4, 4, -100, -100, 19, 6, -100]
    assert inst.dtype == np.int32 and inst.tolist() == [-1, -1, 3, -1, -1, -1, 6, 7, -1]
    # cabinet (train id 2) is the first instance class
    assert training_labels(np.array([3]), np.array([9]))[1].tolist() == [9]


def test_more_unknown_count_corners(tiny):
    raw = read_scene(tiny)
    # segment 20 is painted by nobody; 'box' lists no segment at all: it labels 0 vertices
    raw.seg_groups = [{"objectId": 0, "label": "stick", "segments": [10]},
                      {"objectId": 1, "label": "trashcan", "segments": [30]},
                      {"objectId": 2, "label": "box", "segments": []}]
    labels = label_vertices(raw, TINY_LABEL_MAP, "otherprop")
    assert labels.nyu40.tolist() == [40, 40, 40, 40, 0, 0, 40, 40]
    assert labels.instance.tolist() == [1, 1, 1, 1, 0, 0, 2, 2]
    assert labels.unknown == {"stick": 4, "trashcan": 2, "box": 0}
    nyu40, instance = vertex_labels(raw, TINY_LABEL_MAP, "ignore")  # the policy is passed on
    assert nyu40.tolist() == [0] * 8 and instance.tolist() == [0] * 8


def test_first_object_keeps_instance_id_one():
    # objectId 0 is instance 1: kept for an instance class
    assert training_labels(np.array([5, 1]), np.array([1, 1]))[1].tolist() == [1, -1]


def test_scene_vertex_counts_name_the_scene_of_a_missing_mesh(tmp_path):
    (tmp_path / "scans" / "scene0043_00").mkdir(parents=True)
    assert _message(scene_vertex_counts, tmp_path / "scans", ["scene0043_00"]) == (
        "scene0043_00: scene0043_00_vh_clean_2.ply: file is missing")


def test_annotations_are_read_as_utf8_whatever_the_locale(tiny):
    groups = [dict(g) for g in TINY_GROUPS]
    groups[0]["label"] = "caf\u00e9 chair"
    (tiny / f"{TINY}.aggregation.json").write_text(json.dumps({"segGroups": groups}, ensure_ascii=False),
                                                   encoding="utf-8")
    code = (f"from scannet_tools.reader import read_scene; "
            f"print(read_scene({str(tiny)!r}).seg_groups[0]['label'].encode('unicode_escape').decode())")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    root = Path(reader.__file__).resolve().parents[1]  # the package under test, not another install
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code], cwd=root, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "caf\\xe9 chair\n"
    assert read_scene(tiny).seg_groups[0]["label"] == "caf\u00e9 chair"  # and in this process, whatever its locale


def _vertices(n: int) -> np.ndarray:
    v = np.zeros(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"] = np.arange(n)
    return v


def test_binary_meshes_with_polygons_or_other_face_properties(tmp_path):
    p = tmp_path / "m.ply"
    quad = np.empty(2, dtype=[("vertex_indices", object)])
    quad["vertex_indices"] = [np.array([0, 1, 2], np.int32), np.array([0, 1, 2, 3], np.int32)]
    PlyData([PlyElement.describe(_vertices(4), "vertex"), PlyElement.describe(quad, "face")], text=False).write(str(p))
    assert _message(read_mesh, p, TINY) == f"{TINY}: m.ply: mesh has faces that are not triangles"
    tris = np.empty(2, dtype=[("vertex_indices", object)])  # lists of varying type, all triangles
    tris["vertex_indices"] = [np.array([0, 1, 2], np.int32), np.array([3, 1, 2], np.int32)]
    PlyData([PlyElement.describe(_vertices(4), "vertex"), PlyElement.describe(tris, "face", len_types={
        "vertex_indices": "u4"})], text=False).write(str(p))
    assert read_mesh(p, TINY)[2].tolist() == [[0, 1, 2], [3, 1, 2]]
    # a face property before the vertex indices: the indices are still the ones read
    flagged = np.empty(1, dtype=[("flags", "u1"), ("vertex_indices", "i4", (3,))])
    flagged["flags"] = 7
    flagged["vertex_indices"] = [[3, 2, 1]]
    PlyData([PlyElement.describe(_vertices(4), "vertex"), PlyElement.describe(flagged, "face")]).write(str(p))
    assert read_mesh(p, TINY)[2].tolist() == [[3, 2, 1]]
    p.write_bytes(p.read_bytes()[:-5])  # cut inside the last face
    assert re.fullmatch(rf"{TINY}: m\.ply: cannot parse PLY \(PlyElementParseError: .*early end-of-file\)",
                        _message(read_mesh, p, TINY))


def test_every_file_s_error_names_the_scene(tiny):
    (tiny / f"{TINY}.txt").write_text("axisAlignment = 1 2 3\n")
    assert _message(read_scene, tiny) == f"{TINY}: {TINY}.txt: axisAlignment has 3 values, expected 16"
    (tiny / f"{TINY}.txt").write_text("sceneType = Lab\n")
    (tiny / f"{TINY}_vh_clean_2.labels.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    assert _message(read_scene, tiny) == f"{TINY}: {TINY}_vh_clean_2.labels.ply: PLY header has no vertex element"
    (tiny / f"{TINY}_vh_clean_2.0.010000.segs.json").write_text('{"segIndices": null}')
    assert _message(read_scene, tiny, False) == f"{TINY}: {TINY}_vh_clean_2.0.010000.segs.json: no segIndices list"


@pytest.mark.parametrize("group, problem", [
    ({"objectId": 0, "label": "chair", "segments": [10, "x"]},
     "segGroup objectId 0 (chair) has segment ids that are not integers: [10, 'x']"),
    ({"objectId": 0, "label": "chair", "segments": [10, None, 20, 30, 10, 20]},
     "segGroup objectId 0 (chair) has segment ids that are not integers: [10, None, 20, 30, 10]"),
    ({"objectId": 3, "label": "chair", "segments": [[10, 20]]},
     "segGroup objectId 3 (chair) has segment ids that are not integers: [[10, 20]]"),
    ({"objectId": 0, "label": "chair", "segments": [2**70]},
     f"segGroup objectId 0 (chair) has segment ids that are not integers: [{2**70}]"),
    ({"objectId": 0, "label": "chair", "segments": 10},
     "segGroup objectId 0 (chair): objectId is not an integer or segments is not a list"),
    ({"objectId": "0", "label": "chair", "segments": [10]},
     "segGroup objectId '0' (chair): objectId is not an integer or segments is not a list"),
])
def test_malformed_segment_groups_are_one_line(group, problem, tiny):
    (tiny / f"{TINY}.aggregation.json").write_text(json.dumps({"segGroups": [group]}))
    assert _message(read_scene, tiny) == f"{TINY}: {TINY}.aggregation.json: {problem}"
