"""Benchmark submission files: the writer's exact layout, write -> read -> validate round trips
on random predictions (hypothesis), and malformed layouts refused with one line naming the file."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minkseg.evaluation.evaluate import read_instance_predictions
from minkseg.evaluation.submission import (
    ValidationReport,
    _check_mask,
    _read_values,
    predict_submission,
    validate_submission,
    write_scene_submission,
    zip_submission,
)
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.predict import ScenePrediction
from scannet_tools.io import read_ids
from scannet_tools.labels import INSTANCE_NYU40_IDS

from . import official_eval_reference as ref

SCENE = "scene0707_00"


def hand_prediction() -> ScenePrediction:
    """Four vertices, three masks listed in no particular confidence order, masks of bool and of any integers."""
    return ScenePrediction(SCENE, np.array([1, 5, 40, 0]), [
        InstancePrediction(np.array([1, 0, 0, 1]), 5, 0.25),
        InstancePrediction(np.array([0, 2, -1, 0]), 7, 0.875),  # any nonzero value is a member
        InstancePrediction(np.array([True, True, False, False]), np.int64(39), 1 / 3),
    ])


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- the writer's layout, byte for byte ----

def test_writer_layout_is_the_benchmark_layout(tmp_path):
    assert write_scene_submission(hand_prediction(), tmp_path) == 3
    assert files_under(tmp_path) == {
        f"semantic/{SCENE}.txt": b"1\n5\n40\n0\n",
        f"instance/{SCENE}.txt": (f"predicted_masks/{SCENE}_000.txt 7 0.875000\n"  # highest confidence first
                                  f"predicted_masks/{SCENE}_001.txt 39 0.333333\n"
                                  f"predicted_masks/{SCENE}_002.txt 5 0.250000\n").encode(),
        f"instance/predicted_masks/{SCENE}_000.txt": b"0\n1\n1\n0\n",
        f"instance/predicted_masks/{SCENE}_001.txt": b"1\n1\n0\n0\n",
        f"instance/predicted_masks/{SCENE}_002.txt": b"1\n0\n0\n1\n",
    }


def test_writer_keeps_ties_in_input_order_and_writes_an_empty_instance_file(tmp_path):
    n = 3
    tied = [InstancePrediction(np.array([1, 0, 0]), 5, 0.5), InstancePrediction(np.array([0, 1, 0]), 7, 0.5)]
    assert write_scene_submission(ScenePrediction(SCENE, np.full(n, 2), tied), tmp_path / "a") == 2
    assert (tmp_path / "a" / "instance" / f"{SCENE}.txt").read_text().splitlines() == [
        f"predicted_masks/{SCENE}_000.txt 5 0.500000", f"predicted_masks/{SCENE}_001.txt 7 0.500000"]
    # a scene without instances still has its (empty) instance file: the benchmark wants one per scene
    assert write_scene_submission(ScenePrediction(SCENE, np.full(n, 2), []), tmp_path / "b") == 0
    assert files_under(tmp_path / "b") == {f"semantic/{SCENE}.txt": b"2\n2\n2\n", f"instance/{SCENE}.txt": b""}


@pytest.mark.parametrize("max_masks, min_score, kept", [
    (0, 0.0, [7, 39, 5]),  # 0: no limit
    (2, 0.0, [7, 39]),  # the highest-confidence masks
    (1, 0.0, [7]),
    (5, 0.0, [7, 39, 5]),
    (0, 0.25, [7, 39, 5]),  # a confidence equal to min_score is kept
    (0, 0.26, [7, 39]),
    (0, 0.9, []),
    (1, 0.3, [7]),
])
def test_writer_max_masks_and_min_score(max_masks, min_score, kept, tmp_path):
    assert write_scene_submission(hand_prediction(), tmp_path, max_masks, min_score) == len(kept)
    lines = (tmp_path / "instance" / f"{SCENE}.txt").read_text().splitlines()
    assert [int(line.split(" ")[1]) for line in lines] == kept
    assert [line.split(" ")[0] for line in lines] == [f"predicted_masks/{SCENE}_{k:03d}.txt" for k in range(len(kept))]
    assert len(list((tmp_path / "instance" / "predicted_masks").glob("*.txt"))) == len(kept)
    assert read_ids(tmp_path / "semantic" / f"{SCENE}.txt").tolist() == [1, 5, 40, 0]  # never filtered


def test_zip_holds_the_folders_at_the_archive_root(tmp_path):
    write_scene_submission(hand_prediction(), tmp_path)
    written = zip_submission(tmp_path)
    assert written == [tmp_path / "semantic.zip", tmp_path / "instance.zip"]
    for part, archive in zip(("semantic", "instance"), written):
        with zipfile.ZipFile(archive) as z:
            assert {i.filename: z.read(i) for i in z.infolist()} == files_under(tmp_path / part)
            assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    with zipfile.ZipFile(written[1]) as z:
        assert z.namelist() == [f"predicted_masks/{SCENE}_000.txt", f"predicted_masks/{SCENE}_001.txt",
                                f"predicted_masks/{SCENE}_002.txt", f"{SCENE}.txt"]  # sorted, no root folder


def test_predict_submission_writes_every_scene_and_counts_masks(tmp_path, monkeypatch):
    import tqdm

    import minkseg.data.dataset
    import minkseg.inference.predict

    read, predicted, bars = [], [], []
    monkeypatch.setattr(minkseg.data.dataset, "iterate_prepared",
                        lambda files, workers: (read.append(([f.name for f in files], workers)),
                                                iter([{"scene": "scene0001_00"}, {"scene": "scene0002_00"}]))[1])

    def fake_predict(model, scene, cfg, device):
        predicted.append((model, scene["scene"], cfg, device))
        masks = [InstancePrediction(np.array([1, 0]), 5, c) for c in (0.9, 0.6, 0.2)]
        return ScenePrediction(scene["scene"], np.array([5, 1]), masks)

    def fake_bar(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(minkseg.inference.predict, "predict_scene", fake_predict)
    monkeypatch.setattr(tqdm, "tqdm", fake_bar)
    scenes = ["scene0001_00", "scene0002_00"]
    assert predict_submission("model", "cfg", tmp_path / "prep", scenes, tmp_path / "sub", max_masks=1,
                              workers=3) == 2  # the best mask of each scene
    assert read == [(["scene0001_00.npz", "scene0002_00.npz"], 3)]
    assert predicted == [("model", "scene0001_00", "cfg", "cpu"), ("model", "scene0002_00", "cfg", "cpu")]
    assert bars == [{"total": 2, "desc": "predict", "unit": "scene", "disable": None}]
    assert validate_submission(tmp_path / "sub", {"scene0001_00": 2, "scene0002_00": 2}).masks == 2
    predicted.clear()
    read.clear()
    assert predict_submission("m", "c", tmp_path / "prep", scenes, tmp_path / "sub2", "cuda:1", min_score=0.5) == 4
    assert [p[3] for p in predicted] == ["cuda:1", "cuda:1"] and read[0][1] == 0  # read here by default


# ---- property: write -> read -> validate ----

@st.composite
def scene_predictions(draw, scene: str) -> ScenePrediction:
    n = draw(st.integers(1, 30))
    semantic = np.array(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)), np.int64)
    instances = []
    for _ in range(draw(st.integers(0, 5))):
        mask = np.array(draw(st.lists(st.sampled_from([0, 0, 1, 2, -1]), min_size=n, max_size=n)), np.int64)
        conf = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1))  # ties on purpose
        instances.append(InstancePrediction(mask, draw(st.sampled_from(INSTANCE_NYU40_IDS)), conf))
    return ScenePrediction(scene, semantic, instances)


def expected_masks(pred: ScenePrediction, max_masks: int, min_score: float) -> list[InstancePrediction]:
    """The documented rule: highest confidence first (ties in input order), at least min_score, at most max_masks."""
    order = sorted(range(len(pred.instances)), key=lambda i: (-pred.instances[i].confidence, i))
    kept = [pred.instances[i] for i in order if pred.instances[i].confidence >= min_score]
    return kept[:max_masks] if max_masks else kept


@settings(max_examples=40, deadline=None, derandomize=True)
@given(preds=st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True).flatmap(
           lambda ids: st.tuples(*[scene_predictions(f"scene{i:04d}_00") for i in ids])),
       max_masks=st.sampled_from([0, 1, 3]), min_score=st.sampled_from([0.0, 0.25, 0.5]))
def test_property_written_submission_reads_back_and_validates(preds, max_masks, min_score):
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp)
        total = sum(write_scene_submission(p, sub, max_masks, min_score) for p in preds)
        inst_dir = sub / "instance"
        for p in preds:
            kept = expected_masks(p, max_masks, min_score)
            assert read_ids(sub / "semantic" / f"{p.scene}.txt").tolist() == p.semantic_nyu40.tolist()
            txt = inst_dir / f"{p.scene}.txt"
            back = read_instance_predictions(txt, inst_dir, len(p.semantic_nyu40))  # the evaluator's reader
            assert len(back) == len(kept)
            for got, want in zip(back, kept):
                assert got.mask.tolist() == (want.mask != 0).astype(int).tolist()
                # half the 6-decimal step, plus the rounding of parsing the text back
                assert got.label_id == want.label_id and abs(got.confidence - want.confidence) <= 5e-7 + 1e-12
            # the transcription of the official reader: one entry per line, so no mask path repeats
            info = ref.read_instance_prediction_file(str(txt), str(inst_dir))
            assert [(v["label_id"], ref.load_ids(k).tolist()) for k, v in info.items()] == [
                (w.label_id, (w.mask != 0).astype(int).tolist()) for w in kept]
        assert total == sum(len(expected_masks(p, max_masks, min_score)) for p in preds)
        report = validate_submission(sub, {p.scene: len(p.semantic_nyu40) for p in preds})
        assert report.problems == [] and report.ok
        assert report.scenes == len(preds) and report.masks == total
        assert report.warnings == [
            f"{sub / 'semantic' / p.scene}.txt: {int((p.semantic_nyu40 == 0).sum())} vertices have label 0; the "
            "official evaluation counts them as wrong wherever the ground truth is one of the 20 classes"
            for p in sorted(preds, key=lambda p: p.scene) if (p.semantic_nyu40 == 0).any()]


# ---- malformed layouts: each refused with one line naming the file ----

N = 8


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid one-scene submission of N vertices with two masks, as the writer makes it."""
    masks = [InstancePrediction(np.array([1] * 4 + [0] * 4), 5, 0.9),
             InstancePrediction(np.array([0] * 4 + [1] * 4), 7, 0.4)]
    write_scene_submission(ScenePrediction(SCENE, np.full(N, 5), masks), tmp_path / "sub")
    report = validate_submission(tmp_path / "sub", {SCENE: N})
    assert (report.problems, report.warnings, report.scenes, report.masks) == ([], [], 1, 2)
    return tmp_path / "sub"


