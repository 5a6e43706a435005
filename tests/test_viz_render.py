"""Offscreen rendering: the file protocol between ``render_views`` and its fresh interpreter
(with a stand-in renderer), its errors, and open3d's renderer itself on a few points and one
triangle (exact colours, one colouring per image, white background, point size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minkseg.viz.render as render

WHITE = (255, 255, 255)


def fake_renderer(xyz, faces, colours, size, point_size):
    """Image k: colouring k's first colour everywhere, with the inputs written into pixel (0, 0)."""
    assert xyz.dtype == np.float32 and faces.dtype == np.int32 and colours.dtype == np.uint8
    assert isinstance(size, tuple) and isinstance(point_size, float)
    images = np.tile(colours[:, :1, None, :], (1, size[1], size[0], 1))
    images[:, 0, 0] = (len(xyz), len(faces), int(point_size))
    return images


def test_render_views_hands_the_scene_to_a_fresh_interpreter_and_reads_its_images(monkeypatch):
    calls, size = [], [5, 4]

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        with np.load(cmd[-2]) as z:
            assert z["xyz"].dtype == np.float32 and z["faces"].dtype == np.int32 and z["size"].tolist() == size
        render._main(cmd[-2], cmd[-1])  # what `python -m minkseg.viz.render IN OUT` runs
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(render.subprocess, "run", run)
    monkeypatch.setattr(render, "_render_in_this_process", fake_renderer)
    xyz = np.arange(12, dtype=np.float64).reshape(4, 3)
    red, blue = np.tile([[255, 0, 0]], (4, 1)), np.tile([[0, 0, 255]], (4, 1))
    images = render.render_views(xyz, [[0, 1, 2], [1, 2, 3]], [red, blue], size=(5, 4), point_size=7.0, timeout=12)
    assert len(images) == 2 and images[0].shape == (4, 5, 3)
    assert tuple(images[0][0, 0]) == (4, 2, 7) and tuple(images[0][1, 1]) == (255, 0, 0)
    assert tuple(images[1][3, 4]) == (0, 0, 255)
    ((cmd, kwargs),) = calls
    assert cmd[:3] == [sys.executable, "-m", "minkseg.viz.render"]
    assert Path(cmd[3]).name == "in.npz" and Path(cmd[4]).name == "out.npz"
    assert kwargs == {"capture_output": True, "text": True, "timeout": 12}
    assert not Path(cmd[3]).parent.exists()  # the exchange folder is removed afterwards
    # without faces: points; default size 480 x 360, point size 3, five minutes
    calls.clear()
    size = [480, 360]
    (image,) = render.render_views(xyz, None, [red])
    assert image.shape == (360, 480, 3) and tuple(image[0, 0]) == (4, 0, 3) and calls[0][1]["timeout"] == 300


def test_render_views_reports_a_failed_renderer_in_one_line(monkeypatch):
    def failing(stderr: str, code: int):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, code, "", stderr)

    xyz, rgb = np.zeros((1, 3)), [np.zeros((1, 3), np.uint8)]
    monkeypatch.setattr(render.subprocess, "run", failing("loading\nprobing\nVulkan: no device\n", 1))
    with pytest.raises(RuntimeError, match=r"^offscreen rendering failed: Vulkan: no device$"):
        render.render_views(xyz, None, rgb)
    monkeypatch.setattr(render.subprocess, "run", failing("", -11))
    with pytest.raises(RuntimeError, match=r"^offscreen rendering failed: exit status -11$"):
        render.render_views(xyz, None, rgb)
    # exit status 0 but no images written: a failure all the same
    monkeypatch.setattr(render.subprocess, "run", failing("", 0))
    with pytest.raises(RuntimeError, match=r"^offscreen rendering failed: exit status 0$"):
        render.render_views(xyz, None, rgb)


