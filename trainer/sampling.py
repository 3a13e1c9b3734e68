"""Which training images to ask about: strategies by name over per-image entropy (in nats, natural
log; the maximum is ln(number of classes)). Each takes the candidates' probabilities and labels, the
entropy threshold, how many to ask, a generator and ``marked``: how many images of each class carry a
mark already (the queries by class start from the classes with fewest)."""
from __future__ import annotations

from typing import Callable

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def low_entropy(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
                generator: torch.Generator, marked: torch.Tensor | None = None) -> torch.Tensor:
    """Confidently wrong: entropy below the threshold and a wrong prediction, lowest entropy first."""
    h = entropy(probs)
    candidates = torch.nonzero((h < threshold) & (probs.argmax(1) != labels)).flatten()
    return candidates[h[candidates].argsort()][:k]


def high_entropy(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
                 generator: torch.Generator, marked: torch.Tensor | None = None) -> torch.Tensor:
    """Uncertain: entropy above the threshold, most uncertain first."""
    h = entropy(probs)
    candidates = torch.nonzero(h > threshold).flatten()
    return candidates[h[candidates].argsort(descending=True)][:k]


def high_entropy_by_class(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
                          generator: torch.Generator, marked: torch.Tensor | None = None) -> torch.Tensor:
    """Uncertain, each class in turn: the most uncertain image of every class, then the next of each,
    starting from the classes with the fewest marks so far (a round of one query then takes the classes
    in turn across rounds). The most uncertain images alone can all be of one class (28 of the first 30
    on synthetic-lesions, seed 2), and counterexamples of one class teach the shortcut back: that seed
    kept it (60.8%; 87.8% with the classes in turn, docs/learning.md)."""
    order = high_entropy(probs, labels, threshold, len(probs), generator)
    return by_class(order, labels[order], marked)[:k]


def by_class(order: torch.Tensor, labels: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """``order`` (best first) rearranged to take each class's best in turn (``labels``: the label of each
    entry of ``order``); a class with ``start[c]`` images already taken comes in only once the others
    have caught up."""
    rank_in_class = torch.zeros(len(order), dtype=torch.long)
    for c in labels.unique():
        where = torch.nonzero(labels == c).flatten()
        rank_in_class[where] = torch.arange(len(where)) + (int(start[c]) if start is not None else 0)
    return order[torch.argsort(rank_in_class * len(order) + torch.arange(len(order)), stable=True)]


def random(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
           generator: torch.Generator, marked: torch.Tensor | None = None) -> torch.Tensor:
    """A uniform random choice (the baseline of the interactive-learning literature)."""
    return torch.randperm(len(probs), generator=generator)[:k]


SamplingFn = Callable[[torch.Tensor, torch.Tensor, float, int, torch.Generator, torch.Tensor], torch.Tensor]
SAMPLERS: dict[str, SamplingFn] = {
    "low_entropy": low_entropy,
    "high_entropy": high_entropy,
    "high_entropy_by_class": high_entropy_by_class,
    "random": random,
}
