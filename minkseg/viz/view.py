"""``minkseg view``: an interactive scene viewer in the browser, as a static bundle or served locally.

Why a hand-written WebGL 2 page rather than viser or pyviz3d: the bundle must open from disk
(``file://``) with no network. pyviz3d loads three.js from a CDN; viser's client is a Vite
build loaded with ``<script type="module">`` and its static export fetches a recording file,
both of which browsers block on ``file://`` (origin ``null``). The viewer here is one classic
script (``minkseg/viz/viewer/viewer.js``, no third-party code) and each scene is a classic
``<script src="scenes/<id>.js">`` holding base64 arrays, which ``file://`` allows; ``--serve``
hands the same bundle to Python's ``http.server``.

A scene is geometry (positions, normals, mesh faces when the raw mesh is at hand) plus
*layers*: a per-vertex index into a small palette with a name per entry (class, instance with
score and IoU, error kind), or quantised scalars with a colour bar. The page recolours the
mesh from a layer's palette and shows the hovered vertex's entry name, so the browser needs
no knowledge of what a layer means. Colours come from :mod:`minkseg.viz.colors`, the same as
the PNGs and PLYs.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from minkseg.inference.masks import paint_by_confidence
from minkseg.viz.colors import NONE_RGB, SEMANTIC_LUT, instance_palette, scalar_colors
from scannet_tools.io import write_text_atomic
from scannet_tools.labels import (
    IGNORE_ID,
    SEMANTIC_NAMES,
    SEMANTIC_NYU40_IDS,
    train_id_to_nyu40,
)

ASSETS = Path(__file__).resolve().parent / "viewer"
DEFAULT_MAX_VERTICES = 500_000
DEFAULT_MAX_SCENES = 10
#: IoU from which a predicted instance counts as matching its best ground-truth instance
#: (the benchmark's AP50 threshold), for the error layer.
MATCH_IOU = 0.5

_CLASS_NAME = dict(zip(SEMANTIC_NYU40_IDS, SEMANTIC_NAMES))
UNKNOWN_RGB = (30, 30, 30)  # pseudo labels: "instance unknown"

#: Error layer categories: (name, colour), index = category.
ERROR_CATEGORIES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("correct", (205, 205, 205)),
    ("wrong class", (220, 40, 40)),
    ("wrong instance", (255, 160, 0)),
    ("wrong class and instance", (140, 0, 200)),
    ("not evaluated (unannotated or outside the 20 classes)", (90, 90, 90)),
)


def class_name(nyu40: int) -> str:
    """Benchmark class name of an NYU40 id; 'unannotated' for 0, 'other (NYU40 k)' otherwise."""
    if nyu40 in _CLASS_NAME:
        return _CLASS_NAME[nyu40]
    return "unannotated" if nyu40 == 0 else f"other (NYU40 {nyu40})"


# ----------------------------------------------------------------------------- layer math


def compact_ids(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids (``< 0`` = none) to 0..K-1 in increasing id order, none to -1; returns (index, K)."""
    ids = np.asarray(ids, np.int64)
    has = ids >= 0
    uniq, inv = np.unique(ids[has], return_inverse=True)
    out = np.full(len(ids), -1, np.int64)
    out[has] = inv.reshape(-1)
    return out, len(uniq)