def test_the_render_entry_point_writes_exactly_the_named_file(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "_render_in_this_process", fake_renderer)
    src, dst = tmp_path / "in.npz", tmp_path / "result"
    np.savez(src, xyz=np.zeros((3, 3), np.float32), faces=np.zeros((1, 3), np.int32),
             colours=np.full((1, 3, 3), 9, np.uint8), size=np.asarray([3, 2]), point_size=np.float64(2.0))
    render._main(str(src), str(dst))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "result"]  # no ".npz" appended, no leftovers
    with np.load(dst) as z:
        assert z["images"].shape == (1, 2, 3, 3) and tuple(z["images"][0, 1, 1]) == (9, 9, 9)


def _colours(img: np.ndarray) -> dict[tuple[int, int, int], int]:
    values, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(c) for c in v): int(n) for v, n in zip(values, counts)}


def test_open3d_draws_each_colouring_alone_in_its_exact_colours():
    """Four points far apart (round dots of ``point_size`` pixels) and, as a mesh, one triangle."""
    xyz = np.array([[0, 0, 0], [4, 0, 0], [0, 2, 0], [4, 2, 1]], np.float32)
    red = np.tile(np.array([[230, 20, 20]], np.uint8), (4, 1))
    blue = np.tile(np.array([[20, 20, 230]], np.uint8), (4, 1))
    images = render._render_in_this_process(xyz, np.zeros((0, 3), np.int32), np.stack([red, blue]), (160, 120), 4.0)
    assert images.shape == (2, 120, 160, 3) and images.dtype == np.uint8
    for img, shown in zip(images, (red[0], blue[0])):
        colours = _colours(img)
        assert colours[WHITE] > 0.9 * img.shape[0] * img.shape[1]  # white background
        assert colours[tuple(shown)] >= 4 * 4  # each dot's core in exactly its colour (unlit, no tone mapping)
        # only this colouring is drawn: every other pixel blends white with this colour only
        drawn = img[(img != WHITE).any(-1)].astype(int)
        strong = int(np.argmax(shown))
        assert (drawn[:, strong] >= 230).all() and (drawn[:, 1] == drawn[:, 2 - strong]).all()
    # the camera is fitted: each dot is drawn where the fitted camera (for this tile's aspect) puts its point
    cam = render.fit_camera(xyz, (160, 120))
    d = (cam.center - cam.eye) / np.linalg.norm(cam.center - cam.eye)
    right = np.cross(d, cam.up)
    rel = xyz.astype(np.float64) - cam.center
    want = np.stack([(rel @ right - cam.left) / (cam.right - cam.left) * 160,
                     (cam.top - rel @ cam.up) / (cam.top - cam.bottom) * 120], 1)
    drawn = (images[0] != WHITE).any(-1)
    for x, y in want:
        x0, y0 = max(int(x) - 6, 0), max(int(y) - 6, 0)
        ys, xs = np.nonzero(drawn[y0:int(y) + 7, x0:int(x) + 7])
        assert len(xs) >= 4, (x, y)
        assert abs(x0 + xs.mean() + 0.5 - x) < 1.5 and abs(y0 + ys.mean() + 0.5 - y) < 1.5  # pixel centres
    assert drawn.sum() <= 4 * 7 * 7  # nothing else is drawn
    (big,) = render._render_in_this_process(xyz, np.zeros((0, 3), np.int32), red[None], (160, 120), 8.0)
    assert (big != WHITE).any(-1).sum() > 3 * (images[0] != WHITE).any(-1).sum()  # dots of twice the diameter
    (triangle,) = render._render_in_this_process(xyz[:3], np.array([[0, 1, 2]], np.int32), red[None, :3],
                                                 (160, 120), 1.0)
    colours = _colours(triangle)
    assert colours[(230, 20, 20)] > 0.2 * 160 * 120  # the fitted camera fills the tile with the triangle
    assert set(colours) <= {WHITE, (230, 20, 20)} or colours[(230, 20, 20)] + colours[WHITE] > 0.98 * 160 * 120
