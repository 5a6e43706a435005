"""Deterministic synthetic ScanNet v2 scenes in the exact raw layout.

``synthesize(out_root, n_scenes, seed)`` writes ``out_root/scans/sceneXXXX_00/`` with
``_vh_clean_2.ply`` (binary mesh with faces), ``_vh_clean_2.labels.ply``,
``_vh_clean_2.0.010000.segs.json``, ``.aggregation.json`` and ``.txt`` (a non-identity
``axisAlignment``), plus ``scannetv2-labels.combined.tsv`` beside ``scans/`` and split
lists, as a ScanNet download has them. Everything downstream reads these files through
the same code as real scans.

A room (7.5-9 x 6-7.5 m) is a floor, four walls (separate objects), a door in a wall,
windows with curtains, pictures, furniture of all 18 instance classes along the walls,
among them the room-sized objects of ScanNet (3-5 m counters and floor-length curtains,
2-2.6 m sofas and bookshelves, 2-2.3 m beds), a table with chairs touching it in the
middle, annotated objects of non-benchmark classes (ignored by the benchmark) and
unannotated clutter. Wall items get disjoint spans and no two pieces of furniture share
floor.

Every object is a union of boxes whose surfaces are tessellated into triangle grids,
spaced so that a default scene (50k-200k vertices) has a vertex every 2-5 cm, as a real
``_vh_clean_2`` mesh. As in a scan, surfaces nobody can see are not meshed (within
:data:`CONTACT` of another solid: the floor under furniture, the wall behind it and behind
pictures, box bottoms on the floor), so objects meet walls and floors along one boundary,
and vertices scatter a few millimetres around the ideal planes. That is what keeps the
voxelization ceiling (``minkseg.evaluation.oracle``) near a real scan's: mIoU 0.95 / 0.99 / 1.00 at
10 / 5 / 2 cm for scene0000_00 of seed 0, against 0.93 / 0.97 / 1.00 for ScanNet's
scene0000_00 (and 0.75 / 0.80 / 0.92 when every box face was meshed). Superpoints are
patches of the grids, so they never cross objects, and get arbitrary non-contiguous ids.
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


# Furniture standing against a wall: kind -> ranges (lo, hi) of width along the wall, depth
# away from it and height, in metres. Beds stand head to the wall, so their 2-2.3 m length
# is the depth; counters, sofas, bookshelves and the long curtain are the room-sized
# objects (2-5 m) that ScanNet rooms contain.
WALL_FURNITURE: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "counter": ((3.0, 5.0), (0.58, 0.65), (0.88, 0.92)),
    "curtain": ((3.0, 4.5), (0.08, 0.12), (2.3, 2.4)),  # drawn across a wall, from the floor
    "sofa": ((2.0, 2.6), (0.85, 0.95), (0.75, 0.85)),
    "bookshelf": ((2.0, 2.4), (0.32, 0.38), (1.8, 2.1)),
    "bed": ((1.4, 1.8), (2.0, 2.3), (0.5, 0.6)),
    "cabinet": ((0.7, 0.9), (0.45, 0.55), (0.85, 0.95)),
    "desk": ((1.1, 1.3), (0.55, 0.65), (0.72, 0.78)),
    "refrigerator": ((0.65, 0.75), (0.65, 0.75), (1.75, 1.85)),
    "toilet": ((0.42, 0.48), (0.65, 0.75), (0.72, 0.78)),
    "bathtub": ((1.5, 1.7), (0.7, 0.8), (0.52, 0.58)),
    "otherfurniture": ((0.42, 0.48), (0.42, 0.48), (0.52, 0.58)),
    "other": ((0.32, 0.38), (0.32, 0.38), (0.48, 0.52)),
}
LARGE_FURNITURE = ("counter", "curtain", "sofa", "bookshelf", "bed")  # placed first, so they always fit
SMALL_ROOM_MAX_WIDTH = {"counter": 3.4, "curtain": 3.4}  # --small rooms: the short end of the range

# Local box faces seen from a wall's side: a hanging curtain shows its front and edges, not
# the back that faces the wall.
_CURTAIN_FACES = (0, 1, 3, 4)


def _furniture_parts(kind: str, w: float, d: float, h: float) -> list[Box]:
    """Parts of wall furniture in a local frame: x along the wall, y away from it, from (0, 0, 0)."""
    if kind == "bed":
        return [box(0, 0, 0, w, d, h), box(0, 0, h, w, 0.08, 0.5)]
    if kind == "sofa":
        return [box(0, 0, 0, w, d, 0.42), box(0, 0, 0.42, w, 0.2, h - 0.42),
                box(0, 0.2, 0.42, 0.18, d - 0.2, 0.2), box(w - 0.18, 0.2, 0.42, 0.18, d - 0.2, 0.2)]
    if kind == "bookshelf":
        parts = [box(0, 0, 0, w, 0.02, h), box(0, 0, 0, 0.02, d, h), box(w - 0.02, 0, 0, 0.02, d, h)]
        n_shelves = int(np.ceil(h / 0.4)) + 1
        parts += [box(0.02, 0.02, z, w - 0.04, d - 0.02, 0.02) for z in np.linspace(0, h - 0.02, n_shelves)]
        if w > 1.2:  # a middle upright, as long shelves have
            parts.append(box(w / 2 - 0.01, 0.02, 0, 0.02, d - 0.02, h))
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
    if kind == "curtain":  # one sheet hanging off the wall, with the folds' depth
        return [box(0, 0, 0, w, d, h, faces=_CURTAIN_FACES)]
    return [box(0, 0, 0, w, d, h)]


# Where each local face (-x +x -y +y, x along the wall, y away from it) ends up on each wall;
# z faces keep their index.
_WALL_FACE_MAP = ((0, 1, 2, 3), (2, 3, 1, 0), (1, 0, 3, 2), (3, 2, 0, 1))


def _place_along(parts: list[Box], wall: int, offset: float, W: float, D: float, gap: float = 0.0) -> list[Box]:
    """Move local-frame parts (x along wall, y away from it) to wall ``wall`` of a W x D room.

    Walls: 0 = y=0 (runs +x), 1 = x=W (runs +y), 2 = y=D (runs -x), 3 = x=0 (runs -y).
    """
    out = []
    face_map = _WALL_FACE_MAP[wall] + (4, 5)
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
                       tuple(face_map[f] for f in p.faces)))
    return out


def _wall_span(part_x0: float, part_x1: float, z0: float, z1: float, depth: float, wall: int, W: float, D: float,
               gap: float = 0.0, faces: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> Box:
    return _place_along([box(part_x0, 0, z0, part_x1 - part_x0, depth, z1 - z0, faces)], wall, 0.0, W, D, gap)[0]


def _extent(parts: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    return np.min([p.lo for p in parts], axis=0), np.max([p.hi for p in parts], axis=0)


def _overlap_area(lo: np.ndarray, hi: np.ndarray, footprints: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Floor area that the rectangle [lo, hi] shares with the footprints."""
    area = 0.0
    for flo, fhi in footprints:
        side = np.minimum(hi, fhi) - np.maximum(lo, flo)
        area += float(np.prod(np.clip(side, 0, None)))
    return area


