"""prepare on the hand-made eight-vertex scene: every array of the .npz known in advance, and the batch logic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scannet_tools import prepare
from scannet_tools.labels import IGNORE_ID
from scannet_tools.prepare import (
    BatchReport,
    _guarded,
    apply_alignment,
    list_scenes,
    load_prepared,
    prepare_all,
    prepare_scene,
    prepared_path,
    run_batch,
    vertex_normals,
)
from scannet_tools.reader import SceneError
from tests.test_scannet_reader import TINY, TINY_ALIGN, TINY_RGB, TINY_XYZ, write_tiny_scene, write_tiny_table

S5 = 1 / np.sqrt(5)
# Area-weighted normals by hand: the two squares at z = 0 face +z, the upright square at x = 2 faces -x;
# vertex 4 is in one +z triangle and two -x ones, vertex 5 in two +z triangles and one -x one.
TINY_NORMALS = np.array([[0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 1],
                         [-2 * S5, 0, S5], [-S5, 0, 2 * S5], [-1, 0, 0], [-1, 0, 0]])
# wall (train id 0) on 0-3, chair (4) on 4-5, table (6) on 6-7; wall instances are dropped
TINY_SEMANTIC = [0, 0, 0, 0, 4, 4, 6, 6]
TINY_TRAIN_INSTANCE = [-1, -1, -1, -1, 1, 1, 3, 3]
KEYS = {"scene", "xyz", "rgb", "normals", "semantic", "instance", "superpoint", "nyu40", "axis_alignment"}


def test_vertex_normals_are_area_weighted_and_default_to_up():
    xyz = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [5, 5, 5], [1, 1, 1]], np.float32)
    # a 2x2 right triangle facing +z (twice the area: 4) and a 1x2 one facing +y (2); vertex 4 in no face,
    # vertex 5 only in a degenerate (zero-area) one
    faces = np.array([[0, 1, 2], [0, 3, 1], [5, 5, 0]])
    n = vertex_normals(xyz, faces)
    assert n.dtype == np.float32
    expected = [[0, 2 / np.sqrt(20), 4 / np.sqrt(20)], [0, 2 / np.sqrt(20), 4 / np.sqrt(20)], [0, 0, 1], [0, 1, 0],
                [0, 0, 1], [0, 0, 1]]
    np.testing.assert_allclose(n, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(vertex_normals(xyz, np.zeros((0, 3), np.int64)), np.tile([0, 0, 1], (6, 1)))
    # a triangle of 0.1 micrometre sides (twice its area: 1e-14) still gives unit normals
    tiny = np.array([[0, 0, 0], [1e-7, 0, 0], [0, 1e-7, 0]], np.float32)
    np.testing.assert_allclose(vertex_normals(tiny, np.array([[0, 2, 1]])), np.tile([0, 0, -1], (3, 1)), atol=1e-6)


def test_apply_alignment_is_rotation_then_shift():
    out = apply_alignment(np.array([[1, 0, 0], [0, 2, 3]], np.float32), TINY_ALIGN)
    assert out.dtype == np.float32
    # TINY_ALIGN turns x into y and y into -x, then shifts by (5, -2, 0.5)
    np.testing.assert_array_equal(out, [[5, -1, 0.5], [3, -2, 3.5]])


def test_prepared_scene_holds_the_hand_computed_arrays(tmp_path):
    d = write_tiny_scene(tmp_path / "scans")
    out = prepared_path(tmp_path / "p", TINY)
    assert out == tmp_path / "p" / f"{TINY}.npz"
    assert prepare_scene(d, out, {"wall": 1, "chair": 5, "table": 7}) == (8, None)
    p = load_prepared(str(out))
    assert set(p) == KEYS and p["scene"] == TINY and isinstance(p["scene"], str)
    assert p["xyz"].dtype == np.float32 and p["normals"].dtype == np.float32 and p["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(p["xyz"], TINY_XYZ)
    np.testing.assert_array_equal(p["rgb"], TINY_RGB)
    np.testing.assert_allclose(p["normals"], TINY_NORMALS, rtol=0, atol=1e-6)
    assert p["semantic"].dtype == np.int16 and p["semantic"].tolist() == TINY_SEMANTIC
    assert p["instance"].dtype == np.int32 and p["instance"].tolist() == TINY_TRAIN_INSTANCE
    assert p["superpoint"].dtype == np.int32 and p["superpoint"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert p["nyu40"].dtype == np.uint8 and p["nyu40"].tolist() == [1, 1, 1, 1, 5, 5, 7, 7]
    np.testing.assert_array_equal(p["axis_alignment"], TINY_ALIGN)


def test_aligned_preparation_moves_points_and_turns_normals(tmp_path):
    d = write_tiny_scene(tmp_path / "scans")
    prepare_scene(d, tmp_path / "a.npz", {"wall": 1, "chair": 5, "table": 7}, align=True)
    p = load_prepared(tmp_path / "a.npz")
    rot = TINY_ALIGN[:3, :3]
    np.testing.assert_allclose(p["xyz"], TINY_XYZ @ rot.T + [5, -2, 0.5], rtol=0, atol=1e-6)
    np.testing.assert_allclose(p["normals"][6], [0, -1, 0], atol=1e-6)  # -x turned by 90 degrees about z
    np.testing.assert_allclose(p["normals"], TINY_NORMALS @ rot.T, rtol=0, atol=1e-6)
    assert p["normals"].dtype == np.float32
    np.testing.assert_array_equal(p["axis_alignment"], TINY_ALIGN)


def test_unlabelled_preparation_and_out_of_range_labels(tmp_path):
    d = write_tiny_scene(tmp_path / "scans")
    assert prepare_scene(d, tmp_path / "u.npz", None) == (8, None)
    p = load_prepared(tmp_path / "u.npz")
    assert (p["semantic"] == IGNORE_ID).all() and (p["instance"] == -1).all() and (p["nyu40"] == 0).all()
    assert p["superpoint"].tolist() == [0, 0, 0, 0, 1, 1, 2, 2]  # superpoints are read without labels too
    bare = write_tiny_scene(tmp_path / "bare", annotated=False)
    prepare_scene(bare, tmp_path / "b.npz", {"wall": 1})
    assert load_prepared(tmp_path / "b.npz")["superpoint"].tolist() == [-1] * 8
    # a label table with ids beyond uint8 (not ScanNet's, but readable): nyu40 saturates at 255
    prepare_scene(d, tmp_path / "c.npz", {"wall": 300, "chair": 5, "table": 7})
    assert load_prepared(tmp_path / "c.npz")["nyu40"].tolist() == [255, 255, 255, 255, 5, 5, 7, 7]


def test_unknown_policy_reaches_the_scene_and_its_warning(tmp_path):
    d = write_tiny_scene(tmp_path / "scans")
    with pytest.raises(SceneError, match="unknown raw category 'chair'"):
        prepare_scene(d, tmp_path / "e.npz", {"wall": 1, "table": 7})
    n, warning = prepare_scene(d, tmp_path / "o.npz", {"wall": 1, "table": 7}, unknown="otherprop")
    assert n == 8 and warning == (f"{TINY}: 1 raw category not in the label table labelled otherprop "
                                  "(NYU40 40, ignored): 'chair' 2 vertices")
    p = load_prepared(tmp_path / "o.npz")
    assert p["nyu40"].tolist() == [1, 1, 1, 1, 40, 40, 7, 7]
    assert p["semantic"].tolist() == [0, 0, 0, 0, IGNORE_ID, IGNORE_ID, 6, 6]


# --------------------------------------------------------------------------- batch logic


def test_list_scenes_sorted_filtered_and_missing(tmp_path):
    scans = tmp_path / "scans"
    for name in ("scene0002_00", "scene0000_01", "scene0000_00", "other"):
        (scans / name).mkdir(parents=True)
    (scans / "scene0009_00.txt").write_text("a file, not a folder")
    assert [p.name for p in list_scenes(scans)] == ["scene0000_00", "scene0000_01", "scene0002_00"]
    assert [p.name for p in list_scenes(scans, ["scene0002_00", "scene0000_00", "scene0404_00"])] == \
        ["scene0000_00", "scene0002_00"]
    assert list_scenes(scans, []) == []
    with pytest.raises(FileNotFoundError) as err:
        list_scenes(tmp_path / "nope")
    assert str(err.value) == f"{tmp_path / 'nope'}: scans folder does not exist"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="scans folder does not exist"):
        list_scenes(tmp_path / "file")


def test_batch_report_summary_lines():
    r = BatchReport()
    assert r.ok and r.summary() == "prepared 0, skipped 0 (already done), failed 0"
    r.done += ["a", "b"]
    r.skipped.append("c")
    r.failed["d"] = "d: d.txt: broken"
    r.warnings["a"] = "a: 1 raw category ..."
    assert not r.ok and r.vertices == 0
    assert r.summary("export-gt") == ("export-gt 2, skipped 1 (already done), failed 1\n  FAILED d: d.txt: broken\n"
                                      "  warning: a: 1 raw category ...")


def _ok(scene_dir, n, warning):
    return n, warning


def _scene_error(scene_dir):
    raise SceneError(scene_dir.name, "x.json", "bad")


def _bug(scene_dir):
    raise KeyError("k")


def test_guarded_turns_failures_into_one_line_reasons(tmp_path):
    d = tmp_path / "scene0001_00"
    assert _guarded((_ok, d, (5, "w"))) == ("scene0001_00", 5, None, "w")
    assert _guarded((_scene_error, d, ())) == ("scene0001_00", 0, "scene0001_00: x.json: bad", None)
    assert _guarded((_bug, d, ())) == ("scene0001_00", 0, "scene0001_00: unexpected KeyError: 'k'", None)


def test_run_batch_collects_counts_warnings_and_errors(tmp_path, capsys):
    jobs = [(tmp_path / "s1", (3, None)), (tmp_path / "s2", (4, "careful"))]
    report = run_batch(_ok, jobs, 1, "t", BatchReport(skipped=["s0"]))
    assert report.done == ["s1", "s2"] and report.vertices == 7 and report.warnings == {"s2": "careful"}
    assert report.skipped == ["s0"] and report.failed == {}
    report = run_batch(_scene_error, [(tmp_path / "s3", ())], 0, "t", BatchReport())  # workers < 1: one
    assert report.failed == {"s3": "s3: x.json: bad"} and report.done == [] and report.vertices == 0
    assert "error: s3: x.json: bad" in capsys.readouterr().out


def test_prepare_all_in_parallel_resumes_and_overwrites(tmp_path, capsys):
    write_tiny_scene(tmp_path / "scans")
    write_tiny_scene(tmp_path / "scans", "scene0043_00")
    write_tiny_scene(tmp_path / "scans", "scene0044_00", groups=[{"objectId": 0, "label": "sofa", "segments": [10]}])
    table = write_tiny_table(tmp_path)
    out = tmp_path / "new" / "prepared"
    report = prepare_all(str(tmp_path / "scans"), str(out), str(table), workers=2)
    assert report.done == [TINY, "scene0043_00"] and report.vertices == 16
    assert report.failed == {"scene0044_00": "scene0044_00: scene0044_00.aggregation.json: unknown raw category "
                                             "'sofa' (not in the label table; --unknown-category otherprop or "
                                             "ignore maps such categories to ignored labels)"}
    assert load_prepared(out / "scene0043_00.npz")["semantic"].tolist() == TINY_SEMANTIC
    stamp = (out / f"{TINY}.npz").stat().st_mtime_ns
    report = prepare_all(tmp_path / "scans", out, table, unknown="ignore")
    assert report.skipped == [TINY, "scene0043_00"] and report.done == ["scene0044_00"]
    assert "'sofa' 4 vertices" in report.warnings["scene0044_00"]
    assert load_prepared(out / "scene0044_00.npz")["nyu40"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0]
    assert (out / f"{TINY}.npz").stat().st_mtime_ns == stamp
    report = prepare_all(tmp_path / "scans", out, None, scenes=[TINY], overwrite=True, align=True)
    assert report.done == [TINY] and report.skipped == []
    p = load_prepared(out / f"{TINY}.npz")
    assert (p["semantic"] == IGNORE_ID).all()  # no label table: no labels
    np.testing.assert_allclose(p["xyz"][1], [5, -1, 0.5], atol=1e-6)  # aligned


def _normals_by_hand(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Face by face in float64: add each face's cross product (twice its area along its normal) to its corners."""
    v = xyz.astype(np.float64)
    n = np.zeros_like(v)
    for f in faces:
        face_normal = np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]])
        for i in f:
            n[i] += face_normal
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 0, n / np.where(length > 0, length, 1), [0, 0, 1]).astype(np.float32)


