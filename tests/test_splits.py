import numpy as np
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


# --------------------------------------------------------------------------- values known in advance


def test_official_lists_start_and_end_with_the_published_scenes():
    # first and last lines of ScanNet's Tasks/Benchmark/scannetv2_{train,val,test}.txt
    for name, first, last in (("train", "scene0191_00", "scene0567_01"), ("val", "scene0568_00", "scene0685_02"),
                              ("test", "scene0707_00", "scene0806_00")):
        scenes = official_split(name)
        assert (scenes[0], scenes[-1]) == (first, last)
    assert limited_reconstruction(1)[:3] == ["scene0239_00", "scene0013_02", "scene0473_01"]


def test_unknown_split_name_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"^unknown split 'dev'; expected one of train, val, test$"):
        official_split("dev")
    with pytest.raises(ValueError, match=r"^no shipped limited-reconstruction list for 3%; shipped: \(1, 5, 10, 20\) "
                                         r"\(use a ratio and seed for others\)$"):
        limited_reconstruction(3)


def test_read_list_ignores_blank_lines_carriage_returns_and_padding(tmp_path):
    p = tmp_path / "split.txt"
    p.write_bytes(b"  scene0001_00 \r\n\r\n\tscene0002_00\n   \nscene0003_00")
    assert resolve_split(str(p)) == ["scene0001_00", "scene0002_00", "scene0003_00"]


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.0000001, 2.0])
def test_label_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=rf"^label ratio must be in \(0, 1\], got {ratio}$"):
        sample_labeled(["scene0000_00", "scene0001_00"], ratio, seed=0)


def test_sampled_count_rounds_to_nearest_keeps_at_least_one_and_input_order():
    scenes = [f"scene{i:04d}_00" for i in range(10)][::-1]  # input order is not sorted order
    assert sample_labeled(scenes, 1.0, seed=5) == scenes  # ratio 1: every scene, in input order
    assert len(sample_labeled(scenes, 0.36, seed=0)) == 4  # 3.6 rounds to 4 (int() would give 3)
    assert len(sample_labeled(scenes, 0.34, seed=0)) == 3
    assert len(sample_labeled(scenes, 0.01, seed=0)) == 1  # 0.1 rounds to 0: at least one
    for seed in range(5):
        picked = sample_labeled(scenes, 0.5, seed=seed)
        positions = [scenes.index(s) for s in picked]
        assert positions == sorted(positions) and len(set(picked)) == 5
        # the subset is numpy's seeded draw without replacement, as the data-efficient benchmark's script does
        expected = sorted(np.random.default_rng(seed).choice(10, size=5, replace=False).tolist())
        assert positions == expected


def test_resolve_split_falls_back_to_the_official_list_and_parses_scene_lists(tmp_path):
    assert resolve_split("test", tmp_path) == official_split("test")  # no scannetv2_test.txt beside scans/
    (tmp_path / "scannetv2_train.txt").write_text("scene0009_00\nscene0008_00\n")
    assert resolve_split("train", tmp_path) == ["scene0009_00", "scene0008_00"]
    assert resolve_split("train", str(tmp_path)) == ["scene0009_00", "scene0008_00"]
    assert resolve_split("scene0003_00, ,scene0001_00,") == ["scene0003_00", "scene0001_00"]
    with pytest.raises(ValueError, match=r"^Scene0001_00: not a split name \(train, val, test\), a split file or "
                                         r"a list of scene ids$"):
        resolve_split("Scene0001_00")
