"""From what the reviewer drew on the (scaled-up) canvas to boolean masks in image pixels.

The canvas shows an H×W image enlarged to about 448 px. Everything drawn is converted back to
image coordinates right away and kept as two H×W masks - what the model must not rely on
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
_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


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
class Tool:
    """How new drawing is read: the tool, which mask it adds to, the grid, the brush size."""

    mode: str = GRID
    target: str = FORBIDDEN
    cells: int = 8               # grid squares per side
    brush: float = 2.0           # brush diameter in image pixels


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

    def brush_width(self, brush: float) -> int:
        """The brush diameter in canvas pixels."""
        return max(1, round(brush * self.scale_x))


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
    region = np.zeros((height, width), bool)
    for row, col in chosen:
        region |= cell_region(height, width, cells, row, col)
    return region


# --------------------------------------------------------------------------- canvas objects

def apply_drawing(marks: Marks, objects: list[dict], tool: Tool, geometry: Geometry) -> Marks:
    """Fold fabric.js objects from the canvas into the marks, in drawing order: a click toggles its
    grid square, a rectangle or brush stroke paints, an eraser stroke clears both masks."""
    h, w = geometry.height, geometry.width
    for obj in objects:
        kind = obj.get("type", "").lower()
        if kind == "circle":  # a click in point mode
            x, y = _to_image(geometry, *_centre(obj))
            region = cell_region(h, w, tool.cells, *cell_at(h, w, tool.cells, x, y))
            if marks.layer(tool.target)[region].all():
                marks = marks.erase(region)
            else:
                marks = marks.paint(region, tool.target)
        elif kind == "rect":
            marks = marks.paint(_rect_region(obj, geometry), tool.target)
        elif kind == "path":
            region = _stroke_region(obj, geometry)
            marks = marks.erase(region) if tool.mode == ERASER else marks.paint(region, tool.target)
    return marks


def _bounds(obj: dict) -> tuple[float, float, float, float]:
    """Left, top, width, height of an object's box as fabric.js places it (stroke included)."""
    stroke = float(obj.get("strokeWidth") or 0)
    bw = float(obj.get("width", 0)) * float(obj.get("scaleX", 1)) + stroke
    bh = float(obj.get("height", 0)) * float(obj.get("scaleY", 1)) + stroke
    left = float(obj.get("left", 0)) - _ORIGIN.get(obj.get("originX", "left"), 0.0) * bw
    top = float(obj.get("top", 0)) - _ORIGIN.get(obj.get("originY", "top"), 0.0) * bh
    return left, top, bw, bh


def _centre(obj: dict) -> tuple[float, float]:
    left, top, bw, bh = _bounds(obj)
    return left + bw / 2, top + bh / 2


def _to_image(geometry: Geometry, x: float, y: float) -> tuple[float, float]:
    return x / geometry.scale_x, y / geometry.scale_y


def _pixel_centres(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:geometry.height, 0:geometry.width]
    return xs + 0.5, ys + 0.5


def _rect_region(obj: dict, geometry: Geometry) -> np.ndarray:
    """The dragged rectangle: like the canvas package's own ``boxes``, its stroke does not count (the
    drawing tool puts the drag's corners at ``left``/``top`` and ``left + width``/``top + height``)."""
    width = float(obj.get("width", 0)) * float(obj.get("scaleX", 1))
    height = float(obj.get("height", 0)) * float(obj.get("scaleY", 1))
    left = float(obj.get("left", 0)) - _ORIGIN.get(obj.get("originX", "left"), 0.0) * width
    top = float(obj.get("top", 0)) - _ORIGIN.get(obj.get("originY", "top"), 0.0) * height
    x0, y0 = _to_image(geometry, left, top)
    x1, y1 = _to_image(geometry, left + width, top + height)
    cx, cy = _pixel_centres(geometry)
    return (cx >= min(x0, x1)) & (cx < max(x0, x1)) & (cy >= min(y0, y1)) & (cy < max(y0, y1))


def _stroke_region(obj: dict, geometry: Geometry) -> np.ndarray:
    """Pixels whose centre lies within half the brush width of the stroke's centre line."""
    points = _path_points(obj)
    if not len(points):
        return np.zeros((geometry.height, geometry.width), bool)
    # fabric keeps the points where they were drawn; moving or scaling the object is a transform on top
    centre = (points.min(0) + points.max(0)) / 2
    left, top, bw, bh = _bounds(obj)
    scale = np.array([float(obj.get("scaleX", 1)), float(obj.get("scaleY", 1))])
    points = (points - centre) * scale + np.array([left + bw / 2, top + bh / 2])
    points = points / np.array([geometry.scale_x, geometry.scale_y])
    # never thinner than a pixel's half-diagonal, so the line marks every pixel it crosses
    radius = max(float(obj.get("strokeWidth") or 0) / 2 / geometry.scale_x, 0.71)
    cx, cy = _pixel_centres(geometry)
    region = np.zeros(cx.shape, bool)
    starts, ends = points[:-1], points[1:]
    if not len(starts):
        starts, ends = points, points
    for (ax, ay), (bx, by) in zip(starts, ends):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = np.zeros_like(cx) if length2 == 0 else np.clip(((cx - ax) * dx + (cy - ay) * dy) / length2, 0, 1)
        region |= (cx - ax - t * dx) ** 2 + (cy - ay - t * dy) ** 2 <= radius * radius
    return region


def _path_points(obj: dict) -> np.ndarray:
    """The coordinates of a fabric.js path (M/L/Q/C commands) as a polyline through all of them:
    the control points of a smoothed freehand stroke lie on the hand's actual track."""
    coords = []
    for command in obj.get("path") or []:
        values = [float(v) for v in command[1:] if isinstance(v, (int, float))]
        coords += [values[i:i + 2] for i in range(0, len(values) - 1, 2)]
    return np.array(coords, dtype=float).reshape(-1, 2)
