"""Review: the model's questions of one epoch, one image at a time. The reviewer sees what the model
looked at, marks what it must not rely on (and optionally what it should), skips the image or flags
its label, and sends everything in one mask file; the trainer then continues."""
from __future__ import annotations

import html
import math

import numpy as np
import streamlit as st

from trainer import protocol

from dashboard import answers as answer_book
from dashboard import masks, overlay, run_reader
from dashboard.answers import Answer
from dashboard.masks import Geometry
from dashboard.run_reader import Query, Queue, RunSummary
from dashboard.views import canvas, common
from dashboard.views import proposals as proposals_view

SENT_LABELS = {protocol.ACTION_MASK: "marked", protocol.ACTION_SKIP: "skipped",
               protocol.ACTION_WRONG_LABEL: "label flagged as wrong"}
PREVIEW_WIDTH = 220


def render() -> None:
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
    common.show_action_errors()
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
    if summary.state == protocol.TRAINING:
        training_progress(summary.name)


@st.fragment(run_every=common.REFRESH_SECONDS)
def training_progress(name: str) -> None:
    """The trainer's progress through the current epoch, refreshed while the reviewer waits."""
    progress = common.epoch_progress(common.run_dir(name))
    if progress is not None:
        fraction, text = progress
        st.progress(fraction, text=f"Training this epoch: {text}")


# --------------------------------------------------------------------------- one queue

def book_key(run: protocol.RunDir, epoch: int) -> str:
    """Where the reviewer's unsent work on a queue is kept in the browser session; a draft file
    beside the run keeps it across reloads and browser crashes."""
    return f"answers-{run.path}-{epoch}"


def answer_book_for(run: protocol.RunDir, queue: Queue) -> dict[str, Answer]:
    """The session's answers to ``queue``; a fresh session (a reload, another browser) starts from the draft."""
    key = book_key(run, queue.epoch)
    if key not in st.session_state:
        st.session_state[key] = answer_book.load_draft(run, queue)
    return st.session_state[key]


NARROW_LAYOUT_CSS = """<style>
/* the image picker wraps instead of running off a narrow window */
[class*="st-key-page-"] [data-testid="stButtonGroup"] > div { flex-wrap: wrap; row-gap: 4px; }
/* where the image column would get narrower than the image wants, the facts move below it */
[data-testid="stHorizontalBlock"]:has(.st-key-review-picture) { flex-wrap: wrap; }
[data-testid="stColumn"]:has(.st-key-review-picture) { min-width: min(100%, 400px); flex: 3 1 480px; }
[data-testid="stColumn"]:has(.st-key-review-facts) { min-width: 240px; flex: 1 1 240px; }
</style>"""


def review_queue(run: protocol.RunDir, queue: Queue) -> None:
    st.html(NARROW_LAYOUT_CSS)
    if queue.error:
        st.error(f"This run's questions cannot be shown: {queue.error}. The trainer cannot go on without "
                 "answers to them: stop the run and start a new one.", icon=":material/error:")
        return
    when = f"Epoch {queue.epoch}" if queue.epoch else "Before training"
    if queue.queries:
        queue_header(when, queue)
    else:  # --query-budget spent: this round only brings proposals to confirm
        st.markdown(f"**{when}: nothing to draw.** The run's budget of images to ask about is spent; "
                    "confirm the trainer's proposals below and send.")
    book = answer_book_for(run, queue)
    view = display_settings()
    proposal = proposals_view.editing(run, queue.epoch)
    query = queue.queries[pager(queue, book, disabled=proposal is not None)] if queue.queries else None
    if proposal is not None:
        with st.container(border=True):
            proposal_card(run, queue, book, proposal, view)
    elif query is not None:
        with st.container(border=True):
            if query.problem:
                st.error(f"Image {queue.queries.index(query) + 1} cannot be shown: {query.problem}. It will be "
                         "sent as skipped; the other images are not affected.", icon=":material/broken_image:")
            else:
                query_card(run, queue, query, book, view)
    proposals_view.section(run, queue.epoch, book)
    submit_panel(run, queue, book)


