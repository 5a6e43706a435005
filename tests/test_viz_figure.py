"""Colours, figure layout and the fitted camera, on values known in advance: the ScanNet palette,
golden-ratio instance hues (against matplotlib's own HSV conversion), colour-map positions,
legend wrapping with a font of known widths, pixel-exact swatches and colour bars, tile widths,
and camera frames worked out by hand."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
from PIL import ImageFont

import minkseg.viz.figure as figure
from minkseg.viz.colors import (
    NONE_RGB,
    OTHER_NAME,
    SEMANTIC_LUT,
    instance_colors,
    instance_palette,
    legend_entries,
    scalar_colors,
    semantic_colors,
)
from minkseg.viz.figure import (
    COLORBAR_HEIGHT,
    LINE,
    PAD,
    SWATCH,
    TITLE_HEIGHT,
    Panel,
    compose_panels,
    draw_panel,
    footer_height,
)
from minkseg.viz.render import fit_camera

WHITE = (255, 255, 255)

# ScanNet BenchmarkScripts/util.py create_color_palette(), the 20 benchmark classes by NYU40 id
SCANNET_BENCHMARK_COLOURS = {
    1: (174, 199, 232), 2: (152, 223, 138), 3: (31, 119, 180), 4: (255, 187, 120), 5: (188, 189, 34),
    6: (140, 86, 75), 7: (255, 152, 150), 8: (214, 39, 40), 9: (197, 176, 213), 10: (148, 103, 189),
    11: (196, 156, 148), 12: (23, 190, 207), 14: (247, 182, 210), 16: (219, 219, 141), 24: (255, 127, 14),
    28: (158, 218, 229), 33: (44, 160, 44), 34: (112, 128, 144), 36: (227, 119, 194), 39: (82, 84, 163),
}


# ----------------------------------------------------------------------------- colours


def test_semantic_colours_are_the_scannet_benchmark_palette_and_grey_elsewhere():
    ids = np.arange(-3, 300)
    got = semantic_colors(ids)
    want = np.array([SCANNET_BENCHMARK_COLOURS.get(int(i), NONE_RGB) for i in ids], np.uint8)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8 and got.shape == (len(ids), 3)
    # ids read as floats (np.loadtxt) or as a list are ids all the same
    np.testing.assert_array_equal(semantic_colors(np.array([1.0, 39.0, 13.0])), semantic_colors([1, 39, 13]))
    assert semantic_colors(np.zeros(0)).shape == (0, 3)
    assert tuple(SEMANTIC_LUT[0]) == NONE_RGB and tuple(SEMANTIC_LUT[255]) == NONE_RGB


def _hsv_reference(count: int) -> np.ndarray:
    hsv = np.stack([(np.arange(count) * (math.sqrt(5) - 1) / 2) % 1.0, np.full(count, 0.85),
                    np.where(np.arange(count) % 2 == 0, 0.95, 0.75)], 1)
    return np.round(matplotlib.colors.hsv_to_rgb(hsv) * 255).astype(np.uint8)


def test_instance_palette_is_golden_ratio_hues_at_two_brightness_levels():
    np.testing.assert_array_equal(instance_palette(40), _hsv_reference(40))
    # by hand: hue 0 at value 0.95 and saturation 0.85 is (0.95, 0.1425, 0.1425) * 255
    assert tuple(instance_palette(1)[0]) == (242, 36, 36)
    assert instance_palette(0).shape == (0, 3) and instance_palette(0).dtype == np.uint8


def test_instance_colours_by_id_with_grey_for_none():
    ids = np.array([3, -1, 0, 3, -7, 1])
    want = np.array([_hsv_reference(4)[i] if i >= 0 else NONE_RGB for i in ids], np.uint8)
    np.testing.assert_array_equal(instance_colors(ids), want)
    assert instance_colors(ids).dtype == np.uint8 and instance_colors(np.array([-1])).dtype == np.uint8
    np.testing.assert_array_equal(instance_colors(np.array([2.0, -1.0])), instance_colors([2, -1]))
    assert instance_colors(np.zeros(0, np.int64)).shape == (0, 3)
    np.testing.assert_array_equal(instance_colors(np.array([-1, -2])), np.array([NONE_RGB] * 2, np.uint8))


def _viridis(t) -> np.ndarray:
    return np.round(matplotlib.colormaps["viridis"](np.asarray(t, np.float64))[:, :3] * 255).astype(np.uint8)


def test_scalar_colours_place_values_between_the_limits():
    # default limits: the data's own range [2, 4]; 3 is half way
    np.testing.assert_array_equal(scalar_colors(np.array([2.0, 4.0, 3.0, 2.5])), _viridis([0.0, 1.0, 0.5, 0.25]))
    np.testing.assert_array_equal(scalar_colors(np.array([0.1, 0.3]), 0.0, 0.5), _viridis([0.2, 0.6]))
    np.testing.assert_array_equal(scalar_colors(np.array([0.1, 0.3]), vmin=0.1), _viridis([0.0, 1.0]))
    np.testing.assert_array_equal(scalar_colors(np.array([1.0, 2.0]), vmax=5.0), _viridis([0.0, 0.25]))
    # outside the limits: clipped to the ends; NaN: the low end
    np.testing.assert_array_equal(scalar_colors(np.array([-1.0, 9.0, np.nan]), 0.0, 1.0), _viridis([0.0, 1.0, 0.0]))
    # one value (no range): the low end, not NaN
    np.testing.assert_array_equal(scalar_colors(np.array([0.7, 0.7])), _viridis([0.0, 0.0]))
    np.testing.assert_array_equal(scalar_colors(np.array([0.0, 0.25]), 0.0, 0.5, cmap="magma"),
                                  np.round(matplotlib.colormaps["magma"]([0.0, 0.5])[:, :3] * 255).astype(np.uint8))
    assert scalar_colors([1, 2]).dtype == np.uint8
    # float32 values (predicted sigmas) are placed in float64: 0.12109375 lies just below the 9th of the
    # colour map's 256 bins between float32 0.1 and 0.7, where float32 arithmetic would round it onto the edge
    values = np.array([0.1, 0.7, 0.12109375], np.float32)
    lo, hi = float(values[0]), float(values[1])
    t = (float(values[2]) - lo) / (hi - lo)
    assert int(t * 256) == 8
    np.testing.assert_array_equal(scalar_colors(values), _viridis([0.0, 1.0, t]))


def test_legend_entries_of_no_ids_and_of_only_other_ids():
    assert legend_entries(np.zeros(0, np.int64)) == []
    assert legend_entries(np.array([0, 40, 13])) == [(OTHER_NAME, NONE_RGB)]
    assert legend_entries([39.0, 1.0]) == [("wall", (174, 199, 232)), ("otherfurniture", (82, 84, 163))]


# ----------------------------------------------------------------------------- figure layout


class TenPixelFont:
    """Text 10 pixels wide per character."""

    def getlength(self, text: str) -> float:
        return 10.0 * len(text)


def test_legend_wraps_when_the_next_entry_would_cross_the_right_padding():
    entries = [("ab", (1, 1, 1)), ("abc", (2, 2, 2)), ("a", (3, 3, 3)), ("a", (4, 4, 4))]
    # widths SWATCH + 4 + text + 12: 50, 60, 40, 40; the line ends at 120 - PAD = 112
    assert figure._legend_layout(entries, 120, TenPixelFont()) == [(8, 0), (8, 20), (68, 20), (8, 40)]
    # an entry that alone is wider than the line still starts it (no empty line first)
    assert figure._legend_layout([("x" * 30, (0, 0, 0)), ("y", (0, 0, 0))], 120, TenPixelFont()) == [(8, 0), (8, 20)]
    # 8 + 50 + 50 = 108: fits a line ending at 116 - PAD exactly, not one ending a pixel earlier
    two = [("ab", (0, 0, 0)), ("ab", (0, 0, 0))]
    assert figure._legend_layout(two, 116, TenPixelFont()) == [(8, 0), (58, 0)]
    assert figure._legend_layout(two, 115, TenPixelFont()) == [(8, 0), (8, 20)]


def test_footer_height_adds_up_the_legend_lines_colour_bar_and_note(monkeypatch):
    monkeypatch.setattr(figure, "_font", lambda size: TenPixelFont())
    image = np.zeros((4, 4, 3), np.uint8)
    two_lines = [("ab", (1, 1, 1)), ("abc", (2, 2, 2))]
    assert footer_height(Panel("t", image), 120) == PAD
    assert footer_height(Panel("t", image, legend=two_lines), 120) == 20 + LINE + PAD
    assert footer_height(Panel("t", image, legend=two_lines[:1]), 120) == LINE + PAD
    bar = (0.0, 1.0, "viridis", "c")
    assert footer_height(Panel("t", image, colorbar=bar), 120) == COLORBAR_HEIGHT + LINE + 4 + PAD
    assert footer_height(Panel("t", image, note="n"), 120) == LINE + PAD
    assert footer_height(Panel("t", image, two_lines, bar, "n"), 120) == 20 + 3 * LINE + 4 + 16 + PAD
    assert footer_height(Panel("t", image, legend=[]), 120) == PAD


def _solid(rgb, size=(120, 90), channels: int = 3) -> np.ndarray:
    return np.tile(np.asarray((*rgb, 255)[:channels], np.uint8), (size[1], size[0], 1))


def _font13():
    return ImageFont.load_default(size=13)


def test_draw_panel_places_title_image_swatches_and_note_to_the_pixel():
    legend = [("wall", (174, 199, 232)), ("chair", (188, 189, 34))]
    panel = Panel("Title", _solid((10, 200, 30), channels=4), legend=legend, note="a note")
    footer = footer_height(panel, 300)
    tile = draw_panel(panel, 300, 90, footer)
    assert tile.shape == (TITLE_HEIGHT + 90 + footer, 300, 3) and tile.dtype == np.uint8
    assert (tile[:6] == WHITE).all()  # the title starts 6 pixels down
    title = tile[6:TITLE_HEIGHT]
    assert title.min() == 0 and (title[:, :PAD] == WHITE).all()  # black text from x = PAD
    assert (tile[TITLE_HEIGHT:TITLE_HEIGHT + 90] == (10, 200, 30)).all()  # the RGB of an RGBA image, unscaled
    y = TITLE_HEIGHT + 90 + 4
    font = _font13()
    x2 = PAD + SWATCH + 4 + int(font.getlength("wall")) + 12
    for x, rgb in ((PAD, legend[0][1]), (x2, legend[1][1])):
        assert (tile[y + 2:y + 2 + SWATCH, x:x + SWATCH] == rgb).all(), rgb
        # one pixel around the swatch is background
        assert (tile[y + 1, x:x + SWATCH] == WHITE).all() and (tile[y + 2 + SWATCH, x:x + SWATCH] == WHITE).all()
        assert (tile[y + 2:y + 2 + SWATCH, x - 1] == WHITE).all()
        assert (tile[y + 2:y + 2 + SWATCH, x + SWATCH] == WHITE).all()
        assert tile[y + 2:y + 2 + LINE - 4, x + SWATCH + 4:x + SWATCH + 30].min() == 0  # the name beside it
    note = tile[y + LINE:]
    assert (note == WHITE).all(-1).mean() > 0.5
    dark = note.min(axis=(0, 1))
    assert tuple(dark) == (60, 60, 60)  # grey note text under the legend
    assert (tile[y + LINE:y + LINE + 2] == WHITE).all() and (note[:, :PAD] == WHITE).all()


def test_draw_panel_colour_bar_spans_vmin_to_vmax_between_its_labels():
    panel = Panel("U", _solid((0, 0, 0)), colorbar=(0.125, 0.875, "viridis", "sigma"))
    width = 300
    tile = draw_panel(panel, width, 90, footer_height(panel, width))
    font = _font13()
    y = TITLE_HEIGHT + 90 + 4
    x0 = PAD + int(font.getlength("0.125")) + 6
    x1 = width - PAD - int(font.getlength("0.875")) - 6
    bar = tile[y + 2:y + 2 + COLORBAR_HEIGHT, x0:x1]
    ramp = scalar_colors(np.linspace(0.125, 0.875, x1 - x0), 0.125, 0.875)
    np.testing.assert_array_equal(bar, np.broadcast_to(ramp, bar.shape))
    assert (tile[y + 2:y + 2 + COLORBAR_HEIGHT, x0 - 1] == WHITE).all()
    assert (tile[y + 2:y + 2 + COLORBAR_HEIGHT, x1] == WHITE).all()
    assert (tile[y + 1, x0:x1] == WHITE).all() and (tile[y + 2 + COLORBAR_HEIGHT, x0:x1] == WHITE).all()
    assert tile[y + 2:y + 2 + COLORBAR_HEIGHT, PAD:x0 - 6].min() == 0  # "0.125" left of the bar
    assert tile[y + 2:y + 2 + COLORBAR_HEIGHT, x1 + 6:width - PAD].min() == 0  # "0.875" right of it
    caption = tile[y + COLORBAR_HEIGHT + 4:y + COLORBAR_HEIGHT + LINE + 4]
    assert caption[:, x0:].min() == 0 and (caption[:, :x0] == WHITE).all()  # the caption under the bar


def test_draw_panel_scales_an_image_to_the_tile_and_keeps_3_significant_digits():
    panel = Panel("S", _solid((200, 30, 40), size=(60, 45)), colorbar=(0.123456, 12345.0, "viridis", ""))
    tile = draw_panel(panel, 100, 75, footer_height(panel, 100))
    assert (tile[TITLE_HEIGHT:TITLE_HEIGHT + 75] == (200, 30, 40)).all()  # 60 x 45 scaled to 100 x 75
    y = TITLE_HEIGHT + 75 + 4
    x0 = PAD + int(_font13().getlength("0.123")) + 6
    x1 = 100 - PAD - int(_font13().getlength("1.23e+04")) - 6
    assert x1 - x0 < 2  # too narrow for a bar: a 2-pixel ramp, vmin then vmax
    bottom = tile[y + 1 + COLORBAR_HEIGHT]  # the bar's last row, below the labels' glyphs
    np.testing.assert_array_equal(bottom[x0:x0 + 2], scalar_colors(np.array([0.0, 1.0]), 0.0, 1.0))
    assert (bottom[x0 + 2] == WHITE).all() and (bottom[x0 - 1] == WHITE).all()


def test_figure_tiles_share_the_width_left_to_right_without_a_hole():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    panels = [Panel(f"p{i}", _solid(c, size=(40, 20))) for i, c in enumerate(colours)]
    fig = compose_panels(panels, columns=3, tile_width=101)
    assert fig.shape[1] == 303
    h1 = TITLE_HEIGHT + round(101 * 20 / 40) + footer_height(panels[0], 101)
    h2 = TITLE_HEIGHT + round(152 * 20 / 40) + footer_height(panels[3], 152)
    assert fig.shape[0] == h1 + h2
    for i, (x0, x1) in enumerate([(0, 101), (101, 202), (202, 303)]):
        assert (fig[TITLE_HEIGHT:TITLE_HEIGHT + 50, x0:x1] == colours[i]).all(), i
    # the second row: 303 pixels in two tiles, the first one pixel wider
    assert (fig[h1 + TITLE_HEIGHT:h1 + TITLE_HEIGHT + 76, 0:152] == colours[3]).all()
    assert (fig[h1 + TITLE_HEIGHT:h1 + TITLE_HEIGHT + 76, 152:303] == colours[4]).all()
    two = compose_panels(panels[:2], columns=3, tile_width=50)
    assert two.shape == (TITLE_HEIGHT + 25 + footer_height(panels[0], 50), 100, 3)
    three = compose_panels(panels[:3], columns=3, tile_width=50)
    assert three.shape[1] == 150
    # the row's footer is its tallest panel's
    rows = compose_panels([Panel("a", _solid(colours[0], (40, 20))), Panel("b", _solid(colours[1], (40, 20)),
                                                                            note="n")], columns=2, tile_width=40)
    assert rows.shape[0] == TITLE_HEIGHT + 20 + LINE + PAD
    with pytest.raises(ValueError, match=r"^compose_panels needs at least one panel$"):
        compose_panels([])


# ----------------------------------------------------------------------------- camera


def _box(lo, hi) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_camera_looking_level_along_the_short_side(dtype):
    """Elevation 0, azimuth 0 on a 4 x 2 x 1 box: looking along +y; right = +x, up = +z."""
    xyz = _box((0.0, 0.0, 0.0), (4.0, 2.0, 1.0)).astype(dtype)
    cam = fit_camera(xyz, (400, 200), elevation_deg=0.0, azimuth_deg=0.0, margin=0.25)
    np.testing.assert_allclose(cam.up, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(cam.center, [2.0, 1.0, 0.5], atol=1e-12)
    radius = math.sqrt(16 + 4 + 1) / 2 + 1
    np.testing.assert_allclose(cam.eye, [2.0, 1.0 - (radius + 1), 0.5], atol=1e-12)
    # projected half extents 2 (x) and 0.5 (z); a 2:1 tile needs half height 1; then 25 % margin
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-2.5, 2.5, -1.25, 1.25], atol=1e-12)
    assert cam.near == 0.01
    np.testing.assert_allclose(cam.far, 2 * radius + 1 + 1.0, atol=1e-12)  # depth |y - 1| <= 1


def test_camera_turns_with_the_azimuth_and_to_the_scenes_short_side():
    tall = _box((0.0, 0.0, 0.0), (2.0, 4.0, 1.0))  # short side along x: looking along +x, right = -y
    cam = fit_camera(tall, (400, 200), elevation_deg=0.0, azimuth_deg=0.0, margin=0.0)
    np.testing.assert_allclose(cam.up, [0, 0, 1], atol=1e-12)
    radius = math.sqrt(21) / 2 + 1
    np.testing.assert_allclose(cam.eye, [1.0 - (radius + 1), 2.0, 0.5], atol=1e-12)
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-2, 2, -1, 1], atol=1e-12)
    square = _box((0.0, 0.0, 0.0), (2.0, 2.0, 2.0))  # a tie counts x as the short side
    np.testing.assert_allclose(fit_camera(square, (100, 100), 0.0, 0.0, 0.0).eye[1], 1.0, atol=1e-12)
    # azimuth 90 turns the view direction from +y to -x
    wide = _box((0.0, 0.0, 0.0), (4.0, 2.0, 1.0))
    cam = fit_camera(wide, (200, 400), elevation_deg=0.0, azimuth_deg=90.0, margin=0.0)
    radius = math.sqrt(21) / 2 + 1
    np.testing.assert_allclose(cam.eye, [2.0 + (radius + 1), 1.0, 0.5], atol=1e-12)
    # right = (-1, 0, 0) x z = +y: half width 1 (y), half height 0.5 (z) -> 1:2 tile: half height 2
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-1, 1, -2, 2], atol=1e-12)


def test_camera_looking_down_centres_the_window_on_the_projected_extent():
    """Elevation 30 on the 4 x 2 x 1 box: d = (0, cos 30, -sin 30), right = +x, up = (0, sin 30, cos 30)."""
    xyz = _box((0.0, 0.0, 0.0), (4.0, 2.0, 1.0))
    s, c = 0.5, math.sqrt(3) / 2
    cam = fit_camera(xyz, (100, 100), elevation_deg=30.0, azimuth_deg=0.0, margin=0.0)
    np.testing.assert_allclose(cam.up, [0, s, c], atol=1e-12)
    rel = xyz - [2.0, 1.0, 0.5]
    v = rel @ np.array([0, s, c])
    w = rel @ np.array([0, c, -s])
    cv = (v.min() + v.max()) / 2  # 0 here by symmetry of the box
    half = max(2.0, (v.max() - v.min()) / 2)
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-half, half, -half, half], atol=1e-12)
    radius = math.sqrt(21) / 2 + 1
    target = np.array([2.0, 1.0, 0.5]) + cv * np.array([0, s, c])
    np.testing.assert_allclose(cam.center, target, atol=1e-12)
    np.testing.assert_allclose(cam.eye, target - np.array([0, c, -s]) * (radius + 1), atol=1e-12)
    np.testing.assert_allclose(cam.far, 2 * radius + 1 + np.abs(w).max(), atol=1e-12)
    # an L-shaped cloud: the projected extent is off the box centre, and the window follows it
    ell = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    cam = fit_camera(ell, (100, 100), elevation_deg=30.0, azimuth_deg=0.0, margin=0.0)
    rel = ell - [2.0, 1.0, 0.5]
    u, v = rel[:, 0], rel @ np.array([0, s, c])
    target = np.array([2.0, 1.0, 0.5]) + (u.min() + u.max()) / 2 * np.array([1, 0, 0]) \
        + (v.min() + v.max()) / 2 * np.array([0, s, c])
    np.testing.assert_allclose(cam.center, target, atol=1e-12)
    assert abs((v.min() + v.max()) / 2) > 0.1


def test_camera_turned_from_the_short_x_side_and_of_a_scene_tall_on_screen():
    tall = _box((0.0, 0.0, 0.0), (2.0, 4.0, 1.0))  # short side x: h = (cos 60, sin 60) at azimuth 60
    cam = fit_camera(tall, (100, 100), elevation_deg=0.0, azimuth_deg=60.0, margin=0.0)
    d = np.array([0.5, math.sqrt(3) / 2, 0.0])
    np.testing.assert_allclose((cam.center - cam.eye) / np.linalg.norm(cam.center - cam.eye), d, atol=1e-12)
    # 4 x 2 x 10 seen 30 degrees down: the window's height is what binds (half height v = 0.5 * 1 + cos 30 * 5)
    towering = _box((0.0, 0.0, 0.0), (4.0, 2.0, 10.0))
    cam = fit_camera(towering, (100, 100), elevation_deg=30.0, azimuth_deg=0.0, margin=0.0)
    half = 0.5 + math.sqrt(3) / 2 * 5
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-half, half, -half, half], atol=1e-12)


def test_camera_of_float32_points_is_computed_in_float64():
    xyz = (np.random.default_rng(3).normal(size=(50, 3)) * [3.1, 1.7, 0.9]).astype(np.float32)
    a, b = fit_camera(xyz, (320, 240)), fit_camera(xyz.astype(np.float64), (320, 240))
    for field in ("center", "eye", "up", "left", "right", "bottom", "top", "near", "far"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert a.center.dtype == np.float64


def test_camera_window_follows_an_asymmetric_cloud_seen_at_an_angle():
    """An L-shaped cloud from the default 55 degrees down, turned 25: the window is centred on the
    points' projected extent, which is off the bounding box centre on both image axes."""
    ell = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.2, 0.9]])
    cam = fit_camera(ell, (160, 90), margin=0.1)
    el, az = math.radians(55), math.radians(25)
    d = np.array([-math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
    right = np.cross(d, [0, 0, 1]) / np.linalg.norm(np.cross(d, [0, 0, 1]))
    up = np.cross(right, d)
    centre = np.array([2.0, 1.0, 0.5])
    u, v = (ell - centre) @ right, (ell - centre) @ up
    cu, cv = (u.min() + u.max()) / 2, (v.min() + v.max()) / 2
    assert abs(cu) > 0.1 and abs(cv) > 0.1
    np.testing.assert_allclose(cam.center, centre + cu * right + cv * up, atol=1e-12)
    hw, hh = (u.max() - u.min()) / 2, (v.max() - v.min()) / 2
    hw, hh = max(hw, hh * 160 / 90), max(hh, hw * 90 / 160)
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-1.1 * hw, 1.1 * hw, -1.1 * hh, 1.1 * hh],
                               atol=1e-12)