def _line(sub: Path, text: str) -> None:
    """Replace the instance file's first line (mask 000, chair) by ``text``; the second line stays valid."""
    inst = sub / "instance" / f"{SCENE}.txt"
    inst.write_text(text + "\n" + inst.read_text().splitlines()[1] + "\n")


MASK0 = f"predicted_masks/{SCENE}_000.txt"

# kind -> (corruption of the good submission, expected problems; {sem}, {inst}, {dir}, {mask}, {sub} are filled in)
MALFORMED = {
    "semantic_too_short": (lambda s: (s / "semantic" / f"{SCENE}.txt").write_text("5\n" * (N - 1)),
                           ["{sem}: 7 lines, the mesh has 8 vertices"]),
    "semantic_too_long": (lambda s: (s / "semantic" / f"{SCENE}.txt").write_text("5\n" * (N + 1)),
                          ["{sem}: 9 lines, the mesh has 8 vertices"]),
    "semantic_outside_nyu40": (lambda s: (s / "semantic" / f"{SCENE}.txt").write_text(
        "\n".join(map(str, [44, -1, 41, 43, -2, 42, 41, 5])) + "\n"),
        ["{sem}: label values outside the NYU40 ids 0..40: [-2, -1, 41, 42, 43]"]),  # the 5 smallest
    "semantic_not_integers": (lambda s: (s / "semantic" / f"{SCENE}.txt").write_text("5\n5\n5.0\n" + "5\n" * 5),
                              ["{sem}: line 3 is not an integer: '5.0'"]),
    "mask_values": (lambda s: (s / "instance" / MASK0).write_text(
        "\n".join(map(str, [1, 2, -1, 3, 4, 5, 6, 0])) + "\n"),
        ["{mask}: mask values outside [0, 1]: [-1, 2, 3, 4, 5]"]),
    "mask_too_short": (lambda s: (s / "instance" / MASK0).write_text("1\n" * (N - 1)),
                       ["{mask}: 7 lines, the mesh has 8 vertices"]),
    "mask_too_short_and_values": (lambda s: (s / "instance" / MASK0).write_text("1\n" * (N - 2) + "7\n"),
                                  ["{mask}: 7 lines, the mesh has 8 vertices",
                                   "{mask}: mask values outside [0, 1]: [7]"]),
    "mask_not_integers": (lambda s: (s / "instance" / MASK0).write_text("1\n" * 7 + "true\n"),
                          ["{mask}: line 8 is not an integer: 'true'"]),
    "two_spaces": (lambda s: _line(s, f"{MASK0}  5 0.9"),
                   ["{inst}:1: expected 'relative/mask.txt label_id confidence' (single spaces)"]),
    "two_fields": (lambda s: _line(s, f"{MASK0} 5"),
                   ["{inst}:1: expected 'relative/mask.txt label_id confidence' (single spaces)"]),
    "tab": (lambda s: _line(s, f"{MASK0}\t5 0.9"),
            ["{inst}:1: expected 'relative/mask.txt label_id confidence' (single spaces)"]),
    "absolute_path": (lambda s: _line(s, f"{s.resolve() / 'instance' / MASK0} 5 0.9"),
                      ["{inst}:1: mask path {sub_abs}/instance/" + MASK0 + " is absolute; it must be relative"]),
    "outside_folder": (lambda s: _line(s, f"../semantic/{SCENE}.txt 5 0.9"),
                       ["{inst}:1: mask path ../semantic/" + SCENE + ".txt points outside {dir}"]),
    "outside_through_subfolder": (lambda s: _line(s, f"predicted_masks/../../semantic/{SCENE}.txt 5 0.9"),
                                  ["{inst}:1: mask path predicted_masks/../../semantic/" + SCENE
                                   + ".txt points outside {dir}"]),
    "label_word": (lambda s: _line(s, f"{MASK0} chair 0.9"),
                   ["{inst}:1: label 'chair' is not one of the 18 instance class ids"]),
    "label_fraction": (lambda s: _line(s, f"{MASK0} 5.5 0.9"),
                       ["{inst}:1: label '5.5' is not one of the 18 instance class ids"]),
    "label_wall": (lambda s: _line(s, f"{MASK0} 1 0.9"),
                   ["{inst}:1: label '1' is not one of the 18 instance class ids"]),
    "label_unannotated": (lambda s: _line(s, f"{MASK0} 0 0.9"),
                          ["{inst}:1: label '0' is not one of the 18 instance class ids"]),
    "confidence_word": (lambda s: _line(s, f"{MASK0} 5 high"), ["{inst}:1: confidence 'high' is not a number"]),
    "confidence_nan": (lambda s: _line(s, f"{MASK0} 5 nan"), ["{inst}:1: confidence 'nan' is not a number"]),
    "label_and_confidence": (lambda s: _line(s, f"{MASK0} 40 x"),
                             ["{inst}:1: label '40' is not one of the 18 instance class ids",
                              "{inst}:1: confidence 'x' is not a number"]),
    "missing_mask": (lambda s: (s / "instance" / MASK0).unlink(),
                     ["{inst}:1: mask file " + MASK0 + " does not exist"]),
    "mask_is_a_folder": (lambda s: ((s / "instance" / MASK0).unlink(), (s / "instance" / MASK0).mkdir()),
                         ["{inst}:1: mask file " + MASK0 + " does not exist"]),
    # a folder named like a scene file must not pass as that scene's (unchecked) file
    "semantic_is_a_folder": (lambda s: ((s / "semantic" / f"{SCENE}.txt").unlink(),
                                        (s / "semantic" / f"{SCENE}.txt").mkdir()),
                             ["{sem}: is not a file"]),
    "instance_is_a_folder": (lambda s: (shutil.rmtree(s / "instance"), (s / "instance" / f"{SCENE}.txt").mkdir(
        parents=True)), ["{inst}: is not a file"]),
}


