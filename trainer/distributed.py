"""Training under ``torchrun``: DistributedDataParallel with the run directory unchanged.

torchrun starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; ``setup`` joins the process group from them (NCCL on CUDA, gloo on CPU). Without
them, or with one process, nothing here does anything and the trainer is the single-process one, bit
for bit.

Who does what:
- every rank trains on its shard of each epoch's order (``shard``: DistributedSampler's semantics, the
  epoch-seeded permutation padded to a multiple of the world size and dealt out, so every rank takes
  the same number of steps) and draws its own oversampled annotated images, 1/8 of its batch;
- ``--batch-size`` is the global batch: each rank takes batch-size / N, so a run's settings mean the
  same on any N and ``--resume`` may change N;
- predictions over a split (validation, test, the training set for entropy sampling) are computed on
  each rank's share and gathered (``gather_rows``), not repeated N times;
- rank 0 alone writes the run directory (status, config, metrics, queues, checkpoints, plots), samples
  and explains the queue, and waits for the mask file; the others take its feedback set and state
  afterwards (``on_writer``), so every rank trains on the same feedback set;
- the model the trainer keeps is the plain module (checkpoints and explainers see it, as in one
  process); only the training forward goes through the DDP wrapper (``wrap``), whose backward
  all-reduces the gradients, the penalty's included: one backward per step, whatever its path.

Waiting for a person: rank 0 polls the mask file as in one process while a thread of it broadcasts a
tick every ``TICK_SECONDS`` on a gloo group of its own; the other ranks sit in that broadcast. No
collective ever waits longer than a tick plus rank 0's own writes, so the process group keeps its
default timeout (a barrier with a timeout of days would also wait, but would hide a hung rank for days),
and a rank that dies breaks the next tick at once.
"""
from __future__ import annotations

import _thread
import atexit
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

TICK_SECONDS = 2.0


@dataclass
class Distributed:
    """This process's place in the job; ``world_size`` 1 when not under torchrun."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    control: Any = None  # a gloo group for Python objects and the waiting ticks

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ model and batches

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward goes through: DDP over ``model`` (it broadcasts rank 0's
        weights now, so every rank starts from the same ones), or ``model`` itself in one process."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} does not split over {self.world_size} processes "
                             f"(it is the global batch); use a multiple of {self.world_size}")
        return batch_size // self.world_size

    def shard(self, order: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Generator]:
        """This rank's share of an epoch's order, and the generator for its own draws (the oversampled
        annotated images): in one process the shared one, as ever; under torchrun one seeded from it and
        the rank, so ranks do not all draw the same images."""
        if not self.enabled:
            return order, generator
        own = torch.Generator().manual_seed(int(torch.randint(1 << 62, (), generator=generator)) + self.rank)
        return shard(order, self.rank, self.world_size), own

    def eval_indices(self, n: int) -> torch.Tensor:
        """The indices of an n-image split that this rank predicts (every world_size-th)."""
        return torch.arange(self.rank, n, self.world_size)

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's rows for ``eval_indices`` put back in index order, on every rank."""
        if not self.enabled:
            return rows
        per_rank = math.ceil(n / self.world_size)
        padded = rows.new_zeros((per_rank, *rows.shape[1:]))
        padded[:len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.stack(parts, 1).flatten(0, 1)[:n]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t)
        return t

    # ------------------------------------------------------------------ rank 0's work

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    @contextmanager
    def writer_first(self):
        """Rank 0 runs the block first (say, generating a data set's cache), then the others."""
        if self.enabled and not self.is_writer:
            dist.barrier(group=self.control)
        try:
            yield
        finally:
            if self.enabled and self.is_writer:
                dist.barrier(group=self.control)

    def on_writer(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, however long it takes; its result on every rank. The others wait on
        ticks (see the module's docstring); a failure on rank 0 fails them with its message."""
        if not self.enabled:
            return fn()
        if not self.is_writer:
            while True:
                box: list = [None]
                dist.broadcast_object_list(box, src=0, group=self.control)
                kind, value = box[0]
                if kind == "done":
                    return value
                if kind == "failed":
                    raise RuntimeError(f"rank 0 failed: {value}")
        stop, lost = threading.Event(), []

        def tick():
            while not stop.wait(TICK_SECONDS):
                try:
                    dist.broadcast_object_list([("wait", None)], src=0, group=self.control)
                except RuntimeError as e:  # a rank is gone: stop rank 0 too, or it would wait for ever
                    lost.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
                    _thread.interrupt_main()
                    return

        ticker = threading.Thread(target=tick, name="waiting-tick", daemon=True)
        ticker.start()
        try:
            result = fn()
        except BaseException as e:
            if lost and isinstance(e, KeyboardInterrupt):  # the ticker's interrupt
                raise RuntimeError(f"another rank stopped answering while rank 0 waited ({lost[0]})") from None
            self._tell_followers(stop, ticker, ("failed", f"{type(e).__name__}: {e}"))
            raise
        self._tell_followers(stop, ticker, ("done", result))
        return result

    def _tell_followers(self, stop: threading.Event, ticker: threading.Thread, outcome: tuple) -> None:
        """The last message of a wait. When rank 0 fails, its own error is the one to report, not that
        the others are gone already (a tick stuck on a dead rank, a broken connection)."""
        stop.set()
        ticker.join(2 * TICK_SECONDS)
        failed = outcome[0] == "failed"
        if ticker.is_alive():
            if failed:
                return
            raise RuntimeError("another rank stopped answering while rank 0 waited")
        try:
            dist.broadcast_object_list([outcome], src=0, group=self.control)
        except RuntimeError:
            if not failed:
                raise


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """DistributedSampler's split: pad ``order`` with its own head to a multiple of ``world_size``,
    then every world_size-th item from ``rank``. Each rank gets the same number of items (so the same
    number of steps: DDP needs that), and together they cover ``order``."""
    per_rank = math.ceil(len(order) / world_size)
    padding = per_rank * world_size - len(order)
    if padding:
        order = torch.cat([order, order.repeat(math.ceil(padding / max(1, len(order))))[:padding]])
    return order[rank::world_size]


def pick_device(name: str) -> torch.device:
    """``--device``: auto is CUDA where there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


def setup(device: torch.device) -> Distributed:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_close)
    control = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Distributed(rank, world_size, local_rank, device, control)


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