def layout_room(rng: np.random.Generator, small: bool = False) -> tuple[list[SynthObject], tuple[float, float, float]]:
    """Objects of one room in room coordinates (floor at z = 0, walls at x=0, x=W, y=0, y=D).

    Wall items (door, furniture, the long curtain) get disjoint spans along the walls; windows
    and pictures go where the wall above is free; the dining group and floor clutter go where
    they overlap the least furniture.
    """
    W, D, H = (rng.uniform(7.5, 9.0), rng.uniform(6.0, 7.5), 2.7) if not small else (8.0, 6.5, 2.5)
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
    on_wall: list[list[tuple[float, float, float, float]]] = [[], [], [], []]  # (x0, x1, z0, z1) taken per wall

    def take(width: float, depth: float, prefer: list[int]) -> tuple[int, float] | None:
        """The next free span of ``width`` on the first wall in ``prefer`` where it fits and its
        ``depth`` into the room stays clear of what stands at the adjacent walls' ends."""
        for w in prefer:
            if cursor[w] + width + 0.15 <= lengths[w]:
                x = cursor[w] + (0.0 if cursor[w] > 0.15 else rng.uniform(0.0, 0.2))
                if x + width + 0.15 > lengths[w]:
                    x = cursor[w]
                lo, hi = _extent(_place_along([box(0, 0, 0, width, depth, 1.0)], w, x, W, D))
                while _overlap_area(lo[:2], hi[:2], footprints) > 0 and x + width + 0.25 <= lengths[w]:
                    x += 0.1  # slide past a corner neighbour's depth
                    lo, hi = _extent(_place_along([box(0, 0, 0, width, depth, 1.0)], w, x, W, D))
                if _overlap_area(lo[:2], hi[:2], footprints) > 0:
                    continue
                # a third of the neighbours stand side by side, as furniture in rows does
                cursor[w] = x + width + (0.0 if rng.random() < 1 / 3 else rng.uniform(0.1, 0.3))
                footprints.append((lo[:2], hi[:2]))
                return w, x
        return None

    def hang(width: float, z0: float, z1: float) -> tuple[int, float] | None:
        """A free rectangle on some wall for a window or picture (None if 50 tries fail)."""
        for _ in range(50):
            w = int(rng.integers(4))
            if lengths[w] - width - 0.6 <= 0:
                continue
            x = rng.uniform(0.3, lengths[w] - width - 0.3)
            if all(x + width + 0.1 <= a or x - 0.1 >= b or z1 <= c or z0 >= d for a, b, c, d in on_wall[w]):
                on_wall[w].append((x, x + width, z0, z1))
                return w, x
        return None

    # Door: flush in a wall, from the floor (its span stays clear of furniture).
    w, x = take(0.9, 0.9, [int(rng.integers(4))])  # the depth keeps its swing clear
    objs.append(SynthObject("door", [_wall_span(x, x + 0.9, 0, 2.05, 0.04, w, W, D)]))
    on_wall[w].append((x, x + 0.9, 0.0, 2.05))
    # Furniture around the room: the large pieces first, then the rest, each in random order.
    large = [LARGE_FURNITURE[i] for i in rng.permutation(len(LARGE_FURNITURE))]
    rest = [k for k in WALL_FURNITURE if k not in LARGE_FURNITURE]
    for kind in large + [rest[i] for i in rng.permutation(len(rest))]:
        (w_lo, w_hi), (d_lo, d_hi), (h_lo, h_hi) = WALL_FURNITURE[kind]
        if small:
            w_hi = min(w_hi, SMALL_ROOM_MAX_WIDTH.get(kind, w_hi))
        fw, fd, fh = rng.uniform(w_lo, w_hi), rng.uniform(d_lo, d_hi), rng.uniform(h_lo, h_hi)
        slot = take(fw, fd + 0.01, list(rng.permutation(4)))
        if slot is None:
            continue
        w, x = slot
        on_wall[w].append((x, x + fw, 0.0, fh))
        parts = _place_along(_furniture_parts(kind, fw, fd, fh), w, x, W, D, gap=0.0 if kind == "curtain" else 0.01)
        objs.append(SynthObject(kind, parts))
        lo, hi = _extent(parts)
        if kind == "counter":  # a sink set into the counter top
            sink = _place_along([box(fw / 2 - 0.25, 0.1, fh, 0.5, 0.4, 0.12)], w, x, W, D, gap=0.01)
            objs.append(SynthObject("sink", sink))
        if kind == "desk":  # an office chair in front of the desk, touching it
            c = (lo[:2] + hi[:2]) / 2
            normal = np.array([[0, 1], [-1, 0], [0, -1], [1, 0]][w], float)
            seat = c + normal * (fd / 2 + 0.2)
            objs.append(_chair(seat[0], seat[1], np.arctan2(-normal[1], -normal[0]), rng))
            footprints.append((seat - 0.35, seat + 0.35))
        if kind in ("desk", "cabinet"):  # clutter on top
            objs.append(SynthObject("clutter", [box(lo[0] + 0.1, lo[1] + 0.1, fh, 0.2, 0.15, 0.2)]))
    # Windows with a curtain beside them, and pictures, where the wall is free.
    for _ in range(2):
        ww = rng.uniform(0.9, 1.4)
        slot = hang(ww + 0.4, 0.9, 2.4)
        if slot is None:
            continue
        w, x = slot
        x += 0.4  # the curtain hangs in the first 0.35 m of the span
        objs.append(SynthObject("window", [_wall_span(x, x + ww, 1.0, 2.1, 0.03, w, W, D)]))
        objs.append(SynthObject("curtain", [_wall_span(x - 0.35, x - 0.05, 0.9, 2.4, 0.08, w, W, D,
                                                       faces=_CURTAIN_FACES)]))
    for _ in range(2):
        pw = rng.uniform(0.35, 0.8)
        slot = hang(pw, 1.4, 1.4 + pw * 0.75)
        if slot is None:
            continue
        w, x = slot
        objs.append(SynthObject("picture", [_wall_span(x, x + pw, 1.4, 1.4 + pw * 0.75, 0.02, w, W, D, gap=0.01)]))
    # Shower curtain hanging beside the bathtub (or free-standing near a wall).
    tub = next((o for o in objs if o.kind == "bathtub"), None)
    if tub is not None:
        lo, hi = _extent(tub.parts)
        objs.append(SynthObject("shower curtain", [box(lo[0], lo[1], 0.6, hi[0] - lo[0], 0.02, 1.4)
                                                   if hi[0] - lo[0] > hi[1] - lo[1]
                                                   else box(lo[0], lo[1], 0.6, 0.02, hi[1] - lo[1], 1.4)]))
        objs[-1].parts[0].lo[:2] = (lo[:2] + hi[:2]) / 2 - objs[-1].parts[0].size[:2] / 2
    # The dining group where it overlaps the least furniture (in a free middle if there is one).
    best, best_overlap = None, np.inf
    for _ in range(100):
        c = np.array([rng.uniform(1.6, W - 1.6), rng.uniform(1.4, D - 1.4)])
        overlap = _overlap_area(c - [1.4, 1.1], c + [1.4, 1.1], footprints)
        if overlap < best_overlap:
            best, best_overlap = c, overlap
        if overlap == 0:
            break
    objs += _table_group(best[0], best[1], rng)
    footprints.append((best - [1.4, 1.1], best + [1.4, 1.1]))
    for _ in range(rng.integers(2, 5)):  # clutter on the floor
        p = np.array([rng.uniform(0.3, W - 0.5), rng.uniform(0.3, D - 0.5)])
        if _overlap_area(p, p + 0.2, footprints) == 0:
            objs.append(SynthObject("clutter", [box(p[0], p[1], 0, 0.2, 0.2, rng.uniform(0.1, 0.4))]))
    for o in objs:
        if o.annotated:
            o.raw_name = str(rng.choice(RAW_NAMES[o.kind]))
    return objs, (W, D, H)


