"""What several pages share: the runs folder, cached readers, the run picker, state badges, and the
panels for runs in trouble."""
from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from trainer import protocol

from dashboard import launcher, run_reader
from dashboard.run_reader import RunSummary

STATE_COLORS = {
    run_reader.STARTING: "blue", protocol.TRAINING: "blue", protocol.WAITING: "orange", protocol.FINISHED: "green",
    protocol.FAILED: "red", protocol.STALE: "red", protocol.STOPPED: "gray",
}
REFRESH_SECONDS = 2.0
PAGES = {"runs": "views/runs.py", "metrics": "views/metrics.py", "review": "views/review.py",
         "learning": "views/learning.py", "evaluation": "views/evaluation.py"}


def runs_dir() -> Path:
    return Path(st.session_state["runs_dir"])


def allowed_roots() -> list[Path]:
    """The folders a path typed on a page may lie in (see app.py)."""
    return [Path(r) for r in st.session_state["allowed_roots"]]


def run_dir(name: str) -> protocol.RunDir:
    return protocol.RunDir(runs_dir() / name)


# --------------------------------------------------------------------------- cached readers
# Keyed on path and modification time: a file the trainer replaced is read again, an unchanged one not.

# What cannot be read is shown in its place, one line per file ("unreadable: <file>: <reason>"), and
# the rest of the page goes on.

def unreadable(lines: list[str] | str | None, name: str | None = None) -> None:
    for line in [lines] if isinstance(lines, str) else lines or []:
        st.warning(f"**{name}** {line}" if name else line, icon=":material/report:")


@st.cache_data(max_entries=256, show_spinner=False)
def _metrics(path: str, stamp: float) -> tuple[pd.DataFrame, list[str]]:
    problems: list[str] = []
    return run_reader.metrics_frame([protocol.RunDir(path)], problems), problems


def metrics(names: list[str]) -> pd.DataFrame:
    """The named runs' metrics; each unreadable metrics file is shown as its line."""
    frames = []
    for run in map(run_dir, names):
        frame, problems = _metrics(str(run.path), run_reader.mtime(run.metrics))
        unreadable(problems, run.name)
        frames.append(frame)
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else run_reader.metrics_frame([])


@st.cache_data(max_entries=64, show_spinner=False)
def _confusion(path: str, stamp: float) -> tuple[dict | None, str | None]:
    return run_reader.confusion(protocol.RunDir(path))


def confusion(run: protocol.RunDir) -> dict | None:
    """The run's confusion matrix, None if there is none or it is unreadable (then its line shows)."""
    doc, problem = _confusion(str(run.path), run_reader.mtime(run.confusion))
    unreadable(problem, run.name)
    return doc


@st.cache_data(max_entries=64, show_spinner=False)
def _queue(path: str, epoch: int, stamp: tuple) -> run_reader.Queue:
    return run_reader.load_queue(protocol.RunDir(path), epoch)


def queue(run: protocol.RunDir, epoch: int) -> run_reader.Queue:
    return _queue(str(run.path), epoch, queue_stamp(run, epoch))


def queue_stamp(run: protocol.RunDir, epoch: int) -> tuple:
    """Changes whenever a file of the queue changes: a cache key for what is drawn from it."""
    return _folder_stamp(run.queue_dir(epoch))


@st.cache_data(max_entries=64, show_spinner=False)
def _tracking(path: str, stamp: float) -> tuple[pd.DataFrame, list[str]]:
    problems: list[str] = []
    return run_reader.read_tracking(protocol.RunDir(path), problems), problems


def tracking(run: protocol.RunDir) -> pd.DataFrame:
    frame, problems = _tracking(str(run.path), run_reader.mtime(run.tracking))
    unreadable(problems, run.name)
    return frame


@st.cache_data(max_entries=32, show_spinner=False)
def _feedback_masks(path: str, stamp: tuple) -> dict:
    return run_reader.feedback_masks(protocol.RunDir(path))


