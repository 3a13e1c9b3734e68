"""Pictures for the pages: an image with its saliency map laid over it, the reviewer's marks, the
grid and the suggested squares, enlarged to the canvas size."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

from .masks import Geometry, grid_edges

# Menu label -> matplotlib colormap. Saliency is signed: -1 (against the prediction) .. +1 (for it).
# The default picks, per image, the colour-blind-safe diverging map (ColorBrewer) whose two ends lie
# farthest in hue from the image's own saturated colours, so a blue sticker is never read as blue
# "against" saliency (choose_colormap).
AUTO_COLORMAP = "unlike the image's colours"
SAFE_DIVERGING = ("RdBu_r", "PuOr_r", "BrBG_r", "PiYG_r")  # each: "against" end first, "for" end last
COLORMAPS = {
    AUTO_COLORMAP: None,
    "red for, blue against": "RdBu_r",
    "orange for, purple against": "PuOr_r",
    "brown for, teal against": "BrBG_r",
    "pink for, green against": "PiYG_r",
    "jet": "jet",
    "viridis": "viridis",
    "magma": "magma",
}
HUE_CLASH_DEGREES = 45.0  # within this hue distance an image colour and an overlay colour can be confused

FORBIDDEN_RGB = (230, 30, 30)
RELEVANT_RGB = (20, 170, 70)
SUGGESTED_RGB = (255, 200, 0)
MARK_ALPHA = 0.35
WASH = 0.7  # how far the image fades to grey under a saliency overlay at full strength


def colorize(saliency: np.ndarray, colormap: str) -> np.ndarray:
    """H×W×3 floats in [0, 1] for a map in [-1, 1]."""
    from matplotlib import colormaps

    return colormaps[colormap]((np.clip(saliency, -1, 1) + 1) / 2)[..., :3]


def hue_and_saturation(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and saturation of float RGB in [0, 1] (HSV)."""
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    safe = np.where(chroma > 0, chroma, 1)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    return hue, np.where(mx > 0, chroma / np.where(mx > 0, mx, 1), 0)


def choose_colormap(image: np.ndarray | None) -> str:
    """The safe diverging map whose end colours the image's saturated pixels come least close to in hue.
    A grey or unsaturated image keeps the first (red for, blue against)."""
    if image is None:
        return SAFE_DIVERGING[0]
    rgb = image[..., :3].reshape(-1, 3).astype(float) / 255
    hue, sat = hue_and_saturation(rgb)
    vivid = (sat > 0.35) & (rgb.max(axis=1) > 0.2)
    if not vivid.any():
        return SAFE_DIVERGING[0]
    weights = sat[vivid]

    def clash(name: str) -> float:
        """Saturation-weighted closeness of the image's vivid pixels to the map's colours (strong and faint)."""
        end_hues, _ = hue_and_saturation(colorize(np.array([-1.0, -0.6, 0.6, 1.0]), name))
        gap = np.abs(hue[vivid][:, None] - end_hues[None, :]) % 360
        gap = np.minimum(gap, 360 - gap).min(axis=1)
        return float((weights * np.clip(1 - gap / HUE_CLASH_DEGREES, 0, None)).sum())

    return min(SAFE_DIVERGING, key=lambda name: (clash(name), SAFE_DIVERGING.index(name)))


def colormap_for(label: str, image: np.ndarray | None) -> str:
    """The matplotlib colormap a menu label means for ``image``."""
    return COLORMAPS[label] or choose_colormap(image)


def stretch(saliency: np.ndarray) -> np.ndarray:
    """Scale a map so its 99th percentile of magnitude reaches ±1: attribution is heavy-tailed, and
    scaled by its single largest value most of it would be too faint to see."""
    top = float(np.percentile(np.abs(saliency), 99)) if saliency.size else 0.0
    return np.clip(saliency / top, -1, 1) if top > 0 else saliency


