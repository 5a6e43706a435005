"""``minkseg visualize``: coloured meshes of ground truth and predictions, and an offscreen PNG.

For one scene: ``<scene>_{gt_semantic,gt_instance,pred_semantic,pred_instance}.ply`` and,
for the probabilistic head, ``<scene>_uncertainty.ply`` (mean predicted sigma per vertex,
the paper's Fig. 5: high near instance boundaries), plus ``<scene>.png`` with all panels
rendered headless by open3d's OffscreenRenderer.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from minkseg.inference.predict import ScenePrediction, predict_scene
from scannet_tools.io import atomic_path
from scannet_tools.labels import SEMANTIC_NYU40_IDS
from scannet_tools.prepare import load_prepared, prepare_scene, prepared_path
from scannet_tools.reader import read_scene


def semantic_colors(nyu40: np.ndarray) -> np.ndarray:
    """A fixed colour per benchmark class (tab20), grey for everything else."""
    import matplotlib

    palette = (np.asarray(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    lut = np.full((256, 3), 90, np.uint8)
    lut[list(SEMANTIC_NYU40_IDS)] = palette[: len(SEMANTIC_NYU40_IDS)]
    return lut[np.clip(nyu40, 0, 255)]


def instance_colors(instance: np.ndarray) -> np.ndarray:
    """A pseudo-random colour per instance id (stable across runs), grey for none (<= 0)."""
    rng = np.random.default_rng(12345)
    lut = rng.integers(40, 255, (int(instance.max(initial=0)) + 1, 3)).astype(np.uint8)
    out = lut[np.maximum(instance, 0)]
    out[instance <= 0] = 90
    return out


def scalar_colors(values: np.ndarray) -> np.ndarray:
    import matplotlib

    v = (values - values.min()) / max(float(np.ptp(values)), 1e-12)
    return (matplotlib.colormaps["viridis"](v)[:, :3] * 255).astype(np.uint8)


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


def render_pngs(png: Path, plys: list[Path], timeout: float = 300) -> None:
    """Render coloured PLYs into one PNG in a fresh process.

    open3d's software (llvmpipe) renderer can stall for minutes inside a process whose
    OpenMP runtime torch and MinkowskiEngine have been using; a clean interpreter renders
    in seconds, and the timeout keeps a broken GL/Vulkan setup from hanging the caller.
    """
    cmd = [sys.executable, "-m", "minkseg.viz.visualize", str(png), *map(str, plys)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.is_file():
        raise RuntimeError(f"offscreen rendering failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")


def _render_main(png: str, *plys: str) -> None:
    panels, xyz, faces = {}, None, None
    for p in plys:
        ply = PlyData.read(p)
        v = ply["vertex"].data
        xyz = np.stack([v["x"], v["y"], v["z"]], 1)
        faces = np.stack(ply["face"].data["vertex_indices"]) if len(ply["face"].data) else np.zeros((0, 3), int)
        name = Path(p).stem.split("_", 2)[-1].replace("_", " ")
        panels[name] = np.stack([v["red"], v["green"], v["blue"]], 1)
    render_panels(xyz, faces, panels, Path(png))


def render_panels(xyz: np.ndarray, faces: np.ndarray, panels: dict[str, np.ndarray], path: Path,
                  size: tuple[int, int] = (480, 360)) -> None:
    """Render each colouring of the mesh from the same bird's-eye camera; tile them into one PNG."""
    import open3d as o3d
    from PIL import Image, ImageDraw

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    renderer = o3d.visualization.rendering.OffscreenRenderer(*size)
    renderer.scene.set_background([1, 1, 1, 1])
    mat = o3d.visualization.rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    center = xyz.mean(0)
    extent = float(np.ptp(xyz, axis=0).max())
    eye = center + np.array([0.6, -0.9, 1.3]) * extent
    # All panels go into the scene once and are shown one at a time: clearing the scene and
    # re-adding geometry between frames stalls the software (llvmpipe) renderer for minutes.
    for name, rgb in panels.items():
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(xyz.astype(np.float64)),
                                         o3d.utility.Vector3iVector(faces.astype(np.int32)))
        mesh.vertex_colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255)
        renderer.scene.add_geometry(name, mesh, mat)
    renderer.setup_camera(50.0, center, eye, [0, 0, 1])
    tiles = []
    for name in panels:
        for other in panels:
            renderer.scene.show_geometry(other, other == name)
        img = Image.fromarray(np.asarray(renderer.render_to_image()))
        ImageDraw.Draw(img).text((8, 8), name, fill=(0, 0, 0))
        tiles.append(np.asarray(img))
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    canvas = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = t[..., :3]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def visualize_scene(model, cfg, scene_dir: Path, label_map: dict[str, int], out: Path, device: str = "cpu",
                    png: bool = True) -> list[Path]:
    """Write the coloured PLYs (and the PNG) of one raw scene; returns the written paths."""
    raw = read_scene(scene_dir)
    with tempfile.TemporaryDirectory() as tmp:
        f = prepared_path(tmp, raw.scene)
        prepare_scene(scene_dir, f, label_map, unknown="otherprop")  # a picture needs no refusal
        scene = load_prepared(f)
    pred: ScenePrediction = predict_scene(model, scene, cfg, device)
    pred_inst = np.zeros(len(raw.xyz), np.int64)
    for k, p in enumerate(sorted(pred.instances, key=lambda p: p.confidence)):  # confident ones on top
        pred_inst[np.asarray(p.mask, bool)] = k + 1
    panels = {
        "ground truth semantic": semantic_colors(scene["nyu40"].astype(np.int64)),
        "ground truth instances": instance_colors(np.maximum(scene["instance"], 0)),
        "predicted semantic": semantic_colors(pred.semantic_nyu40),
        "predicted instances": instance_colors(pred_inst),
    }
    if pred.uncertainty is not None:
        panels["uncertainty (mean sigma)"] = scalar_colors(pred.uncertainty)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rgb in panels.items():
        key = name.split(" (")[0].replace("ground truth", "gt").replace("predicted", "pred").replace(" ", "_")
        key = key.replace("instances", "instance")
        p = out / f"{raw.scene}_{key}.ply"
        write_colored_ply(p, raw.xyz, raw.faces, rgb)
        written.append(p)
    if png:
        p = out / f"{raw.scene}.png"
        try:
            render_pngs(p, list(written))
            written.append(p)
        except (RuntimeError, subprocess.TimeoutExpired) as e:  # no GL/Vulkan driver: the PLYs still stand
            print(f"warning: {p} not rendered ({e}); the PLY files are written", file=sys.stderr)
    return written


if __name__ == "__main__":  # python -m minkseg.viz.visualize OUT.png A.ply B.ply ...
    _render_main(*sys.argv[1:])
