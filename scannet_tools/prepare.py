"""Raw ScanNet scenes -> one compact ``.npz`` per scene (the "prepared arrays" stage).

A prepared scene holds, per mesh vertex and in ``_vh_clean_2.ply`` order:

==============  =========  ==========================================================
key             dtype      meaning
==============  =========  ==========================================================
``xyz``         float32    coordinates (axis-aligned if prepared with ``--align``)
``rgb``         uint8      colour
``normals``     float32    area-weighted vertex normals from the mesh faces
``semantic``    int16      benchmark train id 0..19, ``IGNORE_ID`` (-100) elsewhere
``instance``    int32      ScanNet instance id (objectId + 1) for the 18 instance
                           classes, -1 elsewhere
``superpoint``  int32      contiguous superpoint id from segIndices, -1 if none
``nyu40``       uint8      raw NYU40 label (0 unannotated) as in the official export
==============  =========  ==========================================================

plus ``scene`` and ``axis_alignment``. Scenes without annotations (test scans) get
``semantic`` = IGNORE_ID and ``instance`` = -1 everywhere.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .io import atomic_path
from .labels import read_label_table
from .reader import SceneError, label_vertices, read_scene, training_labels, unknown_category_warning

PREPARED_SUFFIX = ".npz"


def prepared_path(prepared_dir: str | Path, scene: str) -> Path:
    """The prepared file of ``scene`` in ``prepared_dir``."""
    return Path(prepared_dir) / f"{scene}{PREPARED_SUFFIX}"


def vertex_normals(xyz: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals; vertices in no face get (0, 0, 1)."""
    normals = np.zeros_like(xyz, dtype=np.float64)
    if len(faces):
        v = xyz.astype(np.float64)
        face_n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
        idx = faces.reshape(-1)
        for d in range(3):  # bincount is the fast scatter-add in numpy
            normals[:, d] = np.bincount(idx, weights=np.repeat(face_n[:, d], 3), minlength=len(xyz))
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    # divide by the length itself (1 where it is 0): a clamp such as max(length, 1e-12) would leave the
    # normals of sub-micrometre triangles shorter than 1
    out = np.where(length > 0, normals / np.where(length > 0, length, 1.0), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)


