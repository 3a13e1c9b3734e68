"""From what the reviewer drew on the (scaled-up) canvas to boolean masks in image pixels.

The canvas shows an H×W image enlarged to about 448 px. Everything drawn is converted to image
coordinates in the browser and kept as two H×W masks - what the model must not rely on
(``forbidden``) and what it should rely on (``relevant``) - so what the page shows is exactly what
gets submitted. A pixel belongs to a shape when its centre lies inside it (the usual rasterisation
rule), so a rectangle dragged along pixel borders covers exactly those pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORBIDDEN = "forbidden"
RELEVANT = "relevant"

GRID = "grid"
RECT = "rect"
BRUSH = "brush"
ERASER = "eraser"

CANVAS_SIDE = 448


@dataclass(frozen=True)
class Marks:
    """The reviewer's answer for one image, in image pixels; a pixel is never in both masks."""

    forbidden: np.ndarray
    relevant: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int) -> "Marks":
        return cls(np.zeros((height, width), bool), np.zeros((height, width), bool))

    def same_as(self, other: "Marks") -> bool:
        return np.array_equal(self.forbidden, other.forbidden) and np.array_equal(self.relevant, other.relevant)

    def is_empty(self) -> bool:
        return not (self.forbidden.any() or self.relevant.any())

    def layer(self, target: str) -> np.ndarray:
        return self.forbidden if target == FORBIDDEN else self.relevant

    def paint(self, region: np.ndarray, target: str) -> "Marks":
        """Add ``region`` to one mask and take it out of the other: a pixel has one meaning."""
        if target == FORBIDDEN:
            return Marks(self.forbidden | region, self.relevant & ~region)
        return Marks(self.forbidden & ~region, self.relevant | region)

    def erase(self, region: np.ndarray) -> "Marks":
        return Marks(self.forbidden & ~region, self.relevant & ~region)


@dataclass(frozen=True)
class Geometry:
    """Image size and the canvas size it is shown at."""

    height: int
    width: int
    canvas_height: int
    canvas_width: int

    @classmethod
    def fit(cls, height: int, width: int, side: int = CANVAS_SIDE) -> "Geometry":
        """Whole-number enlargement when the image is smaller than ``side`` (crisp pixels, exact borders)."""
        longest = max(height, width)
        zoom = side // longest if longest <= side else side / longest
        return cls(height, width, max(1, round(height * zoom)), max(1, round(width * zoom)))

    @property
    def scale_x(self) -> float:
        return self.canvas_width / self.width

    @property
    def scale_y(self) -> float:
        return self.canvas_height / self.height


# --------------------------------------------------------------------------- grid

def grid_edges(length: int, cells: int) -> np.ndarray:
    """Cell borders along one side; cells differ by at most a pixel when ``length`` is not divisible."""
    return np.linspace(0, length, min(cells, length) + 1).round().astype(int)


def cell_region(height: int, width: int, cells: int, row: int, col: int) -> np.ndarray:
    ys, xs = grid_edges(height, cells), grid_edges(width, cells)
    region = np.zeros((height, width), bool)
    region[ys[row]:ys[row + 1], xs[col]:xs[col + 1]] = True
    return region


def cell_at(height: int, width: int, cells: int, x: float, y: float) -> tuple[int, int]:
    """The (row, col) of the grid square holding image point (x, y)."""
    ys, xs = grid_edges(height, cells), grid_edges(width, cells)
    row = int(np.clip(np.searchsorted(ys, y, side="right") - 1, 0, len(ys) - 2))
    col = int(np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2))
    return row, col


