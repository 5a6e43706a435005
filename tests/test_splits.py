import pytest

from scannet_tools.splits import limited_reconstruction, official_split, resolve_split, sample_labeled


def test_official_split_sizes():
    assert len(official_split("train")) == 1201
    assert len(official_split("val")) == 312
    assert len(official_split("test")) == 100
    assert not set(official_split("train")) & set(official_split("val"))


def test_limited_reconstruction_lists_are_training_scenes():
    train = set(official_split("train"))
    sizes = {p: len(limited_reconstruction(p)) for p in (1, 5, 10, 20)}
    assert sizes == {1: 12, 5: 60, 10: 120, 20: 240}
    for p in (1, 5, 10, 20):
        assert set(limited_reconstruction(p)) <= train
    with pytest.raises(ValueError, match="ratio and seed"):
        limited_reconstruction(3)


def test_sampled_ratio_is_seeded_and_sized():
    scenes = official_split("train")
    a = sample_labeled(scenes, 0.1, seed=3)
    assert a == sample_labeled(scenes, 0.1, seed=3)
    assert a != sample_labeled(scenes, 0.1, seed=4)
    assert len(a) == 120 and set(a) <= set(scenes)
    with pytest.raises(ValueError):
        sample_labeled(scenes, 0.0, seed=0)


def test_resolve_prefers_the_dataset_s_own_lists(raw_root):
    assert resolve_split("val", raw_root) == (raw_root / "scannetv2_val.txt").read_text().split()
    assert resolve_split("val") == official_split("val")
    assert resolve_split("scene0000_00,scene0001_00") == ["scene0000_00", "scene0001_00"]
    with pytest.raises(ValueError):
        resolve_split("nonsense")
