"""The mask file: an annotator's answers to one queue (``feedback/epoch_NNN.json``), its run-length mask
codec, and the checks that read it without trusting it. Anyone who can write ``feedback/`` may put
anything there: whatever cannot be used is refused with one line naming the file, and kept under
``feedback/rejected/``."""
from __future__ import annotations

import json
import math
import os
import reprlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .atomic import exclusive_write_bytes, json_default
from .formats import FORMAT, ProtocolError, not_regular, parse_json, upgrade
from .layout import FEEDBACK_DIR, RunDir
from .proposals import PROPOSAL_ACCEPT, PROPOSAL_ACTIONS, PROPOSAL_REJECT, SOURCE_PROPOSED, read_proposals

# Limits on a mask file, which anyone who can write feedback/ may put there: above them it is refused
# unread. 16 MiB holds 500 brush-marked 224x224 answers several times over; a run-length list never
# needs more runs than the image has pixels, plus one.
MASK_FILE_MAX_BYTES = 16 * 1024 * 1024

# What an annotator may say about one query.
ACTION_MASK = "mask"          # apply the forbidden (and optional relevant) mask
ACTION_SKIP = "skip"          # no feedback for this image
ACTION_WRONG_LABEL = "wrong_label"  # the label looks wrong: the trainer excludes the image
ACTIONS = (ACTION_MASK, ACTION_SKIP, ACTION_WRONG_LABEL)