def queue_header(when: str, queue: Queue) -> None:
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        st.markdown(f"**{when}: the model asks about {len(queue.queries)} images**", width="content")
        with st.popover("How to answer", icon=":material/help:"):
            st.markdown("For each image, mark in **red** what the model must **not** rely on (a ruler, a text "
                        "label, a border, ...); if you like, mark in **green** what it **should** rely on: under "
                        "the default penalty everything outside green marks then counts as must-not-use for that "
                        "image. Or skip the image, or tell the trainer its label is wrong. Your work is kept as a "
                        "draft beside the run until you send all answers at the bottom.")
    if not queue.epoch:
        st.info("The model has not trained yet, so its saliency says little. Mark what no model should rely on "
                "(a ruler, a sticker, a text label): marks given now keep it from learning that shortcut at all.",
                icon=":material/info:")


def display_settings() -> dict:
    with st.sidebar:
        st.subheader("Picture")
        show = st.toggle("Show saliency", True, key="view-saliency", persist_state="session",
                         help="Colour where the model looked: one colour where it pushed the model towards "
                              "its answer, the other where it pushed away (the legend under the picture says "
                              "which). Hold O (or the Original button) to see the image as it is.")
        opacity = st.slider("Saliency strength", 0.0, 1.0, 0.6, 0.05, key="view-opacity",
                            persist_state="session", disabled=not show,
                            help="0 shows the image as it is; the image fades only as much as the colour grows.")
        colormap = st.selectbox("Colours", list(overlay.COLORMAPS), key="view-colormap",
                                persist_state="session", disabled=not show)
        suggest = st.toggle("Outline where it looks most", True, key="view-suggest", persist_state="session",
                            help="A dashed yellow outline round the pixels with the most attribution, the "
                                 "first places to check; Y marks them.")
        st.subheader("Marking")
        cells = st.slider("Grid squares per side", 2, 16, 8, key="view-cells", persist_state="session",
                          help="For the Squares tool. The brush size is on the canvas's toolbar ([ and ]).")
    return {"saliency": show, "opacity": opacity, "colormap": colormap, "suggest": suggest, "cells": cells}


def page_key(queue: Queue) -> str:
    """The key of the image picker. Whenever Python opens another image (Previous, Next, a hotkey, the
    next unanswered one) the picker starts a new generation showing it, so a value the browser still
    holds for the old picker, sent with a rerun that overtook the last, cannot open the old image again."""
    generation = st.session_state.get(f"page-generation-{queue.epoch}", 0)
    return f"page-{queue.epoch}" + (f"-{generation}" if generation else "")


def current_image(queue: Queue) -> int:
    return min(st.session_state.get(f"image-{queue.epoch}", 0), len(queue.queries) - 1)


def open_image(queue: Queue, position: int) -> None:
    st.session_state[f"image-{queue.epoch}"] = position
    generation = f"page-generation-{queue.epoch}"
    st.session_state[generation] = st.session_state.get(generation, 0) + 1


def pager(queue: Queue, book: dict[str, Answer], disabled: bool = False) -> int:
    """Which image is shown; each button tells what its image's answer will be. ``disabled`` while a
    proposal is open on the canvas (its Back button returns to the image)."""
    key = page_key(queue)
    count = len(queue.queries)

    def label(i: int) -> str:
        query = queue.queries[i]
        answer = book.get(query.query_id)
        if query.problem:
            return f"{i + 1} :material/broken_image:"
        if answer is None or not answer.touched:
            return f"{i + 1}"
        return f"{i + 1} " + {protocol.ACTION_MASK: ":material/check:", protocol.ACTION_SKIP: ":material/remove:",
                              protocol.ACTION_WRONG_LABEL: ":material/flag:"}[answer.action]

    def picked() -> None:
        if key == page_key(queue):  # not a stale value of a picker Python has replaced
            st.session_state[f"image-{queue.epoch}"] = st.session_state[key]

    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Previous", icon=":material/chevron_left:", on_click=step, args=(queue, -1),
                  disabled=count < 2 or disabled, key=f"previous-{queue.epoch}", help="Previous image (← or P)")
        st.segmented_control("Image", list(range(count)), format_func=label, key=key, required=True,
                             default=current_image(queue), on_change=picked, label_visibility="collapsed",
                             disabled=disabled)
        st.button("Next", icon=":material/chevron_right:", on_click=step, args=(queue, 1),
                  disabled=count < 2 or disabled, key=f"next-{queue.epoch}", help="Next image (→ or N)")
    return current_image(queue)


def step(queue: Queue, delta: int) -> None:
    open_image(queue, (current_image(queue) + delta) % len(queue.queries))


