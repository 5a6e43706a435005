"""Reader, prepare and export-gt on synthetic scenes, and the corpus of malformed scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from minkseg.cli import main
from scannet_tools.export_gt import export_gt_all
from scannet_tools.io import read_ids
from scannet_tools.labels import IGNORE_ID, nyu40_to_train_id, read_label_table
from scannet_tools.prepare import load_prepared, prepare_all
from scannet_tools.reader import SceneError, read_scene, vertex_labels
from scannet_tools.synth import generate_scene

SCENE = "scene0001_00"


def _generator_truth(root: Path, i: int):
    """Regenerate scene i exactly as synthesize() did and return the generator's own ground truth."""
    label_map = read_label_table(root / "scannetv2-labels.combined.tsv")
    rng = np.random.default_rng([7, i])
    return generate_scene(f"scene{i:04d}_00", rng, label_map, 4_000, small=True)


def test_export_gt_equals_the_generators_ground_truth(raw_root, tmp_path):
    report = export_gt_all(raw_root / "scans", tmp_path, raw_root / "scannetv2-labels.combined.tsv")
    assert report.ok and len(report.done) == 3
    for i in range(3):
        truth = _generator_truth(raw_root, i)
        sem = read_ids(tmp_path / "semantic" / f"scene{i:04d}_00.txt")
        inst = read_ids(tmp_path / "instance" / f"scene{i:04d}_00.txt")
        np.testing.assert_array_equal(sem, truth.nyu40)
        np.testing.assert_array_equal(inst, truth.nyu40 * 1000 + truth.instance)
        # every one of the 18 instance classes is present in a synthetic room
        assert {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39} <= set(np.unique(sem))
        assert (inst[sem == 0] == 0).all()


def test_export_gt_text_format(raw_root, tmp_path):
    export_gt_all(raw_root / "scans", tmp_path, raw_root / "scannetv2-labels.combined.tsv", scenes=[SCENE])
    text = (tmp_path / "instance" / f"{SCENE}.txt").read_text()
    lines = text.split("\n")
    assert text.endswith("\n") and all(line.isdigit() for line in lines[:-1])
    n = len(read_scene(raw_root / "scans" / SCENE).xyz)
    assert len(lines) - 1 == n


def test_prepare_round_trip(raw_root, prepared_dir):
    raw = read_scene(raw_root / "scans" / SCENE)
    p = load_prepared(prepared_dir / f"{SCENE}.npz")
    truth = _generator_truth(raw_root, 1)
    assert p["scene"] == SCENE
    np.testing.assert_array_equal(p["xyz"], raw.xyz)
    np.testing.assert_array_equal(p["rgb"], raw.rgb)
    np.testing.assert_array_equal(p["nyu40"], truth.nyu40)
    np.testing.assert_array_equal(p["semantic"], nyu40_to_train_id(truth.nyu40))
    inst_cls = p["semantic"] >= 2
    np.testing.assert_array_equal(p["instance"][inst_cls], truth.instance[inst_cls])
    assert (p["instance"][~inst_cls] == -1).all()
    assert np.allclose(np.linalg.norm(p["normals"], axis=1), 1, atol=1e-4)
    # superpoints are contiguous and never cross an instance
    sp = p["superpoint"]
    assert sp.min() == 0 and len(np.unique(sp)) == sp.max() + 1
    for s in np.unique(sp)[:200]:
        assert len(np.unique(truth.instance[sp == s])) == 1


def test_align_applies_axis_alignment(raw_root, tmp_path):
    prepare_all(raw_root / "scans", tmp_path, raw_root / "scannetv2-labels.combined.tsv", align=True, scenes=[SCENE])
    p = load_prepared(tmp_path / f"{SCENE}.npz")
    truth = _generator_truth(raw_root, 1)
    # in the aligned frame the room's floor is at z = 0 and walls are axis-aligned
    floor = truth.nyu40 == 2
    assert abs(p["xyz"][floor, 2].mean()) < 1e-3
    assert p["xyz"][:, 0].min() > -0.2 and p["xyz"][:, 1].min() > -0.2
    assert not np.allclose(p["axis_alignment"], np.eye(4))


