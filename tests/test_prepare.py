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
from scannet_tools.labels import IGNORE_ID, OTHERPROP_NYU40, nyu40_to_train_id, read_label_table
from scannet_tools.prepare import load_prepared, prepare_all
from scannet_tools.reader import SceneError, label_vertices, read_scene, vertex_labels
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


# --------------------------------------------------------------------------- real-scan input: unknown categories

UNLISTED = ("stick", "trashcan")  # dropped from the current table / an older spelling of "trash can"


@pytest.mark.parametrize("seed", range(4))
def test_unknown_category_policies_follow_the_official_painting(raw_root, seed):
    """otherprop = the official export with the unknown categories mapped to 40; ignore = their vertices
    unannotated and their objects gone; the counts are the vertices each category finally labels."""
    rng = np.random.default_rng(seed)
    raw = read_scene(raw_root / "scans" / SCENE)
    label_map = read_label_table(raw_root / "scannetv2-labels.combined.tsv")
    assert not set(UNLISTED) & label_map.keys()
    segs = np.unique(raw.seg_indices)
    names = ["chair", "table", "wall", *UNLISTED, "stick"]
    groups = [{"objectId": int(rng.integers(0, 8)), "label": str(rng.choice(names)),
               "segments": rng.choice(segs, size=int(rng.integers(1, 20)), replace=False).tolist()}
              for _ in range(12)]
    groups[0]["label"] = "stick"
    raw.seg_groups = [dict(g, segments=list(g["segments"])) for g in groups]

    def official(mapping, keep):
        return _official_export(raw.seg_indices.tolist(),
                                [dict(g, segments=list(g["segments"])) for g in groups if keep(g)], mapping)

    with pytest.raises(SceneError, match="unknown raw category 'stick'.*--unknown-category"):
        label_vertices(raw, label_map)

    other = label_vertices(raw, label_map, "otherprop")
    ref = official({**label_map, **dict.fromkeys(UNLISTED, OTHERPROP_NYU40)}, lambda g: True)
    np.testing.assert_array_equal(other.nyu40, ref[0])
    np.testing.assert_array_equal(other.instance, ref[1])

    ignored = label_vertices(raw, label_map, "ignore")
    np.testing.assert_array_equal(ignored.nyu40, official({**label_map, **dict.fromkeys(UNLISTED, 0)},
                                                          lambda g: True)[0])
    np.testing.assert_array_equal(ignored.instance, official(label_map, lambda g: g["label"] in label_map)[1])

    sentinel = official({**label_map, "stick": 1001, "trashcan": 1002}, lambda g: True)[0]
    expected = {name: int((sentinel == code).sum()) for name, code in (("stick", 1001), ("trashcan", 1002))
                if any(g["label"] == name for g in groups)}
    assert other.unknown == expected and ignored.unknown == expected


def _plant_unlisted(scene_dir: Path) -> dict[str, np.ndarray]:
    """Rename the first instance-class object to 'stick' and the next to 'trashcan'; their vertex masks."""
    p = scene_dir / f"{scene_dir.name}.aggregation.json"
    data = json.loads(p.read_text())
    seg_indices = np.asarray(json.loads((scene_dir / f"{scene_dir.name}_vh_clean_2.0.010000.segs.json")
                                        .read_text())["segIndices"])
    objects = [g for g in data["segGroups"] if g["label"] not in ("wall", "floor")]
    masks = {}
    for g, name in zip(objects, UNLISTED):
        g["label"] = name
        masks[name] = np.isin(seg_indices, g["segments"])
    p.write_text(json.dumps(data))
    return masks


def test_prepare_refuses_unknown_categories_by_default_and_maps_them_on_request(raw_copy, prepared_dir, tmp_path,
                                                                             capsys):
    scans = raw_copy / "scans"
    masks = _plant_unlisted(scans / SCENE)
    assert all(m.sum() > 0 for m in masks.values())
    out = tmp_path / "p"
    assert main(["prepare", "--scans", str(scans), "--out", str(out), "--split", SCENE]) == 1
    text = capsys.readouterr().out
    assert "unknown raw category" in text and "--unknown-category" in text

    for policy, code in (("otherprop", OTHERPROP_NYU40), ("ignore", 0)):
        assert main(["prepare", "--scans", str(scans), "--out", str(out), "--split", SCENE, "--overwrite",
                     "--unknown-category", policy]) == 0
        text = capsys.readouterr().out
        counts = ", ".join(f"'{n}' {int(masks[n].sum()):,} vertices"
                           for n in sorted(masks, key=lambda n: -int(masks[n].sum())))
        assert f"warning: {SCENE}: 2 raw categories not in the label table labelled" in text and counts in text
        got, clean = load_prepared(out / f"{SCENE}.npz"), load_prepared(prepared_dir / f"{SCENE}.npz")
        planted = masks["stick"] | masks["trashcan"]
        assert (got["nyu40"][planted] == code).all()
        assert (got["semantic"][planted] == IGNORE_ID).all() and (got["instance"][planted] == -1).all()
        for key in ("nyu40", "semantic", "instance"):
            np.testing.assert_array_equal(got[key][~planted], clean[key][~planted])
        for key in ("xyz", "rgb", "normals", "superpoint"):
            np.testing.assert_array_equal(got[key], clean[key])


