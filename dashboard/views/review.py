"""Review: the model's questions of one epoch, one image at a time. The reviewer sees what the model
looked at, marks what it must not rely on (and optionally what it should), skips the image or flags
its label, and sends everything in one mask file; the trainer then continues."""
from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from trainer import protocol

from dashboard import answers as answer_book
from dashboard import masks, overlay, run_reader
from dashboard.answers import Answer
from dashboard.masks import FORBIDDEN, RELEVANT, Geometry, Tool
from dashboard.run_reader import Query, Queue, RunSummary
from dashboard.views import canvas, common

TOOL_LABELS = {
    masks.GRID: ":material/grid_on: Squares",
    masks.RECT: ":material/crop_square: Rectangle",
    masks.BRUSH: ":material/brush: Brush",
    masks.ERASER: ":material/ink_eraser: Eraser",
}
TARGET_LABELS = {FORBIDDEN: ":red[■] must NOT use", RELEVANT: ":green[■] should use"}
TOOL_HELP = {
    masks.GRID: "Click a square to mark it, click it again to unmark it.",
    masks.RECT: "Drag a rectangle.",
    masks.BRUSH: "Paint with the mouse.",
    masks.ERASER: "Paint over marks to remove them.",
}
SENT_LABELS = {protocol.ACTION_MASK: "marked", protocol.ACTION_SKIP: "skipped",
               protocol.ACTION_WRONG_LABEL: "label flagged as wrong"}
PREVIEW_WIDTH = 220


def render() -> None:
    st.title("Review")
    summaries = run_reader.list_summaries(common.runs_dir())
    if not summaries:
        st.info("No runs yet. Start a run on the Runs page with **You, on the Review page** as the one who "
                "answers; after its first epoch the model's questions appear here.", icon=":material/draw:")
        return
    summary = common.pick_run(summaries, prefer_waiting=True)
    watch(summary.name)
    show_flash()
    run = summary.run
    pending = protocol.pending_epoch(run)
    if summary.state in (protocol.FAILED, protocol.STALE, protocol.STOPPED):
        common.show_trouble(summary)
    if pending is not None and summary.state != protocol.FINISHED:
        if summary.state != protocol.WAITING:
            st.info("You can still answer these questions: the trainer reads your answers when the run goes on.",
                    icon=":material/info:")
        if summary.feedback_error:
            st.warning(f"The trainer could not use the last answers sent: {summary.feedback_error}. "
                       "They are kept in feedback/rejected/. Please send them again.", icon=":material/warning:")
        review_queue(run, common.queue(run, pending))
    else:
        nothing_waiting(summary)
    answered_elsewhere(run)
    past_answers(run)


@st.fragment(run_every=common.REFRESH_SECONDS)
def watch(name: str) -> None:
    """Reload the page when the run's state or its open question changes (a new queue, another tab's
    answer, the trainer dying), and leave it alone otherwise."""
    run = common.run_dir(name)
    seen = (protocol.read_status(run)["state"], protocol.pending_epoch(run))
    key = f"review-seen-{name}"
    before = st.session_state.get(key)
    st.session_state[key] = seen
    if before is not None and before != seen:
        st.rerun()


def show_flash() -> None:
    """The outcome of the last submit, shown after the page reloaded with the run's new state."""
    flash = st.session_state.pop("review-flash", None)
    if flash is not None:
        sent, message = flash
        if sent:
            st.success(message, icon=":material/check_circle:")
        else:
            st.error(message, icon=":material/block:")


def nothing_waiting(summary: RunSummary) -> None:
    if summary.annotator == "none":
        text = "This run trains without feedback, so it asks nothing."
    elif summary.annotator == "oracle":
        text = "The simulated annotator answers this run's questions; the ones it answered are listed below."
    elif summary.state == protocol.FINISHED:
        text = "This run has finished: it asks nothing more."
    elif summary.state in (run_reader.STARTING, protocol.TRAINING):
        text = ("Nothing to answer right now. The model asks about a few images at the end of an epoch; "
                "this page shows them as soon as they are ready.")
    else:
        text = "Nothing waiting for an answer in this run."
    st.info(text, icon=":material/hourglass_top:" if summary.state == protocol.TRAINING else ":material/info:")


# --------------------------------------------------------------------------- one queue