def suggested_cells(saliency: np.ndarray, cells: int, share: float = 0.1) -> list[tuple[int, int]]:
    """The grid squares holding the most absolute attribution (about ``share`` of all squares):
    where the model looks most, so the first places to check for a wrong reason."""
    height, width = saliency.shape
    ys, xs = grid_edges(height, cells), grid_edges(width, cells)
    mass = np.add.reduceat(np.add.reduceat(np.abs(saliency), ys[:-1], axis=0), xs[:-1], axis=1)
    count = max(1, round(mass.size * share))
    order = np.argsort(mass, axis=None)[::-1][:count]
    return [(int(i) // mass.shape[1], int(i) % mass.shape[1]) for i in order if mass.flat[i] > 0]


def cells_region(height: int, width: int, cells: int, chosen: list[tuple[int, int]]) -> np.ndarray:
    ys, xs = grid_edges(height, cells), grid_edges(width, cells)
    region = np.zeros((height, width), bool)
    for row, col in chosen:
        region[ys[row]:ys[row + 1], xs[col]:xs[col + 1]] = True
    return region


SUGGEST_LEVEL = 0.12  # of the largest attribution magnitude; see suggested_region
SUGGEST_CLOSING = 2   # pixels
SUGGEST_MOST = 0.2    # of the image, before gaps are closed


def suggested_region(saliency: np.ndarray, level: float = SUGGEST_LEVEL, closing: int = SUGGEST_CLOSING) -> np.ndarray:
    """The pixels where the model looks most: attribution magnitude at least ``level`` of its largest
    (and among the strongest ``SUGGEST_MOST`` of the image), with gaps up to ``2 * closing`` pixels wide closed and holes filled (attribution maps are
    speckled, a region to mark is not). What "Mark the yellow outline" marks.

    It replaced the grid squares holding the most attribution (a tenth of them, whatever the size of
    what the model looks at), which on synthetic-lesions put 44% of the suggested pixels on the
    sticker; this puts 90% there, covering half of it (tests/test_dashboard.py measures both)."""
    magnitude = np.abs(np.nan_to_num(np.asarray(saliency, dtype=float)))
    top = magnitude.max() if magnitude.size else 0.0
    if top <= 0:
        return np.zeros(magnitude.shape, bool)
    # never most of the image: on a map spread all over (an untrained model), the strongest fifth
    region = magnitude >= max(level * top, np.quantile(magnitude, 1 - SUGGEST_MOST))
    grown = _dilate(region, closing)
    closed = ~_dilate(~np.pad(grown, closing, constant_values=False), closing)[closing:-closing or None,
                                                                               closing:-closing or None]
    return _fill_holes(closed | region)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (to the four neighbours per step)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = mask | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background area that does not reach the image's border filled."""
    outside = np.zeros_like(mask)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = ~mask[0, :], ~mask[-1, :], ~mask[:, 0], ~mask[:, -1]
    while True:
        padded = np.pad(outside, 1)
        h, w = mask.shape
        grown = outside | ((padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]) & ~mask)
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


# --------------------------------------------------------------------------- marks drawn in the browser
# The review canvas (dashboard/components/mark_canvas.js) keeps every mark in the browser as a list of
# operations in image coordinates and sends the whole list on each change; both sides fold that
# list the same way, so the page shows exactly what gets submitted.

def apply_ops(marks: Marks, ops: list[dict]) -> Marks:
    """Fold the canvas's operations into the marks, in drawing order: a click toggles its grid
    square, a rectangle, a set of squares or a brush stroke paints ``target`` (the eraser's target is
    ``erase``), ``clear`` empties both masks. Unknown operations are ignored: a newer page's marks
    never break this reader."""
    h, w = marks.forbidden.shape
    for op in ops:
        kind, target = op.get("kind"), op.get("target", FORBIDDEN)
        if kind == "clear":
            marks = Marks.empty(h, w)
            continue
        if kind == "cell":
            region = cell_region(h, w, int(op["cells"]), int(op["row"]), int(op["col"]))
            if target != ERASE and marks.layer(target)[region].all():
                target = ERASE
        elif kind == "cells":
            region = cells_region(h, w, int(op["cells"]), [(int(r), int(c)) for r, c in op["squares"]])
        elif kind == "rect":
            region = rect_region(h, w, float(op["x0"]), float(op["y0"]), float(op["x1"]), float(op["y1"]))
        elif kind == "stroke":
            region = stroke_region(h, w, op["points"], float(op["radius"]))
        else:
            continue
        marks = marks.erase(region) if target == ERASE else marks.paint(region, target)
    return marks


ERASE = "erase"
MIN_RADIUS = 0.71  # a pixel's half-diagonal: a thin line still marks every pixel it crosses


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return xs + 0.5, ys + 0.5


def rect_region(height: int, width: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Pixels whose centre lies inside the dragged rectangle (corners in image coordinates)."""
    cx, cy = _pixel_centres(height, width)
    return (cx >= min(x0, x1)) & (cx < max(x0, x1)) & (cy >= min(y0, y1)) & (cy < max(y0, y1))


def stroke_region(height: int, width: int, points: list, radius: float) -> np.ndarray:
    """Pixels whose centre lies within ``radius`` (never under MIN_RADIUS) of the stroke's polyline."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    region = np.zeros((height, width), bool)
    if not len(points):
        return region
    radius = max(radius, MIN_RADIUS)
    cx, cy = _pixel_centres(height, width)
    starts, ends = (points[:-1], points[1:]) if len(points) > 1 else (points, points)
    for (ax, ay), (bx, by) in zip(starts, ends):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = np.zeros_like(cx) if length2 == 0 else np.clip(((cx - ax) * dx + (cy - ay) * dy) / length2, 0, 1)
        region |= (cx - ax - t * dx) ** 2 + (cy - ay - t * dy) ** 2 <= radius * radius
    return region