def _fill(template: str, sub: Path) -> str:
    return template.format(sem=sub / "semantic" / f"{SCENE}.txt", inst=sub / "instance" / f"{SCENE}.txt",
                           dir=sub / "instance", mask=sub / "instance" / MASK0, sub=sub, sub_abs=sub.resolve())


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_submission_is_refused_with_one_line_naming_the_file(kind, good):
    corrupt, expected = MALFORMED[kind]
    corrupt(good)
    report = validate_submission(good, {SCENE: N})
    assert report.problems == [_fill(t, good) for t in expected] and not report.ok
    assert all("\n" not in p for p in report.problems)
    # a line refused for its layout or a mask file that is not there is not checked further; the next line is
    masks = 0 if kind == "instance_is_a_folder" else 1 if kind in UNCHECKED_MASK else 2
    assert report.masks == masks and report.scenes == 1


UNCHECKED_MASK = {"two_spaces", "two_fields", "tab", "absolute_path", "outside_folder", "outside_through_subfolder",
                  "missing_mask", "mask_is_a_folder"}


@pytest.mark.parametrize("line", [f"{MASK0} 5.0 0.9", f"{MASK0} +5 1e-3", f"{MASK0} 39 -0.5", f"{MASK0} 5 inf"])
def test_numbers_the_official_reader_accepts_are_valid(line, good):
    _line(good, line)  # the script reads the label as int(float(.)) and the confidence as float(.)
    report = validate_submission(good, {SCENE: N})
    assert report.problems == [] and report.masks == 2