def test_camera_of_a_single_point_has_a_tiny_finite_window():
    cam = fit_camera(np.array([[1.0, 2.0, 3.0]]), (300, 100), elevation_deg=0.0, azimuth_deg=0.0, margin=0.0)
    np.testing.assert_allclose([cam.left, cam.right, cam.bottom, cam.top], [-3e-6, 3e-6, -1e-6, 1e-6], rtol=1e-9)
    # zero extent: x counts as the short side, so the camera looks along +x from radius + 1 = 2 away
    np.testing.assert_allclose(cam.center, [1, 2, 3])
    np.testing.assert_allclose(cam.eye, [-1, 2, 3])
    np.testing.assert_allclose(cam.far, 3.0)
    for bad in (np.array([[0.0, np.inf, 0.0]]), np.zeros((0, 3))):
        with pytest.raises(ValueError, match=r"^fit_camera needs at least one point, all finite$"):
            fit_camera(bad, (10, 10))
    default = fit_camera(_box((0, 0, 0), (4, 2, 1)), (100, 100))  # 55 degrees down, turned 25 degrees
    el, az = math.radians(55), math.radians(25)
    d = np.array([-math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), -math.sin(el)])
    np.testing.assert_allclose((default.center - default.eye) / np.linalg.norm(default.center - default.eye), d,
                               atol=1e-12)
    right = np.cross(d, [0, 0, 1]) / np.linalg.norm(np.cross(d, [0, 0, 1]))
    np.testing.assert_allclose(default.up, np.cross(right, d), atol=1e-12)
    rel = _box((0, 0, 0), (4, 2, 1)) - default.center
    u, v = rel @ right, rel @ default.up
    half = max(u.max() - u.min(), v.max() - v.min()) / 2 * 1.04  # square tile; default margin 4 %
    np.testing.assert_allclose([default.left, default.right, default.bottom, default.top], [-half, half, -half, half],
                               atol=1e-12)


