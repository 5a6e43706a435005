"""``minkseg evaluate``: benchmark metrics from a checkpoint or from benchmark-format files.

Both paths end in the same functions of :mod:`minkseg.metrics`, so a checkpoint's numbers
and the numbers of the submission files it writes are the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minkseg.metrics import (
    InstancePrediction,
    instance_ap,
    match_scene,
    semantic_confusion,
    summarize_instance,
    summarize_semantic,
)
from scannet_tools.io import read_ids, write_text_atomic


def evaluate_scenes(scenes: Iterable[tuple[np.ndarray | None, list[InstancePrediction] | None,
                                           np.ndarray | None, np.ndarray | None]],
                    ap_matrix: bool = False) -> dict:
    """Metrics over scenes given as (instance gt ids, instance predictions, semantic gt, semantic pred).

    Either half may be None for a scene (e.g. an instance-only submission). With
    ``ap_matrix`` the (class x overlap) AP array is returned under ``"ap"`` too.
    """
    matches, confusion = [], None
    for gt_ids, preds, sem_gt, sem_pred in scenes:
        if gt_ids is not None and preds is not None:
            matches.append(match_scene(gt_ids, preds))
        if sem_gt is not None and sem_pred is not None:
            c = semantic_confusion(sem_gt, sem_pred)
            confusion = c if confusion is None else confusion + c
    out = {}
    if matches:
        ap = instance_ap(matches)
        out["instance"] = summarize_instance(ap)
        if ap_matrix:
            out["ap"] = ap
    if confusion is not None:
        out["semantic"] = summarize_semantic(confusion)
    return out


class SubmissionError(ValueError):
    """A prediction file that the official evaluation would reject."""


def read_instance_predictions(txt: Path, root: Path, n_vertices: int | None = None) -> list[InstancePrediction]:
    """Read ``<scene>.txt`` of an instance submission as the official script does.

    Lines are ``relative/mask.txt label_id confidence``; a mask path repeated in the file
    keeps its last label and confidence (the script stores them in a dict by path).
    """
    info: dict[Path, tuple[int, float]] = {}
    root = root.resolve()
    for lineno, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split(" ")
        if len(parts) != 3:
            raise SubmissionError(f"{txt}:{lineno}: expected 'relative/mask.txt label_id confidence'")
        if Path(parts[0]).is_absolute():
            raise SubmissionError(f"{txt}:{lineno}: mask path must be relative")
        mask_file = (txt.parent / parts[0]).resolve()
        if not mask_file.is_relative_to(root):
            raise SubmissionError(f"{txt}:{lineno}: mask {parts[0]} points outside {root}")
        try:
            info[mask_file] = (int(float(parts[1])), float(parts[2]))
        except ValueError as e:
            raise SubmissionError(f"{txt}:{lineno}: label and confidence must be numbers") from e
    preds = []
    for mask_file, (label, conf) in info.items():
        if not mask_file.is_file():
            raise SubmissionError(f"{txt}: mask file {mask_file} is missing")
        mask = read_ids(mask_file)
        if n_vertices is not None and len(mask) != n_vertices:
            raise SubmissionError(f"{mask_file}: {len(mask)} lines, the scene has {n_vertices} vertices")
        preds.append(InstancePrediction(mask != 0, label, conf))
    return preds


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, ap_matrix: bool = False) -> dict:
    """Evaluate ``pred_dir/{semantic,instance}/<scene>.txt`` against ``gt_dir/{semantic,instance}``."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    scenes = []
    inst_dir, sem_dir = pred_dir / "instance", pred_dir / "semantic"
    names = sorted({p.stem for d in (inst_dir, sem_dir) if d.is_dir() for p in d.glob("*.txt")})
    if not names:
        raise FileNotFoundError(f"{pred_dir}: no semantic/<scene>.txt or instance/<scene>.txt files")
    for name in names:
        gt_i, preds, gt_s, pred_s = None, None, None, None
        if (inst_dir / f"{name}.txt").is_file():
            gt_file = gt_dir / "instance" / f"{name}.txt"
            if not gt_file.is_file():
                raise FileNotFoundError(f"{inst_dir / name}.txt has no ground truth {gt_file}")
            gt_i = read_ids(gt_file)
            preds = read_instance_predictions(inst_dir / f"{name}.txt", inst_dir, len(gt_i))
        if (sem_dir / f"{name}.txt").is_file():
            gt_file = gt_dir / "semantic" / f"{name}.txt"
            if not gt_file.is_file():
                raise FileNotFoundError(f"{sem_dir / name}.txt has no ground truth {gt_file}")
            gt_s, pred_s = read_ids(gt_file), read_ids(sem_dir / f"{name}.txt")
            if len(gt_s) != len(pred_s):
                raise SubmissionError(f"{sem_dir / name}.txt: {len(pred_s)} lines, the scene has {len(gt_s)}")
        scenes.append((gt_i, preds, gt_s, pred_s))
    return evaluate_scenes(scenes, ap_matrix)


def _clean(obj):
    """NaN -> None so the JSON is valid; values stay fractions in [0, 1]."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(metrics: dict, path: str | Path) -> None:
    write_text_atomic(path, json.dumps(_clean(metrics), indent=2) + "\n")


def format_metrics(metrics: dict) -> str:
    lines = []
    if "instance" in metrics:
        m = metrics["instance"]
        lines.append(f"{'class':<16}{'AP':>8}{'AP50':>8}{'AP25':>8}")
        for name, v in m["per_class"].items():
            lines.append(f"{name:<16}{v['ap']:>8.3f}{v['ap50']:>8.3f}{v['ap25']:>8.3f}")
        lines.append(f"{'average':<16}{m['mAP']:>8.3f}{m['AP50']:>8.3f}{m['AP25']:>8.3f}")
    if "semantic" in metrics:
        lines.append(f"mIoU {metrics['semantic']['mIoU']:.3f}  " + "  ".join(
            f"{k}={v:.2f}" for k, v in metrics["semantic"]["per_class"].items()))
    return "\n".join(lines)