def test_vertex_normals_are_summed_in_float64_on_a_random_mesh():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(200, 3)).astype(np.float32)
    faces = rng.integers(0, 198, (600, 3))  # the last two vertices are in no face
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero length on the way
        n = vertex_normals(xyz, faces)
    # summed and normalised in float64, rounded once to float32: bit for bit the float64 result
    np.testing.assert_array_equal(n, _normals_by_hand(xyz, faces))
    assert n[198:].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_prepared_arrays_keep_their_dtypes_and_clip_nyu40(tmp_path):
    bare = write_tiny_scene(tmp_path / "bare", annotated=False)
    prepare_scene(bare, tmp_path / "b.npz", {"wall": 1})
    assert load_prepared(tmp_path / "b.npz")["superpoint"].dtype == np.int32
    d = write_tiny_scene(tmp_path / "scans")
    prepare_scene(d, tmp_path / "n.npz", {"wall": -1, "chair": 5, "table": 7})  # a negative id clips to 0
    assert load_prepared(tmp_path / "n.npz")["nyu40"].tolist() == [0, 0, 0, 0, 5, 5, 7, 7]


def test_load_prepared_refuses_pickled_objects(tmp_path):
    with open(tmp_path / "evil.npz", "wb") as f:
        np.savez(f, scene="scene0000_00", xyz=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_prepared(tmp_path / "evil.npz")


class _RecordingPool:
    """Stands in for ProcessPoolExecutor: records its size and maps in this process."""

    sizes: list[int] = []

    def __init__(self, max_workers):
        self.sizes.append(max_workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, tasks):
        return map(fn, tasks)


class _RecordingBar:
    """Stands in for tqdm: records how it was made and updated."""

    made: list[dict] = []
    updates: list = []

    def __init__(self, **kwargs):
        self.made.append(kwargs)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.updates.append("closed")

    write = staticmethod(print)


@pytest.mark.parametrize("workers, n_tasks, cpus, pool", [
    (1, 2, 8, None), (2, 1, 8, None), (2, 2, 8, 2), (3, 3, 8, 3), (8, 3, 2, 2), (0, 2, 8, None), (4, 2, None, None),
])
def test_run_batch_uses_a_pool_only_for_several_workers_and_scenes(workers, n_tasks, cpus, pool, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(prepare, "ProcessPoolExecutor", _RecordingPool)
    monkeypatch.setattr(prepare, "tqdm", _RecordingBar)
    monkeypatch.setattr(prepare.os, "cpu_count", lambda: cpus)  # None: unknown, one worker
    _RecordingPool.sizes, _RecordingBar.made, _RecordingBar.updates = [], [], []
    jobs = [(tmp_path / f"s{i}", (i, None)) for i in range(n_tasks)]
    report = run_batch(_ok, jobs, workers, "label", BatchReport())
    assert report.done == [f"s{i}" for i in range(n_tasks)]
    assert _RecordingPool.sizes == ([] if pool is None else [pool])
    assert _RecordingBar.made == [dict(total=n_tasks, desc="label", unit="scene", dynamic_ncols=True, disable=None)]
    assert _RecordingBar.updates == [1] * n_tasks + ["closed"]


def test_prepare_all_defaults_one_worker_unaligned_under_its_label(tmp_path, monkeypatch):
    write_tiny_scene(tmp_path / "scans")
    calls = []
    real = prepare.run_batch
    monkeypatch.setattr(prepare, "run_batch", lambda fn, jobs, workers, desc, report: calls.append(
        (fn, workers, desc)) or real(fn, jobs, workers, desc, report))
    prepare_all(tmp_path / "scans", tmp_path / "p", write_tiny_table(tmp_path))
    assert calls == [(prepare_scene, 1, "prepare")]
    np.testing.assert_array_equal(load_prepared(tmp_path / "p" / f"{TINY}.npz")["xyz"], TINY_XYZ)  # not aligned