# ----------------------------------------------------------------------------- a tile, transcribed


def _expected_tile(panel: Panel, width: int, image_height: int, footer: int) -> np.ndarray:
    """The tile the figure module documents, drawn here with PIL directly: white, an 18 px black title
    at (8, 6), the RGB image scaled (Lanczos) to the tile under a 30 px title band, then 4 px lower the
    legend (14 px swatches, name 4 px right of it, 12 px gap, lines of 20 px wrapping at width - 8), a
    16 px colour bar between its 3-digit limits with the caption under it, and a grey (60) note."""
    from PIL import Image, ImageDraw

    f13, f18 = ImageFont.load_default(size=13), ImageFont.load_default(size=18)
    tile = Image.new("RGB", (width, 30 + image_height + footer), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    draw.text((8, 6), panel.title, fill=(0, 0, 0), font=f18)
    image = Image.fromarray(np.asarray(panel.image)[..., :3].astype(np.uint8))
    tile.paste(image.resize((width, image_height), Image.LANCZOS) if image.size != (width, image_height) else image,
               (0, 30))
    y = 30 + image_height + 4
    if panel.legend:
        x, line = 8, 0
        for name, rgb in panel.legend:
            w = 14 + 4 + int(f13.getlength(name)) + 12
            if x > 8 and x + w > width - 8:
                x, line = 8, line + 20
            draw.rectangle((x, y + line + 2, x + 13, y + line + 15), fill=tuple(rgb))
            draw.text((x + 18, y + line + 2), name, fill=(0, 0, 0), font=f13)
            x += w
        y += line + 20
    if panel.colorbar:
        vmin, vmax, cmap, caption = panel.colorbar
        lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
        x0, x1 = 8 + int(f13.getlength(lo)) + 6, width - 8 - int(f13.getlength(hi)) - 6
        ramp = scalar_colors(np.linspace(vmin, vmax, max(x1 - x0, 2)), vmin, vmax, cmap)
        tile.paste(Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (16, len(ramp), 3)))), (x0, y + 2))
        draw.text((8, y + 2), lo, fill=(0, 0, 0), font=f13)
        draw.text((x1 + 6, y + 2), hi, fill=(0, 0, 0), font=f13)
        draw.text((x0, y + 20), caption, fill=(0, 0, 0), font=f13)
        y += 40
    if panel.note:
        draw.text((8, y + 2), panel.note, fill=(60, 60, 60), font=f13)
    return np.asarray(tile)


