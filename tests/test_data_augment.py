"""minkseg.data.augment with values known in advance: each random draw is either scripted
(crop window) or taken from the same seeded generator and applied by hand, and the elastic
field is checked against scipy's own trilinear interpolation (``map_coordinates``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter, map_coordinates

from minkseg.data.augment import AugmentConfig, augment, crop_mask, elastic_distortion

OFF = dict(rotate_z=False, flip=False, scale=[1.0, 1.0], jitter_std=0.0, color_jitter_std=0.0)


class ScriptedUniform:
    """A generator stand-in whose ``uniform`` returns fixed values (the crop window's start)."""

    def __init__(self, values: list[float]):
        self.values, self.calls = np.asarray(values, float), []

    def uniform(self, low, high, size):
        self.calls.append((low, high, size))
        return self.values


def reference_elastic(xyz: np.ndarray, granularity: float, magnitude: float, rng: np.random.Generator
                      ) -> np.ndarray:
    """The elastic displacement written out with scipy's linear interpolation of the blurred noise."""
    lo = xyz.min(0)
    dims = np.floor_divide(xyz.max(0) - lo, granularity).astype(int) + 3
    noise = rng.standard_normal((3, *dims)).astype(np.float32)
    blurred = [gaussian_filter(gaussian_filter(n, 1.0, mode="nearest"), 1.0, mode="nearest") for n in noise]
    grid = ((xyz - lo) / granularity + 1).T
    shift = np.stack([map_coordinates(b.astype(np.float64), grid, order=1, mode="nearest") for b in blurred], 1)
    return xyz + shift * magnitude


def test_defaults_are_the_documented_augmentation():
    c = AugmentConfig()
    assert (c.rotate_z, c.flip, c.scale, c.jitter_std, c.color_jitter_std, c.elastic, c.max_voxels,
            c.voxel_size) == (True, True, [0.9, 1.1], 0.005, 0.05, False, 0, 0.02)


@pytest.mark.parametrize("extent, granularity", [(1.0, 0.1), (2.345, 0.2), (0.05, 0.8)])
def test_elastic_distortion_is_the_trilinear_sample_of_twice_blurred_noise(extent, granularity):
    # extent 1.0 at 0.1: 1.0 // 0.1 is 9 although 1.0 / 0.1 is 10, the grid's last cell
    xyz = np.random.default_rng(1).uniform(0, extent, (200, 3))
    xyz[0], xyz[1] = 0.0, extent  # both corners of the box: the grid's ends are sampled
    got = elastic_distortion(xyz, granularity, 0.7, np.random.default_rng(5))
    expected = reference_elastic(xyz, granularity, 0.7, np.random.default_rng(5))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_elastic_distortion_at_a_grid_node_moves_by_that_nodes_noise():
    # vertex at lo + granularity: grid coordinate 2 exactly, weight 1 on node (2, 2, 2)
    xyz = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    noise = np.random.default_rng(2).standard_normal((3, 5, 5, 5)).astype(np.float32)
    for _ in range(2):
        noise = np.stack([gaussian_filter(n, sigma=1.0, mode="nearest") for n in noise])
    got = elastic_distortion(xyz, 0.5, 2.0, np.random.default_rng(2))
    for v, node in ((0, 1), (1, 2), (2, 3)):
        np.testing.assert_allclose(got[v], xyz[v] + 2.0 * noise[:, node, node, node], rtol=1e-12)


def test_elastic_distortion_of_magnitude_zero_is_the_identity():
    xyz = np.random.default_rng(0).uniform(0, 1, (20, 3))
    np.testing.assert_array_equal(elastic_distortion(xyz, 0.2, 0.0, np.random.default_rng(0)), xyz)


def grid_points(per_axis: int, per_voxel: int = 1) -> np.ndarray:
    """Points at voxel centres 0.5, 1.5, ... (voxel size 1) of a per_axis x per_axis layer; each
    voxel holds ``per_voxel`` points (the extra ones 0.2 apart in z, in the same voxel)."""
    c = np.arange(per_axis) + 0.5
    xy = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    pts = np.concatenate([xy, np.full((len(xy), 1), 0.5)], 1)
    return np.concatenate([pts + [0.0, 0.0, 0.2 * k] for k in range(per_voxel)])


def test_crop_mask_keeps_the_scripted_window_borders_included():
    xyz = grid_points(10, per_voxel=2)  # 200 points in 100 voxels
    rng = ScriptedUniform([0.0, 1.0])
    keep = crop_mask(xyz, 25, 1.0, rng)
    assert rng.calls == [(0, 1, 2)]
    # side = sqrt(25 / 100) * 9 = 4.5; x from lo = 0.5 to 5.0, y from 0.5 + 4.5 = 5.0 to 9.5 (both included)
    expected = (xyz[:, 0] >= 0.5) & (xyz[:, 0] <= 5.0) & (xyz[:, 1] >= 5.0) & (xyz[:, 1] <= 9.5)
    np.testing.assert_array_equal(keep, expected)
    assert keep.sum() == 2 * 25


def test_crop_mask_in_the_middle_of_the_scene():
    xyz = grid_points(10)
    keep = crop_mask(xyz, 64, 1.0, ScriptedUniform([0.5, 0.25]))
    # side = 0.8 * 9 = 7.2; x in [0.5 + 0.9, 8.6], y in [0.5 + 0.45, 8.15]
    expected = (xyz[:, 0] >= 1.4) & (xyz[:, 0] <= 8.6) & (xyz[:, 1] >= 0.95) & (xyz[:, 1] <= 8.15)
    np.testing.assert_array_equal(keep, expected)
    assert keep.sum() == 8 * 7  # x: 1.5 .. 8.5, y: 1.5 .. 7.5


def test_crop_mask_counts_voxels_not_points_and_keeps_all_up_to_the_limit():
    xyz = grid_points(4, per_voxel=3)  # 48 points in 16 voxels
    rng = ScriptedUniform([0.0, 0.0])
    assert crop_mask(xyz, 16, 1.0, rng).all() and not rng.calls  # exactly at the limit: no crop, no draw
    assert crop_mask(xyz, 20, 1.0, rng).all()
    # 15 voxels < 16: cropped although the 48 points are well above 15
    assert not crop_mask(xyz, 15, 1.0, rng).all()
    # at voxel size 2 the same points occupy 4 voxels
    assert crop_mask(xyz, 4, 2.0, ScriptedUniform([0.0, 0.0])).all()
    assert crop_mask(xyz * -1, 4, 2.0, ScriptedUniform([0.0, 0.0])).all()  # floor, not truncation, below 0
    assert crop_mask(xyz, 16, 1.0, rng).dtype == bool  # a mask, not ones to multiply with


def test_crop_mask_window_follows_each_axis_own_extent():
    xyz = grid_points(10)
    xyz[:, 0] *= 2.0  # x from 1 to 19, y from 0.5 to 9.5
    xyz[:, 1] += 30.0  # y from 30.5 to 39.5
    keep = crop_mask(xyz, 25, 1.0, ScriptedUniform([1.0, 0.0]))
    assert keep.dtype == bool
    # 100 occupied voxels, side fraction 0.5: x window 9 m from 1 + 1.0 * (18 - 9) = 10, y window 4.5 m from 30.5
    expected = (xyz[:, 0] >= 10.0) & (xyz[:, 0] <= 19.0) & (xyz[:, 1] >= 30.5) & (xyz[:, 1] <= 35.0)
    np.testing.assert_array_equal(keep, expected)
    assert keep.sum() == 5 * 5


def test_crop_mask_ignores_z():
    xyz = grid_points(10)
    xyz[:, 2] = np.arange(len(xyz)) * 100.0  # far apart vertically: still one xy window
    keep = crop_mask(xyz, 25, 1.0, ScriptedUniform([0.0, 0.0]))
    # z spreads every point into its own voxel: 100 occupied; side 0.5 * 9 = 4.5 from 0.5
    expected = (xyz[:, 0] <= 5.0) & (xyz[:, 1] <= 5.0)
    np.testing.assert_array_equal(keep, expected)


def cube(offset: float | np.ndarray = 0.0) -> np.ndarray:
    """Two corners of a 2 x 1 x 0.5 box and a point inside it, optionally far from the origin
    (binary fractions: exact in float64 even 1e12 m away)."""
    return np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.5], [0.5, 0.25, 0.125]]) + offset