def book_key(run: protocol.RunDir, epoch: int) -> str:
    """Where the reviewer's unsent work on a queue is kept: for the browser session, so switching
    pages or images does not lose it."""
    return f"answers-{run.path}-{epoch}"


def review_queue(run: protocol.RunDir, queue: Queue) -> None:
    if queue.error:
        st.error(f"This run's questions cannot be shown: {queue.error}. The trainer cannot go on without "
                 "answers to them: stop the run and start a new one.", icon=":material/error:")
        return
    when = f"Epoch {queue.epoch}" if queue.epoch else "Before training"
    st.subheader(f"{when}: the model asks about {len(queue.queries)} images")
    if not queue.epoch:
        st.info("The model has not trained yet, so its saliency says little. Mark what no model should rely on "
                "(a ruler, a sticker, a text label): marks given now keep it from learning that shortcut at all.",
                icon=":material/info:")
    st.markdown("For each image, mark in **red** what the model must **not** rely on (a ruler, a text label, "
                "a border, ...); if you like, mark in **green** what it **should** rely on. Or skip the image, "
                "or tell the trainer its label is wrong. Send all answers at the bottom.")
    book = st.session_state.setdefault(book_key(run, queue.epoch), {})
    view = display_settings()
    position = pager(queue, book)
    query = queue.queries[position]
    with st.container(border=True):
        if query.problem:
            st.error(f"Image {position + 1} cannot be shown: {query.problem}. It will be sent as skipped; "
                     "the other images are not affected.", icon=":material/broken_image:")
        else:
            query_card(queue.epoch, query, book.setdefault(query.query_id, Answer.for_query(query)), view)
    submit_panel(run, queue, book)


def display_settings() -> dict:
    with st.sidebar:
        st.subheader("Picture")
        show = st.toggle("Show saliency", True, key="view-saliency", persist_state="session",
                         help="Colour where the model looked: with the first colour scheme, red pushed it "
                              "towards its answer and blue away from it.")
        opacity = st.slider("Saliency strength", 0.1, 1.0, 0.7, 0.05, key="view-opacity",
                            persist_state="session", disabled=not show)
        colormap = st.selectbox("Colours", list(overlay.COLORMAPS), key="view-colormap",
                                persist_state="session", disabled=not show)
        suggest = st.toggle("Outline where it looks most", True, key="view-suggest", persist_state="session",
                            help="Yellow squares: the grid squares with the most attribution, the first "
                                 "places to check.")
        st.subheader("Marking")
        cells = st.slider("Grid squares per side", 2, 16, 8, key="view-cells", persist_state="session")
        brush = st.slider("Brush size (image pixels)", 1, 8, 2, key="view-brush", persist_state="session")
    return {"saliency": show, "opacity": opacity, "colormap": overlay.COLORMAPS[colormap], "suggest": suggest,
            "cells": cells, "brush": brush}


def pager(queue: Queue, book: dict[str, Answer]) -> int:
    """Which image is shown; each button tells what its image's answer will be."""
    key = f"page-{queue.epoch}"
    count = len(queue.queries)
    st.session_state.setdefault(key, 0)
    st.session_state[key] = min(st.session_state[key] or 0, count - 1)

    def label(i: int) -> str:
        query = queue.queries[i]
        answer = book.get(query.query_id)
        if query.problem:
            return f"{i + 1} :material/broken_image:"
        if answer is None or not answer.touched:
            return f"{i + 1}"
        return f"{i + 1} " + {protocol.ACTION_MASK: ":material/check:", protocol.ACTION_SKIP: ":material/remove:",
                              protocol.ACTION_WRONG_LABEL: ":material/flag:"}[answer.action]

    def step(delta: int) -> None:
        st.session_state[key] = (st.session_state[key] + delta) % count

    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Previous", icon=":material/chevron_left:", on_click=step, args=(-1,), disabled=count < 2)
        st.segmented_control("Image", list(range(count)), format_func=label, key=key, required=True,
                             label_visibility="collapsed")
        st.button("Next", icon=":material/chevron_right:", on_click=step, args=(1,), disabled=count < 2)
    return st.session_state[key]


