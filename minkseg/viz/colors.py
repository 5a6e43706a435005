"""One colour scheme for every figure, PLY and viewer layer.

Semantic classes use the ScanNet benchmark palette (``create_color_palette`` of ScanNet's
``BenchmarkScripts/util.py``, indexed by NYU40 id): the vivid colours readers know from
papers. Instances get well-separated hues from a fixed golden-ratio sequence, so a run's
colours are stable and neighbours rarely look alike. Scalars (uncertainty) use viridis
with explicit limits, so a colour bar can state them.
"""

from __future__ import annotations

import colorsys

import numpy as np

from scannet_tools.labels import SEMANTIC_NAMES, SEMANTIC_NYU40_IDS

#: Grey for "no class" / "no instance" / void.
NONE_RGB = (160, 160, 160)

# NYU40 id -> RGB of the ScanNet benchmark palette (ids 0..40).
_SCANNET_PALETTE = (
    (0, 0, 0), (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
    (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189), (196, 156, 148),
    (23, 190, 207), (178, 76, 76), (247, 182, 210), (66, 188, 102), (219, 219, 141), (140, 57, 197),
    (202, 185, 52), (51, 176, 203), (200, 54, 131), (92, 193, 61), (78, 71, 183), (172, 114, 82),
    (255, 127, 14), (91, 163, 138), (153, 98, 156), (140, 153, 101), (158, 218, 229), (100, 125, 154),
    (178, 127, 135), (120, 185, 128), (146, 111, 194), (44, 160, 44), (112, 128, 144), (96, 207, 209),
    (227, 119, 194), (213, 92, 176), (94, 106, 211), (82, 84, 163), (100, 85, 144),
)

#: (256, 3) uint8 lookup NYU40 id -> colour; the 20 benchmark classes in their ScanNet colours,
#: every other id (unannotated 0, otherprop 40, non-benchmark classes, out-of-range) grey.
SEMANTIC_LUT = np.tile(np.asarray(NONE_RGB, np.uint8), (256, 1))
SEMANTIC_LUT[list(SEMANTIC_NYU40_IDS)] = np.asarray(_SCANNET_PALETTE, np.uint8)[list(SEMANTIC_NYU40_IDS)]

#: Legend entries of the benchmark classes: (NYU40 id, name, RGB), in benchmark order.
CLASS_LEGEND: tuple[tuple[int, str, tuple[int, int, int]], ...] = tuple(
    (i, name, tuple(int(c) for c in SEMANTIC_LUT[i])) for i, name in zip(SEMANTIC_NYU40_IDS, SEMANTIC_NAMES))


def semantic_colors(nyu40: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 ScanNet benchmark colours of NYU40 ids; grey for anything outside the 20 classes."""
    nyu40 = np.asarray(nyu40, dtype=np.int64)
    return SEMANTIC_LUT[np.where((nyu40 >= 0) & (nyu40 < 256), nyu40, 0)]


def instance_palette(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct, saturated colours: hue steps of the golden ratio, two brightness levels."""
    k = np.arange(count)
    hues = (k * 0.6180339887498949) % 1.0
    values = np.where(k % 2 == 0, 0.95, 0.75)
    rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, values)]
    return (np.asarray(rgb, dtype=np.float64).reshape(count, 3) * 255).round().astype(np.uint8)


def instance_colors(instance: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colour per instance id, stable across runs; grey for none (id < 0, and 0 when
    ids are 1-based as in ground truth: pass ``id - 1`` there)."""
    instance = np.asarray(instance, dtype=np.int64)
    lut = instance_palette(int(instance.max(initial=-1)) + 1)
    out = np.tile(np.asarray(NONE_RGB, np.uint8), (len(instance), 1))
    has = instance >= 0
    out[has] = lut[instance[has]]
    return out


def scalar_colors(values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                  cmap: str = "viridis") -> np.ndarray:
    """(N, 3) uint8 colours of scalars on ``cmap`` between ``vmin`` and ``vmax`` (default: the data's range)."""
    import matplotlib

    values = np.asarray(values, dtype=np.float64)
    lo = float(np.nanmin(values)) if vmin is None else vmin
    hi = float(np.nanmax(values)) if vmax is None else vmax
    v = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (matplotlib.colormaps[cmap](np.nan_to_num(v))[:, :3] * 255).round().astype(np.uint8)


#: Legend name of the grey that every id outside the 20 classes gets.
OTHER_NAME = "other / unannotated"


def legend_entries(nyu40: np.ndarray) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, RGB) of the benchmark classes present in ``nyu40``, in benchmark order, then the grey
    "other / unannotated" entry if any id lies outside the 20 classes."""
    ids = np.unique(np.asarray(nyu40, dtype=np.int64))
    out = [(name, rgb) for i, name, rgb in CLASS_LEGEND if i in ids]
    if not np.isin(ids, [i for i, _, _ in CLASS_LEGEND]).all():
        out.append((OTHER_NAME, NONE_RGB))
    return out
