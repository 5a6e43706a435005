"""The scenes a config trains and validates on: a split's prepared scenes and their labelled part."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scannet_tools.prepare import prepared_path
from scannet_tools.splits import limited_reconstruction, resolve_split, sample_labeled

if TYPE_CHECKING:  # annotation only: the config module sits above the data stage
    from minkseg.config import Config


def split_scenes(cfg: Config, split: str) -> list[str]:
    """Scene ids of a split that have a prepared file."""
    root = cfg.data.root or None
    names = resolve_split(split, root)
    have = [s for s in names if prepared_path(cfg.data.prepared, s).is_file()]
    if not have:
        raise FileNotFoundError(f"{Path(cfg.data.prepared)}: none of the {len(names)} scenes of split {split!r} "
                                "is prepared")
    return have


def labeled_scenes(cfg: Config, train: list[str]) -> list[str]:
    """The labelled part of the training scenes: a shipped list, a seeded ratio, or all."""
    if cfg.data.label_list:
        wanted = set(limited_reconstruction(cfg.data.label_list))
        return [s for s in train if s in wanted]
    if cfg.data.label_ratio < 1.0:
        return sample_labeled(train, cfg.data.label_ratio, cfg.data.label_seed)
    return list(train)
