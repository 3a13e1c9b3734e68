"""The drawing canvas, behind one function: our own small component (dashboard/components/), a plain
HTML canvas that keeps every mark in the browser and sends the complete list of drawing operations
on each change (see masks.apply_ops). Page tests replace ``draw_marks`` with a stand-in (AppTest cannot
drive a custom component); the real canvas is tested in a browser (tests/test_e2e_browser.py).

It replaced streamlit-drawable-canvas, whose canvas every rerun replaced about 0.5 s after each
stroke, losing the strokes drawn meanwhile, and whose own toolbar caught clicks over the image's
top-right corner and had a hidden edit mode in which nothing draws. Measured with the end-to-end
test's drawing (decoy-digits, 1400×1000, 2026-11-30): 5 brush strokes 0.1 s apart kept 1 with it, 5
with this canvas; 4 grid clicks 0.2 s apart kept 2 with it, 4 with this canvas."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import streamlit as st

ASSETS = Path(__file__).resolve().parents[1] / "components"
MARK_CANVAS = st.components.v2.component(
    "hitl_mark_canvas", js=(ASSETS / "mark_canvas.js").read_text(encoding="utf-8"),
    css=(ASSETS / "mark_canvas.css").read_text(encoding="utf-8"))


def draw_marks(data: dict, key: str, on_marks: Callable[[], None], on_command: Callable[[], None]) -> dict | None:
    """Show the canvas for one image and return the browser's latest ``{"ops": [...], "revision": n}``
    (None before the first mark). ``data`` holds the picture, the image size and the marks Python
    knows (see review.canvas_data); ``on_marks`` and ``on_command`` run before the next page run, when
    the marks change or a hotkey asks for something only Python can do (next image, skip, send)."""
    result = MARK_CANVAS(key=key, data=data, on_marks_change=on_marks, on_command_change=on_command)
    return result.marks
