"""Learning outcome on the generated confounded sets, and how accuracy grows with annotations.

Methods (one full ``Trainer.fit`` each, fresh run directory):

``plain``      no feedback: the confounder is free to use;
``hitl``       the simulated annotator answers each round of queries from the ground-truth masks
               (the human-in-the-loop route, entropy sampling, the trainer's default timing: a round
               before training and one after each epoch);
``hitl_late``  the same, first asked after epoch 1 (``-se 1``, the original tool's timing);
``hitl_box``, ``hitl_loose``, ``hitl_partial``
               ``hitl`` with the annotator drawing as people do (``--oracle-style``): bounding boxes; boxes
               off by a few pixels with 20% of the queries skipped (counterexamples grow these marks:
               ``--counterexample-dilate auto``); part of each region left unmarked;
``all_masks``  every training image's mask given before training (``--prior-masks all``): the upper
               bound of feedback;
``clean_masks`` masks on every image of the ``clean`` training set, where the model does not use what
               is marked: what feedback costs when it has nothing to fix;
``sgt``        saliency-guided training, no masks (needs ``TrainConfig.method``);
``clean``      plain training on a training set whose confounder is decorrelated from the label
               (needs the data set to honour ``dataset_options={"confounded": False}``).

``learning`` runs the mask methods with the trainer's default feedback method; ``feedback`` runs the
plan's ``feedback_runs`` with the mask methods once per ``--feedback`` method (the penalty,
counterexamples, both).

Efficiency: the first N masks of the training set (its order is already random, so the sets are
nested random subsets) are given up front (``--prior-masks N``), then training is plain otherwise.

Penalties: the mask methods again, once per penalty variant (``rrr/exact``, ``rrr/linearised``,
``counterfactual``, …), so that what a cheaper variant teaches is compared with the exact penalty
on the same seeds.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch

from trainer.config import TrainConfig
from trainer.data import DataError, DataRequest, build_dataset
from trainer.train import Trainer

from .machine import git_version
from .plans import Plan, TrainingSetting, variant_settings

MASK_METHODS = ("hitl", "hitl_late", "hitl_box", "hitl_loose", "hitl_partial", "all_masks", "clean_masks")
# the simulated annotator's style and skipped share per hitl method, and the counterexamples' dilation
# (rough marks are grown, as docs/learning.md advises for them)
ORACLE_STYLES = {"hitl_box": ("box", 0.0, 0), "hitl_loose": ("loose", 0.2, "auto"), "hitl_partial": ("partial", 0.0, 0)}
EFFICIENCY_HOW = "first N ground-truth masks of the training set added before training (--prior-masks N); no queries"


def _quiet(*_: object) -> None:
    pass


def unavailable(method: str, dataset: str) -> str | None:
    """Why ``method`` cannot run with this trainer on ``dataset``; None when it can."""
    if method == "sgt" and not hasattr(TrainConfig(), "method"):
        return "TrainConfig has no `method` field: saliency-guided training is not in this trainer"
    if method in ("clean", "clean_masks"):
        try:
            default = build_dataset(dataset, DataRequest(None, None, 0)).train
            clean = build_dataset(dataset, DataRequest(None, None, 0, options={"confounded": False})).train
        except DataError as e:
            return f"{dataset} refuses dataset_options={{'confounded': False}}: {e}"
        if torch.equal(default.images, clean.images):
            return (f"{dataset} ignores dataset_options={{'confounded': False}}: no training set with the "
                    f"confounder decorrelated from the label")
    return None


def train_config(setting: TrainingSetting, method: str, seed: int, device: torch.device, runs_dir: Path,
                 title: str, variant: str | None = None, feedback: str | None = None) -> TrainConfig:
    """The run's configuration; ``variant`` and ``feedback`` None keep the trainer's default penalty
    and feedback method."""
    cfg = TrainConfig(dataset=setting.dataset, runs_dir=str(runs_dir), title=title, epochs=setting.epochs,
                      train_fraction=setting.train_fraction, queries_per_epoch=setting.queries_per_epoch,
                      annotator="oracle" if method.startswith("hitl") else "none", seed=seed, device=device.type,
                      track_images=0)
    for name, value in variant_settings(variant).items() if variant else ():
        setattr(cfg, name, value)
    if feedback:
        cfg.feedback_method = feedback
    if method == "hitl_late":
        cfg.query_start_epoch = 1
    if method in ORACLE_STYLES:
        cfg.oracle_style, cfg.oracle_skip, cfg.counterexample_dilate = ORACLE_STYLES[method]
    if method == "sgt":
        cfg.method = "sgt"
    if method in ("clean", "clean_masks"):
        cfg.dataset_options = {"confounded": False}
    if method in ("all_masks", "clean_masks"):
        cfg.prior_masks = "all"
    return cfg


def _or_nan(value) -> float:
    return math.nan if value is None else float(value)


def train(cfg: TrainConfig) -> dict:
    """One run, with the row's measurements."""
    trainer = Trainer(cfg, log=_quiet)
    t0 = time.perf_counter()
    result = trainer.fit()
    return {
        "n_train": len(trainer.data.train),
        "n_annotated": result["n_feedback"],
        "test_acc": result["test_acc"],
        "test_consistent_acc": result.get("test_consistent_acc", math.nan),
        "min_val_loss": result["best_val_loss"],
        "wrong_reason": result["test_wrong_reason"],
        # answers changed by swapping the artefacts this run's marks show (trainer/reliance.py); NaN without marks
        "reliance_flip_rate": _or_nan((result.get("reliance") or {}).get("flip_rate")),
        "seconds": round(time.perf_counter() - t0, 1),
        "impl": trainer.penalty_impl if trainer.teaching.penalty else None,
        "feedback": trainer.teaching.method,
    }


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def train_all(configs: list[TrainConfig], jobs: int, log: Callable[[str], None],
              on_row: Callable[[int, dict], None] = lambda i, row: None) -> list[dict]:
    """Rows of ``configs``, in order: one run after another, or ``jobs`` at a time in processes of their
    own, the cores shared out (each run is seeded, so its result does not depend on ``jobs``; its
    ``seconds`` do). ``on_row(i, row)`` hears of each run as it finishes, so a long section that is
    stopped keeps what it measured."""
    rows: list = [None] * len(configs)

    def finished(i: int, row: dict) -> None:
        rows[i] = _logged(configs[i], row, log)
        on_row(i, row)

    if jobs <= 1:
        for i, cfg in enumerate(configs):
            finished(i, train(cfg))
        return rows
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(train, cfg): i for i, cfg in enumerate(configs)}
        try:
            for future in as_completed(futures):
                finished(futures[future], future.result())
        except BaseException:  # a failed run or ``on_row``: stop after the runs in flight, not after every queued one
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return rows