def open_next_unanswered(queue: Queue, book: dict[str, Answer]) -> None:
    """After an image is answered, the next one nobody answered yet opens (in order, wrapping round)."""
    count = len(queue.queries)
    here = current_image(queue)
    for i in range(here + 1, here + count):
        query = queue.queries[i % count]
        answer = book.get(query.query_id)
        if query.problem is None and (answer is None or not answer.touched):
            open_image(queue, i % count)
            return


def action_key(queue: Queue, query: Query) -> str:
    """The key of ``query``'s answer buttons. A hotkey that changes the answer starts a new generation
    of the widget (shown with the new answer), so a value the browser still holds for the old one,
    sent with a rerun that overtook the last, cannot undo the hotkey (see ``action_choice``)."""
    generation = st.session_state.get(f"action-generation-{queue.epoch}-{query.query_id}", 0)
    return f"action-{queue.epoch}-{query.query_id}" + (f"-{generation}" if generation else "")


def set_action(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], query: Query, action: str,
               by_key: bool = False) -> None:
    """Record the reviewer's choice for ``query``; a skip or a flag answers the image, so the next one opens."""
    book[query.query_id].action = action
    if by_key:
        generation = f"action-generation-{queue.epoch}-{query.query_id}"
        st.session_state[generation] = st.session_state.get(generation, 0) + 1
    answer_book.save_draft(run, queue.epoch, book)
    if action != protocol.ACTION_MASK:
        open_next_unanswered(queue, book)


def take_marks(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], drawn: dict | None) -> None:
    """Take the browser's lists of marks, each for the image it names (``{"docs": {doc: {"ops": [...],
    "revision": n}}}``), where newer than ours, and keep them in the draft. The browser sends every
    image whose marks Python has not confirmed, so a mark drawn while the page opened another image
    lands on the image it was drawn on, and only there. A proposal's corrected marks are taken the
    same way (and tick it)."""
    docs = drawn.get("docs") if isinstance(drawn, dict) else None
    if not isinstance(docs, dict):
        return
    images = {canvas_doc(run, queue, q.query_id): (q.query_id, q) for q in queue.queries if q.problem is None}
    proposals = {answer_book.proposal_answer_id(e.proposal_id): e for e in proposals_view.read(run, queue.epoch)[0]}
    images.update({canvas_doc(run, queue, answer_id): (answer_id, e) for answer_id, e in proposals.items()})
    changed = False
    for doc, marks in docs.items():
        answer_id, image = images.get(doc, (None, None))
        if image is None or not isinstance(marks, dict):
            continue  # another run's or epoch's image: not this queue's to take
        ops, revision = marks.get("ops"), marks.get("revision")
        if isinstance(ops, list) and isinstance(revision, int) and not isinstance(revision, bool):
            answer = book.setdefault(answer_id, Answer.for_query(image))
            if answer.take([op for op in ops if isinstance(op, dict)], revision):
                changed = True
                if answer_id in proposals:
                    proposals_view.mark_edited(run, queue.epoch, proposals[answer_id].proposal_id)
    if changed:
        answer_book.save_draft(run, queue.epoch, book)


def canvas_key(queue: Queue) -> str:
    """One key for the queue's canvas, whichever image it shows: its state (the marks not yet
    confirmed) is never dropped because Python opened another image."""
    return f"canvas-{queue.epoch}"


def on_canvas_marks(run: protocol.RunDir, queue: Queue, book: dict[str, Answer]) -> None:
    take_marks(run, queue, book, st.session_state[canvas_key(queue)].marks)


def canvas_doc(run: protocol.RunDir, queue: Queue, answer_id: str) -> str:
    """Which image a canvas shows, as the browser names it back in its commands: the run, the epoch
    and the image's key in the answer book (a query's id, or answers.proposal_answer_id)."""
    return f"{run.path}|{queue.epoch}|{answer_id}"


def canvas_command(queue: Queue, doc: str) -> str | None:
    """The hotkey the canvas sent for image ``doc``, once per key press; None when there is none."""
    sent = st.session_state[canvas_key(queue)].command
    if not isinstance(sent, dict) or sent.get("doc") != doc:
        return None
    if sent.get("sequence") == st.session_state.get("canvas-last-command"):
        return None
    st.session_state["canvas-last-command"] = sent.get("sequence")
    return sent.get("name")