def test_repeated_seg_groups_are_read_once(raw_copy):
    d = raw_copy / "scans" / SCENE
    agg = json.loads((d / f"{SCENE}.aggregation.json").read_text())
    before = vertex_labels(read_scene(d), read_label_table(raw_copy / "scannetv2-labels.combined.tsv"))
    agg["segGroups"] = agg["segGroups"] + agg["segGroups"]
    (d / f"{SCENE}.aggregation.json").write_text(json.dumps(agg))
    raw = read_scene(d)
    assert len(raw.seg_groups) == len(agg["segGroups"]) // 2
    after = vertex_labels(raw, read_label_table(raw_copy / "scannetv2-labels.combined.tsv"))
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_unannotated_scene_is_prepared_with_ignore_labels(raw_copy, tmp_path):
    d = raw_copy / "scans" / SCENE
    for f in (f"{SCENE}_vh_clean_2.0.010000.segs.json", f"{SCENE}.aggregation.json", f"{SCENE}_vh_clean_2.labels.ply"):
        (d / f).unlink()
    report = prepare_all(raw_copy / "scans", tmp_path, raw_copy / "scannetv2-labels.combined.tsv", scenes=[SCENE])
    assert report.ok
    p = load_prepared(tmp_path / f"{SCENE}.npz")
    assert (p["semantic"] == IGNORE_ID).all() and (p["instance"] == -1).all() and (p["superpoint"] == -1).all()


# --------------------------------------------------------------------------- malformed scenes


def _files(d: Path) -> dict[str, Path]:
    s = d.name
    return {"mesh": d / f"{s}_vh_clean_2.ply", "labels": d / f"{s}_vh_clean_2.labels.ply",
            "segs": d / f"{s}_vh_clean_2.0.010000.segs.json", "agg": d / f"{s}.aggregation.json"}


def _rewrite_mesh(path: Path, fn) -> None:
    ply = PlyData.read(str(path), mmap=False)
    v = fn(ply["vertex"].data.copy())
    faces = ply["face"].data if len(v) else np.zeros(0, dtype=ply["face"].data.dtype)
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(faces, "face")], text=False).write(str(path))


def truncate_ply(d):
    p = _files(d)["mesh"]
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def nan_coordinates(d):
    def f(v):
        v["x"][5] = np.nan
        return v
    _rewrite_mesh(_files(d)["mesh"], f)


def empty_mesh(d):
    _rewrite_mesh(_files(d)["mesh"], lambda v: v[:0])


def missing_segs(d):
    _files(d)["segs"].unlink()


def missing_aggregation(d):
    _files(d)["agg"].unlink()


def segs_count_mismatch(d):
    p = _files(d)["segs"]
    data = json.loads(p.read_text())
    data["segIndices"] = data["segIndices"][:-3]
    p.write_text(json.dumps(data))


def labels_ply_count_mismatch(d):
    p = _files(d)["labels"]
    ply = PlyData.read(str(p), mmap=False)
    PlyData([PlyElement.describe(ply["vertex"].data[:-1], "vertex")]).write(str(p))


def absent_segment_id(d):
    p = _files(d)["agg"]
    data = json.loads(p.read_text())
    data["segGroups"][0]["segments"].append(987654321)
    p.write_text(json.dumps(data))


def unknown_category(d):
    p = _files(d)["agg"]
    data = json.loads(p.read_text())
    data["segGroups"][0]["label"] = "flux capacitor"
    p.write_text(json.dumps(data))


def invalid_json(d):
    p = _files(d)["segs"]
    p.write_text(p.read_text()[:100])


CORPUS = {
    truncate_ply: ("_vh_clean_2.ply", "cannot parse PLY"),
    nan_coordinates: ("_vh_clean_2.ply", "NaN"),
    empty_mesh: ("_vh_clean_2.ply", "no vertices"),
    missing_segs: ("segs.json", "missing"),
    missing_aggregation: ("aggregation.json", "missing"),
    segs_count_mismatch: ("segs.json", "segIndices"),
    labels_ply_count_mismatch: ("labels.ply", "vertices, the mesh has"),
    absent_segment_id: ("aggregation.json", "absent from"),
    unknown_category: ("aggregation.json", "unknown raw category 'flux capacitor'"),
    invalid_json: ("segs.json", "invalid JSON"),
}


