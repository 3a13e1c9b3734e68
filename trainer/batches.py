"""How a split becomes batches on the training device."""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, Sampler

from .data import DataSplits, Split
from .data.images import FileSplit

# Decoded images (uint8) a run keeps in memory by default: file-backed splits that fit together are decoded
# once at start (a 28 px set decoded every epoch by respawned DataLoader workers was 4–6× slower).
IN_MEMORY_BUDGET = 512 * 2**20


def default_workers() -> int:
    """DataLoader workers when --workers is not given: decode in parallel but leave the training process a core."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def keep_in_memory(data: DataSplits, budget: int = IN_MEMORY_BUDGET) -> tuple[DataSplits, str]:
    """``data`` with its file-backed splits decoded once into memory, in order (train, val, the held-out
    splits) while their decoded size fits in ``budget`` bytes together, and a line saying what was
    decoded ("" when nothing). The batches are the same tensors either way; the rest is read from files
    by persistent DataLoader workers."""
    started, used, done = time.time(), 0, []

    def load(split: Split | None) -> Split | None:
        nonlocal used
        if not isinstance(split, FileSplit) or used + split.decoded_bytes > budget:
            return split
        used += split.decoded_bytes
        done.append((split.name, len(split)))
        return split.to_memory()

    data = replace(data, train=load(data.train), val=load(data.val), test=load(data.test),
                   test_consistent=load(data.test_consistent),
                   evaluation={name: load(split) for name, split in data.evaluation.items()})
    if not done:
        return data, ""
    return data, (f"data: {', '.join(name for name, _ in done)} decoded into memory once "
                  f"({sum(n for _, n in done)} images, {used / 2**20:.1f} MiB, {time.time() - started:.1f} s)")


class _Order(Sampler[int]):
    """The indices of the current epoch, set before each pass over one long-lived DataLoader."""

    def __init__(self):
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class BatchSource:
    """Batches of (images, labels, dataset indices) in a given order (shuffled deterministically per
    (seed, epoch) by the caller).

    In-memory splits are gathered with one index op per batch; file-backed splits go through one
    DataLoader kept for the source's life, whose workers (persistent: not respawned every epoch)
    decode in parallel. The workers draw no randomness and the loader has its own generator, so the
    batches and the global random stream are the same with any number of workers, or in memory."""

    def __init__(self, split: Split, batch_size: int, workers: int | None, device: torch.device):
        if workers is None:
            workers = default_workers()
        self.split, self.batch_size, self.workers, self.device = split, batch_size, workers, device
        self._order = _Order()
        self._loader: DataLoader | None = None

    def epoch(self, order: torch.Tensor):
        if self.split.in_memory:
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                x, y = self.split.batch(idx)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)
            return
        if self._loader is None:
            # generator: a DataLoader iterator otherwise draws its workers' base seed from the global stream
            self._loader = DataLoader(self.split, batch_size=self.batch_size, sampler=self._order,
                                      num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                      persistent_workers=self.workers > 0, generator=torch.Generator())
        self._order.order = order.tolist()
        for x, y, idx in self._loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


def gather(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``idx``, in that order (on the CPU)."""
    if split.in_memory:
        return split.batch(idx)
    items = [split[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