def train_rows(configs: list[TrainConfig], jobs: int, log: Callable[[str], None],
               to_row: Callable[[int, dict], dict], progress: Callable[[list, list], None]) -> list[dict]:
    """``train_all``, each run's row made by ``to_row(i, row)``; after each run ``progress(rows, not_run)``
    hears the rows finished so far (in plan order) and the titles of the runs not finished yet."""
    rows: list = [None] * len(configs)

    def finished(i: int, row: dict) -> None:
        rows[i] = to_row(i, row)
        progress([r for r in rows if r is not None], [c.title for c, r in zip(configs, rows) if r is None])

    train_all(configs, jobs, log, finished)
    return rows


def _logged(cfg: TrainConfig, row: dict, log: Callable[[str], None]) -> dict:
    log(f"{cfg.title}: test acc {row['test_acc']:.3f}, wrong-reason {row['wrong_reason']:.3f}, "
        f"{row['n_annotated']} annotated ({row['seconds']:.0f} s)")
    return row


def run_grid(section: str, settings: tuple[TrainingSetting, ...], methods: tuple[str, ...],
             feedback_methods: tuple[str | None, ...], seeds: tuple[int, ...], device: torch.device, runs_dir: Path,
             log: Callable[[str], None], jobs: int = 1, progress: Callable[[list, list], None] = lambda rows, left: None,
             match: tuple[str, ...] = ()) -> tuple[list, list]:
    """Rows for every (data set, method, seed), the mask methods once per feedback method (None: the
    trainer's default), and the methods skipped with the reason. ``progress(rows, not_run)`` hears the
    rows finished so far (in plan order) and the titles of the runs not finished yet, after each run.
    With ``match``, only the runs whose title contains one of its strings; each row has its ``title``
    and the ``git`` version it was measured at."""
    skipped, planned, version = [], [], git_version()
    for setting in settings:
        for method in methods:
            reason = unavailable(method, setting.dataset)
            if reason:
                skipped.append({"section": section, "dataset": setting.dataset, "method": method, "reason": reason})
                log(f"{setting.dataset} {method}: skipped: {reason}")
                continue
            for feedback in feedback_methods if method in MASK_METHODS else (None,):
                for seed in setting.seeds or seeds:
                    title = run_title(setting.dataset, method, feedback, seed)
                    if match and not any(m in title for m in match):
                        continue
                    planned.append((setting, method, seed,
                                    train_config(setting, method, seed, device, runs_dir, title, feedback=feedback)))
    def to_row(i: int, row: dict) -> dict:
        (setting, method, seed, _), row = planned[i], dict(row)
        impl, used = row.pop("impl"), row.pop("feedback")
        masks = method in MASK_METHODS
        return {"title": planned[i][-1].title, "dataset": setting.dataset, "method": method,
                "impl": impl if masks else None, "feedback": used if masks else None, "seed": seed,
                "epochs": setting.epochs, **row, "git": version}

    return train_rows([p[-1] for p in planned], jobs, log, to_row, progress), skipped


