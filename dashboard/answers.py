"""The reviewer's answers to one queue while they work on it, and how they become the mask file.

Anything not explicitly marked goes out as "skip", so a half-finished review can always be sent,
and a mask file once written is never replaced: a second submit for the same epoch is refused."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from trainer import protocol

from .masks import Marks, apply_ops
from .run_reader import Query, Queue

ACTION_LABELS = {
    protocol.ACTION_MASK: "Mark regions",
    protocol.ACTION_SKIP: "Skip this image",
    protocol.ACTION_WRONG_LABEL: "The label is wrong",
}


@dataclass
class Answer:
    """One query's answer: the action and the canvas's marks as the list of drawing operations the
    browser sent (see masks.apply_ops). ``revision`` counts the browser's edits, so an older list
    (a late message, a stale draft) never replaces a newer one."""

    height: int
    width: int
    action: str = protocol.ACTION_MASK
    ops: list[dict] = field(default_factory=list)
    revision: int = 0

    @classmethod
    def for_query(cls, query: Query | protocol.ProposalEntry) -> "Answer":
        return cls(query.height, query.width)

    @property
    def marks(self) -> Marks:
        return _fold(self.height, self.width, json.dumps(self.ops))

    def take(self, ops: list[dict], revision: int) -> bool:
        """Take the browser's complete list of operations if it is newer; False if it is not."""
        if revision <= self.revision:
            return False
        self.ops, self.revision = list(ops), revision
        return True

    @property
    def touched(self) -> bool:
        """Whether the reviewer said anything about this image: marks, a skip or a flag."""
        return self.action != protocol.ACTION_MASK or not self.marks.is_empty()

    def to_draft(self) -> dict:
        return {"action": self.action, "ops": self.ops, "revision": self.revision}

    @classmethod
    def from_draft(cls, query: Query | protocol.ProposalEntry, doc: dict) -> "Answer":
        """An answer from a draft; anything unreadable starts afresh (a draft is a convenience)."""
        answer = cls.for_query(query)
        action, ops, revision = doc.get("action"), doc.get("ops"), doc.get("revision")
        if action in protocol.ACTIONS:
            answer.action = action
        if isinstance(ops, list) and isinstance(revision, int):
            answer.ops, answer.revision = [op for op in ops if isinstance(op, dict)], revision
        return answer


@lru_cache(maxsize=64)
def _fold(height: int, width: int, ops_json: str) -> Marks:
    """The marks an operation list draws, cached: the page asks for them several times a run."""
    return apply_ops(Marks.empty(height, width), json.loads(ops_json))


# The reviewer's unsent work on a queue, kept beside the run so a reload or a browser crash loses
# nothing. Only the dashboard writes drafts and only the dashboard reads them; the trainer never
# looks here: the mask file, which Submit alone writes, stays the one answer.
DRAFTS_DIR = "drafts"


def draft_file(run: protocol.RunDir, epoch: int) -> Path:
    return run.path / DRAFTS_DIR / f"epoch_{epoch:03d}.json"


