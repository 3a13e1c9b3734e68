"""The drawing canvas, behind one function. streamlit-drawable-canvas can only be imported inside a
running Streamlit server, and page tests replace ``draw_mask`` with a stand-in (AppTest cannot drive
a custom component); the real canvas is tested in a browser."""
from __future__ import annotations

from PIL import Image

from dashboard.masks import BRUSH, ERASER, FORBIDDEN, GRID, RECT, RELEVANT, Geometry, Marks, Tool, apply_drawing
from dashboard.overlay import FORBIDDEN_RGB, RELEVANT_RGB

STROKES = {FORBIDDEN: FORBIDDEN_RGB, RELEVANT: RELEVANT_RGB}
DRAWING_MODES = {GRID: "point", RECT: "rect", BRUSH: "freedraw", ERASER: "freedraw"}


def draw_mask(marks: Marks, tool: Tool, background: Image.Image, geometry: Geometry, key: str) -> Marks:
    """Show ``background`` on a canvas and return ``marks`` with whatever was drawn on it, in image
    pixels. The caller shows the result on a fresh canvas (a new ``key``), so each canvas only ever
    holds the strokes not yet folded into the marks."""
    from streamlit_drawable_canvas import st_canvas

    r, g, b = STROKES[tool.target]
    if tool.mode == ERASER:
        stroke, fill = "rgba(255, 255, 255, 0.8)", "rgba(255, 255, 255, 0.3)"
    else:
        stroke, fill = f"rgba({r}, {g}, {b}, 0.9)", f"rgba({r}, {g}, {b}, 0.3)"
    width = geometry.brush_width(tool.brush) if tool.mode in (BRUSH, ERASER) else 2
    result = st_canvas(fill_color=fill, stroke_width=width, stroke_color=stroke, background_image=background,
                       height=geometry.canvas_height, width=geometry.canvas_width,
                       drawing_mode=DRAWING_MODES[tool.mode], point_display_radius=4, key=key)
    objects = (result.json_data or {}).get("objects") or []
    return apply_drawing(marks, objects, tool, geometry) if objects else marks
