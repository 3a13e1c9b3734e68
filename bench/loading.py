"""How fast a small-image data set on disk trains with the default reading against ``--workers 0`` and
``--workers 2``: a csv set of 28 px PNGs (issue 25: with DataLoader workers respawned every epoch such a
set trained 4–6× slower than with ``--workers 0`` on 2 cores).

Each setting is one ``Trainer`` run (hitl_cnn, batch 64, no annotator) of the same seed; the settings are
interleaved, round after round, and the median of the rounds kept. ``start_s`` is building the trainer
(reading the csv, checking the images and, by default, decoding what fits into memory), ``epoch_s`` the
mean of the epochs' own ``seconds`` (training and validation), ``run_s`` both and the final test.
Every run must end with the same metrics (``same_metrics``): the reading never changes the result.
"""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from trainer import protocol
from trainer.config import TrainConfig
from trainer.train import Trainer

from .plans import Plan

IMAGE_SIZE = 28
SETTINGS = (("default", None), ("--workers 0", 0), ("--workers 2", 2))
CLASSES = 10


def make_csv_set(root: Path, n_train: int, n_val: int, n_test: int) -> Path:
    """``labels.csv`` and 28 px PNGs: a noisy grey background with a class-dependent bright bar, so the
    model has something to learn (reading cost does not depend on content)."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for k in range(n):
            label = k % CLASSES
            image = rng.integers(0, 120, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            image[2 + 2 * label: 4 + 2 * label, 4:24] = 230
            name = f"img/{split}-{k:05d}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / name)
            rows.append([name, label, split])
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return root / "labels.csv"


def timed_run(table: Path, workers: int | None, epochs: int, runs_dir: Path, title: str,
              device: torch.device) -> tuple[dict, list[dict]]:
    cfg = TrainConfig(dataset="csv", data_dir=str(table), image_size=IMAGE_SIZE, model="hitl_cnn", epochs=epochs,
                      batch_size=64, seed=0, annotator="none", workers=workers, device=device.type,
                      runs_dir=str(runs_dir), title=title)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, log=lambda *a: None)
    t1 = time.perf_counter()
    result = trainer.fit()
    t2 = time.perf_counter()
    rows = protocol.read_metrics(trainer.run)
    del trainer
    times = {"start_s": t1 - t0, "epoch_s": statistics.mean(r["seconds"] for r in rows), "run_s": t2 - t0}
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in rows] + [
        {k: v for k, v in result.items() if k != "run_dir"}]
    return times, metrics


def run_loading(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    table = make_csv_set(runs_dir / "loading-data", plan.loading_images, plan.loading_images // 5,
                         plan.loading_images // 5)
    times: dict[str, list[dict]] = {name: [] for name, _ in SETTINGS}
    metrics: dict[str, list] = {}
    for r in range(plan.loading_repeats):
        for name, workers in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            t, m = timed_run(table, workers, plan.loading_epochs, runs_dir, f"loading-{r}-{workers}", device)
            times[name].append(t)
            metrics.setdefault(name, m)
            log(f"loading: {name}, round {r}: start {t['start_s']:.1f} s, epoch {t['epoch_s']:.2f} s, "
                f"run {t['run_s']:.1f} s")
    reference = metrics[SETTINGS[0][0]]
    rows = []
    for name, workers in SETTINGS:
        rows.append({"setting": name, "workers": workers, "n_train": plan.loading_images, "image_size": IMAGE_SIZE,
                     "epochs": plan.loading_epochs, "device": device.type, "rounds": plan.loading_repeats,
                     **{k: round(statistics.median(t[k] for t in times[name]), 2) for k in ("start_s", "epoch_s", "run_s")},
                     "same_metrics": metrics[name] == reference})
    return rows
