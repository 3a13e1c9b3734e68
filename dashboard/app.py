"""The dashboard's entry point, run by ``hitl-serve`` (``make serve``) as
``streamlit run dashboard/app.py -- --runs-dir checkpoints``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from dashboard.views.common import PAGES

FAVICON = Path(__file__).resolve().parent / "components" / "favicon.png"


def runs_dir_from_args(argv: list[str]) -> Path:
    """The runs folder: ``--runs-dir`` after ``--``, else $HITL_RUNS_DIR, else ./checkpoints."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-dir", default=os.environ.get("HITL_RUNS_DIR", "checkpoints"))
    args, _ = parser.parse_known_args(argv)
    return Path(args.runs_dir).resolve()


# a local icon: a Material icon name here makes the browser fetch the favicon from fonts.gstatic.com
st.set_page_config(page_title="Human-in-the-loop trainer", page_icon=str(FAVICON), layout="wide")
# less empty space above the page, so the review image and its tools fit a 1280×800 screen
st.html("<style>[data-testid=stMainBlockContainer] { padding-top: 3rem; }</style>")
st.session_state["runs_dir"] = str(runs_dir_from_args(sys.argv[1:]))
st.navigation([
    st.Page(PAGES["runs"], title="Runs", icon=":material/list_alt:", default=True),
    st.Page(PAGES["metrics"], title="Metrics", icon=":material/monitoring:"),
    st.Page(PAGES["review"], title="Review", icon=":material/draw:"),
    st.Page(PAGES["learning"], title="Did it learn?", icon=":material/school:"),
    st.Page(PAGES["evaluation"], title="Evaluation", icon=":material/fact_check:"),
]).run()