def test_without_any_augmentation_the_scene_moves_to_the_origin():
    rgb = np.array([[0, 128, 255], [10, 20, 30], [1, 2, 3]], np.uint8)
    xyz, out_rgb, keep = augment(cube(5.0), rgb, AugmentConfig(**OFF), np.random.default_rng(0))
    assert xyz.dtype == np.float32 and out_rgb.dtype == np.uint8 and keep.dtype == bool
    np.testing.assert_array_equal(xyz, cube().astype(np.float32))
    np.testing.assert_array_equal(out_rgb, rgb)
    np.testing.assert_array_equal(keep, [True, True, True])


def test_rotation_is_counterclockwise_about_z_by_the_drawn_angle():
    for seed in range(4):
        angle = np.random.default_rng(seed).uniform(0, 2 * np.pi)
        xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "rotate_z": True}),
                            np.random.default_rng(seed))
        c, s = np.cos(angle), np.sin(angle)
        by_hand = np.stack([c * cube()[:, 0] - s * cube()[:, 1], s * cube()[:, 0] + c * cube()[:, 1], cube()[:, 2]], 1)
        np.testing.assert_allclose(xyz, by_hand - by_hand.min(0), rtol=0, atol=1e-6)


def test_rotation_far_from_the_origin_keeps_float32_precision():
    # world coordinates ~1e12 m: rotating before centring each axis would lose ~1e-4 m to float64 rounding
    angle = np.random.default_rng(3).uniform(0, 2 * np.pi)
    far = cube(np.array([1e12, -3e12, 5.0]))
    xyz, _, _ = augment(far, np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "rotate_z": True}),
                        np.random.default_rng(3))
    c, s = np.cos(angle), np.sin(angle)
    by_hand = np.stack([c * cube()[:, 0] - s * cube()[:, 1], s * cube()[:, 0] + c * cube()[:, 1], cube()[:, 2]], 1)
    np.testing.assert_allclose(xyz, by_hand - by_hand.min(0), rtol=0, atol=1e-6)