def on_canvas_command(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], query: Query) -> None:
    """A hotkey that needs Python: another image, an action, or sending everything. Each key press
    is acted on once, and only for the image it was pressed on."""
    on_canvas_marks(run, queue, book)
    command = canvas_command(queue, canvas_doc(run, queue, query.query_id))
    if command in ("next", "previous"):
        step(queue, 1 if command == "next" else -1)
    elif command == "skip":
        set_action(run, queue, book, query, protocol.ACTION_SKIP, by_key=True)
    elif command == "wrong_label":
        set_action(run, queue, book, query, protocol.ACTION_WRONG_LABEL, by_key=True)
    elif command == "mark":
        set_action(run, queue, book, query, protocol.ACTION_MASK, by_key=True)
    elif command == "done":
        open_next_unanswered(queue, book)
    elif command == "submit":
        send_answers(run, queue, book)


@st.cache_data(max_entries=64, show_spinner=False)
def _pictures(path: str, epoch: int, query_id: str, stamp: tuple, saliency: bool, opacity: float,
              colormap: str) -> tuple[str, str]:
    """The picture with its saliency overlay and the image as it is, as data URLs at image size (the
    browser enlarges them without smoothing)."""
    queue = common.queue(protocol.RunDir(path), epoch)
    query = next(q for q in queue.queries if q.query_id == query_id)
    geometry = Geometry(query.height, query.width, query.height, query.width)
    picture = overlay.compose(query.image, geometry, query.saliency if saliency else None, opacity=opacity,
                              colormap=overlay.colormap_for(colormap, query.image))
    return overlay.data_url(picture), overlay.data_url(overlay.compose(query.image, geometry))


def canvas_data(run: protocol.RunDir, queue: Queue, query: Query, book: dict[str, Answer], view: dict) -> dict:
    """What the browser's canvas needs for one image; the marks only initialise it (see mark_canvas.js)."""
    answer = book[query.query_id]
    picture, original = _pictures(str(run.path), queue.epoch, query.query_id, common.queue_stamp(run, queue.epoch),
                                  view["saliency"], view["opacity"], view["colormap"])
    suggested = (_suggestion(str(run.path), queue.epoch, query.query_id, common.queue_stamp(run, queue.epoch))
                 if view["suggest"] and query.saliency is not None else {"cells": view["cells"], "squares": []})
    return {"doc": canvas_doc(run, queue, query.query_id), "width": query.width, "height": query.height,
            "picture": picture, "original": original, "ops": answer.ops, "revision": answer.revision,
            "known": known_revisions(run, queue, book), "cells": view["cells"], "suggested": suggested,
            "readonly": answer.action != protocol.ACTION_MASK, "unsent": any(a.touched for a in book.values())}


def known_revisions(run: protocol.RunDir, queue: Queue, book: dict[str, Answer]) -> dict[str, int]:
    """The revision of each image's marks Python has, by doc: the browser resends only newer ones."""
    return {canvas_doc(run, queue, answer_id): answer.revision for answer_id, answer in book.items()}


@st.cache_data(max_entries=256, show_spinner=False)
def _suggestion(path: str, epoch: int, query_id: str, stamp: tuple) -> dict:
    """Where the model looks most, as a set of squares of one image pixel (see masks.suggested_region)."""
    queue = common.queue(protocol.RunDir(path), epoch)
    query = next(q for q in queue.queries if q.query_id == query_id)
    region = masks.suggested_region(query.saliency)
    side = max(query.height, query.width)
    return {"cells": side, "squares": [[int(r), int(c)] for r, c in zip(*np.nonzero(region))]}


def query_card(run: protocol.RunDir, queue: Queue, query: Query, book: dict[str, Answer], view: dict) -> None:
    answer = book.setdefault(query.query_id, Answer.for_query(query))
    picture_column, info_column = st.columns([2, 1], gap="medium")
    with picture_column.container(key="review-picture"):
        if query.warning:
            st.warning(query.warning.capitalize() + ".", icon=":material/warning:")
        args = (run, queue, book, query)
        drawn = canvas.draw_marks(canvas_data(run, queue, query, book, view), key=canvas_key(queue),
                                  on_marks=lambda: on_canvas_marks(run, queue, book),
                                  on_command=lambda: on_canvas_command(*args))
        take_marks(run, queue, book, drawn)
        if view["saliency"] and query.saliency is not None:
            st.caption(saliency_legend(overlay.colormap_for(view["colormap"], query.image)), unsafe_allow_html=True)
        marks_summary(answer)
    with info_column.container(key="review-facts"):
        action_choice(run, queue, book, query)
        query_facts(query)