def compose(image: np.ndarray | None, geometry: Geometry, saliency: np.ndarray | None = None, *,
            opacity: float = 0.6, colormap: str = "RdBu_r", forbidden: np.ndarray | None = None,
            relevant: np.ndarray | None = None, outline: np.ndarray | None = None, cells: int = 0,
            grid_lines: bool = False, suggested: list[tuple[int, int]] = ()) -> Image.Image:
    """The picture at canvas size. Under a saliency overlay the image fades towards grey in proportion
    to ``opacity`` (at 0 it is the image as it is) and the colour is blended by the square root of its
    strength, so the map reads even on busy images.
    Marks are striped and outlined (red: must not use, green: should use); ``outline`` only outlines.
    ``cells`` sets the grid that ``grid_lines`` draws and the ``suggested`` squares refer to."""
    h, w = geometry.height, geometry.width
    base = np.full((h, w, 3), 0.5) if image is None else image[..., :3].astype(float) / 255
    if saliency is not None and opacity > 0:
        saliency = stretch(saliency)
        grey = base.mean(axis=2, keepdims=True)
        base = base * (1 - WASH * opacity) + grey * WASH * opacity
        alpha = np.ones((h, w, 1)) if image is None else (opacity * np.sqrt(np.abs(saliency)))[..., None]
        base = base * (1 - alpha) + colorize(saliency, colormap) * alpha
    size = (geometry.canvas_width, geometry.canvas_height)
    arr = np.asarray(Image.fromarray((base * 255).round().astype(np.uint8)).resize(size, Image.NEAREST)).copy()
    stripes = np.add.outer(np.arange(size[1]), np.arange(size[0])) % 10 < 3
    back_stripes = np.add.outer(np.arange(size[1]), -np.arange(size[0])) % 10 < 3
    for mask, rgb, pattern in ((forbidden, FORBIDDEN_RGB, stripes), (relevant, RELEVANT_RGB, back_stripes)):
        if mask is not None and mask.any():
            big = _enlarge(mask, size)
            arr[big] = (arr[big] * (1 - MARK_ALPHA) + np.array(rgb) * MARK_ALPHA).round().astype(np.uint8)
            arr[big & pattern] = rgb
            arr[_border(big)] = rgb
    if outline is not None and outline.any():
        arr[_border(_enlarge(outline, size))] = SUGGESTED_RGB
    picture = Image.fromarray(arr)
    if cells:
        _draw_grid(picture, geometry, cells, grid_lines, suggested)
    return picture


def data_url(picture: Image.Image) -> str:
    """A PNG as a ``data:`` URL: the page gets the picture with its data, no extra request."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _enlarge(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0


def _border(big: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of ``big`` within ``width`` of its edge: tints alone get lost in busy images."""
    padded = np.pad(big, width)
    inner = big.copy()
    for d in range(1, width + 1):
        for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d)):
            inner &= padded[width + dy:width + dy + big.shape[0], width + dx:width + dx + big.shape[1]]
    return big & ~inner


def _draw_grid(picture: Image.Image, geometry: Geometry, cells: int, lines: bool,
               suggested: list[tuple[int, int]]) -> None:
    """Grid lines of ``cells`` squares per side (if ``lines``) and the outlines of the ``suggested`` squares."""
    draw = ImageDraw.Draw(picture, "RGBA")
    xs = grid_edges(geometry.width, cells) * geometry.scale_x
    ys = grid_edges(geometry.height, cells) * geometry.scale_y
    if lines:
        for x in xs[1:-1]:
            draw.line([(x, 0), (x, geometry.canvas_height)], fill=(255, 255, 255, 110), width=1)
        for y in ys[1:-1]:
            draw.line([(0, y), (geometry.canvas_width, y)], fill=(255, 255, 255, 110), width=1)
    for row, col in suggested:
        draw.rectangle([xs[col] + 1, ys[row] + 1, xs[col + 1] - 2, ys[row + 1] - 2],
                       outline=(*SUGGESTED_RGB, 255), width=2)