# ----------------------------------------------------------------------------- meshing

_FACE_AXES = {0: (0, 1, 2), 1: (0, 1, 2), 2: (1, 0, 2), 3: (1, 0, 2), 4: (2, 0, 1), 5: (2, 0, 1)}

#: A surface closer than this to another solid (or inside it) is hidden, as a scanner cannot
#: see it: the floor under furniture, the wall behind it and behind pictures, the bottom of a
#: box standing on the floor. Real ``_vh_clean_2`` meshes have no such surfaces, so objects
#: meet walls and floors along one boundary, not with two surfaces in every voxel there.
CONTACT = 0.015
#: Standard deviation (m) of the vertex positions around the ideal surfaces: reconstructed
#: meshes are not flat to the millimetre, so some vertices cross a voxel border.
SURFACE_NOISE = 0.005


def _grid(b: Box, face: int, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangulated grid on one box face: vertices, triangles, (u, v) patch coordinates."""
    normal_axis, ua, va = _FACE_AXES[face]
    u = np.linspace(0.0, b.size[ua], max(2, int(np.ceil(b.size[ua] / spacing)) + 1))
    v = np.linspace(0.0, b.size[va], max(2, int(np.ceil(b.size[va] / spacing)) + 1))
    nu, nv = len(u), len(v)
    uv = np.stack([np.repeat(u, nv), np.tile(v, nu)], 1)  # row by row
    pts = np.empty((nu * nv, 3))
    pts[:, normal_axis] = b.lo[normal_axis] + (b.size[normal_axis] if face % 2 else 0.0)
    pts[:, ua] = b.lo[ua] + uv[:, 0]
    pts[:, va] = b.lo[va] + uv[:, 1]
    a = (np.arange(nu - 1)[:, None] * nv + np.arange(nv - 1)).ravel()
    tris = np.concatenate([np.stack([a, a + nv, a + 1], 1), np.stack([a + 1, a + nv, a + nv + 1], 1)])
    # u x v points along +x, -y and +z (the y faces' grid runs x then z): flip the faces looking the other way,
    # so that every triangle faces outwards, as a scan's do (vertex normals come from them)
    if face in (0, 3, 4):
        tris = tris[:, [0, 2, 1]]
    return pts, tris, uv


def _rotate_xy(pts: np.ndarray, cx: float, cy: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    out = pts.copy()
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    out[:, 0] = cx + c * dx - s * dy
    out[:, 1] = cy + s * dx + c * dy
    return out


@dataclass
class _Surfaces:
    """Tessellated box faces of a room: all of them, or the visible ones."""

    xyz: np.ndarray
    tris: np.ndarray
    obj_of: np.ndarray  # object index per vertex
    part_of: np.ndarray  # global part index per vertex
    face_of: np.ndarray  # global face index per vertex (superpoint patches never cross faces)
    uv: np.ndarray  # position within its face, for superpoint patches
    top: np.ndarray  # vertex on an upward face (lit from above)


def _tessellate(objs: list[SynthObject], spacing: float) -> _Surfaces:
    verts, tris, obj_of, part_of, face_of, uvs, top = [], [], [], [], [], [], []
    offset, part_counter, face_counter = 0, 0, 0
    for k, o in enumerate(objs):
        for b in o.parts:
            for face in b.faces:
                pts, tr, uv = _grid(b, face, spacing)
                if o.rotate_about is not None:
                    pts = _rotate_xy(pts, *o.rotate_about)
                n = len(pts)
                verts.append(pts)
                tris.append(tr + offset)
                obj_of.append(np.full(n, k))
                part_of.append(np.full(n, part_counter))
                face_of.append(np.full(n, face_counter))
                uvs.append(uv)
                top.append(np.full(n, face == 5))
                offset += n
                face_counter += 1
            part_counter += 1
    return _Surfaces(np.concatenate(verts), np.concatenate(tris), *(np.concatenate(a) for a in
                                                                     (obj_of, part_of, face_of, uvs, top)))


def _hidden(objs: list[SynthObject], xyz: np.ndarray, part_of: np.ndarray) -> np.ndarray:
    """Vertices within :data:`CONTACT` of a solid box other than their own part."""
    hidden = np.zeros(len(xyz), bool)
    orders = [np.argsort(xyz[:, a], kind="stable") for a in range(3)]
    sorted_xyz = [xyz[orders[a], a] for a in range(3)]
    j = 0
    for o in objs:
        for b in o.parts:
            lo, hi = b.lo - CONTACT, b.hi + CONTACT
            if o.rotate_about is None:
                room_lo, room_hi = lo, hi
            else:  # the room-frame bounds of the rotated box
                corners = np.array([[x, y, 0.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])])
                corners = _rotate_xy(corners, *o.rotate_about)
                room_lo = np.array([*corners.min(0)[:2], lo[2]])
                room_hi = np.array([*corners.max(0)[:2], hi[2]])
            # candidates: the vertices within the bounds along the most selective axis
            ranges = [(np.searchsorted(sorted_xyz[a], room_lo[a]), np.searchsorted(sorted_xyz[a], room_hi[a], "right"))
                      for a in range(3)]
            a = int(np.argmin([r1 - r0 for r0, r1 in ranges]))
            cand = orders[a][ranges[a][0]:ranges[a][1]]
            p = xyz[cand]
            if o.rotate_about is not None:  # the exact test in the object's frame, where parts are boxes
                cx, cy, yaw = o.rotate_about
                p = _rotate_xy(p, cx, cy, -yaw)
            inside = np.all((p >= lo) & (p <= hi), axis=1) & (part_of[cand] != j)
            hidden[cand[inside]] = True
            j += 1
    return hidden


def _visible_surfaces(objs: list[SynthObject], spacing: float) -> _Surfaces:
    """Tessellated surfaces without hidden vertices, the triangles that used them and the
    vertices left in no triangle."""
    s = _tessellate(objs, spacing)
    visible = ~_hidden(objs, s.xyz, s.part_of)
    tris = s.tris[visible[s.tris].all(1)]
    keep = np.zeros(len(s.xyz), bool)  # a visible vertex in no triangle is dropped too, as meshing would
    keep[tris.ravel()] = True
    new_index = np.cumsum(keep) - 1
    return _Surfaces(s.xyz[keep], new_index[tris], s.obj_of[keep], s.part_of[keep], s.face_of[keep], s.uv[keep],
                     s.top[keep])


def _finish_mesh(objs: list[SynthObject], s: _Surfaces, patch: float, rng: np.random.Generator):
    """Vertices (with their scan noise), triangles, colours, object index and superpoint key per vertex."""
    tint = rng.normal(0, 12, (len(objs), 3))
    base = np.asarray([BASE_COLOURS[o.kind] for o in objs], float) + tint
    shade = np.where(s.top, 1.0, 0.85)[:, None]  # tops lighter, as lit from above
    cols = np.clip(base[s.obj_of] * shade + rng.normal(0, 6, (len(s.xyz), 3)), 0, 255)
    cell = np.floor(s.uv / patch).astype(np.int64)
    keys = s.face_of * 1_000_000 + cell[:, 0] * 1000 + cell[:, 1]
    xyz = s.xyz + rng.normal(0, SURFACE_NOISE, s.xyz.shape)
    return xyz, s.tris, cols.astype(np.uint8), s.obj_of, keys


def _vertex_count(objs: list[SynthObject], spacing: float) -> int:
    """Vertices :func:`_tessellate` would make at ``spacing`` (hidden ones included), without meshing."""
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
    surfaces = _visible_surfaces(objs, spacing)
    for _ in range(2):  # hidden surfaces take a share of those vertices: aim at the visible count
        spacing *= float(np.sqrt(len(surfaces.xyz) / target_vertices))
        surfaces = _visible_surfaces(objs, spacing)
    xyz, faces, rgb, obj_of, keys = _finish_mesh(objs, surfaces, patch=max(0.25, 4 * spacing), rng=rng)
    # Superpoints: one per patch key, with arbitrary, non-contiguous ids.
    uniq, seg_pos = np.unique(keys, return_inverse=True)
    seg_ids = np.sort(rng.choice(40 * len(uniq), size=len(uniq), replace=False))[rng.permutation(len(uniq))]
    seg_indices = seg_ids[seg_pos]

    # Ground truth straight from the objects; segGroups list each annotated object's segments.
    # An object hidden entirely (none of its surface is seen) is not annotated.
    seen = np.bincount(obj_of, minlength=len(objs)) > 0
    annotated = [k for k, o in enumerate(objs) if o.annotated and seen[k]]
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