def best_match_iou(masks: list[np.ndarray], gt_instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each predicted mask, the ground-truth instance of highest IoU and that IoU.

    IoU(P, G) = |P ∩ G| / (|P| + |G| - |P ∩ G|) over vertices (the benchmark's overlap,
    ScanNet ``evaluate_semantic_instance.py``), against every ground-truth instance
    (``gt_instance``: 0..G-1 per vertex, -1 none), whatever its class. A mask touching no
    instance gets index -1 and IoU 0.
    """
    gt_instance = np.asarray(gt_instance, np.int64)
    n_gt = int(gt_instance.max(initial=-1)) + 1
    gt_count = np.bincount(gt_instance[gt_instance >= 0], minlength=n_gt).astype(np.float64)
    best = np.full(len(masks), -1, np.int64)
    iou = np.zeros(len(masks), np.float64)
    for k, mask in enumerate(masks):
        members = np.flatnonzero(np.asarray(mask))
        g = gt_instance[members]
        inter = np.bincount(g[g >= 0], minlength=n_gt).astype(np.float64)
        if n_gt == 0 or inter.max() == 0:
            continue
        ious = inter / (len(members) + gt_count - inter)
        best[k] = int(np.argmax(ious))
        iou[k] = float(ious[best[k]])
    return best, iou


def error_categories(gt_nyu40: np.ndarray, gt_instance: np.ndarray, pred_nyu40: np.ndarray | None,
                     pred_instance: np.ndarray | None, matched_gt: np.ndarray | None) -> np.ndarray:
    """(N,) uint8 index into :data:`ERROR_CATEGORIES` per vertex.

    A vertex of one of the 20 benchmark classes has a *wrong class* where the predicted
    NYU40 id differs, and a *wrong instance* where its ground-truth instance (``gt_instance``
    0..G-1, -1 none) is not what its predicted instance (``pred_instance`` 0..P-1, -1 none)
    matches (``matched_gt[p]``: ground-truth index at IoU >= :data:`MATCH_IOU`, else -1):
    a missed object, a false instance on stuff, or an instance matched to another object.
    Either prediction may be None (a semantic-only or instance-only submission).
    """
    gt_nyu40 = np.asarray(gt_nyu40, np.int64)
    evaluated = np.isin(gt_nyu40, SEMANTIC_NYU40_IDS)
    wrong_class = np.zeros(len(gt_nyu40), bool)
    if pred_nyu40 is not None:
        wrong_class = evaluated & (np.asarray(pred_nyu40, np.int64) != gt_nyu40)
    wrong_instance = np.zeros(len(gt_nyu40), bool)
    if pred_instance is not None:
        gt_instance = np.asarray(gt_instance, np.int64)
        pred_instance = np.asarray(pred_instance, np.int64)
        matched = np.append(np.asarray(matched_gt, np.int64), -1)  # index -1 (no prediction) matches nothing
        claimed = matched[pred_instance]
        missed_or_spurious = (gt_instance >= 0) != (pred_instance >= 0)
        wrong_instance = evaluated & (missed_or_spurious | ((gt_instance >= 0) & (claimed != gt_instance)))
    out = (wrong_class.astype(np.uint8) + 2 * wrong_instance.astype(np.uint8))
    out[~evaluated] = 4
    return out


def decimation(num_vertices: int, max_vertices: int, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a uniform random subset of ``max_vertices`` vertices, or None when all fit.

    Uniform in the vertex order's sense (every vertex equally likely), so dense and sparse
    regions keep their proportions; sorted so that the kept vertices keep their order.
    """
    if max_vertices <= 0 or num_vertices <= max_vertices:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_vertices, size=max_vertices, replace=False))


# ----------------------------------------------------------------------------- layers


@dataclass
class Layer:
    """One switchable colouring of a scene: ``palette[values]`` per vertex (or ``rgb`` directly)."""

    key: str  # unique within the scene; also the URL fragment's layer=...
    title: str
    group: str  # the panel section: input, ground truth, a run's label
    values: np.ndarray | None = None  # (N,) index into palette
    palette: np.ndarray | None = None  # (K, 3) uint8
    names: list[str] | None = None  # (K,) what each palette entry is; shown on hover
    legend: bool = False  # list the palette entries present in the panel
    colorbar: dict | None = None  # {"min", "max", "label"}: values are 256 bins between min and max
    rgb: np.ndarray | None = None  # (N, 3) uint8 for the input colours

    def colors(self) -> np.ndarray:
        """(N, 3) uint8 colour of every vertex, as the page draws it."""
        if self.rgb is not None:
            return np.asarray(self.rgb, np.uint8)
        return self.palette[self.values]

    def subset(self, keep: np.ndarray) -> Layer:
        if self.rgb is not None:
            return replace(self, rgb=self.rgb[keep])
        return replace(self, values=self.values[keep])


def rgb_layer(rgb: np.ndarray) -> Layer:
    return Layer("rgb", "input colours", "input", rgb=np.asarray(rgb, np.uint8))


