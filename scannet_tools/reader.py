"""Read one raw ScanNet v2 scene (``scans/sceneXXXX_YY/``) and derive its per-vertex labels.

Every problem is raised as :class:`SceneError` naming the scene, the file and what is wrong,
so that batch commands can report it on one line and carry on with the other scenes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from plyfile import PlyData

from .labels import FIRST_INSTANCE_TRAIN_ID, OTHERPROP_NYU40, UNKNOWN_CATEGORY_POLICIES, nyu40_to_train_id


class SceneError(Exception):
    """A raw scene that cannot be read; ``str()`` is one line naming scene, file and problem."""

    def __init__(self, scene: str, file: str | Path, problem: str):
        self.scene, self.file, self.problem = scene, Path(file).name, problem
        super().__init__(f"{scene}: {self.file}: {problem}")


@dataclass
class ScenePaths:
    """The files of one raw scene, named as in a ScanNet v2 download."""

    scene_dir: Path

    @property
    def scene(self) -> str:
        return self.scene_dir.name

    def _f(self, suffix: str) -> Path:
        return self.scene_dir / f"{self.scene}{suffix}"

    @property
    def mesh(self) -> Path:
        return self._f("_vh_clean_2.ply")

    @property
    def labels_mesh(self) -> Path:
        return self._f("_vh_clean_2.labels.ply")

    @property
    def segs(self) -> Path:
        return self._f("_vh_clean_2.0.010000.segs.json")

    @property
    def aggregation(self) -> Path:
        return self._f(".aggregation.json")

    @property
    def meta(self) -> Path:
        return self._f(".txt")


@dataclass
class RawScene:
    """A raw scene as stored: mesh, over-segmentation, aggregation and alignment."""

    scene: str
    xyz: np.ndarray  # (N, 3) float32, scan coordinates
    rgb: np.ndarray  # (N, 3) uint8
    faces: np.ndarray  # (F, 3) int64
    seg_indices: np.ndarray | None = None  # (N,) int64 superpoint id per vertex
    seg_groups: list[dict] = field(default_factory=list)  # aggregation segGroups
    axis_alignment: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4)

    @property
    def annotated(self) -> bool:
        return self.seg_indices is not None and bool(self.seg_groups)


def mesh_vertex_count(path: Path, scene: str) -> int:
    """Vertex count from a PLY header alone (cheap check of labels.ply, submission line counts)."""
    if not path.is_file():
        raise SceneError(scene, path, "file is missing")
    with open(path, "rb") as f:
        for _ in range(64):
            line = f.readline()
            if not line:
                break
            if line.startswith(b"element vertex"):
                return int(line.split()[2])
            if line.strip() == b"end_header":
                break
    raise SceneError(scene, path, "PLY header has no vertex element")


def read_mesh(path: Path, scene: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (float32), colours (uint8) and triangle faces (int64) of a ScanNet mesh PLY."""
    if not path.is_file():
        raise SceneError(scene, path, "file is missing")
    try:
        with open(path, "rb") as f:
            try:
                # known_list_len lets plyfile memory-map the triangle lists as one (F, 3)
                # array instead of building a Python object per face.
                ply = PlyData.read(f, known_list_len={"face": {"vertex_indices": 3}})
            except Exception:
                f.seek(0)  # not all faces are triangles, or no vertex_indices: generic path
                ply = PlyData.read(f, mmap=False)
            v = ply["vertex"].data
            # numpy reports a missing field as ValueError; name it like a missing element
            missing = [p for p in ("x", "y", "z", "red", "green", "blue") if p not in (v.dtype.names or ())]
            if missing:
                raise KeyError(missing[0])
            xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
            rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
            faces = np.zeros((0, 3), np.int64)
            if "face" in ply and len(ply["face"].data):
                face = ply["face"]
                name = "vertex_indices" if "vertex_indices" in face.data.dtype.names else face.properties[0].name
                fi = face.data[name]
                if fi.dtype == object:
                    if any(len(t) != 3 for t in fi):
                        raise SceneError(scene, path, "mesh has faces that are not triangles")
                    fi = np.stack(fi)
                faces = np.array(fi, dtype=np.int64).reshape(-1, 3)
    except SceneError:
        raise
    except KeyError as e:
        raise SceneError(scene, path, f"PLY lacks element or property {e}") from e
    except Exception as e:  # plyfile raises several types for truncated / corrupt files
        raise SceneError(scene, path, f"cannot parse PLY ({type(e).__name__}: {e})") from e
    if len(xyz) == 0:
        raise SceneError(scene, path, "mesh has no vertices")
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz).all(axis=1)).sum())
        raise SceneError(scene, path, f"{bad} vertices have NaN or infinite coordinates")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(xyz)):
        raise SceneError(scene, path, "faces index vertices that do not exist")
    return xyz, rgb, faces


def scene_vertex_counts(scans_dir: str | Path, scenes: list[str]) -> dict[str, int]:
    """Mesh vertex count of each scene, from the PLY headers (what submission files must match)."""
    return {s: mesh_vertex_count(ScenePaths(Path(scans_dir) / s).mesh, s) for s in scenes}


