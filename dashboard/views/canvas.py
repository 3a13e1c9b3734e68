"""The drawing canvas, behind one function: our own small component (dashboard/components/), a plain
HTML canvas that keeps every mark in the browser and sends the complete list of drawing operations
on each change (see masks.apply_ops). Page tests replace ``draw_marks`` with a stand-in (AppTest cannot
drive a custom component); the real canvas is tested in a browser (tests/test_e2e_browser.py).

It replaced streamlit-drawable-canvas, whose canvas was replaced by every rerun about 0.5 s after
each stroke (strokes drawn meanwhile were lost: 5 strokes 0.1 s apart kept 1) and whose own toolbar
caught clicks over the image and had a hidden edit mode in which nothing draws."""
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
