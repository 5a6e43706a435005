"""ScanNet v2 label tables and the raw_category -> nyu40 -> benchmark train-id mapping.

The benchmark evaluates 20 semantic classes and 18 instance classes (the 20 without wall
and floor), all named by their NYU40 ids. Training code works with contiguous *train ids*
0..19; everything written to disk for the benchmark uses NYU40 ids.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np

#: NYU40 ids of the 20 benchmark semantic classes, in benchmark order (train id = index).
SEMANTIC_NYU40_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39,
)
SEMANTIC_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator",
    "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)
#: NYU40 ids of the 18 instance classes (no wall, no floor).
INSTANCE_NYU40_IDS: tuple[int, ...] = SEMANTIC_NYU40_IDS[2:]
INSTANCE_NAMES: tuple[str, ...] = SEMANTIC_NAMES[2:]
NUM_SEMANTIC = len(SEMANTIC_NYU40_IDS)
#: Train ids below this are "stuff" (wall, floor) and never form instances.
FIRST_INSTANCE_TRAIN_ID = 2
#: Train id of vertices that are unannotated or of a class outside the benchmark.
IGNORE_ID = -100

LABEL_TABLE_NAME = "scannetv2-labels.combined.tsv"
#: NYU40 "otherprop": outside the benchmark classes, so training and evaluation ignore it.
OTHERPROP_NYU40 = 40
#: What prepare/export-gt do with a raw category the label table does not list (first: default).
UNKNOWN_CATEGORY_POLICIES: tuple[str, ...] = ("error", "otherprop", "ignore")

# Lookup table NYU40 id -> train id. NYU40 ids live in 0..40, but real labels.ply files
# hold out-of-range values (50, 149): everything outside the table maps to IGNORE_ID.
_NYU40_TO_TRAIN = np.full(256, IGNORE_ID, dtype=np.int16)
_NYU40_TO_TRAIN[list(SEMANTIC_NYU40_IDS)] = np.arange(NUM_SEMANTIC)
_TRAIN_TO_NYU40 = np.asarray(SEMANTIC_NYU40_IDS, dtype=np.int64)


class LabelTableError(ValueError):
    """The label table is missing or not a ScanNet label table."""


def nyu40_to_train_id(nyu40: np.ndarray) -> np.ndarray:
    """Map NYU40 ids (any integer array) to train ids 0..19, IGNORE_ID elsewhere."""
    nyu40 = np.asarray(nyu40)
    out = np.full(nyu40.shape, IGNORE_ID, dtype=np.int16)
    valid = (nyu40 >= 0) & (nyu40 < _NYU40_TO_TRAIN.size)
    out[valid] = _NYU40_TO_TRAIN[nyu40[valid].astype(np.int64)]
    return out


def train_id_to_nyu40(train_id: np.ndarray) -> np.ndarray:
    """Map train ids 0..19 back to NYU40 ids; ignored ids become 0 (unannotated)."""
    train_id = np.asarray(train_id).astype(np.int64)
    out = np.zeros(train_id.shape, dtype=np.int64)
    valid = (train_id >= 0) & (train_id < NUM_SEMANTIC)
    out[valid] = _TRAIN_TO_NYU40[train_id[valid]]
    return out


def read_label_table(path: str | Path, label_to: str = "nyu40id") -> dict[str, int]:
    """Read a ScanNet label table into {raw_category: nyu40 id}.

    Accepts the current table and the old one (which still has ``stick``), and the copies
    whose lines end in ``\\r\\r\\n`` (or ``\\r`` alone). Later rows win over earlier ones with the same
    raw_category, as in ScanNet's ``util.read_label_mapping``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LabelTableError(f"{path}: cannot read label table ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise LabelTableError(f"{path}: label table is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                              f"{e.start})") from e
    # read_text's universal newlines already turned \r\n, \r\r\n (some copies) and \r alone into \n
    lines = text.split("\n")
    rows = csv.DictReader([line for line in lines if line], delimiter="\t")
    if rows.fieldnames is None or "raw_category" not in rows.fieldnames or label_to not in rows.fieldnames:
        raise LabelTableError(f"{path}: not a ScanNet label table (needs columns raw_category and {label_to})")
    mapping: dict[str, int] = {}
    for lineno, row in enumerate(rows, start=2):
        value = row[label_to]
        if value is None or not value.strip():
            continue
        try:
            mapping[row["raw_category"]] = int(value)
        except ValueError as e:
            raise LabelTableError(f"{path}:{lineno}: {label_to} {value!r} is not an integer") from e
    if not mapping:
        raise LabelTableError(f"{path}: label table has no rows")
    return mapping


def bundled_label_table() -> Path:
    """The current ScanNet v2 label table shipped inside the package."""
    return Path(str(resources.files("scannet_tools") / "data" / LABEL_TABLE_NAME))


def find_label_table(scans_dir: str | Path, override: str | Path | None = None) -> Path:
    """Locate the label table as a ScanNet download lays it out: next to ``scans/``.

    ``override`` (``--labels PATH``) wins. The table is looked for beside ``scans/`` and
    inside it; a clear error names every place that was tried.
    """
    if override is not None:
        p = Path(override)
        if not p.is_file():
            raise LabelTableError(f"{p}: label table given with --labels does not exist")
        return p
    scans_dir = Path(scans_dir)
    tried = [scans_dir.parent / LABEL_TABLE_NAME, scans_dir / LABEL_TABLE_NAME]
    for p in tried:
        if p.is_file():
            return p
    raise LabelTableError(
        f"no {LABEL_TABLE_NAME} found (tried {', '.join(map(str, tried))}); pass --labels PATH"
    )
