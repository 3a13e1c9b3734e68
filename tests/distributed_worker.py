"""One training step's gradients for every penalty, run under torchrun by tests/test_distributed.py and
imported by it for the single-process reference.

The global batch is GLOBAL_BATCH training images, two of each half annotated; under torchrun with two
ranks each rank takes its half, as the sharded sampler would, and keeps DDP's averaged gradient.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.train import Trainer

GLOBAL_BATCH = 16
ANNOTATED = (0, 1, 8, 9)  # two in each half
VARIANTS = [("rrr", "fd"), ("rrr", "exact"), ("counterfactual", "exact"), ("gradcam", "exact")]
MODES = ("eval", "train")  # eval: batch-norm's running statistics; train: each rank's own batch statistics


def step_gradients(runs_dir: str, penalty: str, impl: str, mode: str, rows: slice) -> torch.Tensor:
    """The parameter gradient of ``Trainer.train_step`` on ``rows`` of the global batch, flattened."""
    cfg = TrainConfig(dataset="decoy-digits", train_fraction=0.2, val_fraction=0.3, batch_size=GLOBAL_BATCH,
                      seed=5, annotator="none", penalty=penalty, penalty_impl=impl, runs_dir=runs_dir,
                      title="gradients", device="cpu", teaching_gate="off")  # the penalty from the first mark
    trainer = Trainer(cfg, log=lambda *a: None)
    trainer.model.train(mode == "train")
    for index in ANNOTATED:
        trainer.feedback.add(index, trainer.data.train.gt_mask(index))
    idx = torch.arange(GLOBAL_BATCH)[rows]
    x, y = trainer.data.train.batch(idx)
    torch.manual_seed(100 + (rows.start or 0))  # the counterfactual's noise, the same per half in both runs
    trainer.train_step(x, y, idx)
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def main(runs_dir: str, out: str) -> None:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    half = GLOBAL_BATCH // world
    grads = {f"{p}/{i}/{m}": step_gradients(runs_dir, p, i, m, slice(rank * half, (rank + 1) * half))
             for p, i in VARIANTS for m in MODES}
    if rank == 0:
        torch.save(grads, Path(out))
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