def apply_alignment(xyz: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points."""
    return (xyz.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)


def prepare_scene(scene_dir: Path, out_file: Path, label_map: dict[str, int] | None, align: bool = False,
                  unknown: str = "error") -> tuple[int, str | None]:
    """Prepare one raw scene into ``out_file``; returns its vertex count and a warning line or None.

    ``label_map=None`` prepares without labels (every vertex ignored, as for a test scan):
    what prediction needs, readable for any scan with a mesh. ``unknown`` is the policy for
    raw categories missing from the table (see :func:`~scannet_tools.reader.label_vertices`).
    """
    raw = read_scene(scene_dir, annotations=label_map is not None)
    labels = label_vertices(raw, label_map or {}, unknown)
    semantic, inst = training_labels(labels.nyu40, labels.instance)
    nyu40 = labels.nyu40
    if raw.seg_indices is not None:
        superpoint = np.unique(raw.seg_indices, return_inverse=True)[1].astype(np.int32)
    else:
        superpoint = np.full(len(raw.xyz), -1, np.int32)
    normals = vertex_normals(raw.xyz, raw.faces)
    xyz = raw.xyz
    if align:
        xyz = apply_alignment(xyz, raw.axis_alignment)
        normals = (normals @ raw.axis_alignment[:3, :3].T).astype(np.float32)
    with atomic_path(out_file) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(
                f, scene=raw.scene, xyz=xyz, rgb=raw.rgb, normals=normals, semantic=semantic,
                instance=inst, superpoint=superpoint, nyu40=np.clip(nyu40, 0, 255).astype(np.uint8),
                axis_alignment=raw.axis_alignment,
            )
    return len(xyz), unknown_category_warning(raw.scene, labels.unknown, unknown)


def load_prepared(path: str | Path) -> dict[str, np.ndarray]:
    """Load a prepared scene into a plain dict of arrays."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["scene"] = str(out["scene"])
    return out


def list_scenes(scans_dir: Path, only: list[str] | None = None) -> list[Path]:
    """Scene folders under ``scans/`` (optionally restricted to ``only``), sorted."""
    if not scans_dir.is_dir():
        raise FileNotFoundError(f"{scans_dir}: scans folder does not exist")
    dirs = sorted(p for p in scans_dir.iterdir() if p.is_dir() and p.name.startswith("scene"))
    if only is not None:
        wanted = set(only)
        dirs = [d for d in dirs if d.name in wanted]
    return dirs


@dataclass
class BatchReport:
    """What a batch command did: done / skipped / failed with one-line reasons."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)  # scene -> one line (unknown categories mapped)
    vertices: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self, verb: str = "prepared") -> str:
        lines = [f"{verb} {len(self.done)}, skipped {len(self.skipped)} (already done), failed {len(self.failed)}"]
        lines += [f"  FAILED {msg}" for msg in self.failed.values()]
        lines += [f"  warning: {msg}" for msg in self.warnings.values()]
        return "\n".join(lines)


def _guarded(job: tuple) -> tuple[str, int, str | None, str | None]:
    """Run ``fn(scene_dir, *args)`` -> (vertices, warning); a failure becomes a one-line reason
    instead of an exception. Returns (scene, vertices, error, warning)."""
    fn, scene_dir, args = job
    try:
        n, warning = fn(scene_dir, *args)
        return scene_dir.name, n, None, warning
    except SceneError as e:
        return scene_dir.name, 0, str(e), None
    except Exception as e:  # one broken scene must never stop the others
        return scene_dir.name, 0, f"{scene_dir.name}: unexpected {type(e).__name__}: {e}", None


def run_batch(fn, jobs: list[tuple[Path, tuple]], workers: int, desc: str, report: BatchReport) -> BatchReport:
    """``fn(scene_dir, *args) -> (vertices, warning or None)`` for each job (in a process pool when
    workers > 1), with a progress bar."""
    tasks = [(fn, d, args) for d, args in jobs]
    workers = max(1, min(workers, os.cpu_count() or 1))
    bar = tqdm(total=len(tasks), desc=desc, unit="scene", dynamic_ncols=True, disable=None)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_guarded, tasks):
                _collect(result, report, bar)
    else:
        for t in tasks:
            _collect(_guarded(t), report, bar)
    bar.close()
    return report


def _collect(result: tuple[str, int, str | None, str | None], report: BatchReport, bar: tqdm) -> None:
    scene, n, err, warning = result
    if err is None:
        report.done.append(scene)
        report.vertices += n
        if warning is not None:
            report.warnings[scene] = warning
    else:
        report.failed[scene] = err
        tqdm.write(f"error: {err}")
    bar.update(1)


def prepare_all(
    scans_dir: str | Path,
    out_dir: str | Path,
    label_table: str | Path | None,
    workers: int = 1,
    align: bool = False,
    scenes: list[str] | None = None,
    overwrite: bool = False,
    unknown: str = "error",
) -> BatchReport:
    """Prepare every scene of ``scans_dir`` into ``out_dir``; resumable, never stops on a bad scene.

    ``label_table=None`` prepares without labels (for prediction); ``unknown`` is the policy for
    raw categories the table does not list: ``error`` (default), ``otherprop`` or ``ignore``.
    """
    scans_dir, out_dir = Path(scans_dir), Path(out_dir)
    label_map = read_label_table(label_table) if label_table is not None else None
    report = BatchReport()
    jobs = []
    for d in list_scenes(scans_dir, scenes):
        out_file = prepared_path(out_dir, d.name)
        if out_file.is_file() and not overwrite:
            report.skipped.append(d.name)
            continue
        jobs.append((d, (out_file, label_map, align, unknown)))
    out_dir.mkdir(parents=True, exist_ok=True)
    return run_batch(prepare_scene, jobs, workers, "prepare", report)