def read_draft(run: protocol.RunDir, epoch: int) -> dict | None:
    """The draft for ``epoch``; None when there is none or it cannot be read (a draft is a convenience)."""
    try:
        doc = protocol.read_json(draft_file(run, epoch))
    except (OSError, protocol.ProtocolError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format", 1) == protocol.FORMAT else None


def save_draft(run: protocol.RunDir, epoch: int, answers: dict[str, Answer]) -> None:
    """Keep unsent work beside the run (never as the mask file, which only ``submit`` writes)."""
    protocol.atomic_write_json(draft_file(run, epoch), {
        "format": protocol.FORMAT, "epoch": epoch, "answers": {qid: a.to_draft() for qid, a in answers.items()}})


def unticked_file(run: protocol.RunDir, epoch: int) -> Path:
    return run.path / DRAFTS_DIR / f"epoch_{epoch:03d}_unticked.json"


def save_unticked(run: protocol.RunDir, epoch: int, proposal_ids: list[str]) -> None:
    """The proposals the reviewer unticked, kept beside the draft: a reload must not accept them again."""
    protocol.atomic_write_json(unticked_file(run, epoch), {"format": protocol.FORMAT, "epoch": epoch,
                                                           "unticked": sorted(proposal_ids)})


def load_unticked(run: protocol.RunDir, epoch: int) -> set[str]:
    """The proposals kept as unticked for ``epoch``; none where nothing (readable) was kept."""
    try:
        doc = protocol.read_json(unticked_file(run, epoch))
    except (OSError, protocol.ProtocolError):
        return set()
    items = doc.get("unticked") if isinstance(doc, dict) else None
    return {p for p in items if isinstance(p, str)} if isinstance(items, list) else set()


def load_draft(run: protocol.RunDir, queue: Queue) -> dict[str, Answer]:
    """The answers kept for ``queue``'s epoch, for the queries and proposals it still has; empty
    without a draft."""
    draft = read_draft(run, queue.epoch) or {}
    kept = draft.get("answers") if isinstance(draft.get("answers"), dict) else {}
    book = {q.query_id: Answer.from_draft(q, kept[q.query_id]) for q in queue.queries
            if q.problem is None and isinstance(kept.get(q.query_id), dict)}
    for entry in protocol.proposal_entries(run, queue.epoch):
        answer_id = proposal_answer_id(entry.proposal_id)
        if isinstance(kept.get(answer_id), dict):
            book[answer_id] = Answer.from_draft(entry, kept[answer_id])
    return book


# A proposal whose mask the reviewer corrected on the canvas has its answer in the same book, under
# this prefix and its id (a query's id never has it): one draft, one list of marks in the browser.
PROPOSAL_PREFIX = "proposal:"


def proposal_answer_id(proposal_id: str) -> str:
    return PROPOSAL_PREFIX + proposal_id


def outcome(query: Query, answer: Answer | None) -> str:
    """What the mask file will say for ``query``: unreadable or untouched images are skipped."""
    if query.problem is not None or answer is None or not answer.touched:
        return protocol.ACTION_SKIP
    return answer.action


def to_feedback(queue: Queue, answers: dict[str, Answer]) -> list[protocol.QueryFeedback]:
    feedback = []
    for query in queue.queries:
        answer = answers.get(query.query_id)
        action = outcome(query, answer)
        if action == protocol.ACTION_MASK:
            marks = answer.marks
            feedback.append(protocol.QueryFeedback(
                query.query_id, query.index, action,
                forbidden=marks.forbidden if marks.forbidden.any() else None,
                relevant=marks.relevant if marks.relevant.any() else None))
        else:
            feedback.append(protocol.QueryFeedback(query.query_id, query.index, action))
    return feedback


def counts(queue: Queue, answers: dict[str, Answer]) -> dict[str, int]:
    """How many queries will go out as each action, and how many nobody opened."""
    result = {action: 0 for action in protocol.ACTIONS}
    result["untouched"] = 0
    for query in queue.queries:
        answer = answers.get(query.query_id)
        if query.problem is None and (answer is None or not answer.touched):
            result["untouched"] += 1
        else:
            result[outcome(query, answer)] += 1
    return result


def submit(run: protocol.RunDir, queue: Queue, answers: dict[str, Answer],
           proposals: list[protocol.QueryFeedback] = ()) -> bool:
    """Write the mask file for the queue's epoch (with the answers to its ``proposals``, source
    "proposed"); False if one was already sent (another tab, another person). Either way the epoch's
    draft has served its purpose and goes."""
    sent = protocol.submit_feedback(run, queue.epoch, "human", to_feedback(queue, answers) + list(proposals))
    draft_file(run, queue.epoch).unlink(missing_ok=True)
    unticked_file(run, queue.epoch).unlink(missing_ok=True)
    return sent