def _read_json(path: Path, scene: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SceneError(scene, path, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(scene, path, f"cannot read ({e})") from e
    if not isinstance(data, dict):
        raise SceneError(scene, path, "JSON top level is not an object")
    return data


def read_axis_alignment(path: Path, scene: str) -> np.ndarray:
    """The 4x4 ``axisAlignment`` matrix from the scene's ``.txt`` (identity if absent)."""
    if not path.is_file():
        return np.eye(4)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("axisAlignment"):
            try:
                values = [float(x) for x in line.split("=", 1)[1].split()]
            except ValueError as e:
                raise SceneError(scene, path, "axisAlignment holds non-numbers") from e
            if len(values) != 16:
                raise SceneError(scene, path, f"axisAlignment has {len(values)} values, expected 16")
            return np.asarray(values, dtype=np.float64).reshape(4, 4)
    return np.eye(4)


def _dedupe_repeated_groups(groups: list[dict]) -> list[dict]:
    """Some real aggregations (scene0217_00) list their segGroups twice; keep one copy."""
    n = len(groups)
    if n % 2 == 0 and n > 0 and groups[: n // 2] == groups[n // 2 :]:
        return groups[: n // 2]
    return groups


def read_scene(scene_dir: str | Path, annotations: bool = True) -> RawScene:
    """Read a raw ScanNet scene; annotations are optional (test scans have none).

    With ``annotations=False`` only the mesh, the alignment and the superpoints (when the
    segs file is there) are read: the aggregation and ``labels.ply`` are not opened, so a
    scan whose annotation uses any category, or has none, reads as long as its mesh does.
    """
    paths = ScenePaths(Path(scene_dir))
    scene = paths.scene
    xyz, rgb, faces = read_mesh(paths.mesh, scene)
    n = len(xyz)
    raw = RawScene(scene, xyz, rgb, faces, axis_alignment=read_axis_alignment(paths.meta, scene))
    if not annotations:
        if paths.segs.is_file():
            raw.seg_indices = _read_seg_indices(paths.segs, scene, n)
        return raw

    has_segs, has_agg = paths.segs.is_file(), paths.aggregation.is_file()
    if has_segs != has_agg:
        missing = paths.aggregation if has_segs else paths.segs
        raise SceneError(scene, missing, "file is missing (the scene has the other annotation file)")
    if paths.labels_mesh.is_file():
        m = mesh_vertex_count(paths.labels_mesh, scene)
        if m != n:
            raise SceneError(scene, paths.labels_mesh, f"has {m} vertices, the mesh has {n}")
    if not has_segs:
        return raw

    seg_indices = _read_seg_indices(paths.segs, scene, n)
    agg = _read_json(paths.aggregation, scene)
    groups = agg.get("segGroups")
    if not isinstance(groups, list):
        raise SceneError(scene, paths.aggregation, "no segGroups list")
    known = np.unique(seg_indices)
    for g in groups:
        if not isinstance(g, dict) or not {"objectId", "label", "segments"} <= g.keys():
            raise SceneError(scene, paths.aggregation, "a segGroup lacks objectId, label or segments")
        # label_vertices takes objectId as an int and segments as a list of segment ids
        if not isinstance(g["objectId"], int) or not isinstance(g["segments"], list):
            raise SceneError(scene, paths.aggregation, f"segGroup objectId {g['objectId']!r} ({g['label']}): objectId "
                             "is not an integer or segments is not a list")
        try:
            seg = np.asarray(g["segments"], dtype=np.int64)
            if seg.ndim != 1:
                raise ValueError("nested lists")
        except (TypeError, ValueError, OverflowError) as e:
            raise SceneError(scene, paths.aggregation, f"segGroup objectId {g['objectId']} ({g['label']}) has segment "
                             f"ids that are not integers: {g['segments'][:5]}") from e
        absent = seg[~np.isin(seg, known)]
        if absent.size:
            raise SceneError(
                scene, paths.aggregation,
                f"segGroup objectId {g['objectId']} ({g['label']}) names segment ids absent from "
                f"{paths.segs.name}: {absent[:5].tolist()}",
            )
    raw.seg_indices = seg_indices
    raw.seg_groups = _dedupe_repeated_groups(groups)
    return raw


def _read_seg_indices(path: Path, scene: str, n: int) -> np.ndarray:
    """The per-vertex superpoint ids of a ``segs.json``, checked against the vertex count."""
    segs = _read_json(path, scene)
    if not isinstance(segs.get("segIndices"), list):
        raise SceneError(scene, path, "no segIndices list")
    try:
        seg_indices = np.asarray(segs["segIndices"], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise SceneError(scene, path, "segIndices holds non-integers") from e
    if seg_indices.ndim != 1 or len(seg_indices) != n:
        raise SceneError(scene, path, f"has {seg_indices.size} segIndices, the mesh has {n} vertices")
    return seg_indices


@dataclass
class VertexLabels:
    """Per-vertex labels of an annotated scene and what was done about unknown categories."""

    nyu40: np.ndarray  # (N,) int64 NYU40 id, 0 unannotated
    instance: np.ndarray  # (N,) int64 objectId + 1, 0 unannotated
    unknown: dict[str, int] = field(default_factory=dict)  # raw category not in the table -> vertices it labelled


def label_vertices(raw: RawScene, label_map: dict[str, int], unknown: str = "error") -> VertexLabels:
    """Per-vertex NYU40 label and instance id (objectId + 1), 0 where unannotated.

    Reproduces ScanNet's ``export_train_mesh_for_evaluation.py`` (run under Python 3)
    exactly, including its corner cases: semantic labels are painted label by label in the
    order each raw category first appears; instance ids are painted object by object in
    the order each objectId first appears, an objectId listed twice keeps only its last
    segment list, and the first object of each raw category also holds the segments of
    the later objects of that category (the script extends that list in place) before they
    repaint their own. The bookkeeping runs on the few dozen segment lists; the painting
    is array indexing.

    A raw category missing from the label table (``stick`` after the 2018 table update,
    old spellings such as ``trashcan``) follows ``unknown``: ``"error"`` raises
    :class:`SceneError`; ``"otherprop"`` labels it NYU40 40 (otherprop, outside the
    benchmark, so ignored by training and evaluation) and keeps its instances;
    ``"ignore"`` leaves its vertices unannotated (0) with no instance. The vertices each
    unknown category ends up labelling are counted in ``VertexLabels.unknown``.
    """
    if unknown not in UNKNOWN_CATEGORY_POLICIES:
        raise ValueError(f"unknown-category policy {unknown!r}: expected one of {', '.join(UNKNOWN_CATEGORY_POLICIES)}")
    n = len(raw.xyz)
    nyu40 = np.zeros(n, dtype=np.int64)
    instance = np.zeros(n, dtype=np.int64)
    if not raw.annotated:
        return VertexLabels(nyu40, instance)
    object_segs: dict[int, list] = {}
    label_segs: dict[str, list] = {}
    for g in raw.seg_groups:
        label, segs = g["label"], list(g["segments"])  # a private list, aliased below as in the script
        if label not in label_map and unknown == "error":
            raise SceneError(raw.scene, f"{raw.scene}.aggregation.json",
                             f"unknown raw category {label!r} (not in the label table; "
                             "--unknown-category otherprop or ignore maps such categories to ignored labels)")
        if label in label_map or unknown == "otherprop":  # "ignore": its objects vanish with its label
            object_segs[int(g["objectId"]) + 1] = segs
        if label in label_segs:
            label_segs[label].extend(segs)
        else:
            label_segs[label] = segs
    unknown_value = OTHERPROP_NYU40 if unknown == "otherprop" else 0
    # Segment id -> position among the sorted unique ids, so painting is array indexing.
    uniq, seg_pos = np.unique(raw.seg_indices, return_inverse=True)
    seg_label = np.zeros(len(uniq), dtype=np.int64)
    seg_painter = np.full(len(uniq), -1, dtype=np.int64)  # which label_segs entry painted it last
    seg_instance = np.zeros(len(uniq), dtype=np.int64)
    for k, (label, segs) in enumerate(label_segs.items()):
        where = np.searchsorted(uniq, np.asarray(segs, dtype=np.int64))
        seg_label[where] = label_map.get(label, unknown_value)
        seg_painter[where] = k
    for object_id, segs in object_segs.items():
        seg_instance[np.searchsorted(uniq, np.asarray(segs, dtype=np.int64))] = object_id
    nyu40[:] = seg_label[seg_pos]
    instance[:] = seg_instance[seg_pos]
    painted = np.bincount(seg_painter[seg_pos] + 1, minlength=len(label_segs) + 1)[1:]
    counts = {label: int(painted[k]) for k, label in enumerate(label_segs) if label not in label_map}
    return VertexLabels(nyu40, instance, counts)


def vertex_labels(raw: RawScene, label_map: dict[str, int], unknown: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex NYU40 label and instance id: :func:`label_vertices` without the unknown-category counts."""
    labels = label_vertices(raw, label_map, unknown)
    return labels.nyu40, labels.instance


def unknown_category_warning(scene: str, counts: dict[str, int], unknown: str) -> str | None:
    """One line saying which unknown categories were mapped to what, with their vertex counts."""
    if not counts:
        return None
    target = "otherprop (NYU40 40, ignored)" if unknown == "otherprop" else "unannotated (ignored)"
    listed = ", ".join(f"{label!r} {v:,} vertices" for label, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"{scene}: {len(counts)} raw categor{'y' if len(counts) == 1 else 'ies'} not in the label table "
            f"labelled {target}: {listed}")


def training_labels(nyu40: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic train id (IGNORE_ID outside the 20 classes) and instance id for training.

    Instances of wall, floor and non-benchmark classes are dropped (instance -1), the rest
    keep their ScanNet instance id (objectId + 1).
    """
    semantic = nyu40_to_train_id(nyu40)
    inst = np.where((semantic >= FIRST_INSTANCE_TRAIN_ID) & (instance > 0), instance, -1).astype(np.int32)
    return semantic, inst