class ScriptedDraws:
    """A generator stand-in for augment: fixed angle, flip draws and scale; no noise is drawn."""

    def __init__(self, flips: list[float]):
        self.flips = np.asarray(flips)

    def uniform(self, low, high, size=None):
        return low

    def random(self, size):
        assert size == 2
        return self.flips


def test_flip_draw_of_one_half_keeps_the_axis():
    xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "flip": True}),
                        ScriptedDraws([0.5, 0.4999999]))
    mirrored = cube() * [1.0, -1.0, 1.0]
    np.testing.assert_allclose(xyz, mirrored - mirrored.min(0), rtol=0, atol=1e-7)


def test_flip_mirrors_x_and_y_each_with_probability_one_half_never_z():
    seen = set()
    for seed in range(16):
        draws = np.random.default_rng(seed).random(2)
        sign = np.where(draws < 0.5, -1.0, 1.0)
        xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "flip": True}),
                            np.random.default_rng(seed))
        mirrored = cube() * [sign[0], sign[1], 1.0]
        np.testing.assert_allclose(xyz, mirrored - mirrored.min(0), rtol=0, atol=1e-7)
        seen.add(tuple(sign))
    assert seen == {(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)}  # the seeds cover all four cases


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_scale_multiplies_every_axis(factor):
    xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "scale": [factor, factor]}),
                        np.random.default_rng(0))
    np.testing.assert_allclose(xyz, cube() * factor, rtol=0, atol=1e-7)


def test_scale_is_drawn_between_the_bounds():
    factor = np.random.default_rng(9).uniform(0.7, 1.3)
    xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "scale": [0.7, 1.3]}),
                        np.random.default_rng(9))
    np.testing.assert_allclose(xyz, cube() * factor, rtol=0, atol=1e-7)


def test_colour_jitter_is_one_shift_per_channel_plus_per_vertex_noise_then_clipped():
    rgb = np.array([[250, 5, 128], [3, 252, 100], [128, 128, 128]], np.uint8)
    rng = np.random.default_rng(3)
    rng.uniform(1.0, 1.0)  # the scale factor is drawn first, even when its range is one value
    shift, noise = rng.normal(0, 0.1 * 255, (1, 3)), rng.normal(0, 2.0, (3, 3))
    expected = np.clip(rgb + shift + noise, 0, 255).astype(np.uint8)  # truncation after clipping
    assert (expected == 255).any() and (expected == 0).any()  # this seed reaches both clips
    _, got, _ = augment(cube(), rgb, AugmentConfig(**{**OFF, "color_jitter_std": 0.1}), np.random.default_rng(3))
    np.testing.assert_array_equal(got, expected)