def query_card(epoch: int, query: Query, answer: Answer, view: dict) -> None:
    key = f"{epoch}-{query.query_id}"
    picture_column, info_column = st.columns([11, 9], gap="large")
    with info_column:
        query_facts(query)
        action_choice(key, answer)
    with picture_column:
        tool = Tool(mode=st.session_state.get("tool-mode", masks.GRID),
                    target=st.session_state.get("tool-target", FORBIDDEN), cells=view["cells"], brush=view["brush"])
        geometry = Geometry.fit(query.height, query.width)
        suggested = (masks.suggested_cells(query.saliency, tool.cells)
                     if view["suggest"] and query.saliency is not None else [])
        picture = overlay.compose(
            query.image, geometry, query.saliency if view["saliency"] else None, opacity=view["opacity"],
            colormap=view["colormap"], forbidden=answer.marks.forbidden, relevant=answer.marks.relevant,
            cells=tool.cells, grid_lines=tool.mode == masks.GRID, suggested=suggested)
        if query.warning:
            st.warning(query.warning.capitalize() + ".", icon=":material/warning:")
        if answer.action != protocol.ACTION_MASK:
            st.image(picture, width=geometry.canvas_width)
            st.caption("Marks are not sent for this image. Choose **Mark regions** to draw.")
            return
        with st.container(horizontal=True):
            st.segmented_control("Tool", list(TOOL_LABELS), format_func=TOOL_LABELS.get, key="tool-mode",
                                 default=masks.GRID, required=True, persist_state="session")
            st.segmented_control("Mark what the model", list(TARGET_LABELS), format_func=TARGET_LABELS.get,
                                 key="tool-target", default=FORBIDDEN, required=True, persist_state="session",
                                 disabled=tool.mode == masks.ERASER)
        st.caption(TOOL_HELP[tool.mode])
        marks = canvas.draw_mask(answer.marks, tool, picture, geometry, key=f"canvas-{key}-{answer.version}")
        if answer.change(marks):
            st.rerun()
        with st.container(horizontal=True):
            st.button("Undo", icon=":material/undo:", key=f"undo-{key}", on_click=answer.undo,
                      disabled=not answer.history)
            st.button("Clear", icon=":material/delete:", key=f"clear-{key}", on_click=answer.clear,
                      disabled=answer.marks.is_empty())
            st.button("Mark the yellow squares", icon=":material/select_all:", key=f"suggest-{key}",
                      disabled=not suggested, on_click=lambda: answer.change(answer.marks.paint(
                          masks.cells_region(query.height, query.width, tool.cells, suggested), FORBIDDEN)),
                      help="Mark the outlined squares as what the model must not use.")
        marks_summary(answer)


def query_facts(query: Query) -> None:
    correct = query.predicted_label == query.true_label
    a, b = st.columns(2)
    a.metric("Label in the data", query.label(query.true_label))
    probability = query.probabilities[query.predicted_label] if query.predicted_label < len(query.probabilities) else math.nan
    b.metric("The model says", query.label(query.predicted_label),
             delta=f"{probability:.0%} sure" + ("" if correct else ", wrong"),
             delta_color="normal" if correct else "inverse", delta_arrow="off")
    if query.probabilities:
        most = math.log(len(query.probabilities)) if len(query.probabilities) > 1 else 1.0
        st.caption(f"Uncertainty (entropy): {query.entropy:.2f} of at most {most:.2f}"
                   + (" · you answered about this image before" if query.already_annotated else ""))
        st.plotly_chart(probability_chart(query), key=f"probabilities-{query.query_id}",
                        config={"displayModeBar": False})


