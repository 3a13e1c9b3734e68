"""How well the trainer finds the rest of a marked artefact (trainer/proposals.py), and how long it takes.

    python -m bench.proposals [--epochs 2] [--marks 3] [--top 10] [--seeds 0 1 2] [--sticker anywhere]

Trains hitl_cnn plainly on synthetic-lesions with the sticker at random places (``sticker: anywhere``)
on half the images (``sticker_share: 0.5``, so that ranking has something to find), gives the
ground-truth masks of the first ``--marks`` training images that carry a sticker, and proposes the
``--top`` best of the rest. Reports the precision of the proposals (share that truly carry a sticker),
the mean IoU of each proposed mask with the image's ground-truth sticker (over proposals with one), the
share of proposals the simulated reviewer would accept (IoU >= 0.5), the seconds of ``propose``
(time.perf_counter; the whole training set scanned by a pass of its own) and the seconds a query round
adds (``round_extra_seconds``: the fits and the localisation; there the ranking shares the round's
prediction pass), and the seconds of the whole queue (``build_queue``: 10 queries explained with
deeplift, the training set predicted) without and with proposals (best of two each).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from trainer.batches import gather
from trainer.config import TrainConfig
from trainer.feedback import FeedbackSet
from trainer.proposals import Finder, candidates_for, propose
from trainer.train import Trainer


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def measure(seed: int, epochs: int, marks: int, top: int, sticker: str, share: float, image_size: int = 64,
            log=print) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        return _measure(runs, seed, epochs, marks, top, sticker, share, image_size, log)


def _measure(runs: str, seed: int, epochs: int, marks: int, top: int, sticker: str, share: float, image_size: int,
             log) -> dict:
    cfg = TrainConfig(dataset="synthetic-lesions", epochs=epochs, annotator="none", seed=seed, device="cpu",
                      image_size=image_size, runs_dir=runs, title=f"proposals-{seed}",
                      dataset_options={"sticker": sticker, "sticker_share": share}, track_images=0)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.fit()
    train = trainer.data.train
    carries = train.masks.flatten(1).any(1)
    feedback = FeedbackSet(len(train), image_size, image_size)
    for i in torch.nonzero(carries).flatten()[:marks].tolist():
        feedback.add(i, train.masks[i])
    cpu, take = torch.device("cpu"), (lambda i: gather(train, i))
    t0 = time.perf_counter()
    found = propose(trainer.model, feedback, top, cpu, take, g=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    # in a query round the ranking rides on the prediction pass: what the round adds is the fit and the
    # localisation of the chosen images (the scores are taken as given here)
    candidates = candidates_for(feedback)
    scores = Finder.fit(trainer.model, feedback, take, cpu).rank(take, candidates)
    t0 = time.perf_counter()
    finder = Finder.fit(trainer.model, feedback, take, cpu)
    finder.choose(candidates, scores, top, take)
    extra = time.perf_counter() - t0
    # the whole query round's queue (10 queries, deeplift) with and without proposals, as a person waits
    trainer.feedback = feedback
    queue_seconds = {}
    for epoch, n in ((100, 0), (101, top), (102, 0), (103, top)):
        trainer.cfg = replace(trainer.cfg, proposals_per_epoch=n)
        t0 = time.perf_counter()
        trainer.queries.build_queue(epoch)
        queue_seconds.setdefault(n, []).append(time.perf_counter() - t0)
    hits = [p for p in found if carries[p.index]]
    ious = [iou(p.mask, train.masks[p.index].numpy()) for p in hits]
    row = {"seed": seed, "proposals": len(found), "precision": len(hits) / max(1, len(found)),
           "mean_iou": statistics.mean(ious) if ious else float("nan"),
           "accepted": sum(v >= 0.5 for v in ious) / max(1, len(found)), "seconds": round(seconds, 3),
           "round_extra_seconds": round(extra, 3),
           "queue_seconds": round(min(queue_seconds[0]), 3), "queue_with_proposals_seconds": round(min(queue_seconds[top]), 3),
           "scanned": len(train) - len(feedback), "base_rate": float(carries.float().mean())}
    log(row)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.proposals")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--marks", type=int, default=3)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sticker", default="anywhere", choices=["corner", "anywhere"])
    p.add_argument("--share", type=float, default=0.5)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = [measure(s, args.epochs, args.marks, args.top, args.sticker, args.share) for s in args.seeds]
    for key in ("precision", "mean_iou", "accepted", "seconds", "round_extra_seconds", "queue_seconds",
                "queue_with_proposals_seconds"):
        values = [r[key] for r in rows]
        print(f"{key}: {statistics.mean(values):.3f} (per seed {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
