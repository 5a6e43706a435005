"""Benchmark submission files: writing (``minkseg predict``) and checking (``minkseg validate-submission``).

Layout (ScanNet benchmark documentation)::

    SUB/semantic/<scene>.txt                 one NYU40 id per mesh vertex
    SUB/instance/<scene>.txt                 lines "predicted_masks/<scene>_<k>.txt <nyu40 id> <confidence>"
    SUB/instance/predicted_masks/<scene>_<k>.txt   one 0/1 per mesh vertex

``--zip`` writes ``semantic.zip`` and ``instance.zip`` whose entries have no root folder.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scannet_tools.io import IdsFileError, atomic_path, parse_binary_mask, parse_ids, write_ids, write_text_atomic
from scannet_tools.labels import INSTANCE_NYU40_IDS

if TYPE_CHECKING:  # validate-submission runs without torch
    from minkseg.inference.predict import ScenePrediction

MASK_DIR = "predicted_masks"


def write_scene_submission(pred: ScenePrediction, out: Path, max_masks: int = 0, min_score: float = 0.0) -> int:
    """Write one scene's semantic and instance files; returns the number of masks written.

    ``max_masks`` (0: all) keeps the highest-confidence masks, ``min_score`` drops
    low-confidence ones: both keep archives small without touching the semantic file.
    """
    write_ids(out / "semantic" / f"{pred.scene}.txt", pred.semantic_nyu40)
    inst = sorted(pred.instances, key=lambda p: -p.confidence)
    inst = [p for p in inst if p.confidence >= min_score]
    if max_masks:
        inst = inst[:max_masks]
    lines = []
    for k, p in enumerate(inst):
        rel = f"{MASK_DIR}/{pred.scene}_{k:03d}.txt"
        write_ids(out / "instance" / rel, np.asarray(p.mask, bool))  # nonzero -> 1
        lines.append(f"{rel} {int(p.label_id)} {p.confidence:.6f}")
    write_text_atomic(out / "instance" / f"{pred.scene}.txt", "".join(line + "\n" for line in lines))
    return len(inst)


def predict_submission(model, cfg, prepared_dir: Path, scenes: list[str], out: Path, device: str = "cpu",
                       max_masks: int = 0, min_score: float = 0.0, workers: int = 0) -> int:
    """Run the model on prepared scenes (read ahead by ``workers`` processes) and write their
    submission files; returns the mask count."""
    from tqdm import tqdm

    from minkseg.data.dataset import iterate_prepared
    from minkseg.inference.predict import predict_scene
    from scannet_tools.prepare import prepared_path

    masks = 0
    files = [prepared_path(prepared_dir, name) for name in scenes]
    for scene in tqdm(iterate_prepared(files, workers), total=len(files), desc="predict", unit="scene", disable=None):
        pred = predict_scene(model, scene, cfg, device)
        masks += write_scene_submission(pred, out, max_masks, min_score)
    return masks


def zip_submission(out: Path) -> list[Path]:
    """``out/semantic.zip`` and ``out/instance.zip`` holding the folders' contents at the archive root."""
    written = []
    for part in ("semantic", "instance"):
        src = out / part
        with atomic_path(out / f"{part}.zip") as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(src.rglob("*.txt")):
                    z.write(f, f.relative_to(src).as_posix())
        written.append(out / f"{part}.zip")
    return written


@dataclass
class ValidationReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # legal, but scored in a way the user may not expect
    scenes: int = 0
    masks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_values(path: Path, report: ValidationReport) -> np.ndarray | None:
    """The file's integers (the evaluator's reader), or None with the problem recorded."""
    try:
        return parse_ids(path.read_bytes(), path)
    except OSError as e:
        report.problems.append(f"{path}: cannot read ({e.strerror})")
    except IdsFileError as e:
        report.problems.append(str(e))
    return None


