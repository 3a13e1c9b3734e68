"""Proposals on the Review page: "mark once, confirm many". The trainer proposes training images that
seem to carry what was marked, each with the mask it proposes (trainer/proposals.py); the reviewer sees
them as a grid of thumbnails with the proposed mask outlined, accepts them all (the default), and
unticks the ones that are wrong. Accepted proposals go into the mask file as marks with source
"proposed"; unticked ones as rejected. Which are unticked is kept beside the draft, so a reload or
another browser shows them as the reviewer left them.

A proposal whose mask is nearly right is corrected rather than rejected: Edit opens it on the queue's
canvas (review.proposal_card) with the proposed mask as must-not-use marks, one grid square per image
pixel, so the reviewer erases and adds as on a query. The corrected marks live in the answer book and
its draft beside the queries' answers (answers.proposal_answer_id), an edited proposal is ticked, and
it is sent with the corrected mask; erased to nothing, it is sent as rejected."""
from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image

from trainer import protocol

from dashboard import answers as answer_book
from dashboard import overlay
from dashboard.answers import Answer
from dashboard.masks import FORBIDDEN, Geometry

THUMB = 128          # pixels per thumbnail side
COLUMNS = 6
# the proposed mark's outline: a black line round it and a white one inside, which shows on any colour
# (a red line vanished round a red sticker)
OUTLINE_EDGE, OUTLINE_INSIDE = (0, 0, 0), (255, 255, 255)


def decision_key(run: protocol.RunDir, epoch: int, proposal_id: str) -> str:
    return f"proposal-{run.name}-{epoch}-{proposal_id}"


def read(run: protocol.RunDir, epoch: int) -> tuple[list[protocol.ProposalEntry], str | None]:
    """The queue's proposals and, where the index cannot be read, why (then none are shown or sent)."""
    try:
        found = protocol.read_proposals(run, epoch)
    except (OSError, protocol.ProtocolError) as e:
        return [], str(e)
    return (found["entries"] if found else []), None


def thumbnail(run: protocol.RunDir, epoch: int, entry: protocol.ProposalEntry,
              corrected: Answer | None = None) -> Image.Image:
    """The image enlarged to THUMB with the proposed mask's outline (or, once corrected, the corrected
    one's) drawn in black and white."""
    image = protocol.read_proposal_image(run, epoch, entry.proposal_id)
    if corrected is None:
        mask = protocol.read_proposal_mask(run, epoch, entry.proposal_id)
    else:
        mask = corrected_mask(corrected)
        mask = np.zeros(image.shape[:2], bool) if mask is None else mask
    picture = Image.fromarray(image).resize((THUMB, THUMB), Image.NEAREST)
    big = overlay._enlarge(mask, (THUMB, THUMB))
    pixels = np.asarray(picture).copy()
    pixels[overlay._border(big, 3)] = OUTLINE_INSIDE
    pixels[overlay._border(big, 1)] = OUTLINE_EDGE
    return Image.fromarray(pixels)


def section(run: protocol.RunDir, epoch: int, book: dict[str, Answer], class_names: list[str] | None = None) -> None:
    """The grid of proposals of ``epoch``'s queue, with accept-all / reject-all, a tick per image and
    an Edit button that opens it on the canvas (``book`` holds the corrected ones)."""
    entries, problem = read(run, epoch)
    if problem:
        st.warning(f"The trainer's proposals cannot be shown: {problem}. Your answers to the questions above "
                   "are sent without them.", icon=":material/warning:")
        return
    if not entries:
        return
    keys = [decision_key(run, epoch, e.proposal_id) for e in entries]
    if any(key not in st.session_state for key in keys):  # a fresh session: ticked unless kept unticked
        unticked = answer_book.load_unticked(run, epoch)
        for entry, key in zip(entries, keys):
            st.session_state.setdefault(key, entry.proposal_id not in unticked)
    with st.container(border=True, key="proposals"):
        st.markdown(f"**The trainer found {len(entries)} more images that seem to carry what you marked.** "
                    "Each has its proposed mark outlined in black and white; ticked ones are sent as marks. "
                    "Untick the wrong ones.")
        with st.container(horizontal=True):
            st.button("Accept all", icon=":material/done_all:", key=f"proposals-accept-{epoch}",
                      on_click=_set_all, args=(run, epoch, True))
            st.button("Reject all", icon=":material/remove_done:", key=f"proposals-reject-{epoch}",
                      on_click=_set_all, args=(run, epoch, False))
        columns = st.columns(COLUMNS)
        open_now = editing(run, epoch)
        for i, (entry, key) in enumerate(zip(entries, keys)):
            corrected = book.get(answer_book.proposal_answer_id(entry.proposal_id))
            with columns[i % COLUMNS]:
                try:
                    st.image(thumbnail(run, epoch, entry, corrected), width=THUMB)
                except (OSError, ValueError) as e:
                    st.caption(f"image {entry.index} cannot be shown ({type(e).__name__}); it is sent as rejected")
                    st.session_state[key] = False
                    continue
                label = f"#{entry.index}"
                if class_names and 0 <= entry.true_label < len(class_names):
                    label += f" · {class_names[entry.true_label]}"
                with st.container(horizontal=True, vertical_alignment="center", gap="small"):
                    st.checkbox(label, key=key, width="content", on_change=keep_ticks, args=(run, epoch))
                    st.button("", icon=":material/edit:", key=f"proposal-edit-{epoch}-{entry.proposal_id}",
                              help=f"Correct this mark on the canvas (the trainer's score {entry.score:.2f})",
                              on_click=open_editor, args=(run, epoch, entry.proposal_id),
                              type="primary" if open_now and open_now.proposal_id == entry.proposal_id else "tertiary")
                if corrected is not None:
                    st.caption(":material/edit: corrected" if corrected_mask(corrected) is not None
                               else ":material/edit: erased: sent as rejected")
        accepted = sum(bool(st.session_state.get(k)) for k in keys)
        st.caption(f"**{accepted}** accepted · **{len(entries) - accepted}** rejected (sent with the answers below)")