def proposal_card(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], entry: protocol.ProposalEntry,
                  view: dict) -> None:
    """One proposal on the queue's canvas, in place of the current image, its proposed mask preloaded
    as marks to correct (proposals.py has the rest of the proposal's page)."""
    proposals_view.editor_header(run, queue.epoch, entry, "the questions" if queue.queries else "the proposals")
    try:
        answer = proposals_view.answer_for(run, queue.epoch, entry, book)
    except (OSError, ValueError) as e:
        st.error(f"Proposal #{entry.index} cannot be opened ({e}); tick or untick it in the grid below.",
                 icon=":material/broken_image:")
        return
    answer_id = answer_book.proposal_answer_id(entry.proposal_id)
    doc = canvas_doc(run, queue, answer_id)
    picture = proposals_view.picture(str(run.path), queue.epoch, entry.proposal_id,
                                     common.queue_stamp(run, queue.epoch))
    data = {"doc": doc, "width": entry.width, "height": entry.height, "picture": picture, "original": picture,
            "ops": answer.ops, "revision": answer.revision, "known": known_revisions(run, queue, book),
            "cells": view["cells"], "suggested": {"cells": view["cells"], "squares": []}, "readonly": False,
            "unsent": any(a.touched for a in book.values()), "back": True}
    picture_column, info_column = st.columns([2, 1], gap="medium")
    with picture_column.container(key="review-picture"):
        drawn = canvas.draw_marks(data, key=canvas_key(queue), on_marks=lambda: on_canvas_marks(run, queue, book),
                                  on_command=lambda: on_proposal_command(run, queue, book, doc))
        take_marks(run, queue, book, drawn)
    with info_column.container(key="review-facts"):
        proposals_view.editor_facts(run, queue.epoch, entry, book.get(answer_id, answer))


def on_proposal_command(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], doc: str) -> None:
    """A hotkey on an open proposal: ← → Enter or Esc go back to the questions, Ctrl+Enter sends."""
    on_canvas_marks(run, queue, book)
    command = canvas_command(queue, doc)
    if command in ("next", "previous", "done", "back"):
        proposals_view.close_editor(run, queue.epoch)
    elif command == "submit":
        send_answers(run, queue, book)


def saliency_legend(colormap: str) -> str:
    """One line naming the overlay's two colours for this image."""
    against, towards = (overlay.colorize(np.array([v]), colormap)[0] for v in (-1.0, 1.0))
    swatch = lambda rgb: ("<span style='color:#%02x%02x%02x'>■</span>" % tuple(int(round(c * 255)) for c in rgb))
    return f"Saliency: {swatch(towards)} pushed towards the model's answer · {swatch(against)} pushed away from it"


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
        st.html(probability_bars(query))


PROBABILITY_ROWS = 8
PROBABILITY_COLORS = {"label": "#1f77b4", "wrong": "#d62728", "other": "#b0b7c3"}


def probability_bars(query: Query) -> str:
    """The most probable classes (and the label) as plain HTML bars: light enough that the page does
    not wait for a charting library (a Plotly chart here cost the first render about a second)."""
    order = sorted(range(len(query.probabilities)), key=lambda i: -query.probabilities[i])[:PROBABILITY_ROWS]
    if query.true_label not in order and query.true_label < len(query.probabilities):
        order.append(query.true_label)
    rows = []
    for i in order:
        p = query.probabilities[i]
        kind = "label" if i == query.true_label else "wrong" if i == query.predicted_label else "other"
        rows.append(f'<div style="display:flex;align-items:center;gap:6px;font-size:13px;line-height:20px">'
                    f'<span style="flex:0 0 5.5em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap">'
                    f'{html.escape(query.label(i))}</span>'
                    f'<span style="flex:1;background:rgba(128,128,128,0.12);height:12px;border-radius:2px">'
                    f'<span style="display:block;height:12px;border-radius:2px;width:{100 * p:.1f}%;'
                    f'background:{PROBABILITY_COLORS[kind]}"></span></span>'
                    f'<span style="flex:0 0 3em;text-align:right">{p:.0%}</span></div>')
    more = len(query.probabilities) - len(order)
    title = ('<div style="font-size:13px;font-weight:600;margin-bottom:4px">Class probabilities '
             '(blue: the label, red: a wrong answer)</div>')
    tail = f'<div style="font-size:12px;opacity:0.7">and {more} less likely classes</div>' if more > 0 else ""
    return title + "".join(rows) + tail