def _check_count(path: Path, values: np.ndarray, n: int, report: ValidationReport) -> None:
    if len(values) != n:
        report.problems.append(f"{path}: {len(values)} lines, the mesh has {n} vertices")


def _check_semantic(path: Path, n: int, report: ValidationReport) -> None:
    values = _read_values(path, report)
    if values is None:
        return
    _check_count(path, values, n, report)
    outside = np.unique(values[(values < 0) | (values > 40)])
    if len(outside):
        report.problems.append(f"{path}: label values outside the NYU40 ids 0..40: {outside[:5].tolist()}")
    unlabelled = int(np.count_nonzero(values == 0))
    if unlabelled:
        report.warnings.append(f"{path}: {unlabelled} vertices have label 0; the official evaluation counts them "
                               "as wrong wherever the ground truth is one of the 20 classes")


def _check_mask(path: Path, n: int, report: ValidationReport) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        report.problems.append(f"{path}: cannot read ({e.strerror})")
        return
    binary = parse_binary_mask(data)
    if binary is not None and len(binary) == n:  # the usual file: n lines of 0/1
        return
    values = _read_values(path, report)
    if values is None:
        return
    _check_count(path, values, n, report)
    outside = np.unique(values[(values != 0) & (values != 1)])
    if len(outside):
        report.problems.append(f"{path}: mask values outside [0, 1]: {outside[:5].tolist()}")


def validate_submission(sub: str | Path, vertex_counts: dict[str, int]) -> ValidationReport:
    """Check every rule of the submission format; collect all problems instead of stopping at one."""
    sub = Path(sub)
    report = ValidationReport()
    sem_dir, inst_dir = sub / "semantic", sub / "instance"
    if not sem_dir.is_dir() and not inst_dir.is_dir():
        report.problems.append(f"{sub}: has neither semantic/ nor instance/ (files must not sit in a root folder)")
        return report
    for d in (sem_dir, inst_dir):
        if not d.is_dir():
            continue
        entries = {p.stem: p for p in d.glob("*.txt")}
        for entry in sorted(p for p in entries.values() if not p.is_file()):
            report.problems.append(f"{entry}: is not a file")
        present = set(entries)
        for scene in sorted(set(vertex_counts) - present):
            report.problems.append(f"{d}: missing {scene}.txt")
        for scene in sorted(present - set(vertex_counts)):
            report.problems.append(f"{d}/{scene}.txt: not a scene of this split")
    for scene, n in sorted(vertex_counts.items()):
        report.scenes += 1
        f = sem_dir / f"{scene}.txt"
        if f.is_file():
            _check_semantic(f, n, report)
        f = inst_dir / f"{scene}.txt"
        if not f.is_file():
            continue
        for lineno, line in enumerate(f.read_text().splitlines(), 1):
            where = f"{f}:{lineno}"
            parts = line.split(" ")
            if len(parts) != 3:
                report.problems.append(f"{where}: expected 'relative/mask.txt label_id confidence' (single spaces)")
                continue
            rel, label, conf = parts
            if Path(rel).is_absolute():
                report.problems.append(f"{where}: mask path {rel} is absolute; it must be relative")
                continue
            mask = (f.parent / rel).resolve()
            if not mask.is_relative_to(inst_dir.resolve()):
                report.problems.append(f"{where}: mask path {rel} points outside {inst_dir}")
                continue
            try:
                label_ok = float(label).is_integer() and int(float(label)) in INSTANCE_NYU40_IDS
            except ValueError:
                label_ok = False
            if not label_ok:
                report.problems.append(f"{where}: label {label!r} is not one of the 18 instance class ids")
            try:
                c = float(conf)
                if c != c:
                    raise ValueError
            except ValueError:
                report.problems.append(f"{where}: confidence {conf!r} is not a number")
            if not mask.is_file():
                report.problems.append(f"{where}: mask file {rel} does not exist")
                continue
            report.masks += 1
            _check_mask(mask, n, report)
    return report
