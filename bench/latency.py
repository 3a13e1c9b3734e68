"""How long a person waits on the trainer.

``query_queue``: end of an epoch → queue ready, i.e. ``Trainer.build_queue``: predict the training
set, sample, explain the queried images with the saliency method and write images, maps and the
manifest. The model is untrained (the cost does not depend on its weights); methods that read the
attention head run on a model with that head.

``submit_to_applied`` / ``submit_to_resume``: a mask file written with ``protocol.submit_feedback``
→ the trainer has applied it / has started the next epoch's training. The trainer runs in a thread
of this process, waiting for the file exactly as in a human-annotated run (its polling included).
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from trainer import protocol
from trainer.config import TrainConfig
from trainer.explain import EXPLAINERS, create_explainer
from trainer.query_round import QueryRound
from trainer.train import Parts, Trainer, build_parts

from .plans import Plan

WAIT_LIMIT_S = 600.0


def _quiet(*_: object) -> None:
    pass


def run_query_latency(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for dataset in plan.query_datasets:
        built: dict[str, tuple[TrainConfig, Parts]] = {}
        for method in plan.query_methods:
            head = "attention" if EXPLAINERS[method].needs_attention_head else "pool"
            if head not in built:
                cfg = TrainConfig(dataset=dataset, head=head, queries_per_epoch=plan.queries, annotator="human",
                                  device=device.type, runs_dir=str(runs_dir), title=f"latency-{dataset}-{head}")
                built[head] = cfg, build_parts(cfg, _quiet)
            cfg, parts = built[head]
            explainer = create_explainer(method, parts.model, cfg.deeplift_baseline)
            trainer = Trainer(replace(cfg, saliency=method), log=_quiet, parts=replace(parts, explainer=explainer))
            seconds = []
            for _ in range(plan.query_repeats):
                epoch = len(protocol.queue_epochs(trainer.run)) + 1  # a fresh queue folder each time
                t0 = time.perf_counter()
                trainer.queries.build_queue(epoch)
                seconds.append(time.perf_counter() - t0)
            rows.append({"what": "query_queue", "method": method, "device": device.type, "dataset": dataset,
                         "head": head, "image_size": trainer.data.image_size, "n_queries": plan.queries,
                         "seconds": round(statistics.median(seconds), 3)})
            log(f"latency {dataset} queue of {plan.queries} with {method}: {rows[-1]['seconds']:.2f} s")
    return rows


def oracle_answers(trainer: Trainer, manifest: dict) -> list[protocol.QueryFeedback]:
    """The ground-truth confounder of every queried image as "must not rely on"."""
    return [protocol.QueryFeedback(q["query_id"], q["index"], protocol.ACTION_MASK,
                                   forbidden=trainer.data.train.gt_mask(q["index"]).numpy())
            for q in manifest["queries"]]


def wait_until(condition: Callable[[], bool], failed: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        if failed():
            raise RuntimeError("the trainer thread stopped before the benchmark's feedback was applied")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the trainer did not reach the expected state within {WAIT_LIMIT_S:.0f} s")
        time.sleep(0.01)


def run_resume_latency(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    rounds = plan.resume_rounds
    cfg = TrainConfig(dataset="decoy-digits", train_fraction=0.1, epochs=rounds + 1, queries_per_epoch=plan.queries,
                      query_start_epoch=1, annotator="human", device=device.type, runs_dir=str(runs_dir), title="latency-resume",
                      track_images=0)
    applied: dict[int, float] = {}
    resumed: dict[int, float] = {}

    class TimedRound(QueryRound):
        """Notes when each mask file is applied."""

        def apply(self, epoch, answers):
            super().apply(epoch, answers)
            applied[epoch] = time.perf_counter()

    class TimedTrainer(Trainer):
        """Notes when the next epoch starts."""

        def train_one_epoch(self, epoch):
            resumed[epoch - 1] = time.perf_counter()
            return super().train_one_epoch(epoch)

    trainer = TimedTrainer(cfg, log=_quiet)
    trainer.queries = TimedRound(trainer)
    errors: list[BaseException] = []

    def fit():
        try:
            trainer.fit()
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    submitted: dict[int, float] = {}
    for epoch in range(1, rounds + 1):
        def waiting() -> bool:
            status = protocol.read_status(trainer.run) if trainer.run.status.exists() else {}
            return status.get("state") == protocol.WAITING and status.get("waiting_epoch") == epoch
        wait_until(waiting, lambda: bool(errors) or not thread.is_alive())
        time.sleep(0.5)  # the trainer is in its polling loop, as when a person answers
        answers = oracle_answers(trainer, protocol.read_manifest(trainer.run, epoch))
        submitted[epoch] = time.perf_counter()
        protocol.submit_feedback(trainer.run, epoch, "bench", answers)
    thread.join(WAIT_LIMIT_S)
    if errors:
        raise errors[0]
    rows = []
    for what, reached in (("submit_to_applied", applied), ("submit_to_resume", resumed)):
        samples = [reached[e] - submitted[e] for e in submitted]
        rows.append({"what": what, "method": None, "device": device.type, "dataset": cfg.dataset,
                     "n_queries": plan.queries, "seconds": round(statistics.median(samples), 3),
                     "samples": [round(s, 3) for s in samples]})
        log(f"latency {what}: {rows[-1]['seconds']:.2f} s (median of {len(samples)})")
    return rows
