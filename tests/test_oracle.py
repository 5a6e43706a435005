"""The voxelization ceiling (minkseg.evaluation.oracle) on scenes whose answer is known by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from minkseg.evaluation.oracle import ceiling_summary, format_ceiling, oracle_metrics, oracle_prediction
from scannet_tools.labels import bundled_label_table, nyu40_to_train_id, read_label_table
from scannet_tools.reader import training_labels
from scannet_tools.synth import generate_scene

WALL, FLOOR, CHAIR, TABLE, PICTURE = 1, 2, 5, 7, 11


def _scene(blocks: list[tuple[tuple[int, int, int], int, int, int]]) -> dict:
    """A prepared-like scene from (voxel cell, NYU40 label, instance id or 0, vertex count) blocks.

    Vertices of a block lie strictly inside that cell of a 1 m grid whose origin is the
    cell (0, 0, 0), which always holds a vertex, so the oracle's grid matches the cells.
    """
    rng = np.random.default_rng(0)
    xyz, nyu40, inst = [np.zeros((1, 3))], [np.array([FLOOR])], [np.array([0])]  # the origin vertex
    for cell, label, instance, n in blocks:
        xyz.append(np.asarray(cell, float) + rng.uniform(0.05, 0.95, (n, 3)))
        nyu40.append(np.full(n, label))
        inst.append(np.full(n, instance))
    nyu40, instance = np.concatenate(nyu40), np.concatenate(inst)
    semantic, train_instance = training_labels(nyu40, instance)
    return {"scene": "hand", "xyz": np.concatenate(xyz).astype(np.float32), "nyu40": nyu40.astype(np.uint8),
            "semantic": semantic, "instance": train_instance}


def test_pure_voxels_reach_one():
    scene = _scene([((0, 0, 0), FLOOR, 0, 50), ((1, 0, 0), FLOOR, 0, 50), ((0, 2, 0), WALL, 0, 80),
                    ((3, 0, 0), CHAIR, 1, 120), ((3, 1, 0), CHAIR, 1, 30), ((5, 5, 0), TABLE, 2, 150)])
    c = ceiling_summary(oracle_metrics([scene], 1.0), 1.0)
    assert c == {"voxel_size": 1.0, "mAP": 1.0, "AP50": 1.0, "AP25": 1.0, "mIoU": 1.0}
    semantic, instances = oracle_prediction(scene, 1.0)
    np.testing.assert_array_equal(semantic, scene["nyu40"])
    assert sorted((p.label_id, int(p.mask.sum()), p.confidence) for p in instances) == [(CHAIR, 150, 1.0),
                                                                                       (TABLE, 150, 1.0)]


def test_label_boundary_inside_voxels_gives_the_hand_computed_miou():
    # cell A: 3 wall + 1 chair vertex -> all wall; cell B: 2 chair + 1 wall -> all chair
    scene = _scene([((0, 0, 0), WALL, 0, 3), ((0, 0, 0), CHAIR, 1, 1), ((1, 0, 0), CHAIR, 1, 2),
                    ((1, 0, 0), WALL, 0, 1), ((2, 0, 0), CHAIR, 1, 200), ((4, 0, 0), FLOOR, 0, 99)])
    m = oracle_metrics([scene], 1.0)
    # the origin vertex is floor and lies in cell A, which votes wall: 4 wall votes to 1 chair, 1 floor
    wall_iou = 3 / (3 + 2 + 1)  # TP 3; FP the chair and the floor vertex of A; FN the wall vertex of B
    chair_iou = 202 / (202 + 1 + 1)  # FP the wall vertex of B, FN the chair vertex of A
    floor_iou = 99 / (99 + 1)  # FN the origin vertex
    per_class = m["semantic"]["per_class"]
    assert per_class["wall"] == pytest.approx(wall_iou, abs=1e-12)
    assert per_class["chair"] == pytest.approx(chair_iou, abs=1e-12)
    assert per_class["floor"] == pytest.approx(floor_iou, abs=1e-12)
    assert m["semantic"]["mIoU"] == pytest.approx((wall_iou + chair_iou + floor_iou) / 3, abs=1e-12)
    # the chair keeps B and C: 203 vertices, 202 of them its own, so it matches at every threshold
    assert m["instance"]["AP50"] == 1.0 and m["instance"]["mAP"] == 1.0


def test_an_instance_that_loses_most_voxels_to_the_wall():
    # a picture with 100 vertices in a voxel of its own and 200 in 50 voxels that the wall wins
    lost = [((4 + 2 * i, 0, 0), PICTURE, 2, 4) for i in range(50)] + [((4 + 2 * i, 0, 0), WALL, 0, 5)
                                                                       for i in range(50)]
    scene = _scene([((0, 0, 1), CHAIR, 1, 150), ((2, 0, 1), PICTURE, 2, 100)] + lost)
    _, instances = oracle_prediction(scene, 1.0)
    picture = next(p for p in instances if p.label_id == PICTURE)
    assert picture.mask.sum() == 100  # IoU with its ground truth: 100 / 300
    m = oracle_metrics([scene], 1.0)["instance"]
    assert m["per_class"]["picture"]["ap50"] == 0.0 and m["per_class"]["picture"]["ap25"] == 1.0
    assert m["AP50"] == pytest.approx(0.5) and m["AP25"] == 1.0 and m["mAP"] == pytest.approx(0.5)


def test_instances_keep_their_ground_truth_class_and_the_grid_follows_the_scene():
    scene = _scene([((0, 0, 0), TABLE, 3, 120), ((1, 0, 0), CHAIR, 7, 130)])
    moved = dict(scene, xyz=scene["xyz"] + np.float32([10.0, -4.0, 2.0]))  # the grid starts at the scene's corner
    for s in (scene, moved):
        semantic, instances = oracle_prediction(s, 1.0)
        assert sorted((p.label_id, int(p.mask.sum())) for p in instances) == [(CHAIR, 130), (TABLE, 121)]
        assert (nyu40_to_train_id(semantic) >= 0).all()


def test_a_scene_without_instances():
    scene = _scene([((0, 0, 0), FLOOR, 0, 50), ((0, 1, 0), WALL, 0, 50)])
    semantic, instances = oracle_prediction(scene, 1.0)
    assert instances == [] and (semantic == scene["nyu40"]).all()
    c = ceiling_summary(oracle_metrics([scene], 1.0), 1.0)
    assert np.isnan(c["AP50"]) and c["mIoU"] == 1.0


def test_format_ceiling():
    line = format_ceiling({"voxel_size": 0.05, "mAP": 0.5, "AP50": 0.75, "AP25": 1.0, "mIoU": 0.9})
    assert line == "voxelization ceiling at 5 cm: mAP 0.500  AP50 0.750  AP25 1.000  mIoU 0.900"


@pytest.fixture(scope="module")
def synthetic_scene() -> dict:
    s = generate_scene("scene0000_00", np.random.default_rng([0, 0]), read_label_table(bundled_label_table()),
                       80_000)
    semantic, instance = training_labels(s.nyu40, s.instance)
    return {"scene": s.scene, "xyz": s.xyz, "nyu40": s.nyu40, "semantic": semantic, "instance": instance}


def test_synthetic_ceiling_is_monotone_and_close_to_a_real_scans(synthetic_scene):
    """Finer voxels never score lower here; and the levels are near a real scan's.

    scene0000_00 (real, 81k vertices) has mIoU 0.929 / 0.967 / 0.997 at 10 / 5 / 2 cm; the
    synthetic scenes had 0.75 / 0.81 / 0.91 before their hidden surfaces were removed.
    """
    c = {size: ceiling_summary(oracle_metrics([synthetic_scene], size), size) for size in (0.02, 0.05, 0.1)}
    assert c[0.02]["mIoU"] >= c[0.05]["mIoU"] >= c[0.1]["mIoU"]
    assert c[0.02]["AP50"] >= c[0.1]["AP50"] and c[0.02]["mAP"] >= c[0.1]["mAP"]
    assert c[0.1]["mIoU"] >= 0.9 and c[0.05]["mIoU"] >= 0.95 and c[0.02]["mIoU"] >= 0.99
    assert c[0.1]["AP50"] >= 0.95


def test_command_line_on_prepared_scenes(prepared_dir, capsys):
    from minkseg.evaluation.oracle import main, prepared_ceiling
    from scannet_tools.prepare import load_prepared

    assert main([str(prepared_dir), "--scenes", "scene0000_00", "--voxel-size", "0.1"]) == 0
    expected = ceiling_summary(oracle_metrics([load_prepared(prepared_dir / "scene0000_00.npz")], 0.1), 0.1)
    assert prepared_ceiling(prepared_dir, ["scene0000_00"], 0.1) == expected
    assert capsys.readouterr().out.splitlines()[-1] == format_ceiling(expected)
    with pytest.raises(SystemExit, match="no prepared scenes"):
        main([str(prepared_dir / "missing")])


def test_ceiling_summary_of_missing_metrics_is_nan():
    # a split without instances (or without labels) has no AP / mIoU entry: NaN, not a crash
    empty = ceiling_summary({}, 0.1)
    assert empty["voxel_size"] == 0.1 and all(np.isnan(empty[k]) for k in ("mAP", "AP50", "AP25", "mIoU"))
    only_instance = ceiling_summary({"instance": {"mAP": 0.25, "AP50": 0.5, "AP25": 0.75}}, 0.05)
    assert (only_instance["mAP"], only_instance["AP50"], only_instance["AP25"]) == (0.25, 0.5, 0.75)
    assert np.isnan(only_instance["mIoU"])
    only_semantic = ceiling_summary({"semantic": {"mIoU": 0.5}}, 0.05)
    assert only_semantic["mIoU"] == 0.5 and np.isnan(only_semantic["AP50"])


def test_instance_id_zero_is_an_instance_and_masks_are_boolean():
    # train instance ids may start at 0 (only -1 means none): the instance with id 0 is kept
    scene = _scene([((0, 0, 0), CHAIR, 1, 120), ((2, 0, 0), TABLE, 2, 130)])
    scene["instance"] = np.where(scene["instance"] >= 0, scene["instance"] - 1, -1).astype(np.int32)
    assert sorted(set(scene["instance"].tolist())) == [-1, 0, 1]
    _, instances = oracle_prediction(scene, 1.0)
    assert sorted((p.label_id, int(p.mask.sum())) for p in instances) == [(CHAIR, 121), (TABLE, 130)]
    assert all(p.mask.dtype == np.bool_ for p in instances)
    table = next(p for p in instances if p.label_id == TABLE)
    np.testing.assert_array_equal(np.flatnonzero(table.mask), np.flatnonzero(scene["instance"] == 1))


def test_the_grid_origin_is_the_scene_corner_for_any_offset():
    # an offset that is not a whole number of voxels, and differs per axis: the cells still
    # start at the scene's minimum corner, so the answer is that of the unmoved scene
    scene = _scene([((0, 0, 0), CHAIR, 1, 120), ((1, 0, 0), TABLE, 2, 130), ((0, 1, 0), WALL, 0, 40)])
    moved = dict(scene, xyz=scene["xyz"] + np.float32([10.3, -4.6, 2.2]))
    semantic, instances = oracle_prediction(moved, 1.0)
    np.testing.assert_array_equal(semantic, np.r_[CHAIR, scene["nyu40"][1:]])  # the origin is in the chair cell
    assert sorted((p.label_id, int(p.mask.sum())) for p in instances) == [(CHAIR, 121), (TABLE, 130)]


def test_only_vertices_that_carry_the_voxels_label_name_its_instance():
    # cell A: 3 chair vertices of instance 1, and 4 of instance 2 split 2 table / 2 picture, so
    # the voxel votes chair and instance 1; instance 2 (more vertices in A) must not take A
    scene = _scene([((0, 0, 0), CHAIR, 1, 3), ((0, 0, 0), TABLE, 2, 2), ((0, 0, 0), PICTURE, 2, 2),
                    ((3, 0, 0), FLOOR, 0, 20)])
    semantic, instances = oracle_prediction(scene, 1.0)
    assert [(p.label_id, int(p.mask.sum())) for p in instances] == [(CHAIR, 8)]  # A with the origin vertex
    assert (semantic[:8] == CHAIR).all() and (semantic[8:] == FLOOR).all()


def _save_prepared(folder, name: str, scene: dict) -> None:
    """Write ``scene`` where :func:`scannet_tools.prepare.load_prepared` reads ``name``."""
    from scannet_tools.prepare import prepared_path

    np.savez(prepared_path(folder, name), **dict(scene, scene=np.str_(name)))


def test_command_line_defaults_every_scene_at_2_5_and_10_cm(tmp_path, capsys):
    from minkseg.evaluation.oracle import main

    # pure 1 m cells are pure at every finer voxel size too: every ceiling is 1.0
    _save_prepared(tmp_path, "scene0007_00", _scene([((0, 0, 0), CHAIR, 1, 150), ((2, 0, 0), TABLE, 2, 150)]))
    assert main([str(tmp_path)]) == 0
    perfect = "mAP 1.000  AP50 1.000  AP25 1.000  mIoU 1.000"
    assert capsys.readouterr().out.splitlines() == [
        f"1 scenes from {tmp_path}", f"voxelization ceiling at 2 cm: {perfect}",
        f"voxelization ceiling at 5 cm: {perfect}", f"voxelization ceiling at 10 cm: {perfect}"]


def test_command_line_help(capsys):
    from minkseg.evaluation.oracle import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert text.startswith("usage: python -m minkseg.evaluation.oracle ")
    for part in ("The voxelization ceiling: what perfect voxel outputs score at a voxel size.",
                 "folder of prepared scenes (minkseg prepare --out)", "scene ids (default: every prepared scene)",
                 "metres (default: 0.02 0.05 0.1)"):
        assert re.search(rf"(?<!\w){re.escape(part)}(?!\w)", text), part  # whole words, nothing glued on
    assert "A network sees voxels" not in text  # the description is the docstring's first line only


def test_float64_coordinates_are_read_as_the_float32_of_a_prepared_file():
    # prepared files store float32; a float64 scene must give exactly what its float32 copy
    # gives. Here the vertex at x = 1.1 - 3.3e-8 (float64) lies 1 m from the corner x = 0.1 in
    # float32 (cell 1, floor) but just below 1 m in float64 arithmetic (cell 0, wall).
    edge = np.float64(1.1) - 3.3e-8
    assert np.floor(np.float32(edge) - np.float32(0.1)) == 1 and np.floor(np.float32(edge - 0.1)) == 0
    xyz = np.array([[0.1, 0.1, 0.1]] + [[0.5, 0.5, 0.5]] * 5 + [[1.6, 0.5, 0.5]] * 5 + [[edge, 0.5, 0.5]])
    nyu40 = np.array([WALL] * 6 + [FLOOR] * 5 + [WALL], np.uint8)
    semantic, instance = training_labels(nyu40, np.zeros(len(nyu40), np.int64))
    scene = {"scene": "edge", "xyz": xyz, "nyu40": nyu40, "semantic": semantic, "instance": instance}
    as_float32 = dict(scene, xyz=xyz.astype(np.float32))
    np.testing.assert_array_equal(oracle_prediction(scene, 1.0)[0], oracle_prediction(as_float32, 1.0)[0])
    assert oracle_prediction(scene, 1.0)[0][-1] == FLOOR