def run_title(dataset: str, method: str, feedback: str | None, seed: int) -> str:
    """A grid run's title (its run folder's name, and what ``--match`` searches): the feedback method
    appears only where the section names one."""
    return f"{dataset}-{method}{'-' + feedback if feedback else ''}-s{seed}"


def run_learning(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None],
                 jobs: int = 1, progress: Callable[[list, list], None] = lambda rows, left: None,
                 match: tuple[str, ...] = ()) -> tuple[list, list]:
    """Every method on every data set and seed, with the trainer's default feedback method."""
    return run_grid("learning", plan.learning, plan.methods, (None,), plan.seeds, device, runs_dir, log, jobs,
                    progress, match)


def run_feedback(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None],
                 jobs: int = 1, progress: Callable[[list, list], None] = lambda rows, left: None,
                 match: tuple[str, ...] = ()) -> tuple[list, list]:
    """The feedback section's runs, the mask methods once per feedback method."""
    return run_grid("feedback", plan.feedback_settings, plan.feedback_runs, plan.feedback_methods, plan.seeds,
                    device, runs_dir, log, jobs, progress, match)


def run_penalties(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None],
                  jobs: int = 1) -> list:
    """Rows for every (method, penalty variant, seed) on the plan's penalty setting."""
    setting = plan.penalty_setting
    planned = [(method, variant, seed,
                train_config(setting, method, seed, device, runs_dir,
                             f"{setting.dataset}-{method}-{variant.replace('/', '-')}-s{seed}", variant,
                             feedback="penalty"))
               for method in plan.penalty_methods for variant in plan.penalty_variants
               for seed in setting.seeds or plan.seeds]
    return [{"dataset": setting.dataset, "method": method, "variant": variant, "seed": seed, "epochs": setting.epochs,
             **row}
            for (method, variant, seed, _), row in zip(planned, train_all([p[-1] for p in planned], jobs, log))]


def run_efficiency(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None],
                   jobs: int = 1) -> list:
    setting, seed = plan.efficiency, plan.seeds[0]
    configs = []
    for count in plan.efficiency_counts:
        cfg = train_config(setting, "plain", seed, device, runs_dir, f"{setting.dataset}-first{count}-s{seed}")
        cfg.prior_masks = str(count)
        configs.append(cfg)
    return [{"dataset": setting.dataset, "seed": seed, "epochs": setting.epochs, "masks_given": count, **row}
            for count, row in zip(plan.efficiency_counts, train_all(configs, jobs, log))]