def _gradient(width: int, height: int, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    if channels == 4:
        rgb = np.concatenate([rgb, np.zeros((height, width, 1), np.int64)], -1)  # fully transparent
    return rgb.astype(np.int64)  # integers, not yet uint8


@pytest.mark.parametrize("width", [260, 420])
def test_draw_panel_is_the_documented_layout_pixel_for_pixel(width):
    legend = [("wall", (174, 199, 232)), ("chair", (188, 189, 34)), ("shower curtain", (158, 218, 229)),
              ("otherfurniture", (82, 84, 163)), ("other / unannotated", NONE_RGB)]
    panels = [Panel("Predicted semantics", _gradient(90, 60, channels=4), legend=legend, note="a note below"),
              Panel("Uncertainty", _gradient(90, 60), colorbar=(0.0123, 4.5678, "magma", "sigma (m)"), note="n"),
              Panel("Both", _gradient(width, 120), legend=legend[:2], colorbar=(-1.0, 1.0, "viridis", "c"))]
    for panel in panels:
        footer = footer_height(panel, width)
        np.testing.assert_array_equal(draw_panel(panel, width, 120, footer), _expected_tile(panel, width, 120, footer),
                                      err_msg=panel.title)


def test_footer_height_measures_the_legend_in_the_13_px_font():
    font = _font13()
    names = ["wall", "shower curtain", "chair"]
    fit = PAD + sum(SWATCH + 4 + int(font.getlength(n)) + 12 for n in names) + PAD  # one line exactly
    entries = [(n, (0, 0, 0)) for n in names]
    image = np.zeros((4, 4, 3), np.uint8)
    assert footer_height(Panel("t", image, legend=entries), fit) == LINE + PAD
    assert footer_height(Panel("t", image, legend=entries), fit - 1) == 2 * LINE + PAD


def test_figure_rows_of_seven_panels_mixed_shapes_and_legends():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
               (90, 90, 90)]
    panels = [Panel(f"p{i}", _solid(c, size=(40, 40 if i == 1 else 20))) for i, c in enumerate(colours)]
    panels[4].legend = [("wall", (174, 199, 232))] * 6  # wraps in a 100 px tile
    fig = compose_panels(panels, columns=3, tile_width=100)  # rows of 3, 2 and 2 panels
    assert fig.shape[1] == 300
    # each row takes its first panel's aspect ratio: row 1 is 100 * 20 / 40 = 50 px high (panel 1 is squeezed)
    h1 = TITLE_HEIGHT + 50 + PAD
    assert (fig[TITLE_HEIGHT:TITLE_HEIGHT + 50, 100:200] == colours[1]).all()
    h2 = TITLE_HEIGHT + 75 + footer_height(panels[4], 150)
    assert footer_height(panels[4], 150) > PAD  # the row is as tall as its legend needs
    for i, (x0, x1) in ((3, (0, 150)), (4, (150, 300))):
        assert (fig[h1 + TITLE_HEIGHT:h1 + TITLE_HEIGHT + 75, x0:x1] == colours[i]).all(), i
    for i, (x0, x1) in ((5, (0, 150)), (6, (150, 300))):  # the third row holds the last two panels
        assert (fig[h1 + h2 + TITLE_HEIGHT:h1 + h2 + TITLE_HEIGHT + 75, x0:x1] == colours[i]).all(), i
    assert fig.shape[0] == h1 + h2 + TITLE_HEIGHT + 75 + PAD
    # tiles of unequal width: the image height follows the first (wider) tile, 152 * 40 / 40
    square = [Panel("a", _solid(colours[0], (40, 40))), Panel("b", _solid(colours[1], (40, 40)))]
    assert compose_panels(square, columns=2, tile_width=76)[TITLE_HEIGHT:].shape[0] == 76 + PAD
    odd = compose_panels(square * 2 + square[:1], columns=3, tile_width=101)
    assert odd.shape[0] == 2 * TITLE_HEIGHT + 101 + 152 + 2 * PAD
    one = compose_panels([square[0]], columns=3, tile_width=50)
    assert one.shape == (TITLE_HEIGHT + 50 + PAD, 50, 3)


def test_figure_defaults_to_three_columns_of_480_pixels():
    panels = [Panel(f"p{i}", _solid((10 * i, 0, 0), size=(48, 36))) for i in range(4)]
    fig = compose_panels(panels)
    assert fig.shape == (2 * (TITLE_HEIGHT + 540 + PAD), 1440, 3)  # rows of 2: tiles 720 wide, 540 high
