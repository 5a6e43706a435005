"""Ground truth in the official ScanNet evaluation format.

``GT/semantic/<scene>.txt``: one NYU40 id per vertex (0 unannotated), as
``export_train_mesh_for_evaluation.py --type label`` writes it.
``GT/instance/<scene>.txt``: ``nyu40 * 1000 + objectId + 1`` per vertex (0 elsewhere), the
ids that ``evaluate_semantic_instance.py`` reads as ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import write_ids
from .labels import read_label_table
from .prepare import BatchReport, list_scenes, run_batch
from .reader import SceneError, label_vertices, read_scene, unknown_category_warning


def gt_ids(nyu40: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic and instance ground-truth ids from per-vertex NYU40 label and objectId + 1."""
    return nyu40, nyu40 * 1000 + instance


def export_gt_scene(scene_dir: Path, out_dir: Path, label_map: dict[str, int],
                    unknown: str = "error") -> tuple[int, str | None]:
    """Write one scene's ground-truth files; returns its vertex count and a warning line or None."""
    raw = read_scene(scene_dir)
    if not raw.annotated:
        raise SceneError(raw.scene, f"{raw.scene}.aggregation.json", "scene has no annotations to export")
    labels = label_vertices(raw, label_map, unknown)
    semantic, instance = gt_ids(labels.nyu40, labels.instance)
    write_ids(out_dir / "semantic" / f"{raw.scene}.txt", semantic)
    write_ids(out_dir / "instance" / f"{raw.scene}.txt", instance)
    return len(semantic), unknown_category_warning(raw.scene, labels.unknown, unknown)


def export_gt_all(
    scans_dir: str | Path,
    out_dir: str | Path,
    label_table: str | Path,
    workers: int = 1,
    scenes: list[str] | None = None,
    overwrite: bool = False,
    unknown: str = "error",
) -> BatchReport:
    """Export ground truth for every annotated scene; resumable, never stops on a bad scene.

    ``unknown`` is the policy for raw categories the table does not list: ``error`` (default),
    ``otherprop`` or ``ignore`` (both ignored by the benchmark; see ``label_vertices``).
    """
    scans_dir, out_dir = Path(scans_dir), Path(out_dir)
    label_map = read_label_table(label_table)
    report = BatchReport()
    jobs = []
    for d in list_scenes(scans_dir, scenes):
        done = all((out_dir / k / f"{d.name}.txt").is_file() for k in ("semantic", "instance"))
        if done and not overwrite:
            report.skipped.append(d.name)
        else:
            jobs.append((d, (out_dir, label_map, unknown)))
    return run_batch(export_gt_scene, jobs, workers, "export-gt", report)
