"""Composing rendered views into one figure: a title per panel, a class legend, a colour bar.

A panel is a rendered image plus what explains it (legend entries, colour-bar limits or a
note). :func:`compose_panels` lays panels out in rows without holes: a row with fewer panels
than columns gets wider tiles, so the figure is always a full rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minkseg.viz.colors import scalar_colors

TITLE_HEIGHT = 30
PAD = 8
SWATCH = 14
LINE = 20
COLORBAR_HEIGHT = 16


@dataclass
class Panel:
    """One tile of a figure. Exactly what explains the colours is drawn under the image."""

    title: str
    image: np.ndarray  # (H, W, 3) uint8 rendering
    legend: list[tuple[str, tuple[int, int, int]]] | None = None  # (name, RGB) swatches
    colorbar: tuple[float, float, str, str] | None = None  # (vmin, vmax, colour map, caption)
    note: str | None = None


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _legend_layout(entries: list[tuple[str, tuple[int, int, int]]], width: int, font) -> list[tuple[int, int]]:
    """(x, y) of each swatch when the entries wrap into lines of ``width`` pixels."""
    x, y, out = PAD, 0, []
    for name, _ in entries:
        w = SWATCH + 4 + int(font.getlength(name)) + 12
        if x > PAD and x + w > width - PAD:
            x, y = PAD, y + LINE
        out.append((x, y))
        x += w
    return out


def footer_height(panel: Panel, width: int) -> int:
    """Pixels the explanation under ``panel``'s image needs at tile ``width``."""
    font = _font(13)
    h = 0
    if panel.legend:
        h += _legend_layout(panel.legend, width, font)[-1][1] + LINE
    if panel.colorbar:
        h += COLORBAR_HEIGHT + LINE + 4
    if panel.note:
        h += LINE
    return h + PAD


def draw_panel(panel: Panel, width: int, image_height: int, footer: int) -> np.ndarray:
    """(TITLE_HEIGHT + image_height + footer, width, 3) uint8 tile: title, image scaled to fit, explanation."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (width, TITLE_HEIGHT + image_height + footer), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    draw.text((PAD, 6), panel.title, fill=(0, 0, 0), font=_font(18))
    img = Image.fromarray(np.asarray(panel.image, np.uint8)[..., :3])
    if img.size != (width, image_height):
        img = img.resize((width, image_height), Image.LANCZOS)
    tile.paste(img, (0, TITLE_HEIGHT))
    y = TITLE_HEIGHT + image_height + 4
    font = _font(13)
    if panel.legend:
        pos = _legend_layout(panel.legend, width, font)
        for (name, rgb), (x, dy) in zip(panel.legend, pos):
            draw.rectangle((x, y + dy + 2, x + SWATCH - 1, y + dy + 2 + SWATCH - 1), fill=tuple(rgb))
            draw.text((x + SWATCH + 4, y + dy + 2), name, fill=(0, 0, 0), font=font)
        y += pos[-1][1] + LINE
    if panel.colorbar:
        vmin, vmax, cmap, caption = panel.colorbar
        lo_txt, hi_txt = f"{vmin:.3g}", f"{vmax:.3g}"
        x0 = PAD + int(font.getlength(lo_txt)) + 6
        x1 = width - PAD - int(font.getlength(hi_txt)) - 6
        ramp = scalar_colors(np.linspace(vmin, vmax, max(x1 - x0, 2)), vmin, vmax, cmap)
        bar = np.broadcast_to(ramp[None], (COLORBAR_HEIGHT, len(ramp), 3))
        tile.paste(Image.fromarray(np.ascontiguousarray(bar)), (x0, y + 2))
        draw.text((PAD, y + 2), lo_txt, fill=(0, 0, 0), font=font)
        draw.text((x1 + 6, y + 2), hi_txt, fill=(0, 0, 0), font=font)
        draw.text((x0, y + COLORBAR_HEIGHT + 4), caption, fill=(0, 0, 0), font=font)
        y += COLORBAR_HEIGHT + LINE + 4
    if panel.note:
        draw.text((PAD, y + 2), panel.note, fill=(60, 60, 60), font=font)
    return np.asarray(tile)


def row_sizes(count: int, columns: int) -> list[int]:
    """Panels per row: as few rows as ``columns`` allows, balanced (5 in 3 columns -> 3, 2)."""
    if count <= 0:
        return []
    rows = -(-count // columns)
    base, extra = divmod(count, rows)
    return [base + 1] * extra + [base] * (rows - extra)


def compose_panels(panels: list[Panel], columns: int = 3, tile_width: int = 480) -> np.ndarray:
    """One (H, W, 3) uint8 figure of ``panels`` in rows; every row spans the full width (no empty tile).

    The canvas is ``columns * tile_width`` wide; a row of ``k`` panels gives each
    ``columns * tile_width / k`` pixels, images keep their aspect ratio.
    """
    if not panels:
        raise ValueError("compose_panels needs at least one panel")
    width = columns * tile_width if len(panels) >= columns else len(panels) * tile_width
    rows, start = [], 0
    for k in row_sizes(len(panels), columns):
        row = panels[start:start + k]
        start += k
        tiles_w = [width // k + (1 if i < width % k else 0) for i in range(k)]
        h, w = row[0].image.shape[:2]
        image_h = round(tiles_w[0] * h / w)
        footer = max(footer_height(p, tw) for p, tw in zip(row, tiles_w))
        rows.append(np.concatenate([draw_panel(p, tw, image_h, footer) for p, tw in zip(row, tiles_w)], axis=1))
    return np.concatenate(rows, axis=0)