def semantic_layer(key: str, title: str, group: str, nyu40: np.ndarray) -> Layer:
    """Classes by NYU40 id in the ScanNet benchmark colours (:data:`~minkseg.viz.colors.SEMANTIC_LUT`)."""
    nyu40 = np.asarray(nyu40, np.int64)
    ids, index = np.unique(np.clip(nyu40, 0, 255), return_inverse=True)
    return Layer(key, title, group, index.reshape(-1).astype(np.uint8), SEMANTIC_LUT[ids],
                 [class_name(int(i)) for i in ids], legend=True)


def instance_layer(key: str, title: str, group: str, vertex_instance: np.ndarray, names: list[str],
                   extra: tuple[tuple[str, tuple[int, int, int]], ...] = ()) -> Layer:
    """Instances 0..K-1 per vertex (-1 none, ``-2 - j`` for ``extra[j]``) in the instance palette
    of :mod:`~minkseg.viz.colors`, so instance k has the colour it has in the PLYs."""
    vertex_instance = np.asarray(vertex_instance, np.int64)
    first = 1 + len(extra)  # palette: none, extras, instances
    values = np.where(vertex_instance >= 0, vertex_instance + first, 0)
    for j in range(len(extra)):
        values[vertex_instance == -2 - j] = 1 + j
    palette = np.concatenate([np.asarray([NONE_RGB], np.uint8),
                              np.asarray([c for _, c in extra], np.uint8).reshape(-1, 3),
                              instance_palette(len(names))])
    dtype = np.uint16 if len(palette) <= 1 << 16 else np.uint32
    return Layer(key, title, group, values.astype(dtype), palette,
                 ["no instance", *[n for n, _ in extra], *names])


def scalar_layer(key: str, title: str, group: str, values: np.ndarray, label: str) -> Layer:
    """Scalars quantised into 256 viridis bins between their minimum and maximum, with a colour bar."""
    values = np.asarray(values, np.float64)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    bins = np.clip(np.round((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12) * 255), 0, 255)
    palette = scalar_colors(np.linspace(lo, hi, 256), lo, hi)
    return Layer(key, title, group, bins.astype(np.uint8), palette,
                 colorbar={"min": lo, "max": hi, "label": label})


def error_layer(key: str, group: str, categories: np.ndarray) -> Layer:
    return Layer(key, "errors", group, np.asarray(categories, np.uint8),
                 np.asarray([c for _, c in ERROR_CATEGORIES], np.uint8), [n for n, _ in ERROR_CATEGORIES],
                 legend=True)


@dataclass
class SceneGeometry:
    """What every layer of a scene is drawn on, and its ground truth where annotated."""

    scene: str
    xyz: np.ndarray  # (N, 3) float32
    rgb: np.ndarray  # (N, 3) uint8
    normals: np.ndarray | None = None  # (N, 3)
    faces: np.ndarray | None = None  # (F, 3) mesh triangles; None: drawn as points
    gt_nyu40: np.ndarray | None = None  # (N,) 0 unannotated; None: no ground truth at all
    gt_instance: np.ndarray | None = None  # (N,) 0..G-1, -1 none

    @classmethod
    def from_prepared(cls, scene: dict, faces: np.ndarray | None = None) -> SceneGeometry:
        nyu40 = np.asarray(scene["nyu40"], np.int64)
        annotated = bool((nyu40 != 0).any())
        gt_instance = compact_ids(np.asarray(scene["instance"], np.int64))[0] if annotated else None
        return cls(str(scene["scene"]), np.asarray(scene["xyz"], np.float32), np.asarray(scene["rgb"], np.uint8),
                   scene.get("normals"), faces, nyu40 if annotated else None, gt_instance)


def ground_truth_layers(geo: SceneGeometry) -> list[Layer]:
    if geo.gt_nyu40 is None:
        return []
    n_gt = int(geo.gt_instance.max(initial=-1)) + 1
    first = np.full(n_gt, -1, np.int64)  # a vertex of each instance, for its class
    members = np.flatnonzero(geo.gt_instance >= 0)
    first[geo.gt_instance[members[::-1]]] = members[::-1]
    sizes = np.bincount(geo.gt_instance[members], minlength=n_gt)
    names = [f"GT {class_name(int(geo.gt_nyu40[first[g]]))} #{g} · {sizes[g]} vertices" for g in range(n_gt)]
    return [semantic_layer("gt_semantic", "semantics", "ground truth", geo.gt_nyu40),
            instance_layer("gt_instance", "instances", "ground truth", geo.gt_instance, names)]


