"""Which training images to ask about: strategies by name over per-image entropy (in nats, natural
log; the maximum is ln(number of classes))."""
from __future__ import annotations

from typing import Callable

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(1)


def low_entropy(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
                generator: torch.Generator) -> torch.Tensor:
    """Confidently wrong: entropy below the threshold and a wrong prediction, lowest entropy first."""
    h = entropy(probs)
    candidates = torch.nonzero((h < threshold) & (probs.argmax(1) != labels)).flatten()
    return candidates[h[candidates].argsort()][:k]


def high_entropy(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Uncertain: entropy above the threshold, most uncertain first."""
    h = entropy(probs)
    candidates = torch.nonzero(h > threshold).flatten()
    return candidates[h[candidates].argsort(descending=True)][:k]


def random(probs: torch.Tensor, labels: torch.Tensor, threshold: float, k: int,
           generator: torch.Generator) -> torch.Tensor:
    """A uniform random choice (the baseline of the interactive-learning literature)."""
    return torch.randperm(len(probs), generator=generator)[:k]


SamplingFn = Callable[[torch.Tensor, torch.Tensor, float, int, torch.Generator], torch.Tensor]
SAMPLERS: dict[str, SamplingFn] = {
    "low_entropy": low_entropy,
    "high_entropy": high_entropy,
    "random": random,
}
