"""ScanNet v2 splits: the official lists, the data-efficient limited-reconstruction lists,
and seeded sampling of any other label ratio."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

OFFICIAL_SPLITS = ("train", "val", "test")
LIMITED_RECONSTRUCTION_PERCENTS = (1, 5, 10, 20)


def _data_file(*parts: str) -> Path:
    return Path(str(resources.files("scannet_tools").joinpath("data", *parts)))


def read_list(path: str | Path) -> list[str]:
    """Scene ids of a split file, one per line (blank lines and ``\\r`` ignored)."""
    return [s.strip() for s in Path(path).read_text().splitlines() if s.strip()]


def official_split(name: str) -> list[str]:
    """The official ScanNet v2 train (1201), val (312) or test (100) list."""
    if name not in OFFICIAL_SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(OFFICIAL_SPLITS)}")
    return read_list(_data_file(f"scannetv2_{name}.txt"))


def limited_reconstruction(percent: int) -> list[str]:
    """The data-efficient benchmark's limited-reconstruction training scenes (1/5/10/20 %)."""
    if percent not in LIMITED_RECONSTRUCTION_PERCENTS:
        raise ValueError(f"no shipped limited-reconstruction list for {percent}%; "
                         f"shipped: {LIMITED_RECONSTRUCTION_PERCENTS} (use a ratio and seed for others)")
    return read_list(_data_file("limited_reconstruction", f"{percent}.txt"))


def sample_labeled(scenes: list[str], ratio: float, seed: int) -> list[str]:
    """A seeded random subset of ``ratio`` of the scenes (at least one), in input order."""
    if not 0 < ratio <= 1:
        raise ValueError(f"label ratio must be in (0, 1], got {ratio}")
    n = max(1, int(round(len(scenes) * ratio)))
    keep = np.random.default_rng(seed).choice(len(scenes), size=n, replace=False)
    return [scenes[i] for i in sorted(keep)]


def resolve_split(spec: str, dataset_root: str | Path | None = None) -> list[str]:
    """Scene ids for a split spec.

    ``train``/``val``/``test``: the dataset's own ``scannetv2_<name>.txt`` beside ``scans/``
    if it has one (the synthetic dataset does), else the official list. A path: that file.
    Anything else: a comma-separated list of scene ids.
    """
    if spec in OFFICIAL_SPLITS:
        if dataset_root is not None:
            local = Path(dataset_root) / f"scannetv2_{spec}.txt"
            if local.is_file():
                return read_list(local)
        return official_split(spec)
    p = Path(spec)
    if p.is_file():
        return read_list(p)
    if spec.startswith("scene"):
        return [s.strip() for s in spec.split(",") if s.strip()]
    raise ValueError(f"{spec}: not a split name (train, val, test), a split file or a list of scene ids")
