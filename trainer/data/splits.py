"""Reproducible, stratified index selection shared by every data set."""
from __future__ import annotations

import torch

from .base import DataError


def stratified_fraction(labels: torch.Tensor, fraction: float, seed: int, what: str,
                        notes: list[str]) -> torch.Tensor:
    """Indices of a stratified ``fraction`` of ``labels`` (sorted), at least one per class.

    A fraction that selects no image is an error rather than a silent fallback to the whole set
    (the original tool's defect); where it rounds to no image of some class, one is taken anyway and
    a line in ``notes`` says how many images are used."""
    if not 0 < fraction <= 1:
        raise DataError(f"{what} fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels)
    if fraction == 1:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    chosen = []
    rounded_up = 0
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        k = round(fraction * len(members))
        rounded_up += k == 0
        chosen.append(members[torch.randperm(len(members), generator=g)[:max(1, k)]])
    idx = torch.cat(chosen).sort().values if chosen else torch.empty(0, dtype=torch.long)
    if len(idx) == 0:
        raise DataError(f"{what} fraction {fraction} selects no image out of {len(labels)}")
    if rounded_up:
        notes.append(f"{what} fraction {fraction:g} of {len(labels)} images rounds to no image in {rounded_up} of "
                     f"{len(chosen)} classes; using {len(idx)} images (at least one of each class)")
    return idx


def stratified_split(labels: torch.Tensor, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, holdout) with ``holdout`` of each class held out (at least one
    of each class with two or more members)."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        k = min(len(members) - 1, max(1, round(holdout * len(members)))) if len(members) > 1 else 0
        held.append(members[:k])
        keep.append(members[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values
