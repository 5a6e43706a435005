"""Deterministic synthetic ScanNet v2 scenes in the exact raw layout.

``synthesize(out_root, n_scenes, seed)`` writes ``out_root/scans/sceneXXXX_00/`` with
``_vh_clean_2.ply`` (binary mesh with faces), ``_vh_clean_2.labels.ply``,
``_vh_clean_2.0.010000.segs.json``, ``.aggregation.json`` and ``.txt`` (a non-identity
``axisAlignment``), plus ``scannetv2-labels.combined.tsv`` beside ``scans/`` and split
lists, as a ScanNet download has them. Everything downstream reads these files through
the same code as real scans.

A room is a floor, four walls (separate objects), a door in a wall, windows with curtains,
pictures, furniture of all 18 instance classes along the walls, a table with chairs
touching it in the middle, annotated objects of non-benchmark classes (ignored by the
benchmark) and unannotated clutter. Every object is a union of boxes whose surfaces are
tessellated into triangle grids; superpoints are patches of those grids, so they never
cross objects, and get arbitrary non-contiguous ids.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from .io import atomic_path, write_text_atomic
from .labels import bundled_label_table, read_label_table

# Raw category names per object kind, all rows of the ScanNet label table; several
# spellings per class so the raw_category -> nyu40 mapping is exercised.
RAW_NAMES: dict[str, tuple[str, ...]] = {
    "wall": ("wall",), "floor": ("floor",),
    "cabinet": ("cabinet", "kitchen cabinet", "file cabinet"), "bed": ("bed",),
    "chair": ("chair", "office chair", "armchair"), "sofa": ("couch",),
    "table": ("table", "coffee table", "dining table"), "door": ("door", "doors"),
    "window": ("window",), "bookshelf": ("bookshelf", "bookshelves"), "picture": ("picture", "poster"),
    "counter": ("kitchen counter", "counter"), "desk": ("desk",), "curtain": ("curtain", "curtains"),
    "refrigerator": ("refrigerator", "mini fridge"), "shower curtain": ("shower curtain",),
    "toilet": ("toilet",), "sink": ("sink",), "bathtub": ("bathtub",),
    "otherfurniture": ("trash can", "ottoman", "recycling bin"),
    # annotated, but outside the benchmark classes (nyu40 lamp, pillow, box, ...)
    "other": ("lamp", "pillow", "box", "backpack", "monitor"),
}

BASE_COLOURS: dict[str, tuple[int, int, int]] = {
    "wall": (200, 196, 185), "floor": (140, 105, 70), "cabinet": (120, 85, 60), "bed": (180, 170, 210),
    "chair": (90, 60, 40), "sofa": (70, 90, 130), "table": (150, 110, 70), "door": (160, 120, 80),
    "window": (170, 200, 230), "bookshelf": (110, 80, 50), "picture": (200, 80, 60), "counter": (210, 210, 200),
    "desk": (130, 100, 70), "curtain": (190, 60, 90), "refrigerator": (230, 230, 235),
    "shower curtain": (120, 190, 200), "toilet": (245, 245, 245), "sink": (225, 225, 230),
    "bathtub": (240, 240, 240), "otherfurniture": (80, 130, 80), "other": (100, 100, 160), "clutter": (60, 60, 60),
}


@dataclass
class Box:
    """Axis-aligned box (in room coordinates) given by its min corner and size."""

    lo: np.ndarray
    size: np.ndarray
    faces: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # -x +x -y +y -z +z

    @property
    def hi(self) -> np.ndarray:
        return self.lo + self.size


def box(x: float, y: float, z: float, sx: float, sy: float, sz: float, faces=(0, 1, 2, 3, 4, 5)) -> Box:
    return Box(np.array([x, y, z], float), np.array([sx, sy, sz], float), tuple(faces))


@dataclass
class SynthObject:
    kind: str  # key of RAW_NAMES, or "clutter" (unannotated)
    parts: list[Box]
    raw_name: str = ""
    rotate_about: tuple[float, float, float] | None = None  # (cx, cy, yaw) for free-standing objects

    @property
    def annotated(self) -> bool:
        return self.kind != "clutter"


@dataclass
class SynthScene:
    """A generated scene plus its ground truth computed from the object list itself."""

    scene: str
    xyz: np.ndarray  # scan frame
    rgb: np.ndarray
    faces: np.ndarray
    seg_indices: np.ndarray
    seg_groups: list[dict]
    axis_alignment: np.ndarray
    nyu40: np.ndarray  # per-vertex ground truth, independent of segGroups
    instance: np.ndarray  # objectId + 1, 0 for unannotated
    objects: list[SynthObject] = field(default_factory=list)


# ----------------------------------------------------------------------------- layout


def _chair(x: float, y: float, facing: float, rng: np.random.Generator) -> SynthObject:
    """A chair whose seat centre is (x, y) and which faces direction ``facing`` (radians)."""
    s, h = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.48)
    leg = 0.04
    parts = [box(-s / 2, -s / 2, h - 0.05, s, s, 0.05)]
    for dx in (-s / 2, s / 2 - leg):
        for dy in (-s / 2, s / 2 - leg):
            parts.append(box(dx, dy, 0, leg, leg, h - 0.05, faces=(0, 1, 2, 3)))
    parts.append(box(-s / 2, -s / 2, h, 0.05, s, rng.uniform(0.4, 0.5)))  # backrest on -x side
    for p in parts:
        p.lo[:2] += (x, y)
    # local +x is "forward"; the backrest sits at local -x
    return SynthObject("chair", parts, rotate_about=(x, y, facing))


def _table_group(cx: float, cy: float, rng: np.random.Generator) -> list[SynthObject]:
    """A table with chairs around it; chairs' seats slide under the table edge (touching)."""
    lx, ly, h = rng.uniform(1.2, 1.8), rng.uniform(0.8, 1.0), rng.uniform(0.72, 0.78)
    t = 0.04
    parts = [box(cx - lx / 2, cy - ly / 2, h - t, lx, ly, t)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(box(cx + sx * (lx / 2 - 0.08) - 0.03, cy + sy * (ly / 2 - 0.08) - 0.03, 0,
                             0.06, 0.06, h - t, faces=(0, 1, 2, 3)))
    objs = [SynthObject("table", parts)]
    n_side = 2 if lx > 1.4 else 1
    for i in range(n_side):  # chairs along both long sides, facing the table
        x = cx - lx / 2 + lx * (i + 0.5) / n_side
        objs.append(_chair(x, cy - ly / 2 - 0.18, np.pi / 2, rng))
        objs.append(_chair(x, cy + ly / 2 + 0.18, -np.pi / 2, rng))
    objs.append(_chair(cx + lx / 2 + 0.18, cy, np.pi, rng))  # head of the table
    for _ in range(rng.integers(1, 4)):  # unannotated clutter on the table top
        w = rng.uniform(0.08, 0.2)
        objs.append(SynthObject("clutter", [box(cx + rng.uniform(-lx / 3, lx / 3), cy + rng.uniform(-ly / 3, ly / 3),
                                                h, w, w, rng.uniform(0.05, 0.25))]))
    return objs


# Furniture standing against a wall: (kind, width along wall, depth, height).
WALL_FURNITURE = (
    ("cabinet", 0.8, 0.5, 0.9), ("bed", 1.5, 2.0, 0.55), ("sofa", 1.9, 0.9, 0.8), ("bookshelf", 0.9, 0.35, 1.8),
    ("counter", 1.4, 0.6, 0.9), ("desk", 1.2, 0.6, 0.75), ("refrigerator", 0.7, 0.7, 1.8),
    ("toilet", 0.45, 0.7, 0.75), ("bathtub", 1.6, 0.75, 0.55), ("otherfurniture", 0.45, 0.45, 0.55),
    ("other", 0.35, 0.35, 0.5),
)


def _furniture_parts(kind: str, w: float, d: float, h: float) -> list[Box]:
    """Parts of wall furniture in a local frame: x along the wall, y away from it, from (0, 0, 0)."""
    if kind == "bed":
        return [box(0, 0, 0, w, d, h), box(0, 0, h, w, 0.08, 0.5)]
    if kind == "sofa":
        return [box(0, 0, 0, w, d, 0.42), box(0, 0, 0.42, w, 0.2, h - 0.42),
                box(0, 0.2, 0.42, 0.18, d - 0.2, 0.2), box(w - 0.18, 0.2, 0.42, 0.18, d - 0.2, 0.2)]
    if kind == "bookshelf":
        parts = [box(0, 0, 0, w, 0.02, h), box(0, 0, 0, 0.02, d, h), box(w - 0.02, 0, 0, 0.02, d, h)]
        parts += [box(0.02, 0.02, z, w - 0.04, d - 0.02, 0.02) for z in np.linspace(0, h - 0.02, 5)]
        return parts
    if kind == "desk":
        return [box(0, 0, h - 0.04, w, d, 0.04), box(0, 0, 0, 0.05, d, h - 0.04, faces=(0, 1, 2, 3)),
                box(w - 0.05, 0, 0, 0.05, d, h - 0.04, faces=(0, 1, 2, 3))]
    if kind == "toilet":
        return [box(0.05, 0, 0, w - 0.1, 0.2, h), box(0.08, 0.2, 0, w - 0.16, d - 0.25, 0.4)]
    if kind == "bathtub":  # an open tub: floor and four rims
        t = 0.08
        return [box(0, 0, 0, w, d, 0.05), box(0, 0, 0, w, t, h), box(0, d - t, 0, w, t, h),
                box(0, t, 0, t, d - 2 * t, h), box(w - t, t, 0, t, d - 2 * t, h)]
    return [box(0, 0, 0, w, d, h)]


def _place_along(parts: list[Box], wall: int, offset: float, W: float, D: float, gap: float = 0.0) -> list[Box]:
    """Move local-frame parts (x along wall, y away from it) to wall ``wall`` of a W x D room.

    Walls: 0 = y=0 (runs +x), 1 = x=W (runs +y), 2 = y=D (runs -x), 3 = x=0 (runs -y).
    """
    out = []
    for p in parts:
        lo, hi = p.lo.copy(), p.hi.copy()
        lo[1] += gap
        hi[1] += gap
        if wall == 0:
            nlo, nhi = [offset + lo[0], lo[1]], [offset + hi[0], hi[1]]
        elif wall == 1:
            nlo, nhi = [W - hi[1], offset + lo[0]], [W - lo[1], offset + hi[0]]
        elif wall == 2:
            nlo, nhi = [W - offset - hi[0], D - hi[1]], [W - offset - lo[0], D - lo[1]]
        else:
            nlo, nhi = [lo[1], D - offset - hi[0]], [hi[1], D - offset - lo[0]]
        out.append(Box(np.array([nlo[0], nlo[1], lo[2]]), np.array([nhi[0] - nlo[0], nhi[1] - nlo[1], hi[2] - lo[2]]),
                       p.faces))
    return out


def _wall_span(part_x0: float, part_x1: float, z0: float, z1: float, depth: float, wall: int, W: float, D: float,
               gap: float = 0.0) -> Box:
    return _place_along([box(part_x0, 0, z0, part_x1 - part_x0, depth, z1 - z0)], wall, 0.0, W, D, gap)[0]


def layout_room(rng: np.random.Generator, small: bool = False) -> tuple[list[SynthObject], tuple[float, float, float]]:
    """Objects of one room in room coordinates (floor at z = 0, walls at x=0, x=W, y=0, y=D)."""
    W, D, H = (rng.uniform(6.5, 8.0), rng.uniform(5.5, 7.0), 2.7) if not small else (6.5, 5.5, 2.5)
    t = 0.1  # walls are slabs t thick outside the room, only the inner face is meshed
    objs = [SynthObject("floor", [box(0, 0, -0.02, W, D, 0.02, faces=(5,))])]
    lengths = (W, D, W, D)
    inner_face = (3, 0, 2, 1)  # per wall, the box face that looks into the room
    slabs = (box(0, -t, 0, W, t, H), box(W, 0, 0, t, D, H), box(0, D, 0, W, t, H), box(-t, 0, 0, t, D, H))
    for w in range(4):
        s = slabs[w]
        objs.append(SynthObject("wall", [Box(s.lo, s.size, (inner_face[w],))]))

    # A free span per wall for each wall item, handed out left to right.
    cursor = [0.15, 0.15, 0.15, 0.15]
    footprints: list[tuple[np.ndarray, np.ndarray]] = []

    def take(width: float, prefer: list[int]) -> tuple[int, float] | None:
        for w in prefer:
            if cursor[w] + width + 0.15 <= lengths[w]:
                x = cursor[w] + rng.uniform(0.0, 0.2)
                if x + width + 0.15 > lengths[w]:
                    x = cursor[w]
                cursor[w] = x + width + rng.uniform(0.1, 0.3)
                return w, x
        return None

    # Door: flush in a wall, from the floor (its span stays clear of furniture).
    w, x = take(0.9, [int(rng.integers(4))])
    objs.append(SynthObject("door", [_wall_span(x, x + 0.9, 0, 2.05, 0.04, w, W, D)]))
    # Furniture, in random order, around the room.
    order = rng.permutation(len(WALL_FURNITURE))
    for i in order:
        kind, fw, fd, fh = WALL_FURNITURE[i]
        fw, fd, fh = fw * rng.uniform(0.9, 1.1), fd * rng.uniform(0.9, 1.1), fh * rng.uniform(0.95, 1.05)
        slot = take(fw, list(rng.permutation(4)))
        if slot is None:
            continue
        w, x = slot
        parts = _place_along(_furniture_parts(kind, fw, fd, fh), w, x, W, D, gap=0.01)
        objs.append(SynthObject(kind, parts))
        lo = np.min([p.lo for p in parts], axis=0)
        hi = np.max([p.hi for p in parts], axis=0)
        footprints.append((lo[:2], hi[:2]))
        if kind == "counter":  # a sink set into the counter top
            sink = _place_along([box(fw / 2 - 0.25, 0.1, fh, 0.5, 0.4, 0.12)], w, x, W, D, gap=0.01)
            objs.append(SynthObject("sink", sink))
        if kind == "desk":  # an office chair in front of the desk, touching it
            c = (lo[:2] + hi[:2]) / 2
            normal = np.array([[0, 1], [-1, 0], [0, -1], [1, 0]][w], float)
            seat = c + normal * (fd / 2 + 0.2)
            objs.append(_chair(seat[0], seat[1], np.arctan2(-normal[1], -normal[0]), rng))
        if kind in ("desk", "cabinet"):  # clutter on top
            objs.append(SynthObject("clutter", [box(lo[0] + 0.1, lo[1] + 0.1, fh, 0.2, 0.15, 0.2)]))
    # Windows with curtains and pictures, on the wall above whatever stands there.
    for _ in range(2):
        w = int(rng.integers(4))
        ww = rng.uniform(0.9, 1.4)
        x = rng.uniform(0.3, lengths[w] - ww - 0.3)
        objs.append(SynthObject("window", [_wall_span(x, x + ww, 1.0, 2.1, 0.03, w, W, D)]))
        objs.append(SynthObject("curtain", [_wall_span(x - 0.35, x - 0.05, 0.9, 2.4, 0.03, w, W, D, gap=0.08)]))
    for _ in range(2):
        w = int(rng.integers(4))
        pw = rng.uniform(0.35, 0.8)
        x = rng.uniform(0.3, lengths[w] - pw - 0.3)
        objs.append(SynthObject("picture", [_wall_span(x, x + pw, 1.4, 1.4 + pw * 0.75, 0.02, w, W, D, gap=0.01)]))
    # Shower curtain hanging beside the bathtub (or free-standing near a wall).
    tub = next((o for o in objs if o.kind == "bathtub"), None)
    if tub is not None:
        lo = np.min([p.lo for p in tub.parts], axis=0)
        hi = np.max([p.hi for p in tub.parts], axis=0)
        objs.append(SynthObject("shower curtain", [box(lo[0], lo[1], 0.6, hi[0] - lo[0], 0.02, 1.4)
                                                   if hi[0] - lo[0] > hi[1] - lo[1]
                                                   else box(lo[0], lo[1], 0.6, 0.02, hi[1] - lo[1], 1.4)]))
        objs[-1].parts[0].lo[:2] = (lo[:2] + hi[:2]) / 2 - objs[-1].parts[0].size[:2] / 2
    # The dining group in the free middle of the room.
    for _ in range(100):
        c = np.array([rng.uniform(1.6, W - 1.6), rng.uniform(1.4, D - 1.4)])
        glo, ghi = c - [1.4, 1.1], c + [1.4, 1.1]
        if all((ghi <= lo).any() or (glo >= hi).any() for lo, hi in footprints):
            break
    objs += _table_group(c[0], c[1], rng)
    for _ in range(rng.integers(2, 5)):  # clutter on the floor
        p = np.array([rng.uniform(0.3, W - 0.5), rng.uniform(0.3, D - 0.5)])
        if all((p + 0.2 <= lo).any() or (p >= hi).any() for lo, hi in footprints):
            objs.append(SynthObject("clutter", [box(p[0], p[1], 0, 0.2, 0.2, rng.uniform(0.1, 0.4))]))
    for o in objs:
        if o.annotated:
            o.raw_name = str(rng.choice(RAW_NAMES[o.kind]))
    return objs, (W, D, H)


# ----------------------------------------------------------------------------- meshing

_FACE_AXES = {0: (0, 1, 2), 1: (0, 1, 2), 2: (1, 0, 2), 3: (1, 0, 2), 4: (2, 0, 1), 5: (2, 0, 1)}


def _grid(b: Box, face: int, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangulated grid on one box face: vertices, triangles, (u, v) patch coordinates."""
    normal_axis, ua, va = _FACE_AXES[face]
    fixed = b.lo[normal_axis] + (b.size[normal_axis] if face % 2 else 0.0)
    nu = max(2, int(np.ceil(b.size[ua] / spacing)) + 1)
    nv = max(2, int(np.ceil(b.size[va] / spacing)) + 1)
    u = np.linspace(b.lo[ua], b.hi[ua], nu)
    v = np.linspace(b.lo[va], b.hi[va], nv)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    pts = np.empty((nu * nv, 3))
    pts[:, normal_axis] = fixed
    pts[:, ua] = uu.ravel()
    pts[:, va] = vv.ravel()
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1), indexing="ij")
    a = (i * nv + j).ravel()
    tris = np.concatenate([np.stack([a, a + nv, a + 1], 1), np.stack([a + 1, a + nv, a + nv + 1], 1)])
    if face % 2 == 0:  # keep triangles facing outwards
        tris = tris[:, [0, 2, 1]]
    return pts, tris, np.stack([uu.ravel() - b.lo[ua], vv.ravel() - b.lo[va]], 1)


def _rotate_xy(pts: np.ndarray, cx: float, cy: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    out = pts.copy()
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    out[:, 0] = cx + c * dx - s * dy
    out[:, 1] = cy + s * dx + c * dy
    return out


def mesh_objects(objs: list[SynthObject], spacing: float, patch: float, rng: np.random.Generator):
    """Tessellate objects: vertices, faces, colours, object index and superpoint key per vertex."""
    verts, tris, cols, obj_of, keys = [], [], [], [], []
    offset, face_counter = 0, 0
    for k, o in enumerate(objs):
        tint = rng.normal(0, 12, 3)
        base = np.asarray(BASE_COLOURS[o.kind], float) + tint
        for b in o.parts:
            for face in b.faces:
                pts, tr, uv = _grid(b, face, spacing)
                if o.rotate_about is not None:
                    pts = _rotate_xy(pts, *o.rotate_about)
                n = len(pts)
                shade = 0.85 + 0.15 * (face // 2 == 2)  # tops lighter, as lit from above
                cols.append(np.clip(base * shade + rng.normal(0, 6, (n, 3)), 0, 255))
                verts.append(pts)
                tris.append(tr + offset)
                obj_of.append(np.full(n, k))
                cell = np.floor(uv / patch).astype(np.int64)
                keys.append(face_counter * 1_000_000 + cell[:, 0] * 1000 + cell[:, 1])
                offset += n
                face_counter += 1
    return (np.concatenate(verts), np.concatenate(tris), np.concatenate(cols).astype(np.uint8),
            np.concatenate(obj_of), np.concatenate(keys))


def _vertex_count(objs: list[SynthObject], spacing: float) -> int:
    """Vertices :func:`mesh_objects` would make at ``spacing``, without meshing."""
    n = 0
    for o in objs:
        for b in o.parts:
            for face in b.faces:
                _, ua, va = _FACE_AXES[face]
                n += max(2, int(np.ceil(b.size[ua] / spacing)) + 1) * max(2, int(np.ceil(b.size[va] / spacing)) + 1)
    return n


def _surface_area(objs: list[SynthObject]) -> float:
    area = 0.0
    for o in objs:
        for b in o.parts:
            s = b.size
            per_axis = (s[1] * s[2], s[0] * s[2], s[0] * s[1])
            area += sum(per_axis[f // 2] for f in b.faces)
    return area


def generate_scene(scene: str, rng: np.random.Generator, label_map: dict[str, int],
                   target_vertices: int = 120_000, small: bool = False) -> SynthScene:
    """Generate one scene in memory; :func:`write_scene` puts it on disk."""
    objs, _ = layout_room(rng, small=small)
    spacing = float(np.sqrt(_surface_area(objs) / target_vertices))
    for _ in range(3):  # grids round up at their edges; a few fixed-point steps hit the target
        spacing *= float(np.sqrt(_vertex_count(objs, spacing) / target_vertices))
    xyz, faces, rgb, obj_of, keys = mesh_objects(objs, spacing, patch=max(0.25, 4 * spacing), rng=rng)
    # Superpoints: one per patch key, with arbitrary, non-contiguous ids.
    uniq, seg_pos = np.unique(keys, return_inverse=True)
    seg_ids = np.sort(rng.choice(40 * len(uniq), size=len(uniq), replace=False))[rng.permutation(len(uniq))]
    seg_indices = seg_ids[seg_pos]

    # Ground truth straight from the objects; segGroups list each annotated object's segments.
    annotated = [k for k, o in enumerate(objs) if o.annotated]
    object_id = {k: i for i, k in enumerate(rng.permutation(annotated).tolist())}
    nyu40 = np.zeros(len(xyz), np.int64)
    instance = np.zeros(len(xyz), np.int64)
    groups = []
    for k in sorted(annotated, key=lambda k: object_id[k]):
        o, oid = objs[k], object_id[k]
        mask = obj_of == k
        nyu40[mask] = label_map[o.raw_name]
        instance[mask] = oid + 1
        groups.append({"id": oid, "objectId": oid, "segments": np.unique(seg_indices[mask]).tolist(),
                       "label": o.raw_name})
    # Scan frame: the room seen from a random pose; axisAlignment maps scan -> aligned.
    yaw = rng.uniform(-np.pi, np.pi)
    align = np.eye(4)
    align[:3, :3] = [[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]
    align[:3, 3] = rng.uniform(-3, 3, 3) * [1, 1, 0.1]
    inv = np.linalg.inv(align)
    xyz_scan = (xyz @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    return SynthScene(scene, xyz_scan, rgb, faces.astype(np.int32), seg_indices, groups, align, nyu40, instance, objs)


# ----------------------------------------------------------------------------- writing


def _vertex_array(s: SynthScene, label: np.ndarray | None = None) -> np.ndarray:
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    if label is not None:
        fields.append(("label", "u2"))
    v = np.empty(len(s.xyz), dtype=fields)
    v["x"], v["y"], v["z"] = s.xyz.T
    v["red"], v["green"], v["blue"] = s.rgb.T
    v["alpha"] = 255
    if label is not None:
        v["label"] = label
    return v


def _write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    ply = PlyData([PlyElement.describe(vertices, "vertex"),
                   PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})], byte_order="<")
    with atomic_path(path) as tmp:
        ply.write(str(tmp))


def write_scene(s: SynthScene, scans_dir: Path) -> Path:
    """Write a scene in the raw ScanNet layout; returns its folder."""
    d = scans_dir / s.scene
    d.mkdir(parents=True, exist_ok=True)
    _write_ply(d / f"{s.scene}_vh_clean_2.ply", _vertex_array(s), s.faces)
    _write_ply(d / f"{s.scene}_vh_clean_2.labels.ply", _vertex_array(s, s.nyu40.astype(np.uint16)), s.faces)
    write_text_atomic(d / f"{s.scene}_vh_clean_2.0.010000.segs.json",
                      json.dumps({"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750",
                                             "maxPoints": "30000", "thinThresh": "0.05", "flatThresh": "0.001",
                                             "minLength": "0.02", "maxLength": "1"},
                                  "sceneId": f"{s.scene}_vh_clean_2", "segIndices": s.seg_indices.tolist()}))
    write_text_atomic(d / f"{s.scene}.aggregation.json",
                      json.dumps({"sceneId": f"scannet.{s.scene}", "appId": "minkseg.synth.v1",
                                  "segGroups": s.seg_groups,
                                  "segmentsFile": f"scannet.{s.scene}_vh_clean_2.0.010000.segs.json"}, indent=1))
    write_text_atomic(d / f"{s.scene}.txt",
                      "axisAlignment = " + " ".join(f"{v:.6f}" for v in s.axis_alignment.ravel()) + "\n"
                      "numColorFrames = 0\nnumDepthFrames = 0\nsceneType = Apartment\n")
    return d


def synthesize(out_root: str | Path, n_scenes: int, seed: int = 0, target_vertices: int | None = None,
               small: bool = False, val_fraction: float = 0.25, progress: bool = True) -> list[str]:
    """Write ``n_scenes`` scenes under ``out_root/scans`` plus label table and split lists.

    Scene ``i`` depends only on (seed, i), so any subset regenerates identically. Default
    size: 50k-200k vertices per scene (``small``: about 4k, for tests).
    """
    from tqdm import tqdm

    out_root = Path(out_root)
    scans = out_root / "scans"
    scans.mkdir(parents=True, exist_ok=True)
    table = out_root / "scannetv2-labels.combined.tsv"
    if not table.is_file():
        shutil.copyfile(bundled_label_table(), table)
    label_map = read_label_table(table)
    names = []
    for i in tqdm(range(n_scenes), desc="synth", unit="scene", disable=not progress or None):
        rng = np.random.default_rng([seed, i])
        n_verts = target_vertices or (4_000 if small else int(rng.integers(50_000, 200_000)))
        name = f"scene{i:04d}_00"
        write_scene(generate_scene(name, rng, label_map, n_verts, small=small), scans)
        names.append(name)
    n_val = max(1, int(round(n_scenes * val_fraction))) if n_scenes > 1 else 0
    write_text_atomic(out_root / "scannetv2_train.txt", "\n".join(names[: n_scenes - n_val]) + "\n")
    write_text_atomic(out_root / "scannetv2_val.txt", "\n".join(names[n_scenes - n_val:]) + "\n")
    return names