@dataclass
class PredictedInstances:
    masks: list[np.ndarray]
    labels: list[int]  # NYU40
    confidence: list[float]


def prediction_layers(group: str, geo: SceneGeometry, semantic_nyu40: np.ndarray | None,
                      instances: PredictedInstances | None, uncertainty: np.ndarray | None = None) -> list[Layer]:
    """A run's semantic, instance, error and (probabilistic head) sigma layers on one scene.

    Hovering an instance shows its class, confidence and IoU with the best-matching
    ground-truth instance (any class; :func:`best_match_iou`).
    """
    layers = []
    if semantic_nyu40 is not None:
        layers.append(semantic_layer(f"{group}/semantic", "semantics", group, semantic_nyu40))
    vertex_instance, matched = None, None
    if instances is not None:
        n = len(geo.xyz)
        vertex_instance = paint_by_confidence(n, instances.masks, instances.confidence)
        names = []
        if geo.gt_nyu40 is not None:
            best, iou = best_match_iou(instances.masks, geo.gt_instance)
            matched = np.where(iou >= MATCH_IOU, best, -1)
            gt_class = {}
            for g in np.unique(best[best >= 0]):
                gt_class[int(g)] = class_name(int(geo.gt_nyu40[np.flatnonzero(geo.gt_instance == g)[0]]))
        for k in range(len(instances.masks)):
            text = f"{class_name(int(instances.labels[k]))} #{k} · score {instances.confidence[k]:.2f}"
            if geo.gt_nyu40 is not None:
                text += (f" · IoU {iou[k]:.2f} with GT {gt_class[int(best[k])]} #{best[k]}" if best[k] >= 0
                         else " · no ground-truth overlap")
            names.append(text)
        layers.append(instance_layer(f"{group}/instances", "instances", group, vertex_instance, names))
    if geo.gt_nyu40 is not None and (semantic_nyu40 is not None or instances is not None):
        cats = error_categories(geo.gt_nyu40, geo.gt_instance, semantic_nyu40, vertex_instance, matched)
        layers.append(error_layer(f"{group}/errors", group, cats))
    if uncertainty is not None:
        layers.append(scalar_layer(f"{group}/sigma", "uncertainty (sigma)", group, uncertainty,
                                   "mean predicted sigma"))
    return layers


def pseudo_label_layers(group: str, labels: dict[str, np.ndarray]) -> list[Layer]:
    """A self-training round's pseudo labels (``minkseg.engine.pseudo_labels.PseudoLabels`` file):
    semantics (train id, ``IGNORE_ID`` ignored) and instances (kept k, -1 none, -2 unknown)."""
    semantic = np.asarray(labels["semantic"], np.int64)
    nyu40 = train_id_to_nyu40(semantic)
    sem = semantic_layer(f"{group}/pseudo_semantic", "pseudo semantics", group, nyu40)
    sem.names = ["ignored (no pseudo label)" if n == "unannotated" else n for n in sem.names]
    instance = np.asarray(labels["instance"], np.int64)
    classes = train_id_to_nyu40(np.asarray(labels["instance_class"], np.int64))
    certainty = np.asarray(labels["certainty"], np.float64)
    names = [f"kept {class_name(int(c))} #{k} · certainty {p:.2f}" for k, (c, p) in enumerate(zip(classes, certainty))]
    extra = (("unknown (an instance class no kept proposal covers)", UNKNOWN_RGB),)
    inst = instance_layer(f"{group}/pseudo_instances", "pseudo instances", group, instance, names, extra)
    inst.legend = False
    ignored = int((semantic == IGNORE_ID).sum())
    inst.title = f"pseudo instances ({len(names)} kept)"
    sem.title = f"pseudo semantics ({ignored / max(len(semantic), 1):.0%} ignored)"
    return [sem, inst]


def partition_layer(group: str, part: np.ndarray) -> Layer:
    index, count = compact_ids(part)
    return instance_layer(f"{group}/partition", f"pretraining partition ({count} parts)", group, index,
                          [f"part {k}" for k in range(count)])


# ----------------------------------------------------------------------------- scene bundle