def action_choice(run: protocol.RunDir, queue: Queue, book: dict[str, Answer], query: Query) -> None:
    actions = list(answer_book.ACTION_LABELS)
    answer = book[query.query_id]
    key = action_key(queue, query)

    def chosen() -> None:
        if key == action_key(queue, query):  # not a stale value of a generation a hotkey replaced
            set_action(run, queue, book, query, st.session_state[key])

    st.radio("Your answer", actions, index=actions.index(answer.action), format_func=answer_book.ACTION_LABELS.get,
             key=key, on_change=chosen, horizontal=True,
             help="Keys: M mark regions, S skip, W the label is wrong. Images whose label you flag as wrong are "
                  "left out of training from now on.")
    if answer.action == protocol.ACTION_WRONG_LABEL:
        st.caption(":material/flag: The trainer leaves this image out of training from now on.")


def marks_summary(answer: Answer) -> None:
    marks = answer.marks
    total = marks.forbidden.size
    parts = [f"{name}: {int(m.sum())} pixels ({m.sum() / total:.0%})"
             for name, m in (("must not use", marks.forbidden), ("should use", marks.relevant)) if m.any()]
    st.caption("Marked " + " · ".join(parts) if parts else
               "Nothing marked yet: unmarked images are sent as skipped.")
    if marks.relevant.any():
        st.caption(":green[■] Green marks: under the default penalty everything outside them "
                   f"({(~marks.relevant).sum() / total:.0%} of the image) counts as must-not-use, so the model is "
                   "taught to look inside them.")


def submit_panel(run: protocol.RunDir, queue: Queue, book: dict[str, Answer]) -> None:
    n = answer_book.counts(queue, book)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button(f"Send answers for epoch {queue.epoch}", type="primary", icon=":material/send:",
                  key=f"submit-{queue.epoch}", on_click=send_answers, args=(run, queue, book),
                  help="Ctrl+Enter. Answers cannot be changed once sent.")
        if queue.queries:
            st.markdown(f"**{n[protocol.ACTION_MASK]}** marked · **{n[protocol.ACTION_SKIP]}** skipped · "
                        f"**{n[protocol.ACTION_WRONG_LABEL]}** with a wrong label · **{n['untouched']}** not marked "
                        f"(sent as skipped)")
    st.caption("Images whose label you flag as wrong are left out of training from now on. Answers cannot be "
               "changed once sent.")


def send_answers(run: protocol.RunDir, queue: Queue, book: dict[str, Answer]) -> None:
    """Write the mask file (button or Ctrl+Enter); the outcome shows after the page reloads."""
    state = st.session_state.get(canvas_key(queue))  # the canvas's last marks, whichever callback runs first
    if state is not None:
        take_marks(run, queue, book, state.marks)
    try:
        proposed = proposals_view.answers(run, queue.epoch, book)  # a queue without proposals sends as before
        sent = (answer_book.submit(run, queue, book, proposals=proposed) if proposed
                else answer_book.submit(run, queue, book))
    except protocol.ProtocolError as e:  # over the mask file's size limit: nothing written, marks kept
        st.session_state["review-flash"] = (False, f"Not sent: {e}. Clear some marks and send again.")
        return
    if sent:
        flash = (True, f"Answers for epoch {queue.epoch} sent. The trainer goes on; its next questions "
                       "appear here when they are ready.")
    else:
        flash = (False, f"Answers for epoch {queue.epoch} had already been sent (from another tab or by "
                        "someone else), so yours were not sent: the first answers stand. They are shown "
                        "under **Earlier answers**.")
    st.session_state.pop(book_key(run, queue.epoch), None)
    proposals_view.forget(run, queue.epoch)
    st.session_state["review-flash"] = flash


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
        sent, problem = run_reader.answers_and_problem(run, epoch)
        if queue.error or sent is None:
            st.warning(queue.error or problem or "These answers cannot be read.")
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
