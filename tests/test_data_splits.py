"""minkseg.data.splits: which prepared scenes a config trains on and which of them are labelled."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from minkseg.data.splits import labeled_scenes, split_scenes
from scannet_tools.prepare import prepared_path
from scannet_tools.splits import limited_reconstruction, official_split


def data_cfg(prepared: Path, root: str = "", label_list: int = 0, label_ratio: float = 1.0,
             label_seed: int = 0) -> SimpleNamespace:
    """The ``cfg.data`` fields the split helpers read, without building a whole Config."""
    return SimpleNamespace(data=SimpleNamespace(prepared=str(prepared), root=root, label_list=label_list,
                                                label_ratio=label_ratio, label_seed=label_seed))


def touch_prepared(prepared: Path, scenes: list[str]) -> None:
    prepared.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        prepared_path(prepared, s).write_bytes(b"")


def test_split_scenes_keeps_the_prepared_ones_of_the_roots_own_list_in_list_order(tmp_path):
    root, prepared = tmp_path / "root", tmp_path / "prepared"
    root.mkdir()
    (root / "scannetv2_val.txt").write_text("scene0009_00\nscene0002_00\nscene0005_00\n")
    touch_prepared(prepared, ["scene0005_00", "scene0009_00", "scene0777_00"])  # 0002 not prepared
    assert split_scenes(data_cfg(prepared, root=str(root)), "val") == ["scene0009_00", "scene0005_00"]


def test_split_scenes_without_a_root_reads_the_official_list(tmp_path):
    prepared = tmp_path / "prepared"
    first_two = official_split("val")[:2]
    touch_prepared(prepared, first_two[::-1])
    assert split_scenes(data_cfg(prepared), "val") == first_two


def test_split_scenes_with_nothing_prepared_names_the_folder_count_and_split(tmp_path):
    prepared = tmp_path / "prepared"
    touch_prepared(prepared, ["scene0001_00"])
    with pytest.raises(FileNotFoundError, match=rf"^{prepared}: none of the 2 scenes of split "
                                                r"'scene0003_00,scene0004_00' is prepared$"):
        split_scenes(data_cfg(prepared), "scene0003_00,scene0004_00")


def test_labeled_scenes_from_a_shipped_list_keep_the_training_order(tmp_path):
    shipped = limited_reconstruction(1)
    train = ["scene0000_00", shipped[2], "scene0999_99", shipped[0]]
    cfg = data_cfg(tmp_path, label_list=1, label_ratio=0.5)  # the list wins over the ratio
    assert labeled_scenes(cfg, train) == [shipped[2], shipped[0]]


def test_labeled_scenes_from_a_ratio_are_the_seeded_sample(tmp_path):
    train = [f"scene{i:04d}_00" for i in range(10)]
    # numpy's seeded draw of 3 of 10 without replacement, in training order (see test_splits.py)
    for seed in (0, 4):
        expected = [train[i] for i in sorted(np.random.default_rng(seed).choice(10, 3, replace=False))]
        assert labeled_scenes(data_cfg(tmp_path, label_ratio=0.3, label_seed=seed), train) == expected


def test_labeled_scenes_default_to_a_copy_of_every_training_scene(tmp_path):
    train = ["scene0003_00", "scene0001_00"]
    got = labeled_scenes(data_cfg(tmp_path), train)
    assert got == train and got is not train


def test_labeled_scenes_of_no_scenes_are_none(tmp_path):
    assert labeled_scenes(data_cfg(tmp_path), []) == []  # ratio 1: no sampling (a sample needs one scene)