def feedback_masks(run: protocol.RunDir) -> dict:
    return _feedback_masks(str(run.path), feedback_stamp(run))


def feedback_stamp(run: protocol.RunDir) -> tuple:
    """Changes whenever a mask file is added or replaced: a cache key for what is read from them."""
    return _folder_stamp(run.feedback_root)


@st.cache_data(max_entries=32, show_spinner=False)
def _query_images(path: str, stamp: tuple) -> dict:
    from dashboard.views.proposals import proposal_images  # accepted proposals are marked images too

    run = protocol.RunDir(path)
    return {**proposal_images(run), **run_reader.query_images(run)}


def query_images(run: protocol.RunDir) -> dict:
    return _query_images(str(run.path), tuple(protocol.queue_epochs(run)))


@st.cache_data(max_entries=256, show_spinner=False)
def _evaluation(path: str, stamp: float) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    problems: list[str] = []
    return *run_reader.evaluation_frames([protocol.RunDir(path)], problems), problems


def evaluation(names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Evaluation curves and summary rows of the named runs (see run_reader.evaluation_frames), and the
    names of those whose evaluation is unreadable (its line shown)."""
    parts = []
    broken = []
    for run in map(run_dir, names):
        curves, summary, problems = _evaluation(str(run.path), run_reader.mtime(run.evaluation))
        unreadable(problems, run.name)
        broken += [run.name] if problems else []
        parts.append((curves, summary))
    no_curves, no_summary = run_reader.evaluation_frames([])
    curves = [c for c, _ in parts if not c.empty]
    summary = [s for _, s in parts if not s.empty]
    return (pd.concat(curves, ignore_index=True) if curves else no_curves,
            pd.concat(summary, ignore_index=True) if summary else no_summary, broken)


def _folder_stamp(folder: Path) -> tuple:
    """Names and modification times of a folder's files: changes when any file is added, replaced or removed."""
    try:
        return tuple(sorted((e.name, e.lstat().st_mtime) for e in folder.iterdir()))
    except OSError:
        return ()


# --------------------------------------------------------------------------- run picker and badges

def pick_run(summaries: list[RunSummary], label: str = "Run", prefer_waiting: bool = False) -> RunSummary | None:
    """A run chosen by the user; kept in the address (``?run=``) so pages and reloads agree."""
    if not summaries:
        return None
    by_name = {s.name: s for s in summaries}
    names = list(by_name)
    default = 0
    if prefer_waiting:
        default = next((i for i, s in enumerate(summaries) if s.state == protocol.WAITING), 0)
    # no format_func: a bound widget matches the address against the displayed text
    with st.container(horizontal=True, vertical_alignment="bottom"):
        name = st.selectbox(label, names, index=default, key="run", bind="query-params", width=420)
        summary = by_name.get(name)
        if summary is not None:
            state_badge(summary)
    if summary is not None and summary.unreadable:
        unreadable(summary.unreadable)
    return summary


def pick_runs_to_compare(summaries: list[RunSummary]) -> list[str]:
    """The chosen run's name first, then the runs the user overlays on it."""
    summary = pick_run(summaries)
    others = st.multiselect("Compare with", [s.name for s in summaries if s.name != summary.name],
                            placeholder="other runs to overlay")
    return [summary.name, *others]


def link(page: str, label: str, run: str | None = None, icon: str | None = None) -> None:
    """A link to another page that keeps the selected run."""
    st.page_link(PAGES[page], label=label, icon=icon, query_params={"run": run} if run else None)


def state_badge(summary: RunSummary) -> None:
    st.badge(summary.state_label, color="red" if summary.unreadable else STATE_COLORS.get(summary.state, "gray"))


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "–" if _missing(value) else f"{value:.1%}"


def _missing(value) -> bool:
    """Not a number to show (None, NaN, or something else a run file put there)."""
    return not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "a while"
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    if seconds < 5400:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


# --------------------------------------------------------------------------- progress inside an epoch

def epoch_progress(run: protocol.RunDir) -> tuple[float, str] | None:
    """How far the trainer is through the epoch it is training, as a fraction and in words, from the
    ``progress`` the trainer keeps in its status; None when it is not training or says nothing usable
    (older trainers do not write it)."""
    status = protocol.read_status(run)
    progress = status.get("progress")
    if status.get("state") != protocol.TRAINING or not isinstance(progress, dict):
        return None
    done, total = progress.get("batches_done"), progress.get("batches_total")
    if not isinstance(done, int) or not isinstance(total, int) or total <= 0 or not 0 <= done <= total:
        return None
    elapsed, eta = progress.get("elapsed_s"), progress.get("eta_s")
    parts = [f"batch {done} of {total} ({done / total:.0%})"]
    if isinstance(elapsed, (int, float)) and not _missing(elapsed):
        parts.append(f"{ago(elapsed)} so far")
    if isinstance(eta, (int, float)) and not _missing(eta):
        parts.append(f"about {ago(eta)} left")
    return done / total, " · ".join(parts)


# --------------------------------------------------------------------------- runs in trouble

def show_trouble(summary: RunSummary) -> None:
    """Failed or stale runs: what happened, the error and the end of the log, and a resume button."""
    if summary.state == protocol.FAILED:
        st.error(f"**This run failed.** {summary.error or 'The trainer did not say why.'}", icon=":material/error:")
        if summary.traceback:
            with st.expander("Where it failed (traceback)"):
                st.code("\n".join(summary.traceback), language=None)
        log_tail(summary, expanded=not summary.traceback)
    elif summary.state == protocol.STALE:
        st.warning(
            f"**The trainer stopped responding** (its last sign of life was {ago(summary.heartbeat_age)} ago, "
            "or its process is gone). It may have crashed, been killed, or the computer restarted. "
            "Resume continues from the last saved epoch; feedback already sent is kept.",
            icon=":material/heart_broken:")
        log_tail(summary)
    elif summary.state == protocol.STOPPED:
        st.info("This run was stopped. Resume continues from the last saved epoch.", icon=":material/pause_circle:")
    if summary.state in (protocol.FAILED, protocol.STALE, protocol.STOPPED):
        resume_button(summary)


def log_tail(summary: RunSummary, expanded: bool = False) -> None:
    text = protocol.read_log_tail(summary.run)
    if text:
        with st.expander("End of the trainer's log", expanded=expanded):
            st.code(text, language=None)


def resume_button(summary: RunSummary) -> None:
    if not summary.run.last_checkpoint.exists():
        st.caption("It stopped before its first checkpoint: resuming starts it from the beginning.")
    if st.button("Resume this run", key=f"resume-{summary.name}", icon=":material/play_arrow:", type="primary"):
        try:
            launcher.resume_run(summary.run)
        except launcher.LaunchError as e:
            action_failed(summary.name, "could not be resumed", str(e))
            st.rerun()
        else:
            st.toast(f"Resuming {summary.name}…", icon=":material/play_arrow:")
            time.sleep(0.5)
            st.rerun()


# --------------------------------------------------------------------------- errors of a run's actions
# Kept in the session until the reviewer dismisses them: shown by a fragment that refreshes every
# REFRESH_SECONDS, an error would otherwise vanish with the next refresh, before anyone read it.

def action_failed(name: str, what: str, message: str) -> None:
    """Remember that an action on run ``name`` failed (``what``: "could not be resumed", ...)."""
    st.session_state.setdefault("run-action-errors", {})[name] = f"**{name}** {what}: {message}"


def show_action_errors() -> None:
    """The failed actions' errors, each until its Dismiss button is pressed."""
    errors = st.session_state.get("run-action-errors") or {}
    for name, text in list(errors.items()):
        with st.container(horizontal=True, vertical_alignment="center"):
            st.error(text, icon=":material/error:")
            if st.button("Dismiss", key=f"dismiss-error-{name}"):
                errors.pop(name, None)
                st.rerun()
