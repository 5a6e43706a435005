"""``minkseg evaluate`` on benchmark-format files: the instance-file reader's rules, hand-computed
metrics of a two-scene submission, the errors (one line naming the file) and the printed and JSON output."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import minkseg.evaluation.evaluate as evaluate_module
from minkseg.evaluation.evaluate import (
    SubmissionError,
    _clean,
    evaluate_dirs,
    evaluate_scenes,
    format_metrics,
    missing_scenes_line,
    read_instance_predictions,
    summarize_matches,
    write_json,
)
from minkseg.evaluation.metrics import OVERLAPS, InstancePrediction, match_scene
from scannet_tools.io import write_ids

from . import official_eval_reference as ref

WALL, FLOOR, CHAIR, TABLE = 1, 2, 5, 7


def _segments(*parts: tuple[int, int]) -> np.ndarray:
    """Concatenated runs (value, length)."""
    return np.concatenate([np.full(length, value, np.int64) for value, length in parts])


def _write_instance_file(inst_dir: Path, scene: str, lines: list[str]) -> Path:
    txt = inst_dir / f"{scene}.txt"
    txt.parent.mkdir(parents=True, exist_ok=True)
    txt.write_text("".join(line + "\n" for line in lines))
    return txt


# ---- the instance-file reader ----

def test_reader_keeps_a_repeated_path_at_its_first_place_with_its_last_values(tmp_path):
    inst = tmp_path / "instance"
    write_ids(inst / "m" / "a.txt", [1, 0, 2, 0])
    write_ids(inst / "m" / "b.txt", [0, 1, 0, -1])
    txt = _write_instance_file(inst, "s", ["m/a.txt 5 0.9", "m/b.txt 7.0 0.5", "m/a.txt 3 0.125"])
    preds = read_instance_predictions(txt, inst, 4)
    assert [(p.mask.tolist(), p.label_id, p.confidence) for p in preds] == [
        ([True, False, True, False], 3, 0.125), ([False, True, False, True], 7, 0.5)]
    info = ref.read_instance_prediction_file(str(txt), str(inst))  # the script stores lines in a dict too
    assert [(v["label_id"], v["conf"]) for v in info.values()] == [(3, 0.125), (7, 0.5)]


def test_reader_reads_labels_like_the_script_and_skips_other_classes_unread(tmp_path):
    inst = tmp_path / "instance"
    write_ids(inst / "a.txt", [1, 1, 0])
    # 5.7 -> int(float('5.7')) = 5 (chair); the wall's and the unannotated mask files do not exist: never read
    txt = _write_instance_file(inst, "s", ["missing.txt 1 0.9", "a.txt 5.7 1e-1", "missing2.txt 0 0.3"])
    preds = read_instance_predictions(txt, inst)  # no vertex count: not checked
    assert [(p.mask.tolist(), p.label_id, p.confidence) for p in preds] == [([True, True, False], CHAIR, 0.1)]


@pytest.mark.parametrize("line, message", [
    ("a.txt 5", "{txt}:2: expected 'relative/mask.txt label_id confidence'"),
    ("a.txt  5 0.9", "{txt}:2: expected 'relative/mask.txt label_id confidence'"),
    ("a.txt 5 0.9 x", "{txt}:2: expected 'relative/mask.txt label_id confidence'"),
    ("{root}/a.txt 5 0.9", "{txt}:2: mask path must be relative"),
    ("../a.txt 5 0.9", "{txt}:2: mask ../a.txt points outside {root}"),
    ("m/../../instance2/a.txt 5 0.9", "{txt}:2: mask m/../../instance2/a.txt points outside {root}"),
    ("a.txt chair 0.9", "{txt}:2: label and confidence must be numbers"),
    ("a.txt 5 high", "{txt}:2: label and confidence must be numbers"),
    ("b.txt 5 0.9", "{txt}: mask file {root}/b.txt is missing"),
    ("c.txt 5 0.9", "{root}/c.txt: 4 lines, the scene has 3 vertices"),
])
def test_reader_refuses_malformed_lines_with_one_line_naming_the_file(line, message, tmp_path):
    inst = tmp_path / "instance"
    root = inst.resolve()
    write_ids(inst / "a.txt", [1, 1, 0])
    write_ids(tmp_path / "a.txt", [1, 1, 0])
    write_ids(tmp_path / "instance2" / "a.txt", [1, 1, 0])
    write_ids(inst / "c.txt", [1, 1, 0, 0])
    txt = _write_instance_file(inst, "s", ["a.txt 5 0.9", line.format(root=root)])
    with pytest.raises(SubmissionError) as err:
        read_instance_predictions(txt, inst, 3)
    assert str(err.value) == message.format(txt=txt, root=root)


# ---- a two-scene submission with metrics known by hand ----

N_A = 400


def _hand_submission(root: Path) -> None:
    """Scene A: chair (200 vertices), table (100), wall (100); scene B: 10 floor vertices.

    Predicted: A's chair exactly (0.9); A's table plus 50 wall vertices (0.8, IoU 100 / 150);
    semantic A: chair and table right, the table spills onto 50 wall vertices, 50 wall vertices 0;
    semantic B: half floor, half wall. B has no instance file.
    """
    gt_a = _segments((5001, 200), (7002, 100), (1000, 100))
    write_ids(root / "gt" / "instance" / "scene_a.txt", gt_a)
    write_ids(root / "gt" / "semantic" / "scene_a.txt", gt_a // 1000)
    write_ids(root / "gt" / "instance" / "scene_b.txt", np.full(10, 2000))
    write_ids(root / "gt" / "semantic" / "scene_b.txt", np.full(10, 2))
    inst = root / "sub" / "instance"
    write_ids(inst / "masks" / "a0.txt", _segments((1, 200), (0, 200)))
    write_ids(inst / "masks" / "a1.txt", _segments((0, 200), (1, 150), (0, 50)))
    _write_instance_file(inst, "scene_a", [f"masks/a0.txt {CHAIR} 0.9", f"masks/a1.txt {TABLE} 0.8"])
    write_ids(root / "sub" / "semantic" / "scene_a.txt", _segments((5, 200), (7, 150), (0, 50)))
    write_ids(root / "sub" / "semantic" / "scene_b.txt", _segments((2, 5), (1, 5)))


def test_two_scene_submission_has_the_hand_computed_metrics(tmp_path):
    _hand_submission(tmp_path)
    got = evaluate_dirs(tmp_path / "sub", tmp_path / "gt", ap_matrix=True)
    # the table's prediction matches while IoU 2/3 is above the threshold (0.50 .. 0.65 and 0.25); above
    # that it is a false positive (void share 50 / 150 is not above the threshold) and the table a miss: AP 0
    table = np.where(OVERLAPS < 2 / 3, 1.0, 0.0)
    assert got["ap"].shape == (18, 10)
    np.testing.assert_array_equal(got["ap"][2], np.ones(10))  # chair
    np.testing.assert_array_equal(got["ap"][4], table)
    assert np.isnan(np.delete(got["ap"], [2, 4], 0)).all()
    inst = got["instance"]
    assert inst["mAP"] == pytest.approx((9 + 4) / 18, abs=1e-12)
    assert inst["AP50"] == 1.0 and inst["AP25"] == 1.0
    assert inst["per_class"]["table"] == pytest.approx({"ap": 4 / 9, "ap50": 1.0, "ap25": 1.0}, abs=1e-12)
    # chair 200 / 200; table 100 / (100 + 50 from the wall); wall 0 / 100; floor 5 / 10 (its other 5 are FN)
    sem = got["semantic"]["per_class"]
    assert (sem["chair"], sem["table"], sem["wall"], sem["floor"]) == pytest.approx((1.0, 2 / 3, 0.0, 0.5), abs=1e-12)
    assert np.isnan(sem["sofa"])
    assert got["semantic"]["mIoU"] == pytest.approx((1 + 2 / 3 + 0 + 0.5) / 4, abs=1e-12)
    assert got["missing_scenes"] == {"instance": ["scene_b"]}
    assert set(got) == {"instance", "semantic", "ap", "missing_scenes"}
    assert "ap" not in evaluate_dirs(tmp_path / "sub", tmp_path / "gt")


def test_a_part_without_prediction_files_is_not_evaluated(tmp_path):
    _hand_submission(tmp_path)
    for f in (tmp_path / "sub" / "semantic").glob("*.txt"):
        f.unlink()
    got = evaluate_dirs(tmp_path / "sub", tmp_path / "gt")
    assert set(got) == {"instance", "missing_scenes"} and got["missing_scenes"] == {"instance": ["scene_b"]}
    assert got["instance"]["mAP"] == pytest.approx(13 / 18, abs=1e-12)
    _hand_submission(tmp_path)
    for f in (tmp_path / "sub" / "instance").glob("*.txt"):
        f.unlink()
    got = evaluate_dirs(tmp_path / "sub", tmp_path / "gt")  # no instance file: no missing instance scenes either
    assert set(got) == {"semantic"} and got["semantic"]["mIoU"] == pytest.approx(13 / 24, abs=1e-12)


def test_forked_workers_give_the_same_metrics(tmp_path, monkeypatch):
    _hand_submission(tmp_path)
    serial = evaluate_dirs(tmp_path / "sub", tmp_path / "gt", ap_matrix=True)
    pids = tmp_path / "pids.txt"
    real = evaluate_module._score_scene

    def recording(*args):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*args)

    # pickled by name into the workers: give it the name it replaces
    recording.__module__, recording.__qualname__ = real.__module__, real.__qualname__
    monkeypatch.setattr(evaluate_module, "_score_scene", recording)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # forking is refused once torch is loaded
    forked = evaluate_dirs(tmp_path / "sub", tmp_path / "gt", ap_matrix=True, workers=2)
    np.testing.assert_array_equal(forked.pop("ap"), serial.pop("ap"))
    assert json.dumps(forked, sort_keys=True) == json.dumps(serial, sort_keys=True)
    read_by = pids.read_text().split()
    assert len(read_by) == 2 and str(os.getpid()) not in read_by  # both scenes read in worker processes
    for workers, torch_loaded in ((1, False), (None, False), (2, True)):  # read in this process
        pids.unlink()
        if torch_loaded:
            monkeypatch.setitem(sys.modules, "torch", sys)
        evaluate_dirs(tmp_path / "sub", tmp_path / "gt", **({} if workers is None else {"workers": workers}))
        assert pids.read_text().split() == [str(os.getpid())] * 2


def test_forked_workers_on_many_scenes(tmp_path, monkeypatch):
    import concurrent.futures

    pools = []

    class RecordingPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, max_workers=None, mp_context=None):
            pools.append((max_workers, mp_context))
            super().__init__(max_workers, mp_context=mp_context)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    # 25 scenes of 4 vertices, scene k with k % 4 wall vertices called floor: enough scenes for chunks of several
    for k in range(25):
        write_ids(tmp_path / "gt" / "semantic" / f"s{k:02d}.txt", np.full(4, WALL))
        write_ids(tmp_path / "sub" / "semantic" / f"s{k:02d}.txt", _segments((FLOOR, k % 4), (WALL, 4 - k % 4)))
    forked = evaluate_dirs(tmp_path / "sub", tmp_path / "gt", workers=3)
    import multiprocessing

    # fork explicitly, whatever the platform's default start method (forkserver from Python 3.14)
    assert pools == [(3, multiprocessing.get_context("fork"))] and pools[0][1] is multiprocessing.get_context("fork")
    # 0 + 1 + 2 + 3 wrong per 4 scenes, 6 rounds and scene 24 (0): 36 of the 100 wall vertices called floor
    assert forked["semantic"]["per_class"]["wall"] == pytest.approx(64 / 100, abs=1e-12)
    assert forked["semantic"]["per_class"]["floor"] == 0.0 and set(forked) == {"semantic"}


@pytest.mark.parametrize("case, error, message", [
    ("no_files", FileNotFoundError, "{sub}: no semantic/<scene>.txt or instance/<scene>.txt files"),
    ("no_instance_gt", FileNotFoundError, "{sub}/instance/scene_a.txt has no ground truth {gt}/instance/scene_a.txt"),
    ("no_semantic_gt", FileNotFoundError, "{sub}/semantic/scene_b.txt has no ground truth {gt}/semantic/scene_b.txt"),
    ("semantic_count", SubmissionError, "{sub}/semantic/scene_b.txt: 9 lines, the scene has 10"),
    ("mask_count", SubmissionError, "{sub}/instance/masks/a0.txt: 399 lines, the scene has 400 vertices"),
])
def test_evaluate_errors_name_the_file(case, error, message, tmp_path):
    _hand_submission(tmp_path)
    sub, gt = tmp_path / "sub", tmp_path / "gt"
    if case == "no_files":
        for f in sub.rglob("*.txt"):
            f.unlink()
    elif case == "no_instance_gt":
        (gt / "instance" / "scene_a.txt").unlink()
    elif case == "no_semantic_gt":
        (gt / "semantic" / "scene_b.txt").unlink()
    elif case == "semantic_count":
        write_ids(sub / "semantic" / "scene_b.txt", np.full(9, 2))
    elif case == "mask_count":
        write_ids(sub / "instance" / "masks" / "a0.txt", np.ones(N_A - 1, np.int64))
    with pytest.raises(error) as err:
        evaluate_dirs(sub, gt)
    text = message.format(sub=sub, gt=gt)
    if case == "mask_count":
        text = message.format(sub=sub.resolve(), gt=gt)
    assert str(err.value) == text


# ---- in memory ----

def test_evaluate_scenes_takes_either_half_of_a_scene():
    gt = _segments((5001, 200), (0, 50))
    preds = [InstancePrediction(_segments((1, 200), (0, 50)), CHAIR, 0.5)]
    sem = gt // 1000
    both = evaluate_scenes([(gt, preds, sem, sem)], ap_matrix=True)
    assert set(both) == {"instance", "semantic", "ap"} and both["instance"]["per_class"]["chair"]["ap"] == 1.0
    assert both["semantic"]["mIoU"] == 1.0
    # the second scene has only a semantic half (a wrong one) and a scene without predictions adds nothing
    got = evaluate_scenes([(gt, preds, None, None), (None, None, sem, np.full(250, 7)), (gt, None, sem, None)])
    assert set(got) == {"instance", "semantic"} and got["instance"]["mAP"] == 1.0
    assert got["semantic"]["per_class"]["chair"] == 0.0 and math.isnan(got["semantic"]["per_class"]["wall"])
    assert summarize_matches([], []) == {} and evaluate_scenes([]) == {}
    assert set(summarize_matches([match_scene(gt, preds)], [])) == {"instance"}  # no AP matrix unless asked


# ---- output ----

def test_missing_scenes_line():
    assert missing_scenes_line({}) is None and missing_scenes_line({"missing_scenes": {"instance": []}}) is None
    names = ["s1", "s2", "s3"]
    assert missing_scenes_line({"missing_scenes": {"instance": names}}) == (
        "warning: ground-truth scenes without predictions: 3 instance (s1, s2, s3); like the official scripts, "
        "the scores cover only the predicted scenes")
    line = missing_scenes_line({"missing_scenes": {"instance": names + ["s4"], "semantic": ["s9"]}})
    assert line.startswith("warning: ground-truth scenes without predictions: 4 instance (s1, s2, s3, ...); "
                           "1 semantic (s9); like")
    assert "3 instance (s1, s2, ...)" in missing_scenes_line({"missing_scenes": {"instance": names}}, shown=2)


def test_json_output_has_null_for_nan(tmp_path):
    metrics = {"a": float("nan"), "b": [1.0, float("nan"), {"c": float("nan")}], "d": {"e": 0.5, "f": "x"}}
    assert _clean(metrics) == {"a": None, "b": [1.0, None, {"c": None}], "d": {"e": 0.5, "f": "x"}}
    write_json(metrics, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text() == (
        '{\n  "a": null,\n  "b": [\n    1.0,\n    null,\n    {\n      "c": null\n    }\n  ],\n'
        '  "d": {\n    "e": 0.5,\n    "f": "x"\n  }\n}\n')


def test_format_metrics_table():
    metrics = {"instance": {"mAP": 0.5, "AP50": 0.75, "AP25": 1.0,
                            "per_class": {"chair": {"ap": 0.5, "ap50": 0.75, "ap25": 1.0},
                                          "table": {"ap": float("nan"), "ap50": 0.0, "ap25": 0.125}}},
               "semantic": {"mIoU": 0.6666, "per_class": {"wall": 0.5, "floor": 1.0}}}
    assert format_metrics(metrics).splitlines() == [
        "class                 AP    AP50    AP25",
        "chair              0.500   0.750   1.000",
        "table                nan   0.000   0.125",
        "average            0.500   0.750   1.000",
        "mIoU 0.667  wall=0.50  floor=1.00",
    ]
    assert format_metrics({}) == ""
    assert format_metrics({"semantic": metrics["semantic"]}) == "mIoU 0.667  wall=0.50  floor=1.00"
