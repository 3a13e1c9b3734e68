"""How a run's marks teach (``--feedback``), resolved once into what each training step does.

"Feedback" is what a person says (the mask file, the feedback set); *teaching* is what the trainer does
with it: an input-gradient penalty on the annotated images (trainer/penalty.py), counterexamples
(trainer/counterexamples.py), or both. ``auto`` is resolved here and nowhere else, and the resolved
method is saved in the run's config so a resume does the same.
"""
from __future__ import annotations

from dataclasses import dataclass

PENALTY, COUNTEREXAMPLES, BOTH, AUTO = "penalty", "counterexamples", "both", "auto"
TEACHING_METHODS = (AUTO, PENALTY, COUNTEREXAMPLES, BOTH)  # the --feedback choices
RESOLVED_METHODS = (PENALTY, COUNTEREXAMPLES, BOTH)        # what auto can become
# --feedback auto, by data set (docs/learning.md, 3 seeds each): on decoy-digits the penalty sees the
# patch and both together teach the most (hitl 89.3% against 81.1% penalty, 74.5% counterexamples); on
# synthetic-lesions no penalty moves the model off the sticker and only counterexamples do (79.6%
# against 52.2% for both, plain 49.2%), so every other data set (photographs, your own) gets them alone.
AUTO_BY_DATASET = {"decoy-digits": BOTH}
AUTO_OTHERWISE = COUNTEREXAMPLES


@dataclass(frozen=True)
class Teaching:
    """What runs in a training step once the feedback set holds marks."""

    method: str  # one of RESOLVED_METHODS

    def __post_init__(self) -> None:
        if self.method not in RESOLVED_METHODS:
            raise ValueError(f"unknown teaching method {self.method!r} (expected one of {', '.join(RESOLVED_METHODS)})")

    @property
    def penalty(self) -> bool:
        """The input-gradient penalty runs on the annotated images of each batch."""
        return self.method in (PENALTY, BOTH)

    @property
    def counterexamples(self) -> bool:
        """Annotated images enter batches with their marked pixels replaced (and recurring marks are carried)."""
        return self.method in (COUNTEREXAMPLES, BOTH)


def resolve_teaching(method: str, dataset: str) -> Teaching:
    """``--feedback``: ``auto`` is the method measured to teach the most on ``dataset``."""
    return Teaching(AUTO_BY_DATASET.get(dataset, AUTO_OTHERWISE) if method == AUTO else method)
