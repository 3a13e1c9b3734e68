"""The reviewer's answers to one queue while they work on it, and how they become the mask file.

Anything not explicitly marked goes out as "skip", so a half-finished review can always be sent,
and a mask file once written is never replaced: a second submit for the same epoch is refused."""
from __future__ import annotations

from dataclasses import dataclass, field

from trainer import protocol

from .masks import Marks
from .run_reader import Query, Queue

ACTION_LABELS = {
    protocol.ACTION_MASK: "Mark regions",
    protocol.ACTION_SKIP: "Skip this image",
    protocol.ACTION_WRONG_LABEL: "The label is wrong",
}


@dataclass
class Answer:
    """One query's answer with an undo history; ``version`` changes with every edit of the marks."""

    marks: Marks
    action: str = protocol.ACTION_MASK
    history: list[Marks] = field(default_factory=list)
    version: int = 0

    @classmethod
    def for_query(cls, query: Query) -> "Answer":
        return cls(Marks.empty(query.height, query.width))

    def change(self, marks: Marks) -> bool:
        """Take new marks (keeping the old ones for undo); False if nothing changed."""
        if marks.same_as(self.marks):
            return False
        self.history.append(self.marks)
        self.marks = marks
        self.version += 1
        return True

    def undo(self) -> None:
        if self.history:
            self.marks = self.history.pop()
            self.version += 1

    def clear(self) -> None:
        self.change(Marks.empty(*self.marks.forbidden.shape))

    @property
    def touched(self) -> bool:
        """Whether the reviewer said anything about this image: marks, a skip or a flag."""
        return self.action != protocol.ACTION_MASK or not self.marks.is_empty()


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


def submit(run: protocol.RunDir, queue: Queue, answers: dict[str, Answer]) -> bool:
    """Write the mask file for the queue's epoch; False if one was already sent (another tab, another person)."""
    return protocol.submit_feedback(run, queue.epoch, "human", to_feedback(queue, answers))
