"""export-gt on the hand-made eight-vertex scene: the official files' exact bytes, resuming, bad scenes."""

from __future__ import annotations

import numpy as np
import pytest

from scannet_tools import export_gt
from scannet_tools.export_gt import export_gt_all, export_gt_scene, gt_ids
from scannet_tools.reader import SceneError
from tests.test_scannet_reader import TINY, write_tiny_scene, write_tiny_table

# By hand (tests/test_scannet_reader.py): wall (NYU40 1) objectId 1 on vertices 0-3, chair (5) objectId 0
# on 4-5, table (7) objectId 2 on 6-7.
SEMANTIC = b"1\n1\n1\n1\n5\n5\n7\n7\n"
INSTANCE = b"1002\n1002\n1002\n1002\n5001\n5001\n7003\n7003\n"
OTHER = "scene0043_00"


def test_gt_ids_are_nyu40_and_nyu40_times_1000_plus_instance():
    semantic, instance = gt_ids(np.array([0, 5, 40, 39]), np.array([0, 3, 7, 120]))
    assert semantic.tolist() == [0, 5, 40, 39] and instance.tolist() == [0, 5003, 40007, 39120]


@pytest.fixture
def root(tmp_path):
    write_tiny_scene(tmp_path / "scans")
    write_tiny_scene(tmp_path / "scans", OTHER, groups=[{"objectId": 3, "label": "table", "segments": [10, 30]}])
    (tmp_path / "scans" / "notes").mkdir()  # not a scene folder
    write_tiny_table(tmp_path)
    return tmp_path


def _read(path) -> bytes:
    return path.read_bytes()


def test_exported_files_are_the_hand_computed_ids(root):
    out = root / "gt"
    report = export_gt_all(root / "scans", out, root / "scannetv2-labels.combined.tsv")
    assert report.done == [TINY, OTHER] and report.skipped == [] and report.failed == {} and report.warnings == {}
    assert report.vertices == 16
    assert _read(out / "semantic" / f"{TINY}.txt") == SEMANTIC
    assert _read(out / "instance" / f"{TINY}.txt") == INSTANCE
    assert _read(out / "semantic" / f"{OTHER}.txt") == b"7\n7\n7\n7\n0\n0\n7\n7\n"
    assert _read(out / "instance" / f"{OTHER}.txt") == b"7004\n7004\n7004\n7004\n0\n0\n7004\n7004\n"
    assert sorted(p.name for p in out.iterdir()) == ["instance", "semantic"]


def test_export_resumes_only_scenes_with_both_files_and_overwrites_on_request(root):
    out = root / "gt"
    export_gt_all(str(root / "scans"), str(out), str(root / "scannetv2-labels.combined.tsv"), scenes=[TINY])
    assert not (out / "semantic" / f"{OTHER}.txt").exists()  # only the listed scene
    (out / "semantic" / f"{TINY}.txt").write_bytes(b"stale\n")
    report = export_gt_all(root / "scans", out, root / "scannetv2-labels.combined.tsv")
    assert report.skipped == [TINY] and report.done == [OTHER]
    assert _read(out / "semantic" / f"{TINY}.txt") == b"stale\n"  # done scenes are not rewritten
    (out / "instance" / f"{OTHER}.txt").unlink()  # half done: exported again
    report = export_gt_all(root / "scans", out, root / "scannetv2-labels.combined.tsv")
    assert report.skipped == [TINY] and report.done == [OTHER]
    assert _read(out / "instance" / f"{OTHER}.txt") == b"7004\n7004\n7004\n7004\n0\n0\n7004\n7004\n"
    report = export_gt_all(root / "scans", out, root / "scannetv2-labels.combined.tsv", overwrite=True)
    assert report.skipped == [] and report.done == [TINY, OTHER]
    assert _read(out / "semantic" / f"{TINY}.txt") == SEMANTIC


def test_a_scene_without_annotations_fails_on_one_line_and_the_others_are_exported(root):
    write_tiny_scene(root / "scans", "scene0044_00", annotated=False)
    report = export_gt_all(root / "scans", root / "gt", root / "scannetv2-labels.combined.tsv")
    assert report.done == [TINY, OTHER] and not report.ok
    assert report.failed == {"scene0044_00": "scene0044_00: scene0044_00.aggregation.json: "
                                             "scene has no annotations to export"}
    assert not (root / "gt" / "semantic" / "scene0044_00.txt").exists()


def test_unknown_categories_follow_the_policy(root, tmp_path):
    (root / "scannetv2-labels.combined.tsv").write_text("id\traw_category\tnyu40id\n1\twall\t1\n3\ttable\t7\n")
    table = root / "scannetv2-labels.combined.tsv"
    report = export_gt_all(root / "scans", root / "error", table, scenes=[TINY])
    assert report.failed == {TINY: f"{TINY}: {TINY}.aggregation.json: unknown raw category 'chair' (not in the "
                                   "label table; --unknown-category otherprop or ignore maps such categories to "
                                   "ignored labels)"}
    report = export_gt_all(root / "scans", root / "other", table, scenes=[TINY], unknown="otherprop")
    assert report.done == [TINY] and report.warnings == {
        TINY: f"{TINY}: 1 raw category not in the label table labelled otherprop (NYU40 40, ignored): "
              "'chair' 2 vertices"}
    assert _read(root / "other" / "semantic" / f"{TINY}.txt") == b"1\n1\n1\n1\n40\n40\n7\n7\n"
    assert _read(root / "other" / "instance" / f"{TINY}.txt") == b"1002\n1002\n1002\n1002\n40001\n40001\n7003\n7003\n"
    report = export_gt_all(root / "scans", root / "ignore", table, scenes=[TINY], unknown="ignore")
    assert "labelled unannotated (ignored): 'chair' 2 vertices" in report.warnings[TINY]
    assert _read(root / "ignore" / "semantic" / f"{TINY}.txt") == b"1\n1\n1\n1\n0\n0\n7\n7\n"
    assert _read(root / "ignore" / "instance" / f"{TINY}.txt") == b"1002\n1002\n1002\n1002\n0\n0\n7003\n7003\n"


def test_export_gt_scene_returns_vertex_count_and_warning(root, tmp_path):
    label_map = {"wall": 1, "table": 7}
    with pytest.raises(SceneError, match="unknown raw category 'chair'"):
        export_gt_scene(root / "scans" / TINY, tmp_path / "a", label_map)  # the default policy refuses
    n, warning = export_gt_scene(root / "scans" / TINY, tmp_path / "b", label_map, "ignore")
    assert n == 8 and warning.endswith("'chair' 2 vertices")
    assert export_gt_scene(root / "scans" / OTHER, tmp_path / "c", label_map) == (8, None)


def test_export_runs_in_this_process_by_default_under_its_own_progress_label(root, monkeypatch):
    calls = []

    def fake_run_batch(fn, jobs, workers, desc, report):
        calls.append((fn, [d.name for d, _ in jobs], workers, desc))
        return report

    monkeypatch.setattr(export_gt, "run_batch", fake_run_batch)
    export_gt_all(root / "scans", root / "gt", root / "scannetv2-labels.combined.tsv")
    assert calls == [(export_gt_scene, [TINY, OTHER], 1, "export-gt")]  # one worker: no process pool
