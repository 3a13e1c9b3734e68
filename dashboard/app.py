"""The dashboard's entry point, run by ``hitl-serve`` (``make serve``) as
``streamlit run dashboard/app.py -- --runs-dir checkpoints [--allow-root PATH ...]``."""
from __future__ import annotations

import argparse
import hmac
import os
import sys
from pathlib import Path

import streamlit as st

from dashboard.launcher import default_allowed_roots
from dashboard.serve import TOKEN_ENV
from dashboard.views.common import PAGES

FAVICON = Path(__file__).resolve().parent / "components" / "favicon.png"


def folders_from_args(argv: list[str]) -> tuple[Path, list[Path]]:
    """The runs folder (``--runs-dir`` after ``--``, else $HITL_RUNS_DIR, else ./checkpoints) and the
    folders typed paths may lie in (``--allow-root``, repeatable; default: datasets/ and the runs folder;
    a run started from the form may always read the runs folder too)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs-dir", default=os.environ.get("HITL_RUNS_DIR", "checkpoints"))
    parser.add_argument("--allow-root", action="append", default=[])
    args, _ = parser.parse_known_args(argv)
    runs_dir = Path(args.runs_dir).resolve()
    return runs_dir, [Path(r).resolve() for r in args.allow_root] or default_allowed_roots(runs_dir)


def signed_in() -> bool:
    """True unless the dashboard was started with an access token this browser session has not given."""
    token = os.environ.get(TOKEN_ENV)
    if not token or st.session_state.get("signed_in"):
        return True
    st.title("Human-in-the-loop trainer")
    with st.form("sign-in"):
        given = st.text_input("Access token", type="password",
                              help="This dashboard is shared on the network; whoever started it has the token.")
        if st.form_submit_button("Open the dashboard", type="primary"):
            if hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
                st.session_state["signed_in"] = True
                st.rerun()
            st.error("That is not the access token of this dashboard.")
    return False


# a local icon: a Material icon name here makes the browser fetch the favicon from fonts.gstatic.com
st.set_page_config(page_title="Human-in-the-loop trainer", page_icon=str(FAVICON), layout="wide")
# less empty space above the page, so the review image and its tools fit a 1280×800 screen
st.html("<style>[data-testid=stMainBlockContainer] { padding-top: 3rem; }</style>")
if not signed_in():
    st.stop()
runs_dir, allowed_roots = folders_from_args(sys.argv[1:])
st.session_state["runs_dir"] = str(runs_dir)
st.session_state["allowed_roots"] = [str(r) for r in allowed_roots]
st.navigation([
    st.Page(PAGES["runs"], title="Runs", icon=":material/list_alt:", default=True),
    st.Page(PAGES["metrics"], title="Metrics", icon=":material/monitoring:"),
    st.Page(PAGES["review"], title="Review", icon=":material/draw:"),
    st.Page(PAGES["learning"], title="Did it learn?", icon=":material/school:"),
    st.Page(PAGES["evaluation"], title="Evaluation", icon=":material/fact_check:"),
]).run()
