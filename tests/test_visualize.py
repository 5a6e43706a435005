"""Figures: the colour scheme, the fitted camera, panel composition (legend, colour bar, no holes)
and ``visualize_scene`` end to end with open3d's offscreen renderer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from minkseg.viz.colors import (
    CLASS_LEGEND,
    NONE_RGB,
    OTHER_NAME,
    instance_colors,
    legend_entries,
    scalar_colors,
    semantic_colors,
)
from minkseg.viz.figure import TITLE_HEIGHT, Panel, compose_panels, draw_panel, footer_height, row_sizes
from minkseg.viz.render import fit_camera, render_views
from scannet_tools.labels import SEMANTIC_NYU40_IDS

CONFIGS = Path(__file__).parents[1] / "configs"
WHITE = np.array([255, 255, 255], np.uint8)


def _has_colour(img: np.ndarray, rgb, at_least: int = 1) -> bool:
    return int((img[..., :3] == np.asarray(rgb, np.uint8)).all(-1).sum()) >= at_least


# -- colours ---------------------------------------------------------------------------------

def test_the_twenty_benchmark_classes_have_distinct_vivid_colours_and_everything_else_is_grey():
    ids = np.asarray(SEMANTIC_NYU40_IDS)
    rgb = semantic_colors(ids).astype(int)
    assert len({tuple(c) for c in rgb}) == 20
    assert not (rgb == NONE_RGB).all(1).any()
    # wall and floor: the ScanNet benchmark colours readers know from papers
    assert tuple(semantic_colors(np.array([1, 2]))[0]) == (174, 199, 232)
    assert tuple(semantic_colors(np.array([1, 2]))[1]) == (152, 223, 138)
    others = np.array([0, 13, 15, 40, -1, 255, 256, 10_000])
    assert (semantic_colors(others) == NONE_RGB).all()
    assert [name for _, name, _ in CLASS_LEGEND][:2] == ["wall", "floor"] and len(CLASS_LEGEND) == 20


def test_instance_colours_are_stable_distinct_for_neighbours_and_grey_for_none():
    ids = np.arange(-2, 60)
    rgb = instance_colors(ids).astype(int)
    assert (rgb[:2] == NONE_RGB).all()
    inst = rgb[2:]
    assert (np.abs(np.diff(inst, axis=0)).max(1) > 60).all()  # id k and k+1 never look alike
    assert len({tuple(c) for c in inst}) == len(inst)
    assert (instance_colors(np.array([5, 3])) == instance_colors(np.array([3, 5]))[::-1]).all()


def test_scalar_colours_follow_explicit_limits():
    lo, hi = scalar_colors(np.array([0.0, 1.0]), 0.0, 1.0)
    clipped = scalar_colors(np.array([-5.0, 0.5, 7.0]), 0.0, 1.0)
    assert (clipped[0] == lo).all() and (clipped[2] == hi).all() and not (clipped[1] == lo).all()


def test_legend_lists_present_classes_in_benchmark_order_and_grey_for_the_rest():
    entries = legend_entries(np.array([5, 1, 1, 40, 0]))  # chair, wall, otherprop, unannotated
    assert [n for n, _ in entries] == ["wall", "chair", OTHER_NAME]
    assert entries[-1][1] == NONE_RGB and entries[0][1] == tuple(semantic_colors(np.array([1]))[0])
    assert legend_entries(np.array([1, 2])) == [(n, c) for n, c in legend_entries(np.array([2, 1]))]
    assert OTHER_NAME not in [n for n, _ in legend_entries(np.array([1, 2]))]


# -- camera ----------------------------------------------------------------------------------

def _project(cam, xyz):
    d = cam.center - cam.eye
    d /= np.linalg.norm(d)
    right = np.cross(d, cam.up)
    rel = xyz.astype(np.float64) - cam.center
    return rel @ right, rel @ cam.up


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fitted_camera_holds_every_point_and_fills_the_tile(dtype):
    rng = np.random.default_rng(0)
    xyz = (rng.random((500, 3)) * [9.0, 4.0, 2.5] + [-30.0, 12.0, 0.0]).astype(dtype)
    size = (480, 360)
    cam = fit_camera(xyz, size)
    assert cam.up[2] > 0 and np.isclose(np.linalg.norm(cam.up), 1)
    assert (cam.center - cam.eye)[2] < 0  # looking down
    u, v = _project(cam, xyz)
    assert (u >= cam.left).all() and (u <= cam.right).all() and (v >= cam.bottom).all() and (v <= cam.top).all()
    assert np.isclose((cam.right - cam.left) / (cam.top - cam.bottom), size[0] / size[1])
    # the scene spans the window on its tighter axis (up to the margin)
    share = max((u.max() - u.min()) / (cam.right - cam.left), (v.max() - v.min()) / (cam.top - cam.bottom))
    assert share > 0.9
    # near and far planes enclose the scene
    depth = (xyz.astype(np.float64) - cam.eye) @ ((cam.center - cam.eye) / np.linalg.norm(cam.center - cam.eye))
    assert (depth > cam.near).all() and (depth < cam.far).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fitted_camera_of_degenerate_scenes(dtype):
    for xyz in (np.zeros((1, 3)), np.array([[0, 0, 1.0], [2, 3, 1.0]]), np.array([[0, 0, 0], [0, 0, 3.0]])):
        cam = fit_camera(xyz.astype(dtype), (320, 240))
        assert np.isfinite([cam.left, cam.right, cam.bottom, cam.top]).all() and cam.right > cam.left
    with pytest.raises(ValueError, match="finite"):
        fit_camera(np.array([[0, 0, np.nan]], dtype), (320, 240))
    with pytest.raises(ValueError, match="at least one point"):
        fit_camera(np.zeros((0, 3), dtype), (320, 240))


# -- composition ----------------------------------------------------------------------------

def _solid(rgb, size=(120, 90)) -> np.ndarray:
    return np.tile(np.asarray(rgb, np.uint8), (size[1], size[0], 1))


def test_rows_are_balanced_and_never_leave_a_hole():
    assert row_sizes(5, 3) == [3, 2] and row_sizes(6, 3) == [3, 3] and row_sizes(4, 3) == [2, 2]
    assert row_sizes(7, 3) == [3, 2, 2] and row_sizes(2, 3) == [2] and row_sizes(0, 3) == []
    for n in range(1, 12):
        assert sum(row_sizes(n, 3)) == n and max(row_sizes(n, 3)) - min(row_sizes(n, 3)) <= 1


def test_five_panels_fill_the_figure_without_an_empty_tile():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    fig = compose_panels([Panel(f"p{i}", _solid(c)) for i, c in enumerate(colours)], columns=3, tile_width=120)
    assert fig.shape[1] == 360
    # every column band of every row shows a panel: the second row's two panels span the full width
    h_row1 = TITLE_HEIGHT + 90 + footer_height(Panel("p", _solid(colours[0])), 120)
    row2 = fig[h_row1:]
    assert _has_colour(fig[:h_row1, :120], colours[0], 80 * 80) and _has_colour(fig[:h_row1, 240:], colours[2], 80 * 80)
    assert _has_colour(row2[:, :180], colours[3], 150 * 100) and _has_colour(row2[:, 180:], colours[4], 150 * 100)
    for band in (row2[:, 150:170], row2[:, 340:360]):  # where a 3-column grid would have had a hole
        assert not (band == WHITE).all()


def test_semantic_panel_draws_a_swatch_per_legend_entry_below_the_image():
    entries = legend_entries(np.array([1, 2, 5, 40]))
    tile = draw_panel(Panel("Predicted semantics", _solid((255, 255, 255)), legend=entries), 300, 90,
                      footer_height(Panel("x", _solid((0, 0, 0)), legend=entries), 300))
    footer = tile[TITLE_HEIGHT + 90:]
    for _, rgb in entries:
        assert _has_colour(footer, rgb, 14 * 14 - 20), rgb
    assert _has_colour(tile[:TITLE_HEIGHT], (0, 0, 0))  # the title is written


def test_uncertainty_panel_draws_a_colour_bar_from_vmin_to_vmax():
    panel = Panel("Uncertainty", _solid((255, 255, 255)), colorbar=(0.1, 0.9, "viridis", "sigma"))
    tile = draw_panel(panel, 300, 90, footer_height(panel, 300))
    footer = tile[TITLE_HEIGHT + 90:]
    lo, hi = scalar_colors(np.array([0.1, 0.9]), 0.1, 0.9)
    assert _has_colour(footer, lo, 10) and _has_colour(footer, hi, 10)
    mid = scalar_colors(np.array([0.5]), 0.1, 0.9)[0]
    assert _has_colour(footer, mid, 10)


# -- rendering and the whole figure ----------------------------------------------------------

def test_offscreen_render_fills_the_tile_with_exact_palette_colours(raw_root):
    from scannet_tools.reader import read_scene

    scene_dir = sorted((raw_root / "scans").iterdir())[0]
    raw = read_scene(scene_dir, annotations=False)
    wall, chair = semantic_colors(np.array([1, 5]))
    coloured = np.where((np.arange(len(raw.xyz)) < len(raw.xyz) // 2)[:, None], wall, chair).astype(np.uint8)
    size = (320, 240)
    mesh, points = render_views(raw.xyz, raw.faces, [coloured], size=size)[0], \
        render_views(raw.xyz, None, [coloured], size=size)[0]
    for img in (mesh, points):
        assert img.shape == (240, 320, 3)
        drawn = ~(img == WHITE).all(-1)
        rows, cols = np.nonzero(drawn)
        span = max((cols.max() - cols.min() + 1) / size[0], (rows.max() - rows.min() + 1) / size[1])
        assert span > 0.85, span  # camera fitted: the scene spans (almost) the whole tile on one axis
    assert drawn.mean() > 0.05
    assert _has_colour(mesh, wall, 100) and _has_colour(mesh, chair, 100)  # no tone mapping
    assert mesh[~(mesh == WHITE).all(-1)].mean() < 250


def test_visualize_writes_plys_in_the_palette_and_a_figure_without_holes(raw_root, tmp_path):
    from minkseg.config import load_config
    from minkseg.models.build import build_model
    from minkseg.viz.visualize import visualize_scene
    from scannet_tools.labels import read_label_table

    cfg = load_config(CONFIGS / "synthetic_probabilistic.yaml", ["model.backbone=MinkUNet14A"])
    model = build_model(cfg).eval()  # untrained: the figure's structure is what is tested
    scene_dir = sorted((raw_root / "scans").iterdir())[0]
    label_map = read_label_table(raw_root / "scannetv2-labels.combined.tsv")
    written = visualize_scene(model, cfg, scene_dir, label_map, tmp_path)
    names = {p.name.split("_", 2)[-1] for p in written}
    assert {"gt_semantic.ply", "gt_instance.ply", "pred_semantic.ply", "pred_instance.ply",
            "uncertainty.ply"} <= names
    ply = PlyData.read(str(tmp_path / f"{scene_dir.name}_gt_semantic.ply"))["vertex"].data
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], 1)
    palette = {tuple(c) for _, _, c in CLASS_LEGEND} | {NONE_RGB}
    assert {tuple(int(v) for v in c) for c in np.unique(rgb, axis=0)} <= palette
    fig = np.asarray(Image.open(tmp_path / f"{scene_dir.name}.png").convert("RGB"))
    assert fig.shape[1] == 3 * 480
    half = fig.shape[0] // 2
    for r in range(2):  # six panels in two full rows: every tile shows a rendered scene
        for c in range(3):
            tile = fig[r * half + TITLE_HEIGHT:(r + 1) * half, c * 480:(c + 1) * 480]
            assert (~(tile == WHITE).all(-1)).mean() > 0.15, (r, c)
    # the ground truth's legend, under its image: a 14x14 swatch of every class the PLY shows
    by_colour = {c: name for _, name, c in CLASS_LEGEND} | {NONE_RGB: OTHER_NAME}
    entries = [(by_colour[c], c) for _, _, c in CLASS_LEGEND + ((0, "", NONE_RGB),)
               if _has_colour(rgb[None], c)]
    assert len(entries) >= 3
    top = TITLE_HEIGHT + 360
    footer = fig[top:top + footer_height(Panel("", fig, legend=entries), 480), 480:960]
    for name, c in entries:
        assert _has_colour(footer, c, 14 * 14 - 20), name