@dataclass
class SceneView:
    geometry: SceneGeometry
    layers: list[Layer] = field(default_factory=list)
    total_vertices: int = 0  # before decimation
    note: str = ""  # shown on screen (decimation)

    def decimated(self, max_vertices: int) -> SceneView:
        """At most ``max_vertices`` vertices (a uniform subset, drawn as points), saying so in ``note``."""
        n = len(self.geometry.xyz)
        keep = decimation(n, max_vertices)
        if keep is None:
            return replace(self, total_vertices=n)
        g = self.geometry
        geo = SceneGeometry(g.scene, g.xyz[keep], g.rgb[keep], None if g.normals is None else g.normals[keep], None,
                            None if g.gt_nyu40 is None else g.gt_nyu40[keep],
                            None if g.gt_instance is None else g.gt_instance[keep])
        note = (f"decimated for display: {len(keep):,} of {n:,} vertices (uniform sample, drawn as points; "
                f"raise --max-vertices to see all)")
        return SceneView(geo, [layer.subset(keep) for layer in self.layers], n, note)


def _encode(array: np.ndarray, dtype: str) -> dict:
    """An array as gzip-compressed, base64 little-endian bytes (the page inflates it with DecompressionStream)."""
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    packed = gzip.compress(data.tobytes(), compresslevel=6, mtime=0)
    return {"dtype": np.dtype(dtype).name, "b64gz": base64.b64encode(packed).decode("ascii")}


def scene_payload(view: SceneView) -> dict:
    """JSON-ready scene: positions quantised to uint16 over the bounding box (under 0.1 mm steps for a
    5 m room, 1 mm for 65 m), normals to int8, layers as palette indices."""
    g = view.geometry
    lo = g.xyz.min(0).astype(np.float64) if len(g.xyz) else np.zeros(3)
    hi = g.xyz.max(0).astype(np.float64) if len(g.xyz) else np.ones(3)
    scale = np.maximum(hi - lo, 1e-9) / 65535.0
    q = np.round((g.xyz - lo) / scale).clip(0, 65535)
    out = {"scene": g.scene, "vertices": len(g.xyz), "total_vertices": view.total_vertices or len(g.xyz),
           "note": view.note, "origin": lo.tolist(), "scale": scale.tolist(),
           "positions": _encode(q, "uint16"), "layers": []}
    if g.normals is not None:
        n = np.asarray(g.normals, np.float64)
        n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        out["normals"] = _encode(np.round(n * 127), "int8")
    if g.faces is not None and len(g.faces):
        out["faces"] = _encode(g.faces, "uint32" if len(g.xyz) > 65535 else "uint16")
    for layer in view.layers:
        entry = {"key": layer.key, "title": layer.title, "group": layer.group}
        if layer.rgb is not None:
            entry["rgb"] = _encode(layer.rgb, "uint8")
        else:
            entry["values"] = _encode(layer.values, layer.values.dtype.name)
            entry["palette"] = np.asarray(layer.palette, np.uint8).tolist()
            entry["names"] = layer.names
            entry["legend"] = layer.legend
            if layer.colorbar:
                entry["colorbar"] = layer.colorbar
        out["layers"].append(entry)
    return out


def _scene_file(scene: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in scene)
    return f"scenes/{safe}.js"


def write_bundle(views: list[SceneView], out: Path, title: str = "minkseg view",
                 max_vertices: int = DEFAULT_MAX_VERTICES) -> Path:
    """Write ``out/index.html`` (+ viewer.js, viewer.css, manifest.js, scenes/<id>.js); returns index.html.

    Scene files are classic scripts that register their data, so the page works from
    ``file://`` as well as from any static host.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"title": title, "scenes": []}
    for view in views:
        shown = view.decimated(max_vertices)
        payload = scene_payload(shown)
        rel = _scene_file(payload["scene"])
        body = json.dumps(payload, separators=(",", ":"))
        write_text_atomic(out / rel, f"(window.MINKSEG_SCENES = window.MINKSEG_SCENES || {{}})"
                                     f"[{json.dumps(payload['scene'])}] = {body};\n")
        manifest["scenes"].append({"id": payload["scene"], "file": rel, "vertices": payload["vertices"],
                                   "total_vertices": payload["total_vertices"], "note": payload["note"],
                                   "layers": [[e["key"], e["group"], e["title"]] for e in payload["layers"]]})
    write_text_atomic(out / "manifest.js", "window.MINKSEG_MANIFEST = " + json.dumps(manifest, indent=1) + ";\n")
    for name in ("index.html", "viewer.js", "viewer.css"):
        write_text_atomic(out / name, (ASSETS / name).read_text())
    return out / "index.html"


# ----------------------------------------------------------------------------- sources


def _mesh_faces(root: str | Path | None, scene: str, n_vertices: int) -> np.ndarray | None:
    """Triangles of the raw mesh ``ROOT/scans/<scene>/<scene>_vh_clean_2.ply`` when it is there and has
    the prepared scene's vertices (same order); None draws the scene as points."""
    from scannet_tools.reader import SceneError, ScenePaths, read_mesh

    if not root:
        return None
    path = ScenePaths(Path(root) / "scans" / scene).mesh
    if not path.is_file():
        return None
    try:
        xyz, _, faces = read_mesh(path, scene)
    except SceneError:
        return None
    return faces.astype(np.int64) if len(xyz) == n_vertices else None