def test_export_gt_maps_unknown_categories_on_request(raw_copy, tmp_path, capsys):
    scans = raw_copy / "scans"
    masks = _plant_unlisted(scans / SCENE)
    raw = read_scene(scans / SCENE)
    assert main(["export-gt", "--scans", str(scans), "--out", str(tmp_path / "a"), "--split", SCENE]) == 1
    assert "unknown raw category" in capsys.readouterr().out

    assert main(["export-gt", "--scans", str(scans), "--out", str(tmp_path / "o"), "--split", SCENE,
                 "--unknown-category", "otherprop"]) == 0
    assert "warning:" in capsys.readouterr().out
    sem, inst = read_ids(tmp_path / "o" / "semantic" / f"{SCENE}.txt"), read_ids(tmp_path / "o" / "instance" /
                                                                                  f"{SCENE}.txt")
    stick = next(g for g in raw.seg_groups if g["label"] == "stick")
    assert (sem[masks["stick"]] == OTHERPROP_NYU40).all()
    assert (inst[masks["stick"]] == OTHERPROP_NYU40 * 1000 + stick["objectId"] + 1).all()

    assert main(["export-gt", "--scans", str(scans), "--out", str(tmp_path / "i"), "--split", SCENE,
                 "--unknown-category", "ignore"]) == 0
    sem, inst = read_ids(tmp_path / "i" / "semantic" / f"{SCENE}.txt"), read_ids(tmp_path / "i" / "instance" /
                                                                                  f"{SCENE}.txt")
    planted = masks["stick"] | masks["trashcan"]
    assert (sem[planted] == 0).all() and (inst[planted] == 0).all() and (sem[~planted] > 0).any()


def test_prepare_without_labels_reads_any_scan_with_a_mesh(raw_copy, prepared_dir, tmp_path, capsys):
    scans = raw_copy / "scans"
    _plant_unlisted(scans / SCENE)
    (scans / SCENE / f"{SCENE}.aggregation.json").write_text("{ not json")  # not even read
    (raw_copy / "scannetv2-labels.combined.tsv").unlink()  # and no label table needed
    out = tmp_path / "p"
    assert main(["prepare", "--scans", str(scans), "--out", str(out), "--split", SCENE, "--no-labels"]) == 0
    got, clean = load_prepared(out / f"{SCENE}.npz"), load_prepared(prepared_dir / f"{SCENE}.npz")
    assert (got["semantic"] == IGNORE_ID).all() and (got["instance"] == -1).all() and (got["nyu40"] == 0).all()
    for key in ("xyz", "rgb", "normals", "superpoint"):
        np.testing.assert_array_equal(got[key], clean[key])


def test_predict_runs_on_a_scan_with_unlisted_categories_and_no_label_table(raw_copy, tmp_path, capsys):
    from minkseg.config import load_config, to_dict
    from minkseg.engine.checkpoint import save_checkpoint
    from minkseg.models.build import build_model

    scans = raw_copy / "scans"
    _plant_unlisted(scans / SCENE)
    (raw_copy / "scannetv2-labels.combined.tsv").unlink()
    cfg = load_config(None, ["data.voxel_size=0.1", "model.backbone=MinkUNet14A", "model.head=margin"])
    save_checkpoint(tmp_path / "c.pth", {"model": build_model(cfg).state_dict(), "config": to_dict(cfg)})
    sub = tmp_path / "sub"
    assert main(["predict", "--checkpoint", str(tmp_path / "c.pth"), "--scans", str(scans), "--split", SCENE,
                 "--out", str(sub), "--device", "cpu"]) == 0
    n = len(read_scene(scans / SCENE, annotations=False).xyz)
    assert len(read_ids(sub / "semantic" / f"{SCENE}.txt")) == n
