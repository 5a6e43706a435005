"""``minkseg visualize`` without a renderer: the PLY and PNG files read back, each colouring's
colours, legend and note on a hand-built scene, and ``visualize_scene``'s files for a segmentation
and a pretraining checkpoint (prediction and rendering stood in, so the expected colours are known)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

import minkseg.viz.visualize as visualize
from minkseg.config import load_config
from minkseg.inference.instances import InstancePrediction
from minkseg.inference.predict import ScenePrediction
from minkseg.viz.colors import (
    NONE_RGB,
    instance_colors,
    instance_palette,
    legend_entries,
    scalar_colors,
    semantic_colors,
)
from minkseg.viz.figure import Panel, compose_panels
from minkseg.viz.visualize import partition_colourings, scene_colourings, write_colored_ply, write_png
from scannet_tools.labels import read_label_table
from scannet_tools.reader import read_scene

CHAIR, TABLE, WALL = 5, 7, 1


def _read_ply(path: Path):
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    return ply, xyz, rgb, np.stack(ply["face"].data["vertex_indices"]) if len(ply["face"].data) else np.zeros((0, 3))


def test_coloured_ply_reads_back_exactly(tmp_path):
    xyz = np.array([[0.5, -1.25, 2.0], [1e3, 0.0, -3.5], [0.1, 0.2, 0.3]])
    rgb = np.array([[255, 0, 7], [1, 2, 3], [160, 160, 160]], np.uint8)
    faces = np.array([[0, 1, 2], [2, 1, 0]])
    path = tmp_path / "sub" / "a.ply"
    write_colored_ply(path, xyz, faces, rgb)
    ply, got_xyz, got_rgb, got_faces = _read_ply(path)
    np.testing.assert_array_equal(got_xyz, xyz.astype(np.float32))
    np.testing.assert_array_equal(got_rgb, rgb)
    np.testing.assert_array_equal(got_faces, faces)
    props = {p.name: p for p in ply["vertex"].properties}
    assert [props[k].val_dtype for k in ("x", "red")] == ["f4", "u1"]
    face_prop = ply["face"].properties[0]
    assert (face_prop.name, face_prop.len_dtype, face_prop.val_dtype) == ("vertex_indices", "u1", "i4")
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ply"]  # written atomically, nothing left over


def test_png_reads_back_exactly(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    write_png(tmp_path / "f.png", image)
    with Image.open(tmp_path / "f.png") as img:
        assert img.format == "PNG" and img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def _scene_and_prediction(uncertainty: bool = True):
    scene = {"nyu40": np.array([CHAIR, CHAIR, TABLE, WALL, 0, 40], np.uint8),
             "instance": np.array([1, 1, 4, -1, 0, -1], np.int32)}  # ScanNet ids from 1; 0 and -1: none
    masks = [np.array([1, 1, 1, 0, 0, 0], bool), np.array([0, 0, 1, 1, 0, 0], bool)]
    pred = ScenePrediction("scene0001_00", np.array([CHAIR, TABLE, TABLE, WALL, WALL, 3]),
                           [InstancePrediction(masks[0], CHAIR, 0.9), InstancePrediction(masks[1], TABLE, 0.4)],
                           np.array([0.5, 0.25, np.nan, 1.5, 0.75, 0.5]) if uncertainty else None)
    return scene, pred


def test_scene_colourings_by_hand():
    scene, pred = _scene_and_prediction()
    rgb = np.arange(18).reshape(6, 3)
    out = scene_colourings(scene, pred, rgb)
    assert [c.key for c in out] == ["input", "gt_semantic", "gt_instance", "pred_semantic", "pred_instance",
                                    "uncertainty"]
    assert [c.title for c in out] == ["Input colours", "Ground-truth semantics", "Ground-truth instances",
                                      "Predicted semantics", "Predicted instances",
                                      "Uncertainty (mean predicted sigma)"]
    inp, gt_sem, gt_inst, pred_sem, pred_inst, unc = out
    assert inp.rgb.dtype == np.uint8 and (inp.rgb == rgb).all() and inp.note == "the mesh's vertex colours"
    assert inp.legend is None and inp.colorbar is None
    np.testing.assert_array_equal(gt_sem.rgb, semantic_colors(np.array([CHAIR, CHAIR, TABLE, WALL, 0, 40])))
    assert gt_sem.legend == [("wall", (174, 199, 232)), ("chair", (188, 189, 34)), ("table", (255, 152, 150)),
                             ("other / unannotated", NONE_RGB)]
    assert gt_sem.note is None and gt_sem.colorbar is None
    # ground-truth instance k (ScanNet id k + 1) has palette colour k; 0 and -1 are none (grey)
    palette = instance_palette(4)
    np.testing.assert_array_equal(gt_inst.rgb, [palette[0], palette[0], palette[3], NONE_RGB, NONE_RGB, NONE_RGB])
    assert gt_inst.note == "2 instances; grey: none" and gt_inst.legend is None
    np.testing.assert_array_equal(pred_sem.rgb, semantic_colors(pred.semantic_nyu40))
    assert pred_sem.legend == legend_entries(np.array([CHAIR, TABLE, WALL, 3]))
    # instances painted in rising confidence (the table 0.4 is k = 0, the chair 0.9 k = 1): the
    # confident chair is on top where they overlap (vertex 2)
    palette = instance_palette(2)
    np.testing.assert_array_equal(pred_inst.rgb, [palette[1], palette[1], palette[1], palette[0], NONE_RGB, NONE_RGB])
    assert pred_inst.note == "2 instances; grey: none"
    # uncertainty from its finite minimum to its maximum, NaN at the low end
    assert unc.colorbar == (0.25, 1.5, "viridis", "mean sigma per vertex: high near boundaries")
    np.testing.assert_array_equal(unc.rgb, scalar_colors(np.array([0.5, 0.25, 0.25, 1.5, 0.75, 0.5]), 0.25, 1.5))
    assert unc.note is None and unc.legend is None
    assert len(scene_colourings(scene, _scene_and_prediction(False)[1], rgb)) == 5  # margin head: no sigma


def test_partition_colourings_count_the_components_used():
    part = np.array([3, 3, 0, 7, 0])
    inp, colouring = partition_colourings(part, np.zeros((5, 3), np.uint8), 8)
    assert (inp.key, inp.title, inp.note) == ("input", "Input colours", "the mesh's vertex colours")
    assert (colouring.key, colouring.title) == ("partition", "Arg-max pretext partition")
    assert colouring.note == "3 of J = 8 mixture components hold a vertex"
    np.testing.assert_array_equal(colouring.rgb, instance_colors(part))


def fake_render_views(calls: list):
    def render_views(xyz, faces, colourings, size=(0, 0), **kw):
        calls.append((xyz, faces, colourings, size))
        return [np.tile(c[:1][None], (size[1], size[0], 1)) for c in colourings]
    return render_views


def test_render_figure_renders_each_colouring_once_from_one_call(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(visualize, "render_views", fake_render_views(calls))
    scene, pred = _scene_and_prediction()
    colourings = scene_colourings(scene, pred, np.full((6, 3), 9))
    xyz, faces = np.zeros((6, 3)), np.array([[0, 1, 2]])
    visualize.render_figure(tmp_path / "f.png", xyz, faces, colourings)
    ((got_xyz, got_faces, got_colours, size),) = calls
    assert got_xyz is xyz and got_faces is faces and size == (720, 540)
    assert all(a is c.rgb for a, c in zip(got_colours, colourings)) and len(got_colours) == 6
    with Image.open(tmp_path / "f.png") as img:
        fig = np.asarray(img.convert("RGB"))
    assert fig.shape[1] == 3 * 480  # three columns
    # each panel explained by its colouring's legend, colour bar and note, in three columns
    images = fake_render_views([])(xyz, faces, [c.rgb for c in colourings], size=(720, 540))
    want = compose_panels([Panel(c.title, image, c.legend, c.colorbar, c.note) for c, image in zip(colourings, images)],
                          columns=3)
    np.testing.assert_array_equal(fig, want)
    assert (fig == 9).all(-1).sum() > 100 * 100  # the input colours' panel
    visualize.render_figure(tmp_path / "g.png", xyz, faces, colourings[:2], size=(40, 30), columns=1)
    assert calls[-1][3] == (40, 30)
    with Image.open(tmp_path / "g.png") as img:
        assert img.size[0] == 480  # one column


@pytest.fixture()
def raw_scene(raw_root):
    scene_dir = sorted((raw_root / "scans").iterdir())[0]
    return scene_dir, read_scene(scene_dir), read_label_table(raw_root / "scannetv2-labels.combined.tsv")


def test_visualize_scene_writes_each_colouring_as_a_ply_of_the_raw_mesh(raw_scene, tmp_path, monkeypatch):
    scene_dir, raw, label_map = raw_scene
    cfg = load_config(None, ["model.backbone=MinkUNet14A"])
    seen, calls = [], []

    def predict_scene(model, scene, cfg_, device):
        seen.append((model, scene, cfg_, device))
        n = len(scene["xyz"])
        return ScenePrediction(raw.scene, np.full(n, TABLE), [InstancePrediction(np.arange(n) < 10, TABLE, 0.7)],
                               np.linspace(0.0, 1.0, n))

    monkeypatch.setattr(visualize, "predict_scene", predict_scene)
    monkeypatch.setattr(visualize, "render_views", fake_render_views(calls))
    out = tmp_path / "deep" / "out"
    written = visualize.visualize_scene("MODEL", cfg, scene_dir, label_map, out, device="DEV")
    keys = ["gt_semantic", "gt_instance", "pred_semantic", "pred_instance", "uncertainty"]
    assert written == [out / f"{raw.scene}_{k}.ply" for k in keys] + [out / f"{raw.scene}.png"]
    ((model, scene, cfg_, device),) = seen
    assert model == "MODEL" and cfg_ is cfg and device == "DEV" and len(scene["xyz"]) == len(raw.xyz)
    expected = {c.key: c.rgb for c in scene_colourings(scene, predict_scene("MODEL", scene, cfg, "DEV"), raw.rgb)}
    for key, path in zip(keys, written):
        _, xyz, rgb, faces = _read_ply(path)
        np.testing.assert_array_equal(xyz, raw.xyz)
        np.testing.assert_array_equal(faces, raw.faces)
        np.testing.assert_array_equal(rgb, expected[key], err_msg=key)
    ((xyz, faces, colourings, _),) = calls
    np.testing.assert_array_equal(xyz, raw.xyz)  # the raw mesh, read afresh
    np.testing.assert_array_equal(faces, raw.faces)
    assert len(colourings) == 6
    np.testing.assert_array_equal(colourings[0], raw.rgb)  # the figure's first panel: the input colours
    assert (out / f"{raw.scene}.png").is_file()
    # an existing folder is fine; png=False renders nothing
    again = visualize.visualize_scene("MODEL", cfg, scene_dir, label_map, out, png=False)
    assert again == written[:-1] and len(calls) == 1 and seen[-1][3] == "cpu"


@pytest.mark.parametrize("error", [RuntimeError("offscreen rendering failed: no Vulkan"),
                                   subprocess.TimeoutExpired(["python"], 300)])
def test_visualize_scene_keeps_the_plys_when_rendering_fails(raw_scene, tmp_path, monkeypatch, capsys, error):
    scene_dir, raw, label_map = raw_scene
    label_map = {k: v for k, v in label_map.items() if v != CHAIR}  # chairs outside the table: otherprop, not a refusal
    seen = []

    def predict_scene(model, scene, cfg_, device):
        seen.append(scene)
        return ScenePrediction(raw.scene, np.zeros(len(scene["xyz"]), np.int64), [])

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(visualize, "predict_scene", predict_scene)
    monkeypatch.setattr(visualize, "render_views", failing)
    written = visualize.visualize_scene(None, load_config(None, []), scene_dir, label_map, tmp_path)
    assert [p.name for p in written] == [f"{raw.scene}_{k}.ply" for k in
                                         ("gt_semantic", "gt_instance", "pred_semantic", "pred_instance")]
    png = tmp_path / f"{raw.scene}.png"
    assert not png.exists()
    assert capsys.readouterr().err == f"warning: {png} not rendered ({error}); the PLY files are written\n"
    nyu40 = seen[0]["nyu40"]
    assert CHAIR not in nyu40 and (nyu40 == 40).any()


def test_visualize_scene_of_a_pretraining_checkpoint_shows_its_partition(raw_scene, tmp_path, monkeypatch):
    scene_dir, raw, label_map = raw_scene
    cfg = load_config(None, ["model.head=partition", "pretrain.components=6"])
    seen = []

    def predict_partition(model, scene, cfg_, device):
        seen.append((model, cfg_, device))
        return np.arange(len(scene["xyz"])) % 4

    def no_prediction(*args):
        raise AssertionError("a pretraining checkpoint has no segmentation outputs")

    monkeypatch.setattr(visualize, "predict_partition", predict_partition)
    monkeypatch.setattr(visualize, "predict_scene", no_prediction)
    figures = []
    monkeypatch.setattr(visualize, "render_figure", lambda path, xyz, faces, colourings: figures.append(colourings))
    written = visualize.visualize_scene("M", cfg, scene_dir, label_map, tmp_path, device="D")
    assert written == [tmp_path / f"{raw.scene}_partition.ply", tmp_path / f"{raw.scene}.png"]
    ((inp, partition),) = figures
    assert partition.note == "4 of J = 6 mixture components hold a vertex"
    assert seen == [("M", cfg, "D")]
    _, xyz, rgb, _ = _read_ply(written[0])
    np.testing.assert_array_equal(rgb, instance_colors(np.arange(len(raw.xyz)) % 4))
