"""Masks a user already has, given before training (``--prior-masks all|N``): the generated sets'
ground truth, a csv data set's ``mask`` column, or another run's answers exported by ``hitl-export``."""
from __future__ import annotations

from .data import DataError, Split
from .feedback import FeedbackSet


def parse_prior_masks(text: str) -> str:
    """``all`` or a positive whole number, as given; anything else is a one-line error."""
    value = text.strip().lower()
    if value == "all" or (value.isdigit() and int(value) > 0):
        return value
    raise ValueError(f"expected 'all' or a positive number of images, got {text!r}")


def add_prior_masks(feedback: FeedbackSet, train: Split, spec: str) -> int:
    """Add the masks of the first N training images (or all); images with an empty or no mask stay
    unannotated. Returns how many images were annotated."""
    try:
        spec = parse_prior_masks(spec)
    except ValueError as e:
        raise DataError(f"--prior-masks: {e}") from None
    if not train.has_gt_masks:
        raise DataError("--prior-masks: this data set has no masks (use a generated set, or a csv data set "
                        "with a mask column)")
    count = len(train) if spec == "all" else min(int(spec), len(train))
    before = len(feedback)
    for i in range(count):
        mask = train.gt_mask(i)
        if mask is not None:
            feedback.add(i, mask)
    return len(feedback) - before