def encode_mask(mask: np.ndarray) -> dict:
    """Run-length encode a boolean H×W mask (row-major runs, starting with a run of False)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "rle": runs}


def decode_mask(obj: Any, height: int, width: int, what: str = "mask") -> np.ndarray:
    """Decode and validate a mask object: ``{"height","width","rle"}`` or ``{"height","width","boxes"}``
    (boxes as ``[x0, y0, x1, y1]`` in pixels, end exclusive). Raises ProtocolError naming the problem."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected an object with height, width and rle or boxes")
    h, w = obj.get("height"), obj.get("width")
    if (h, w) != (height, width):
        raise ProtocolError(f"{what}: size {h}x{w} does not match the image size {height}x{width}")
    if "rle" in obj:
        runs = obj["rle"]
        if not isinstance(runs, list):
            raise ProtocolError(f"{what}: rle must be a list of non-negative integers")
        if len(runs) > height * width + 1:
            raise ProtocolError(f"{what}: rle has {len(runs)} runs, more than the {height * width} pixels allow")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs):
            raise ProtocolError(f"{what}: rle must be a list of non-negative integers")
        if sum(runs) != height * width:
            raise ProtocolError(f"{what}: rle covers {sum(runs)} pixels, the image has {height * width}")
        values = np.zeros(len(runs), dtype=bool)
        values[1::2] = True
        return np.repeat(values, runs).reshape(height, width)
    if "boxes" in obj:
        mask = np.zeros((height, width), dtype=bool)
        boxes = obj["boxes"]
        if not isinstance(boxes, list):
            raise ProtocolError(f"{what}: boxes must be a list of [x0, y0, x1, y1]")
        if len(boxes) > height * width:
            raise ProtocolError(f"{what}: {len(boxes)} boxes, more than the image has pixels")
        for b in boxes:
            if (not isinstance(b, list) or len(b) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
                raise ProtocolError(f"{what}: box {b!r} is not [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ProtocolError(f"{what}: box {b!r} lies outside the {width}x{height} image")
            mask[y0:y1, x0:x1] = True
        return mask
    raise ProtocolError(f"{what}: needs rle or boxes")


# --------------------------------------------------------------------------- feedback (mask file)

@dataclass
class QueryFeedback:
    query_id: str
    index: int
    action: str
    forbidden: np.ndarray | None = None   # bool H×W: the model must not rely on these pixels
    relevant: np.ndarray | None = None    # bool H×W: the model should rely on these pixels
    # "drawn" (an answer to a query) or "proposed" (a proposal accepted, ACTION_MASK, or rejected,
    # ACTION_SKIP; ``query_id`` is then the proposal's id): trainer/protocol/proposals.py
    source: str = "drawn"

    def must_not_use(self) -> np.ndarray | None:
        """Where the model must not look: the forbidden marks and, where a relevant region was drawn,
        everything outside it, so both kinds of mark feed one penalty. None when the answer marks nothing
        (a skip, a wrong label, empty marks)."""
        if self.action != ACTION_MASK:
            return None
        mask = None if self.forbidden is None else self.forbidden.copy()
        if self.relevant is not None and self.relevant.any():
            mask = ~self.relevant if mask is None else mask | ~self.relevant
        return mask if mask is not None and mask.any() else None


@dataclass
class ImageMarks:
    """What all answers about one training image say, added up."""

    must_not_use: np.ndarray           # bool H×W
    relevant: np.ndarray | None        # bool H×W, None where no relevant region was drawn


def union_marks(answers: Iterable[QueryFeedback]) -> dict[int, ImageMarks]:
    """Per training-image index (in the order first marked), the union of what the answers say the model
    must not use and of the relevant regions drawn: how the trainer's feedback set adds marks up, and
    what the dashboard shows of them. Answers that mark nothing are left out."""
    marks: dict[int, ImageMarks] = {}
    for a in answers:
        mask = a.must_not_use()
        if mask is None:
            continue
        relevant = a.relevant if a.relevant is not None and a.relevant.any() else None
        known = marks.get(a.index)
        if known is None:
            marks[a.index] = ImageMarks(mask, relevant)
            continue
        known.must_not_use = known.must_not_use | mask
        if relevant is not None:
            known.relevant = relevant if known.relevant is None else known.relevant | relevant
    return marks


def feedback_document(epoch: int, annotator: str, answers: Iterable[QueryFeedback]) -> dict:
    """The mask file: answers to queries under ``queries``; answers to proposals (source "proposed")
    under ``proposals``, as accept (with the accepted mask) or reject. Without proposal answers the
    document is what it always was."""
    queries, proposals = [], []
    for a in answers:
        if a.source == SOURCE_PROPOSED:
            accepted = a.action == ACTION_MASK
            p: dict[str, Any] = {"proposal_id": a.query_id, "index": int(a.index), "source": SOURCE_PROPOSED,
                                 "action": PROPOSAL_ACCEPT if accepted else PROPOSAL_REJECT}
            if accepted and a.forbidden is not None:
                p["forbidden"] = encode_mask(a.forbidden)
            proposals.append(p)
            continue
        q: dict[str, Any] = {"query_id": a.query_id, "index": int(a.index), "action": a.action}
        if a.forbidden is not None:
            q["forbidden"] = encode_mask(a.forbidden)
        if a.relevant is not None:
            q["relevant"] = encode_mask(a.relevant)
        queries.append(q)
    doc = {"format": FORMAT, "epoch": epoch, "annotator": annotator, "submitted_at": time.time(), "queries": queries}
    if proposals:
        doc["proposals"] = proposals
    return doc


def submit_feedback(run: RunDir, epoch: int, annotator: str, answers: Iterable[QueryFeedback]) -> bool:
    """Write the mask file for ``epoch``; returns False if one was already sent. A document over the
    size limit is refused (ProtocolError) before anything is written."""
    doc = feedback_document(epoch, annotator, answers)
    data = (json.dumps(doc, separators=(",", ":"), default=json_default) + "\n").encode("utf-8")
    if len(data) > MASK_FILE_MAX_BYTES:
        raise ProtocolError(f"the answers for epoch {epoch} come to {len(data) / 2**20:.1f} MiB, over the "
                            f"{MASK_FILE_MAX_BYTES // 2**20} MiB limit of a mask file")
    return exclusive_write_bytes(run.feedback_file(epoch), data)


def feedback_sent(run: RunDir, epoch: int) -> bool:
    """Whether anything is at the mask file's name, even a dangling link or a folder: the trainer then
    reads it (and moves aside what it cannot use), and no annotator writes over it. Trainer and
    dashboard both ask this, so they agree on what counts as sent."""
    return os.path.lexists(run.feedback_file(epoch))


def read_mask_file(path: Path) -> Any:
    """The JSON in a mask file, read without trusting it: only a regular file (no link, pipe, device or
    folder: nothing that could block or never end), at most MASK_FILE_MAX_BYTES. FileNotFoundError if
    nothing is there; ProtocolError naming the file for everything else."""
    name = f"{FEEDBACK_DIR}/{path.name}"
    try:
        kind = not_regular(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None  # nothing there, as feedback_sent sees it
    except OSError as e:
        raise ProtocolError(f"{name}: cannot be looked at ({e.strerror or type(e).__name__})") from None
    if kind:
        raise ProtocolError(f"{name}: is {kind}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ProtocolError(f"{name}: cannot be opened ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        kind = not_regular(os.fstat(f.fileno()).st_mode)  # replaced between lstat and open
        if kind:
            raise ProtocolError(f"{name}: is {kind}, not a regular file")
        try:
            data = f.read(MASK_FILE_MAX_BYTES + 1)
        except OSError as e:
            raise ProtocolError(f"{name}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(data) > MASK_FILE_MAX_BYTES:
        raise ProtocolError(f"{name}: larger than the {MASK_FILE_MAX_BYTES // 2**20} MiB limit of a mask file")
    return parse_json(data, name)


def load_feedback(run: RunDir, epoch: int, manifest: dict) -> list[QueryFeedback] | None:
    """The validated answers of the mask file for ``epoch``; None while nothing was sent. Anything the
    file holds that cannot be used is a ProtocolError with one line naming the file: the caller refuses
    it and keeps going, whatever it contains."""
    path = run.feedback_file(epoch)
    try:
        doc = read_mask_file(path)
    except FileNotFoundError:
        return None
    try:
        proposals = read_proposals(run, epoch) if isinstance(doc, dict) and "proposals" in doc else None
        return parse_feedback(doc, manifest, proposals)
    except ProtocolError as e:
        raise ProtocolError(f"{FEEDBACK_DIR}/{path.name}: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        # parse_feedback checks each field; this keeps a case it did not foresee from killing the trainer
        raise ProtocolError(f"{FEEDBACK_DIR}/{path.name}: cannot be used ({type(e).__name__})") from None


def reject_feedback(run: RunDir, epoch: int) -> Path:
    """Move the mask file for ``epoch`` (whatever it is: file, link, folder, pipe) into
    ``feedback/rejected/`` under a name never used before, so every refused file is kept."""
    run.rejected_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while True:
        kept = run.rejected_root / f"epoch_{epoch:03d}.{stamp}.{uuid.uuid4().hex[:12]}.json"
        if not os.path.lexists(kept):
            break
    os.rename(run.feedback_file(epoch), kept)
    return kept


def parse_feedback(doc: Any, manifest: dict, proposals: dict | None = None) -> list[QueryFeedback]:
    """Validate a mask file against the queue it answers (and, where it answers proposals, against the
    queue's proposals index, ``read_proposals``). Raises ProtocolError with the reason. Answers to
    proposals follow the answers to queries, with source "proposed"."""
    if not isinstance(doc, dict):
        raise ProtocolError("the mask file must hold a JSON object")
    doc = upgrade(doc, "feedback")
    if doc.get("epoch") != manifest.get("epoch"):
        raise ProtocolError(f"epoch {_short(doc.get('epoch'))} does not match the queue's epoch {manifest.get('epoch')}")
    queries = doc.get("queries")
    if not isinstance(queries, list):
        raise ProtocolError("'queries' must be a list")
    known = {q["query_id"]: q for q in manifest["queries"]}
    answers = []
    for qid, q, ref in _answered(queries, "query", {k: (v, v["index"]) for k, v in known.items()}):
        action = q.get("action", ACTION_MASK)
        if not isinstance(action, str) or action not in ACTIONS:
            raise ProtocolError(f"query {qid}: unknown action {_short(action)} (expected one of {', '.join(ACTIONS)})")
        h, w = ref["height"], ref["width"]
        forbidden = decode_mask(q["forbidden"], h, w, f"query {qid} forbidden") if q.get("forbidden") is not None else None
        relevant = decode_mask(q["relevant"], h, w, f"query {qid} relevant") if q.get("relevant") is not None else None
        answers.append(QueryFeedback(qid, ref["index"], action, forbidden, relevant))
    if "proposals" in doc:
        answers += _parse_proposal_answers(doc["proposals"], proposals)
    return answers


def _parse_proposal_answers(items: Any, proposals: dict | None) -> list[QueryFeedback]:
    """The mask file's ``proposals`` list, checked against the queue's proposals index."""
    if not isinstance(items, list):
        raise ProtocolError("'proposals' must be a list")
    if items and proposals is None:
        raise ProtocolError("answers proposals, but the queue has none")
    known = {e.proposal_id: e for e in proposals["entries"]} if proposals else {}
    answers = []
    for pid, p, ref in _answered(items, "proposal", {k: (v, v.index) for k, v in known.items()}):
        if p.get("source", SOURCE_PROPOSED) != SOURCE_PROPOSED:
            raise ProtocolError(f"proposal {pid}: source {_short(p.get('source'))} is not {SOURCE_PROPOSED!r}")
        action = p.get("action")
        if not isinstance(action, str) or action not in PROPOSAL_ACTIONS:
            raise ProtocolError(f"proposal {pid}: unknown action {_short(action)} "
                                f"(expected one of {', '.join(PROPOSAL_ACTIONS)})")
        if action == PROPOSAL_REJECT:
            answers.append(QueryFeedback(pid, ref.index, ACTION_SKIP, source=SOURCE_PROPOSED))
            continue
        if p.get("forbidden") is None:
            raise ProtocolError(f"proposal {pid}: accepted without the accepted mask (forbidden)")
        forbidden = decode_mask(p["forbidden"], ref.height, ref.width, f"proposal {pid} forbidden")
        answers.append(QueryFeedback(pid, ref.index, ACTION_MASK, forbidden, source=SOURCE_PROPOSED))
    return answers


def _answered(items: list, kind: str, known: dict[str, tuple[Any, int]]):
    """(id, answer, the queue's entry) for each answer of ``items`` (queries or proposals): an object naming
    a known id once, with the entry's training-image index; ProtocolError naming the first that is not."""
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtocolError(f"{kind} #{i} is not an object")
        item_id = item.get(f"{kind}_id")
        if not isinstance(item_id, str) or item_id not in known:
            raise ProtocolError(f"{kind} #{i}: unknown {kind}_id {_short(item_id)}")
        if item_id in seen:
            raise ProtocolError(f"{kind} {item_id}: answered twice")
        seen.add(item_id)
        entry, index = known[item_id]
        if item.get("index") != index:
            raise ProtocolError(f"{kind} {item_id}: index {_short(item.get('index'))} does not match the queue ({index})")
        yield item_id, item, entry


def _short(value: Any) -> str:
    """A value from an untrusted file, quoted for a one-line message and cut short."""
    text = reprlib.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
