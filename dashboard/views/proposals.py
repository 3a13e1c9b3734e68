"""Proposals on the Review page: "mark once, confirm many". The trainer proposes training images that
seem to carry what was marked, each with the mask it proposes (trainer/proposals.py); the reviewer sees
them as a grid of thumbnails with the proposed mask outlined, accepts them all (the default), and
unticks the ones that are wrong. Accepted proposals go into the mask file as marks with source
"proposed"; unticked ones as rejected.

Not here yet: opening one proposal to correct its mask on the canvas (accept or reject only)."""
from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image

from trainer import protocol

from dashboard import overlay

THUMB = 128          # pixels per thumbnail side
COLUMNS = 6
OUTLINE = (255, 40, 40)


def decision_key(run: protocol.RunDir, epoch: int, proposal_id: str) -> str:
    return f"proposal-{run.name}-{epoch}-{proposal_id}"


def read(run: protocol.RunDir, epoch: int) -> tuple[list[protocol.ProposalEntry], str | None]:
    """The queue's proposals and, where the index cannot be read, why (then none are shown or sent)."""
    try:
        found = protocol.read_proposals(run, epoch)
    except (OSError, protocol.ProtocolError) as e:
        return [], str(e)
    return (found["entries"] if found else []), None


def thumbnail(run: protocol.RunDir, epoch: int, entry: protocol.ProposalEntry) -> Image.Image:
    """The image enlarged to THUMB with the proposed mask's outline drawn in red."""
    image = protocol.read_proposal_image(run, epoch, entry.proposal_id)
    mask = protocol.read_proposal_mask(run, epoch, entry.proposal_id)
    picture = Image.fromarray(image).resize((THUMB, THUMB), Image.NEAREST)
    edge = overlay._border(overlay._enlarge(mask, (THUMB, THUMB)), 2)
    pixels = np.asarray(picture).copy()
    pixels[edge] = OUTLINE
    return Image.fromarray(pixels)


def section(run: protocol.RunDir, epoch: int, class_names: list[str] | None = None) -> None:
    """The grid of proposals of ``epoch``'s queue, with accept-all / reject-all and a tick per image."""
    entries, problem = read(run, epoch)
    if problem:
        st.warning(f"The trainer's proposals cannot be shown: {problem}. Your answers to the questions above "
                   "are sent without them.", icon=":material/warning:")
        return
    if not entries:
        return
    keys = [decision_key(run, epoch, e.proposal_id) for e in entries]
    for key in keys:
        st.session_state.setdefault(key, True)
    with st.container(border=True, key="proposals"):
        st.markdown(f"**The trainer found {len(entries)} more images that seem to carry what you marked.** "
                    "Each has its proposed mark outlined in red; ticked ones are sent as marks. Untick the wrong ones.")
        with st.container(horizontal=True):
            st.button("Accept all", icon=":material/done_all:", key=f"proposals-accept-{epoch}",
                      on_click=_set_all, args=(keys, True))
            st.button("Reject all", icon=":material/remove_done:", key=f"proposals-reject-{epoch}",
                      on_click=_set_all, args=(keys, False))
        columns = st.columns(COLUMNS)
        for i, (entry, key) in enumerate(zip(entries, keys)):
            with columns[i % COLUMNS]:
                try:
                    st.image(thumbnail(run, epoch, entry), width=THUMB)
                except (OSError, ValueError) as e:
                    st.caption(f"image {entry.index} cannot be shown ({type(e).__name__}); it is sent as rejected")
                    st.session_state[key] = False
                    continue
                label = f"#{entry.index}"
                if class_names and 0 <= entry.true_label < len(class_names):
                    label += f" · {class_names[entry.true_label]}"
                st.checkbox(label, key=key, help=f"score {entry.score:.2f}")
        accepted = sum(bool(st.session_state.get(k)) for k in keys)
        st.caption(f"**{accepted}** accepted · **{len(entries) - accepted}** rejected (sent with the answers below)")


def _set_all(keys: list[str], value: bool) -> None:
    for key in keys:
        st.session_state[key] = value


def answers(run: protocol.RunDir, epoch: int) -> list[protocol.QueryFeedback]:
    """The proposal answers for the mask file: accepted (with the proposed mask) or rejected, as ticked."""
    entries, problem = read(run, epoch)
    out = []
    for entry in entries if not problem else ():
        accepted = bool(st.session_state.get(decision_key(run, epoch, entry.proposal_id), True))
        mask = None
        if accepted:
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