class Source:
    """One command-line SOURCE: gives its default scenes, the geometry it can read, and its layers."""

    label: str

    def default_scenes(self, split: str | None) -> list[str]:
        raise NotImplementedError

    def geometry(self, scene: str) -> SceneGeometry | None:
        return None

    def layers(self, scene: str, geo: SceneGeometry, device) -> list[Layer]:
        raise NotImplementedError


class CheckpointSource(Source):
    """A run folder (best.pth, else last.pth) or a checkpoint: the network runs on its own prepared data."""

    def __init__(self, checkpoint: Path, label: str, device, prepared: Path | None = None, root: Path | None = None,
                 tuned: bool = True):
        from minkseg.engine.checkpoint import load_checkpoint

        self.label = label
        self.model, self.cfg, _ = load_checkpoint(checkpoint, device, tuned, allow_pretrain=True)
        if prepared:
            self.cfg.data.prepared = str(prepared)
        if root:
            self.cfg.data.root = str(root)

    def default_scenes(self, split: str | None) -> list[str]:
        from minkseg.data.splits import split_scenes

        return split_scenes(self.cfg, split or self.cfg.data.val_split)

    def _prepared(self, scene: str) -> dict | None:
        from scannet_tools.prepare import load_prepared, prepared_path

        path = prepared_path(self.cfg.data.prepared, scene)
        return load_prepared(path) if path.is_file() else None

    def geometry(self, scene: str) -> SceneGeometry | None:
        data = self._prepared(scene)
        if data is None:
            return None
        return SceneGeometry.from_prepared(data, _mesh_faces(self.cfg.data.root, scene, len(data["xyz"])))

    def layers(self, scene: str, geo: SceneGeometry, device) -> list[Layer]:
        from minkseg.inference.predict import predict_scene

        data = self._prepared(scene)
        if data is None or len(data["xyz"]) != len(geo.xyz):
            return []
        from minkseg.inference.partition import is_pretrain_config, predict_partition

        if is_pretrain_config(self.cfg):  # a pretraining run: its partition only
            return [partition_layer(self.label, predict_partition(self.model, data, self.cfg, device))]
        pred = predict_scene(self.model, data, self.cfg, device)
        inst = PredictedInstances([p.mask for p in pred.instances], [p.label_id for p in pred.instances],
                                  [p.confidence for p in pred.instances])
        return prediction_layers(self.label, geo, pred.semantic_nyu40, inst, pred.uncertainty)