def probability_chart(query: Query) -> go.Figure:
    names = [query.label(i) for i in range(len(query.probabilities))]
    colors = ["#1f77b4" if i == query.true_label else ("#d62728" if i == query.predicted_label else "#b0b7c3")
              for i in range(len(names))]
    figure = go.Figure(go.Bar(x=query.probabilities, y=names, orientation="h", marker_color=colors,
                              hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    figure.update_layout(height=min(360, 60 + 22 * len(names)), margin=dict(l=10, r=10, t=30, b=10),
                         title=dict(text="Class probabilities (blue: the label, red: a wrong answer)",
                                    font=dict(size=13)),
                         xaxis=dict(range=[0, 1], tickformat=".0%"), yaxis=dict(type="category", autorange="reversed"))
    return figure


def action_choice(key: str, answer: Answer) -> None:
    actions = list(answer_book.ACTION_LABELS)

    def changed() -> None:
        answer.action = st.session_state[f"action-{key}"]

    st.radio("Your answer", actions, index=actions.index(answer.action), format_func=answer_book.ACTION_LABELS.get,
             key=f"action-{key}", on_change=changed, horizontal=True,
             help="Images whose label you flag as wrong are left out of training from now on.")
    if answer.action == protocol.ACTION_WRONG_LABEL:
        st.caption(":material/flag: The trainer leaves this image out of training from now on.")


def marks_summary(answer: Answer) -> None:
    total = answer.marks.forbidden.size
    parts = [f"{name}: {int(m.sum())} pixels ({m.sum() / total:.0%})"
             for name, m in (("must not use", answer.marks.forbidden), ("should use", answer.marks.relevant))
             if m.any()]
    st.caption("Marked " + " · ".join(parts) if parts else
               "Nothing marked yet: unmarked images are sent as skipped.")


def submit_panel(run: protocol.RunDir, queue: Queue, book: dict[str, Answer]) -> None:
    st.subheader("Send your answers")
    n = answer_book.counts(queue, book)
    st.markdown(f"**{n[protocol.ACTION_MASK]}** marked · **{n[protocol.ACTION_SKIP]}** skipped · "
                f"**{n[protocol.ACTION_WRONG_LABEL]}** with a wrong label · **{n['untouched']}** not marked "
                f"(sent as skipped)")
    st.caption("Images whose label you flag as wrong are left out of training from now on. Answers cannot be "
               "changed once sent.")
    if st.button(f"Send answers for epoch {queue.epoch}", type="primary", icon=":material/send:",
                 key=f"submit-{queue.epoch}"):
        try:
            sent = answer_book.submit(run, queue, book)
        except protocol.ProtocolError as e:  # over the mask file's size limit: nothing written, marks kept
            st.error(f"Not sent: {e}. Clear some marks and send again.", icon=":material/error:")
            return
        if sent:
            flash = (True, f"Answers for epoch {queue.epoch} sent. The trainer goes on; its next questions "
                           "appear here when they are ready.")
        else:
            flash = (False, f"Answers for epoch {queue.epoch} had already been sent (from another tab or by "
                            "someone else), so yours were not sent: the first answers stand. They are shown "
                            "under **Earlier answers**.")
        st.session_state.pop(book_key(run, queue.epoch), None)
        st.session_state["review-flash"] = flash
        st.rerun()


# --------------------------------------------------------------------------- earlier answers

def answered_elsewhere(run: protocol.RunDir) -> None:
    """Say so when answers this page was working on were made moot by answers sent from elsewhere."""
    for epoch in protocol.queue_epochs(run):
        if book_key(run, epoch) not in st.session_state or not protocol.feedback_sent(run, epoch):
            continue
        book = st.session_state.pop(book_key(run, epoch))
        if any(a.touched for a in book.values()):
            st.warning(f"Answers for epoch {epoch} were sent from another tab or by someone else, so the marks "
                       "you made here for that epoch were not sent; the answers that were sent are shown under "
                       "**Earlier answers**.", icon=":material/block:")


def past_answers(run: protocol.RunDir) -> None:
    epochs = [e for e in protocol.queue_epochs(run) if protocol.feedback_sent(run, e)]
    if not epochs:
        return
    with st.expander("Earlier answers"):
        epoch = st.selectbox("Epoch", epochs[::-1], key="past-epoch")
        queue = common.queue(run, epoch)
        sent = run_reader.sent_answers(run, epoch)
        if queue.error or sent is None:
            st.warning(queue.error or "These answers cannot be read.")
            return
        columns = st.columns(4)
        for i, query in enumerate(queue.queries):
            answer = sent.get(query.query_id)
            with columns[i % 4]:
                if query.image is None:
                    st.caption(f"{query.query_id}: {query.problem}")
                    continue
                geometry = Geometry.fit(query.height, query.width, side=PREVIEW_WIDTH)
                st.image(overlay.compose(query.image, geometry,
                                         forbidden=answer.forbidden if answer else None,
                                         relevant=answer.relevant if answer else None), width=PREVIEW_WIDTH)
                st.caption(f"label {query.label(query.true_label)} · "
                           f"{SENT_LABELS.get(answer.action, answer.action) if answer else 'not answered'}")


if __name__ == "__main__":  # run by st.navigation as a page script
    render()