def _set_all(run: protocol.RunDir, epoch: int, value: bool) -> None:
    for entry in read(run, epoch)[0]:
        st.session_state[decision_key(run, epoch, entry.proposal_id)] = value
    keep_ticks(run, epoch)


def keep_ticks(run: protocol.RunDir, epoch: int) -> None:
    """Keep the unticked proposals beside the draft, so that a reload does not tick them again."""
    answer_book.save_unticked(run, epoch, [e.proposal_id for e in read(run, epoch)[0]
                                           if not st.session_state.get(decision_key(run, epoch, e.proposal_id), True)])


def answers(run: protocol.RunDir, epoch: int, book: dict[str, Answer]) -> list[protocol.QueryFeedback]:
    """The proposal answers for the mask file: accepted (with the proposed mask, or the corrected one
    where the reviewer edited it) or rejected, as ticked; a correction that erased everything rejects."""
    entries, problem = read(run, epoch)
    out = []
    for entry in entries if not problem else ():
        accepted = bool(st.session_state.get(decision_key(run, epoch, entry.proposal_id), True))
        corrected = book.get(answer_book.proposal_answer_id(entry.proposal_id))
        mask = None
        if accepted and corrected is not None:
            mask = corrected_mask(corrected)
            accepted = mask is not None
        elif accepted:
            try:
                mask = protocol.read_proposal_mask(run, epoch, entry.proposal_id)
            except (OSError, ValueError):
                accepted = False
        out.append(protocol.QueryFeedback(entry.proposal_id, entry.index,
                                          protocol.ACTION_MASK if accepted else protocol.ACTION_SKIP,
                                          forbidden=mask, source=protocol.SOURCE_PROPOSED))
    return out


def forget(run: protocol.RunDir, epoch: int) -> None:
    for entry in read(run, epoch)[0]:
        st.session_state.pop(decision_key(run, epoch, entry.proposal_id), None)
    close_editor(run, epoch)


# --------------------------------------------------------------------------- one proposal on the canvas

def editing_key(run: protocol.RunDir, epoch: int) -> str:
    return f"proposal-editing-{run.name}-{epoch}"


def editing(run: protocol.RunDir, epoch: int) -> protocol.ProposalEntry | None:
    """The proposal open on the canvas instead of the queue's current image; None when none is."""
    proposal_id = st.session_state.get(editing_key(run, epoch))
    if proposal_id is None:
        return None
    return next((e for e in read(run, epoch)[0] if e.proposal_id == proposal_id), None)


def open_editor(run: protocol.RunDir, epoch: int, proposal_id: str) -> None:
    st.session_state[editing_key(run, epoch)] = proposal_id


def close_editor(run: protocol.RunDir, epoch: int) -> None:
    st.session_state.pop(editing_key(run, epoch), None)


def proposed_ops(mask: np.ndarray) -> list[dict]:
    """The proposed mask as the canvas's drawing operations (masks.apply_ops): the must-not-use squares
    of a grid of one image pixel a square, so the browser shows it and it is erased and added to like
    anything drawn."""
    squares = [[int(r), int(c)] for r, c in zip(*np.nonzero(mask))]
    return [{"kind": "cells", "cells": max(mask.shape), "squares": squares, "target": FORBIDDEN}] if squares else []