def test_jitter_is_per_vertex_gaussian_and_draws_nothing_when_off():
    rng = np.random.default_rng(6)
    rng.uniform(1.0, 1.0)  # the scale factor
    noisy = cube() - cube().mean(0) + rng.normal(0, 0.01, (3, 3))
    xyz, _, _ = augment(cube(), np.zeros((3, 3), np.uint8), AugmentConfig(**{**OFF, "jitter_std": 0.01}),
                        np.random.default_rng(6))
    np.testing.assert_allclose(xyz, noisy - noisy.min(0), rtol=0, atol=1e-6)
    # jitter off: the colour shift is the generator's next draw after the scale
    rgb = np.full((3, 3), 100, np.uint8)
    rng = np.random.default_rng(6)
    rng.uniform(1.0, 1.0)
    expected = np.clip(rgb + rng.normal(0, 0.05 * 255, (1, 3)) + rng.normal(0, 2.0, (3, 3)), 0, 255).astype(np.uint8)
    _, got, _ = augment(cube(), rgb, AugmentConfig(**{**OFF, "color_jitter_std": 0.05}), np.random.default_rng(6))
    np.testing.assert_array_equal(got, expected)


def reference_augment(xyz: np.ndarray, rgb: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The augmentation written out step by step, drawing in the documented order."""
    p = xyz - xyz.mean(0)
    if cfg.rotate_z:
        a = rng.uniform(0, 2 * np.pi)
        p = np.stack([np.cos(a) * p[:, 0] - np.sin(a) * p[:, 1], np.sin(a) * p[:, 0] + np.cos(a) * p[:, 1],
                      p[:, 2]], 1)
    if cfg.flip:
        p[:, :2] *= np.where(rng.random(2) < 0.5, -1.0, 1.0)
    p = p * rng.uniform(cfg.scale[0], cfg.scale[1])
    if cfg.elastic:
        p = reference_elastic(p, 0.2, 0.08, rng)
        p = reference_elastic(p, 0.8, 0.32, rng)
    if cfg.jitter_std:
        p = p + rng.normal(0, cfg.jitter_std, p.shape)
    if cfg.color_jitter_std:
        rgb = rgb + rng.normal(0, cfg.color_jitter_std * 255, (1, 3)) + rng.normal(0, 2.0, rgb.shape)
    return p - p.min(0), np.clip(rgb, 0, 255).astype(np.uint8)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), rotate=st.booleans(), flip=st.booleans(), elastic=st.booleans(),
       jitter=st.sampled_from([0.0, 0.02]), colour=st.sampled_from([0.0, 0.05]))
def test_augment_matches_the_step_by_step_transcription(seed, rotate, flip, elastic, jitter, colour):
    data = np.random.default_rng(seed)
    xyz = data.uniform(-1, 3, (60, 3)).astype(np.float32)
    rgb = data.integers(0, 256, (60, 3)).astype(np.uint8)
    cfg = AugmentConfig(rotate_z=rotate, flip=flip, scale=[0.8, 1.2], jitter_std=jitter, color_jitter_std=colour,
                        elastic=elastic)
    got_xyz, got_rgb, keep = augment(xyz, rgb, cfg, np.random.default_rng(seed + 1))
    want_xyz, want_rgb = reference_augment(xyz.astype(np.float64), rgb.astype(np.float64), cfg,
                                           np.random.default_rng(seed + 1))
    np.testing.assert_allclose(got_xyz, want_xyz, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got_rgb, want_rgb)
    assert keep.all() and got_xyz.min(0).tolist() == [0.0, 0.0, 0.0]


def test_augment_crops_after_moving_to_the_origin_with_the_generators_next_draw():
    xyz = grid_points(10) + 100.0
    cfg = AugmentConfig(**{**OFF, "max_voxels": 25, "voxel_size": 1.0})
    rng = np.random.default_rng(8)
    rng.uniform(1.0, 1.0)  # the scale factor
    u = rng.uniform(0, 1, 2)
    _, _, keep = augment(xyz, np.zeros((len(xyz), 3), np.uint8), cfg, np.random.default_rng(8))
    shifted = xyz - xyz.min(0)  # points at 0..9, the window side 4.5
    start = u * 4.5
    expected = ((shifted[:, :2] >= start) & (shifted[:, :2] <= start + 4.5)).all(1)
    np.testing.assert_array_equal(keep, expected)
    assert 0 < keep.sum() < len(xyz)