@pytest.mark.parametrize("corrupt", list(CORPUS), ids=[f.__name__ for f in CORPUS])
def test_malformed_scene_is_reported_and_others_still_prepared(corrupt, raw_copy, tmp_path, capsys):
    out = tmp_path / "prepared"
    # a previous run prepared the scene that is about to break: it must survive untouched
    prepare_all(raw_copy / "scans", out, raw_copy / "scannetv2-labels.combined.tsv", scenes=[SCENE])
    before = (out / f"{SCENE}.npz").read_bytes()
    corrupt(raw_copy / "scans" / SCENE)
    fname, problem = CORPUS[corrupt]

    with pytest.raises(SceneError) as err:
        read_scene(raw_copy / "scans" / SCENE) if corrupt is not unknown_category else vertex_labels(
            read_scene(raw_copy / "scans" / SCENE), read_label_table(raw_copy / "scannetv2-labels.combined.tsv"))
    msg = str(err.value)
    assert msg.startswith(f"{SCENE}: ") and fname in msg and problem in msg and "\n" not in msg

    rc = main(["prepare", "--scans", str(raw_copy / "scans"), "--out", str(out), "--overwrite"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "prepared 2, skipped 0 (already done), failed 1" in captured.out
    assert f"FAILED {SCENE}: " in captured.out and problem in captured.out
    assert sorted(p.name for p in out.glob("*.npz")) == ["scene0000_00.npz", "scene0001_00.npz", "scene0002_00.npz"]
    assert (out / f"{SCENE}.npz").read_bytes() == before
    assert not list(out.glob(".*tmp"))


def test_prepare_resumes_and_runs_in_parallel(raw_root, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prepare", "--scans", str(raw_root / "scans"), "--out", str(out), "--workers", "2"]) == 0
    assert "prepared 3, skipped 0" in capsys.readouterr().out
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert main(["prepare", "--scans", str(raw_root / "scans"), "--out", str(out)]) == 0
    assert "prepared 0, skipped 3" in capsys.readouterr().out
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}


def test_cli_export_gt_and_split_filter(raw_root, tmp_path, capsys):
    assert main(["export-gt", "--scans", str(raw_root / "scans"), "--out", str(tmp_path), "--split", "val"]) == 0
    val = (raw_root / "scannetv2_val.txt").read_text().split()
    assert sorted(p.stem for p in (tmp_path / "semantic").glob("*.txt")) == sorted(val)


def _official_export(seg_indices, groups, label_map):
    """Plain transcription of the rules of ScanNet's export_train_mesh_for_evaluation.py (Python 3)."""
    object_id_to_segs, label_to_segs = {}, {}
    for g in groups:
        object_id, label, segs = g["objectId"] + 1, g["label"], g["segments"]
        object_id_to_segs[object_id] = segs
        if label in label_to_segs:
            label_to_segs[label].extend(segs)
        else:
            label_to_segs[label] = segs
    seg_to_verts = {}
    for i, s in enumerate(seg_indices):
        seg_to_verts.setdefault(s, []).append(i)
    label_ids = np.zeros(len(seg_indices), np.int64)
    for label, segs in label_to_segs.items():
        for seg in segs:
            label_ids[seg_to_verts[seg]] = label_map[label]
    instance_ids = np.zeros(len(seg_indices), np.int64)
    for object_id, segs in object_id_to_segs.items():
        for seg in segs:
            instance_ids[seg_to_verts[seg]] = object_id
    return label_ids, instance_ids


@pytest.mark.parametrize("seed", range(5))
def test_vertex_labels_match_the_official_rules_on_odd_aggregations(raw_root, seed):
    """Repeated objectIds, shared segments and repeated categories, as an independent export could write."""
    rng = np.random.default_rng(seed)
    raw = read_scene(raw_root / "scans" / SCENE)
    label_map = read_label_table(raw_root / "scannetv2-labels.combined.tsv")
    segs = np.unique(raw.seg_indices)
    names = ["chair", "table", "chair", "wall", "door", "office chair"]
    groups = []
    for _ in range(12):
        groups.append({"objectId": int(rng.integers(0, 8)), "label": str(rng.choice(names)),
                       "segments": rng.choice(segs, size=int(rng.integers(1, 20)), replace=False).tolist()})
    raw.seg_groups = [dict(g, segments=list(g["segments"])) for g in groups]
    ours = vertex_labels(raw, label_map)
    ref = _official_export(raw.seg_indices.tolist(), [dict(g, segments=list(g["segments"])) for g in groups],
                           label_map)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])