def answer_for(run: protocol.RunDir, epoch: int, entry: protocol.ProposalEntry, book: dict[str, Answer]) -> Answer:
    """The proposal's marks as the canvas starts them: the reviewer's corrections, or else the proposed
    mask at revision 0 (so the browser's first edit is newer). OSError or ValueError where the
    proposed mask cannot be read or does not fit the image."""
    corrected = book.get(answer_book.proposal_answer_id(entry.proposal_id))
    if corrected is not None:
        return corrected
    mask = protocol.read_proposal_mask(run, epoch, entry.proposal_id)
    if mask.shape != (entry.height, entry.width):
        raise ValueError(f"its mask is {mask.shape[0]}x{mask.shape[1]}, the image {entry.height}x{entry.width}")
    answer = Answer.for_query(entry)
    answer.ops = proposed_ops(mask)
    return answer


def corrected_mask(answer: Answer) -> np.ndarray | None:
    """What a corrected proposal is sent as: where the model must not look (green marks count as
    everything outside them, as a query's do: a proposal's answer has one mask). None when nothing is
    left, which rejects it."""
    marks = answer.marks
    mask = marks.forbidden | ~marks.relevant if marks.relevant.any() else marks.forbidden
    return mask if mask.any() else None


def mark_edited(run: protocol.RunDir, epoch: int, proposal_id: str) -> None:
    """A proposal the reviewer corrected is one they accept (erasing everything rejects it instead)."""
    st.session_state[decision_key(run, epoch, proposal_id)] = True
    keep_ticks(run, epoch)


@st.cache_data(max_entries=64, show_spinner=False)
def picture(path: str, epoch: int, proposal_id: str, stamp: tuple) -> str:
    """The proposal's image at image size as a data URL (proposals have no saliency)."""
    image = protocol.read_proposal_image(protocol.RunDir(path), epoch, proposal_id)
    height, width = image.shape[:2]
    return overlay.data_url(overlay.compose(image, Geometry(height, width, height, width)))


def editor_header(run: protocol.RunDir, epoch: int, entry: protocol.ProposalEntry, back_to: str) -> None:
    with st.container(horizontal=True, vertical_alignment="center", key="proposal-editor-header"):
        st.markdown(f"**Proposal #{entry.index}: correct the proposed mark, then go back**", width="content")
        st.button(f"Back to {back_to}", icon=":material/arrow_back:", key=f"proposal-back-{epoch}",
                  on_click=close_editor, args=(run, epoch), help="Or ←, → or Esc on the canvas")


def editor_facts(run: protocol.RunDir, epoch: int, entry: protocol.ProposalEntry, answer: Answer) -> None:
    """What the proposal is and what will be sent for it."""
    st.caption("The red marks are what the trainer proposes the model must not use on this image. Erase what "
               "is wrong (E), add what it missed; erase everything if the image does not carry it.")
    st.caption(f"Training image #{entry.index} · the trainer's score {entry.score:.2f} (higher: surer)")
    mask = corrected_mask(answer)
    if not st.session_state.get(decision_key(run, epoch, entry.proposal_id), True):
        sent = "unticked: sent as rejected"
    elif mask is None:
        sent = "nothing marked: sent as rejected"
    elif answer.revision:
        sent = f"sent with your corrected mark ({int(mask.sum())} pixels)"
    else:
        sent = f"sent with the proposed mark ({int(mask.sum())} pixels), as it is"
    st.markdown(f"This proposal is **{sent}**.")


def mark_counts(run: protocol.RunDir) -> dict[str, int]:
    """Marks the run was given, by source: ``drawn`` (answers to queries that mark something),
    ``proposed`` (accepted proposals) and ``rejected`` (rejected proposals), from the mask files the
    trainer can use."""
    counts = {"drawn": 0, "proposed": 0, "rejected": 0}
    for epoch in protocol.queue_epochs(run):
        if not protocol.feedback_sent(run, epoch):
            continue
        try:
            answered = protocol.load_feedback(run, epoch, protocol.read_manifest(run, epoch)) or []
        except (OSError, protocol.ProtocolError):
            continue
        for a in answered:
            marked = a.must_not_use() is not None
            if a.source == protocol.SOURCE_PROPOSED:
                counts["proposed" if marked else "rejected"] += 1
            elif marked:
                counts["drawn"] += 1
    return counts


def proposal_images(run: protocol.RunDir) -> dict[int, np.ndarray]:
    """The image of each training index ever proposed (the newest copy), for pages that show marked
    images: an accepted proposal has no query image."""
    images: dict[int, np.ndarray] = {}
    for epoch in protocol.queue_epochs(run):
        for entry in read(run, epoch)[0]:
            try:
                images[entry.index] = protocol.read_proposal_image(run, epoch, entry.proposal_id)
            except (OSError, ValueError):
                continue
    return images


def counts_line(run: protocol.RunDir) -> str | None:
    """One line for the Runs page, or None when the run had no proposals answered."""
    n = mark_counts(run)
    if not n["proposed"] and not n["rejected"]:
        return None
    return (f"marks: **{n['drawn']}** drawn · **{n['proposed']}** proposed and accepted · "
            f"{n['rejected']} proposals rejected")