def test_masks_with_other_line_ends_are_read_like_the_script(good):
    (good / "instance" / MASK0).write_bytes(b"1\r\n" * 4 + b"0\r\n" * 4)
    assert validate_submission(good, {SCENE: N}).problems == []
    (good / "instance" / MASK0).write_bytes(b"1\r\n" * 4 + b"0\r\n" * 3)
    assert validate_submission(good, {SCENE: N}).problems == [
        f"{good / 'instance' / MASK0}: 7 lines, the mesh has 8 vertices"]


def test_scene_lists_and_folders(good):
    sem_dir, inst_dir = good / "semantic", good / "instance"
    report = validate_submission(good, {SCENE: N, "scene0001_00": 3})
    assert report.problems == [f"{sem_dir}: missing scene0001_00.txt", f"{inst_dir}: missing scene0001_00.txt"]
    assert report.scenes == 2 and report.masks == 2
    report = validate_submission(good, {})
    assert report.problems == [f"{sem_dir}/{SCENE}.txt: not a scene of this split",
                               f"{inst_dir}/{SCENE}.txt: not a scene of this split"]
    assert report.scenes == 0 and report.masks == 0
    (sem_dir / f"{SCENE}.txt").unlink()
    sem_dir.rmdir()  # an instance-only submission is complete
    report = validate_submission(good, {SCENE: N})
    assert (report.problems, report.scenes, report.masks) == ([], 1, 2)
    assert validate_submission(good, {SCENE: N, "scene0001_00": 3}).problems == [
        f"{inst_dir}: missing scene0001_00.txt"]
    shutil.rmtree(inst_dir)
    (good / "submission").mkdir()
    report = validate_submission(good, {SCENE: N})
    assert report.problems == [f"{good}: has neither semantic/ nor instance/ (files must not sit in a root folder)"]
    assert report.scenes == 0 and not report.ok


def test_semantic_only_submission_and_label_zero_warning(good):
    shutil.rmtree(good / "instance")
    (good / "semantic" / f"{SCENE}.txt").write_text("0\n40\n" + "5\n" * 5 + "0\n")  # 0 and 40 are NYU40 ids
    report = validate_submission(good, {SCENE: N})
    assert report.problems == [] and report.ok and report.masks == 0
    assert report.warnings == [f"{good / 'semantic' / SCENE}.txt: 2 vertices have label 0; the official evaluation "
                               "counts them as wrong wherever the ground truth is one of the 20 classes"]


def test_unreadable_files_are_one_problem_each(tmp_path):
    absent = tmp_path / "absent.txt"
    report = ValidationReport()
    assert _read_values(absent, report) is None
    _check_mask(absent, 3, report)
    assert report.problems == [f"{absent}: cannot read ({os.strerror(2)})"] * 2 and not report.ok
    assert ValidationReport().ok and ValidationReport(warnings=["w"]).ok
