"""How a split becomes batches on the training device."""
from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader

from .data import Split


class BatchSource:
    """Shuffled batches of (images, labels, dataset indices), deterministic per (seed, epoch).

    In-memory splits are gathered with one index op per batch; file-backed splits go through a
    DataLoader whose workers decode in parallel."""

    def __init__(self, split: Split, batch_size: int, workers: int | None, device: torch.device):
        if workers is None:  # decode in parallel but leave the training process a core
            workers = min(4, max(0, (os.cpu_count() or 1) - 1))
        self.split, self.batch_size, self.workers, self.device = split, batch_size, workers, device

    def epoch(self, order: torch.Tensor):
        if self.split.in_memory:
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                x, y = self.split.batch(idx)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)
        else:
            loader = DataLoader(torch.utils.data.Subset(self.split, order.tolist()), batch_size=self.batch_size,
                                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                persistent_workers=False)
            for x, y, idx in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


def gather(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``idx``, in that order (on the CPU)."""
    if split.in_memory:
        return split.batch(idx)
    items = [split[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
