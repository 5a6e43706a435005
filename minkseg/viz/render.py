"""Offscreen rendering of one mesh (or point cloud) in several colourings, camera fitted to the scene.

Every figure (``minkseg visualize``'s panels, ``minkseg compare``'s thumbnails) comes from
:func:`render_views`: the same top-down oblique orthographic camera for each colouring, the
view window fitted to the scene's projected extent, so a scene fills its tile whatever its
size. Colours are shown as given (unlit shader, no tone mapping): the pixels of a semantic
panel are exactly the palette's colours, which is what legends and tests rely on.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scannet_tools.io import atomic_path

#: Top-down oblique view: the camera looks down at this angle above the horizon (degrees).
ELEVATION_DEG = 55.0
#: ... and turned this far about the vertical from looking along the scene's short side.
AZIMUTH_DEG = 25.0
#: Share of the tile left free around the scene on its tighter side.
MARGIN = 0.04


@dataclass(frozen=True)
class OrthoCamera:
    """A look-at camera with an orthographic window ``[left, right] x [bottom, top]`` (scene units)."""

    center: np.ndarray  # (3,) point looked at
    eye: np.ndarray  # (3,) camera position
    up: np.ndarray  # (3,) image-up direction
    left: float
    right: float
    bottom: float
    top: float
    near: float
    far: float


def fit_camera(xyz: np.ndarray, size: tuple[int, int], elevation_deg: float = ELEVATION_DEG,
               azimuth_deg: float = AZIMUTH_DEG, margin: float = MARGIN) -> OrthoCamera:
    """Orthographic top-down oblique camera whose window holds every point of ``xyz`` with ``margin``.

    The view direction is ``d = (cos(el) * h, -sin(el))`` with ``h`` the horizontal unit vector
    along the bounding box's shorter side turned by ``azimuth_deg``, so the longer side runs
    across the (landscape) image. Image axes: ``right = normalize(d x z)``, ``up = right x d``.
    Points project to ``(p . right, p . up)``; the window is that extent's bounding rectangle,
    widened on one axis to the tile's aspect ``width / height`` and by ``margin`` on both.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0 or not np.isfinite(xyz).all():
        raise ValueError("fit_camera needs at least one point, all finite")
    lo, hi = xyz.min(0), xyz.max(0)
    center = (lo + hi) / 2
    extent = hi - lo
    short = np.array([1.0, 0.0]) if extent[0] <= extent[1] else np.array([0.0, 1.0])
    a = np.deg2rad(azimuth_deg)
    h = np.array([short[0] * np.cos(a) - short[1] * np.sin(a), short[0] * np.sin(a) + short[1] * np.cos(a)])
    el = np.deg2rad(elevation_deg)
    d = np.array([np.cos(el) * h[0], np.cos(el) * h[1], -np.sin(el)])  # looking down
    right = np.cross(d, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, d)
    rel = xyz - center
    u, v, w = rel @ right, rel @ up, rel @ d
    u0, u1, v0, v1 = u.min(), u.max(), v.min(), v.max()
    cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
    half_w, half_h = max((u1 - u0) / 2, 1e-6), max((v1 - v0) / 2, 1e-6)
    aspect = size[0] / size[1]
    half_w, half_h = max(half_w, half_h * aspect), max(half_h, half_w / aspect)
    half_w, half_h = half_w * (1 + margin), half_h * (1 + margin)
    radius = float(np.linalg.norm(extent)) / 2 + 1.0
    target = center + cu * right + cv * up  # centre the window on the projected extent
    eye = target - d * (radius + 1.0)
    return OrthoCamera(target, eye, up, -half_w, half_w, -half_h, half_h, 0.01,
                       float(radius + 1.0 + np.abs(w).max() + radius))


def render_views(xyz: np.ndarray, faces: np.ndarray | None, colourings: list[np.ndarray],
                 size: tuple[int, int] = (480, 360), point_size: float = 3.0, timeout: float = 300) -> list[np.ndarray]:
    """(H, W, 3) uint8 images of the mesh (or, without faces, the points) in each (N, 3) uint8 colouring.

    Renders in a fresh interpreter: open3d's software (llvmpipe) renderer can stall for
    minutes inside a process whose OpenMP runtime torch and MinkowskiEngine have been using;
    a clean interpreter renders in seconds, and the timeout keeps a broken GL/Vulkan setup
    from hanging the caller. Raises RuntimeError when rendering fails.
    """
    faces = np.zeros((0, 3), np.int32) if faces is None else np.asarray(faces, np.int32).reshape(-1, 3)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, xyz=np.asarray(xyz, np.float32), faces=faces,
                 colours=np.stack([np.asarray(c, np.uint8) for c in colourings]),
                 size=np.asarray(size, np.int64), point_size=np.float64(point_size))
        cmd = [sys.executable, "-m", "minkseg.viz.render", str(src), str(dst)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 or not dst.is_file():
            last = r.stderr.strip().splitlines()[-1:] or [f"exit status {r.returncode}"]
            raise RuntimeError(f"offscreen rendering failed: {last[0]}")
        with np.load(dst) as z:
            return list(z["images"])


def _render_in_this_process(xyz: np.ndarray, faces: np.ndarray, colours: np.ndarray, size: tuple[int, int],
                            point_size: float) -> np.ndarray:
    import open3d as o3d

    rendering = o3d.visualization.rendering
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    renderer = rendering.OffscreenRenderer(int(size[0]), int(size[1]))
    renderer.scene.set_background([1, 1, 1, 1])
    renderer.scene.view.set_post_processing(False)  # no tone mapping: palette colours stay exact
    mat = rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    mat.point_size = float(point_size)
    points = o3d.utility.Vector3dVector(xyz.astype(np.float64))
    # All colourings go into the scene once and are shown one at a time: clearing the scene and
    # re-adding geometry between frames stalls the software (llvmpipe) renderer for minutes.
    for k, rgb in enumerate(colours):
        if len(faces):
            geom = o3d.geometry.TriangleMesh(points, o3d.utility.Vector3iVector(faces.astype(np.int32)))
            geom.vertex_colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255)
        else:
            geom = o3d.geometry.PointCloud(points)
            geom.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64) / 255)
        renderer.scene.add_geometry(f"c{k}", geom, mat)
    cam = fit_camera(xyz, (int(size[0]), int(size[1])))
    renderer.scene.camera.look_at(cam.center, cam.eye, cam.up)
    renderer.scene.camera.set_projection(rendering.Camera.Projection.Ortho, cam.left, cam.right, cam.bottom,
                                         cam.top, cam.near, cam.far)
    images = []
    for k in range(len(colours)):
        for j in range(len(colours)):
            renderer.scene.show_geometry(f"c{j}", j == k)
        images.append(np.asarray(renderer.render_to_image())[..., :3].copy())
    return np.stack(images)


def _main(src: str, dst: str) -> None:
    with np.load(src) as z:
        images = _render_in_this_process(z["xyz"], z["faces"], z["colours"], tuple(z["size"]), float(z["point_size"]))
    with atomic_path(Path(dst)) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz"
            np.savez(f, images=images)


if __name__ == "__main__":  # python -m minkseg.viz.render IN.npz OUT.npz (see render_views)
    _main(*sys.argv[1:])
