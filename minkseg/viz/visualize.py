"""``minkseg visualize``: coloured meshes of ground truth and predictions, and one figure.

For one scene: ``<scene>_{gt_semantic,gt_instance,pred_semantic,pred_instance}.ply`` and,
for the probabilistic head, ``<scene>_uncertainty.ply`` (mean predicted sigma per vertex,
the paper's Fig. 5: high near instance boundaries), plus ``<scene>.png``: the input colours
and every colouring, rendered headless (:mod:`minkseg.viz.render`) from a top-down oblique
camera fitted to the scene, each panel titled, semantic panels with their class legend, the
uncertainty with a colour bar stating its limits. PLYs, PNG and viewer share
:mod:`minkseg.viz.colors`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from minkseg.inference.partition import is_pretrain_config, predict_partition
from minkseg.inference.predict import ScenePrediction, predict_scene
from minkseg.viz.colors import instance_colors, legend_entries, scalar_colors, semantic_colors
from minkseg.viz.figure import Panel, compose_panels
from minkseg.viz.render import render_views
from scannet_tools.io import atomic_path
from scannet_tools.prepare import load_prepared, prepare_scene, prepared_path
from scannet_tools.reader import read_scene

#: Rendered size of one view; rows of fewer panels show it larger, so it is rendered generously.
RENDER_SIZE = (720, 540)


@dataclass
class Colouring:
    """One way of colouring the scene's vertices, with what its figure panel needs to explain it."""

    key: str  # file name part: <scene>_<key>.ply
    title: str
    rgb: np.ndarray  # (N, 3) uint8
    legend: list[tuple[str, tuple[int, int, int]]] | None = None
    colorbar: tuple[float, float, str, str] | None = None
    note: str | None = None


def write_colored_ply(path: Path, xyz: np.ndarray, faces: np.ndarray, rgb: np.ndarray) -> None:
    v = np.empty(len(xyz), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1")])
    v["x"], v["y"], v["z"] = xyz.T
    v["red"], v["green"], v["blue"] = rgb.T
    f = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex"),
                 PlyElement.describe(f, "face", len_types={"vertex_indices": "u1"})]).write(str(tmp))


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG", optimize=True)


def scene_colourings(scene: dict, pred: ScenePrediction, input_rgb: np.ndarray) -> list[Colouring]:
    """The input colours, ground truth and prediction colourings of one prepared scene."""
    gt_sem = scene["nyu40"].astype(np.int64)
    gt_inst = scene["instance"].astype(np.int64)  # ScanNet ids from 1, -1 for none
    pred_inst = np.full(len(gt_sem), -1, np.int64)
    for k, p in enumerate(sorted(pred.instances, key=lambda p: p.confidence)):  # confident ones on top
        pred_inst[np.asarray(p.mask, bool)] = k
    out = [
        Colouring("input", "Input colours", np.asarray(input_rgb, np.uint8), note="the mesh's vertex colours"),
        Colouring("gt_semantic", "Ground-truth semantics", semantic_colors(gt_sem), legend=legend_entries(gt_sem)),
        Colouring("gt_instance", "Ground-truth instances", instance_colors(gt_inst - 1),
                  note=f"{len(np.unique(gt_inst[gt_inst > 0]))} instances; grey: none"),
        Colouring("pred_semantic", "Predicted semantics", semantic_colors(pred.semantic_nyu40),
                  legend=legend_entries(pred.semantic_nyu40)),
        Colouring("pred_instance", "Predicted instances", instance_colors(pred_inst),
                  note=f"{len(pred.instances)} instances; grey: none"),
    ]
    if pred.uncertainty is not None:
        u = np.asarray(pred.uncertainty, np.float64)
        lo, hi = float(np.nanmin(u)), float(np.nanmax(u))
        out.append(Colouring("uncertainty", "Uncertainty (mean predicted sigma)", scalar_colors(u, lo, hi),
                             colorbar=(lo, hi, "viridis", "mean sigma per vertex: high near boundaries")))
    return out


def partition_colourings(partition: np.ndarray, input_rgb: np.ndarray, components: int) -> list[Colouring]:
    """The input colours and the arg-max partition of every vertex (``minkseg pretrain`` checkpoints)."""
    used = len(np.unique(partition))
    return [Colouring("input", "Input colours", np.asarray(input_rgb, np.uint8), note="the mesh's vertex colours"),
            Colouring("partition", "Arg-max pretext partition", instance_colors(partition),
                      note=f"{used} of J = {components} mixture components hold a vertex")]


def render_figure(path: Path, xyz: np.ndarray, faces: np.ndarray | None, colourings: list[Colouring],
                  size: tuple[int, int] = RENDER_SIZE, columns: int = 3) -> None:
    """Render each colouring from one fitted camera and write the titled, explained panels as one PNG."""
    images = render_views(xyz, faces, [c.rgb for c in colourings], size=size)
    panels = [Panel(c.title, img, c.legend, c.colorbar, c.note) for c, img in zip(colourings, images)]
    write_png(path, compose_panels(panels, columns=columns))


def visualize_scene(model, cfg, scene_dir: Path, label_map: dict[str, int], out: Path, device: str = "cpu",
                    png: bool = True) -> list[Path]:
    """Write the coloured PLYs (and the PNG) of one raw scene; returns the written paths."""
    raw = read_scene(scene_dir)
    with tempfile.TemporaryDirectory() as tmp:
        f = prepared_path(tmp, raw.scene)
        prepare_scene(scene_dir, f, label_map, unknown="otherprop")  # a picture needs no refusal
        scene = load_prepared(f)
    if is_pretrain_config(cfg):  # a minkseg pretrain checkpoint: what its pretext learned
        colourings = partition_colourings(predict_partition(model, scene, cfg, device), raw.rgb,
                                          cfg.pretrain.components)
    else:
        pred: ScenePrediction = predict_scene(model, scene, cfg, device)
        colourings = scene_colourings(scene, pred, raw.rgb)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for c in colourings[1:]:  # the input colours are the raw mesh itself
        p = out / f"{raw.scene}_{c.key}.ply"
        write_colored_ply(p, raw.xyz, raw.faces, c.rgb)
        written.append(p)
    if png:
        p = out / f"{raw.scene}.png"
        try:
            render_figure(p, raw.xyz, raw.faces, colourings)
            written.append(p)
        except (RuntimeError, subprocess.TimeoutExpired) as e:  # no GL/Vulkan driver: the PLYs still stand
            print(f"warning: {p} not rendered ({e}); the PLY files are written", file=sys.stderr)
    return written