class SubmissionSource(Source):
    """A benchmark submission folder (semantic/, instance/) read against the raw scans of ``--scans``."""

    def __init__(self, folder: Path, label: str, scans: Path | None):
        if scans is None:
            raise ValueError(f"{folder}: a submission folder needs --scans (the raw scans/ folder it was made from)")
        if not Path(scans).is_dir():
            raise FileNotFoundError(f"{scans}: --scans is not a folder")
        self.label, self.folder, self.scans = label, Path(folder), Path(scans)
        self._tmp = tempfile.TemporaryDirectory(prefix="minkseg-view-")

    def default_scenes(self, split: str | None) -> list[str]:
        names = {p.stem for part in ("semantic", "instance") for p in (self.folder / part).glob("*.txt")}
        if split:
            from scannet_tools.splits import resolve_split

            wanted = resolve_split(split, self.scans.parent)
            return [s for s in wanted if s in names]
        return sorted(names)

    def geometry(self, scene: str) -> SceneGeometry | None:
        from scannet_tools.labels import find_label_table, read_label_table
        from scannet_tools.prepare import load_prepared, prepare_scene, prepared_path
        from scannet_tools.reader import ScenePaths

        paths = ScenePaths(self.scans / scene)
        if not paths.mesh.is_file():
            return None
        label_map = None
        if paths.aggregation.is_file():
            try:
                label_map = read_label_table(find_label_table(self.scans))
            except (FileNotFoundError, ValueError):
                label_map = None
        out = prepared_path(self._tmp.name, scene)
        prepare_scene(self.scans / scene, out, label_map, unknown="otherprop")
        data = load_prepared(out)
        return SceneGeometry.from_prepared(data, _mesh_faces(self.scans.parent, scene, len(data["xyz"])))

    def layers(self, scene: str, geo: SceneGeometry, device) -> list[Layer]:
        from minkseg.evaluation.evaluate import read_instance_predictions
        from scannet_tools.io import read_ids

        n = len(geo.xyz)
        sem_file, inst_file = self.folder / "semantic" / f"{scene}.txt", self.folder / "instance" / f"{scene}.txt"
        semantic = read_ids(sem_file) if sem_file.is_file() else None
        if semantic is not None and len(semantic) != n:
            raise ValueError(f"{sem_file}: {len(semantic)} lines, the scene has {n} vertices")
        inst = None
        if inst_file.is_file():
            preds = read_instance_predictions(inst_file, inst_file.parent, n)
            inst = PredictedInstances([p.mask for p in preds], [p.label_id for p in preds],
                                      [p.confidence for p in preds])
        if semantic is None and inst is None:
            return []
        return prediction_layers(self.label, geo, semantic, inst)


class RoundSource(Source):
    """A self-training round folder (``runs/<name>/round_<r>/``): its pseudo labels, and the
    predictions of its student where its checkpoint exists."""

    def __init__(self, folder: Path, label: str, device, prepared: Path | None = None, root: Path | None = None,
                 tuned: bool = True):
        from minkseg.config import load_config

        self.label, self.folder = label, Path(folder)
        self.pseudo = self.folder / "pseudo" if (self.folder / "pseudo").is_dir() else self.folder
        self.student = None
        ckpt = next((self.folder / n for n in ("best.pth", "last.pth") if (self.folder / n).is_file()), None)
        if ckpt is not None:
            self.student = CheckpointSource(ckpt, label, device, prepared, root, tuned)
            self.cfg = self.student.cfg
        else:
            cfg_file = next((p for p in (self.folder / "config.yaml", self.folder.parent / "selftrain.yaml",
                                         self.folder.parent.parent / "selftrain.yaml") if p.is_file()), None)
            if cfg_file is None:
                raise FileNotFoundError(f"{folder}: a round folder without a checkpoint needs config.yaml or the "
                                        "run's selftrain.yaml next to it (to find the prepared scenes)")
            self.cfg = load_config(cfg_file)
            if prepared:
                self.cfg.data.prepared = str(prepared)
            if root:
                self.cfg.data.root = str(root)

    def default_scenes(self, split: str | None) -> list[str]:
        names = sorted(p.stem for p in self.pseudo.glob("scene*.npz"))
        if split:
            from scannet_tools.splits import resolve_split

            wanted = set(resolve_split(split, self.cfg.data.root or None))
            names = [s for s in names if s in wanted]
        return names

    def geometry(self, scene: str) -> SceneGeometry | None:
        from scannet_tools.prepare import load_prepared, prepared_path

        path = prepared_path(self.cfg.data.prepared, scene)
        if not path.is_file():
            return None
        data = load_prepared(path)
        return SceneGeometry.from_prepared(data, _mesh_faces(self.cfg.data.root, scene, len(data["xyz"])))

    def layers(self, scene: str, geo: SceneGeometry, device) -> list[Layer]:
        out = []
        path = self.pseudo / f"{scene}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                labels = {k: z[k] for k in ("semantic", "instance", "instance_class", "certainty")}
            if len(labels["semantic"]) != len(geo.xyz):
                raise ValueError(f"{path}: {len(labels['semantic'])} vertices, the scene has {len(geo.xyz)}")
            out += pseudo_label_layers(self.label, labels)
        if self.student is not None:
            out += self.student.layers(scene, geo, device)
        return out


