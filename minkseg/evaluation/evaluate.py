"""``minkseg evaluate``: benchmark metrics from a checkpoint or from benchmark-format files.

Both paths end in the same functions of :mod:`minkseg.evaluation.metrics`, so a checkpoint's numbers
and the numbers of the submission files it writes are the same.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minkseg.evaluation.metrics import (
    InstancePrediction,
    SceneMatches,
    instance_ap,
    match_scene,
    semantic_confusion,
    summarize_instance,
    summarize_semantic,
)
from scannet_tools.io import read_ids, read_mask, write_text_atomic
from scannet_tools.labels import INSTANCE_NYU40_IDS


def evaluate_scenes(scenes: Iterable[tuple[np.ndarray | None, list[InstancePrediction] | None,
                                           np.ndarray | None, np.ndarray | None]],
                    ap_matrix: bool = False) -> dict:
    """Metrics over scenes given as (instance gt ids, instance predictions, semantic gt, semantic pred).

    Either half may be None for a scene (e.g. an instance-only submission). With
    ``ap_matrix`` the (class x overlap) AP array is returned under ``"ap"`` too.
    """
    matches, confusions = [], []
    for gt_ids, preds, sem_gt, sem_pred in scenes:
        if gt_ids is not None and preds is not None:
            matches.append(match_scene(gt_ids, preds))
        if sem_gt is not None and sem_pred is not None:
            confusions.append(semantic_confusion(sem_gt, sem_pred))
    return summarize_matches(matches, confusions, ap_matrix)


def summarize_matches(matches: list[SceneMatches], confusions: list[np.ndarray], ap_matrix: bool = False) -> dict:
    """Instance AP and semantic IoU from per-scene matches and confusion matrices."""
    out = {}
    if matches:
        ap = instance_ap(matches)
        out["instance"] = summarize_instance(ap)
        if ap_matrix:
            out["ap"] = ap
    if confusions:
        out["semantic"] = summarize_semantic(sum(confusions))
    return out


class SubmissionError(ValueError):
    """A prediction file that the official evaluation would reject."""


def read_instance_predictions(txt: Path, root: Path, n_vertices: int | None = None) -> list[InstancePrediction]:
    """Read ``<scene>.txt`` of an instance submission as the official script does.

    Lines are ``relative/mask.txt label_id confidence`` (label read as ``int(float(.))``); a
    mask path repeated in the file keeps its first position and its last label and
    confidence (the script stores them in a dict by path). Masks are integers per vertex,
    nonzero = member, read only for labels of the 18 instance classes (the script skips the
    others before reading their mask).
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
        if label not in INSTANCE_NYU40_IDS:
            continue
        if not mask_file.is_file():
            raise SubmissionError(f"{txt}: mask file {mask_file} is missing")
        mask = read_mask(mask_file)
        if n_vertices is not None and len(mask) != n_vertices:
            raise SubmissionError(f"{mask_file}: {len(mask)} lines, the scene has {n_vertices} vertices")
        preds.append(InstancePrediction(mask, label, conf))
    return preds


def _scene_names(d: Path) -> set[str]:
    return {p.stem for p in d.glob("*.txt")}  # nothing when d does not exist


def _read_scene(name: str, pred_dir: Path, gt_dir: Path, parts: tuple[bool, bool]) -> tuple:
    """One scene's (instance gt, instance predictions, semantic gt, semantic prediction); None for absent parts."""
    inst_dir, sem_dir = pred_dir / "instance", pred_dir / "semantic"
    gt_i, preds, gt_s, pred_s = None, None, None, None
    if parts[0]:
        gt_file = gt_dir / "instance" / f"{name}.txt"
        if not gt_file.is_file():
            raise FileNotFoundError(f"{inst_dir / name}.txt has no ground truth {gt_file}")
        gt_i = read_ids(gt_file)
        preds = read_instance_predictions(inst_dir / f"{name}.txt", inst_dir, len(gt_i))
    if parts[1]:
        gt_file = gt_dir / "semantic" / f"{name}.txt"
        if not gt_file.is_file():
            raise FileNotFoundError(f"{sem_dir / name}.txt has no ground truth {gt_file}")
        gt_s, pred_s = read_ids(gt_file), read_ids(sem_dir / f"{name}.txt")
        if len(gt_s) != len(pred_s):
            raise SubmissionError(f"{sem_dir / name}.txt: {len(pred_s)} lines, the scene has {len(gt_s)}")
    return gt_i, preds, gt_s, pred_s


def _score_scene(name: str, pred_dir: Path, gt_dir: Path, parts: tuple[bool, bool]) -> tuple:
    """(SceneMatches or None, semantic confusion or None) of one scene, matched right after reading
    so that its masks are freed before the next scene is read."""
    gt_i, preds, gt_s, pred_s = _read_scene(name, pred_dir, gt_dir, parts)
    return (None if gt_i is None else match_scene(gt_i, preds),
            None if gt_s is None else semantic_confusion(gt_s, pred_s))


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, ap_matrix: bool = False, workers: int = 1) -> dict:
    """Evaluate ``pred_dir/{semantic,instance}/<scene>.txt`` against ``gt_dir/{semantic,instance}``.

    A part (instance, semantic) is evaluated when the predictions have files for it. Ground-truth
    scenes of an evaluated part that the predictions lack are listed under ``"missing_scenes"``
    (part -> sorted names; the key only when some are missing): the official scripts skip them
    silently, so the scores then cover only the predicted scenes. With ``workers`` > 1 scenes
    are read and matched in that many forked processes (Linux; not after torch is loaded, whose
    thread pools make forking unsafe). On 2 shared CPU cores this did not pay (20 scenes: 1.4-2.3 s
    either way), so the default reads in this process.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    inst_names, sem_names = _scene_names(pred_dir / "instance"), _scene_names(pred_dir / "semantic")
    names = sorted(inst_names | sem_names)
    if not names:
        raise FileNotFoundError(f"{pred_dir}: no semantic/<scene>.txt or instance/<scene>.txt files")
    missing = {}
    for part, predicted in (("instance", inst_names), ("semantic", sem_names)):
        lacking = sorted(_scene_names(gt_dir / part) - predicted) if predicted else []
        if lacking:
            missing[part] = lacking
    jobs = [(name, pred_dir, gt_dir, (name in inst_names, name in sem_names)) for name in names]
    if workers > 1 and hasattr(os, "fork") and "torch" not in sys.modules:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # fork: the workers start with numpy and this module already imported
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            scored = list(pool.map(_score_scene, *zip(*jobs), chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        scored = [_score_scene(*job) for job in jobs]
    out = summarize_matches([m for m, _ in scored if m is not None], [c for _, c in scored if c is not None], ap_matrix)
    if missing:
        out["missing_scenes"] = missing
    return out


def missing_scenes_line(metrics: dict, shown: int = 3) -> str | None:
    """One warning line for ground-truth scenes without predictions, or None when there are none."""
    parts = []
    for part, names in metrics.get("missing_scenes", {}).items():
        if names:
            more = ", ..." if len(names) > shown else ""
            parts.append(f"{len(names)} {part} ({', '.join(names[:shown])}{more})")
    if not parts:
        return None
    return (f"warning: ground-truth scenes without predictions: {'; '.join(parts)}; like the official scripts, "
            "the scores cover only the predicted scenes")


def _clean(obj):
    """NaN -> None so the JSON is valid; values stay fractions in [0, 1]."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
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