def open_source(path: Path, label: str, device, scans: Path | None = None, prepared: Path | None = None,
                root: Path | None = None, tuned: bool = True) -> Source:
    """The kind of SOURCE ``path`` is, by what it holds; one clear error line when it is none of them."""
    from minkseg.viz.compare import run_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run folder, checkpoint, submission or round folder")
    if path.is_file():
        return CheckpointSource(path, label, device, prepared, root, tuned)
    if (path / "pseudo").is_dir() or (path.name == "pseudo" and any(path.glob("scene*.npz"))):
        return RoundSource(path, label, device, prepared, root, tuned)
    if (path / "semantic").is_dir() or (path / "instance").is_dir():
        return SubmissionSource(path, label, scans)
    try:
        return CheckpointSource(run_checkpoint(path), label, device, prepared, root, tuned)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not a run folder (best.pth/last.pth), a checkpoint, a submission folder "
                                "(semantic/, instance/) or a self-training round folder (pseudo/)") from None


def build_views(sources: list[Source], scenes: list[str], device) -> list[SceneView]:
    """Each scene's geometry (from the first source that has it) with every source's layers."""
    views = []
    for scene in scenes:
        geo = next((g for g in (s.geometry(scene) for s in sources) if g is not None), None)
        if geo is None:
            raise FileNotFoundError(f"{scene}: no source has this scene (prepared file or raw mesh)")
        layers = [rgb_layer(geo.rgb), *ground_truth_layers(geo)]
        for s in sources:
            layers += s.layers(scene, geo, device)
        views.append(SceneView(geo, layers))
    return views


def export_viewer(sources: list[Path], out: Path, scenes: list[str] | None = None, split: str | None = None,
                  scans: Path | None = None, device: str = "auto", max_vertices: int = DEFAULT_MAX_VERTICES,
                  max_scenes: int = DEFAULT_MAX_SCENES, prepared: Path | None = None, root: Path | None = None,
                  log=print, tuned: bool = True) -> Path:
    """Write the viewer bundle for ``sources`` (run folders, checkpoints, submission folders with
    ``scans``, self-training round folders) to ``out``; returns ``out/index.html``.

    Scenes: ``scenes`` if given, else the first source's (its validation split for a run, or
    ``split``), at most ``max_scenes`` of them. ``tuned``: use a run's ``tuned.yaml`` (``minkseg tune``).
    """
    from minkseg.device import resolve_device
    from minkseg.viz.compare import run_labels

    if not sources:
        raise ValueError("give at least one SOURCE (run folder, checkpoint, submission or round folder)")
    dev = resolve_device(device)
    opened = [open_source(Path(p), label, dev, scans, prepared, root, tuned)
              for p, label in zip(sources, run_labels([Path(p) for p in sources]))]
    if not scenes:
        available = opened[0].default_scenes(split)
        if not available:
            raise FileNotFoundError(f"{sources[0]}: no scenes to show (split {split or 'default'})")
        scenes = available[:max_scenes]
        if len(available) > max_scenes:
            log(f"showing the first {max_scenes} of {len(available)} scenes; choose others with --scenes A,B")
    views = build_views(opened, list(scenes), dev)
    title = "minkseg view: " + ", ".join(s.label for s in opened)
    return write_bundle(views, Path(out), title, max_vertices)


def serve(folder: Path, host: str = "127.0.0.1", port: int = 8000, ready=None) -> None:
    """Serve ``folder`` over HTTP until interrupted; ``ready(url)`` is called once it listens."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))

    class QuietHandler(handler.func):  # one line per request is noise in a terminal
        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

    server = http.server.ThreadingHTTPServer((host, port), functools.partial(QuietHandler, directory=str(folder)))
    url = f"http://{host}:{server.server_address[1]}/index.html"
    try:
        (ready or print)(url)
        server.serve_forever()
    finally:
        server.server_close()


def temporary_bundle_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="minkseg-view-"))


def remove_bundle_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
