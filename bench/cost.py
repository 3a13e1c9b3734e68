"""What each penalty variant costs per training step, and how closely ``rrr/linearised`` follows ``exact``.

Cost: the trainer's own ``Trainer.train_step(x, y, idx)`` on one batch, by Trainers that share one
model and differ in their feedback set (``build_parts``, then one part replaced): an empty one (the
plain step) or one holding masks for a fraction of the batch, so the
probes folded into the main batch (``rrr/linearised``, ``counterfactual``), autocast on CUDA and the
batch-statistics bookkeeping are all part of what is timed. At fraction 0 the feedback set holds one mask for an image outside the
batch: the lookup runs and finds nothing, as in a run whose feedback sits in other batches; no
penalty runs then, so that row is measured once (variant ``none``). Plain and penalty steps are
interleaved, round after round, and medians compared, so a shared machine's changing load hits both;
rounds go on until there are ``timed_steps`` of them and they have taken ``timed_seconds``, so a
70 ms step is not judged on four samples.

The images are random noise at the model's size (step time does not depend on content, and the
generated confounded sets would take gigabytes to build at 224 px); each mask is a corner square a
fifth of the image wide, like the generated sets' confounder patch.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.data import DATASETS, DataRequest, DataSplits, TensorSplit
from trainer.feedback import FeedbackSet
from trainer.penalty import Penalty, penalty_class
from trainer.train import Trainer, build_parts

from .machine import peak_memory_mb, timed
from .plans import Plan, StepSetting, variant_settings

NOISE_DATASET = "bench-noise"
NUM_CLASSES = 10


def _quiet(*_: object) -> None:
    pass


def corner_masks(n: int, size: int) -> torch.Tensor:
    side = max(2, size // 5)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, 1:1 + side, 1:1 + side] = True
    return masks


def _build_noise(request: DataRequest) -> DataSplits:
    n, size = int(request.options["n_images"]), request.image_size
    g = torch.Generator().manual_seed(request.seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    split = TensorSplit("train", images, torch.arange(n) % NUM_CLASSES, corner_masks(n, size))
    return DataSplits(train=split, val=split, class_names=[str(c) for c in range(NUM_CLASSES)], in_chans=3,
                      image_size=size)


@contextmanager
def noise_dataset():
    """Registers the noise data set with the trainer for the duration of the cost benchmark."""
    DATASETS[NOISE_DATASET] = _build_noise
    try:
        yield
    finally:
        DATASETS.pop(NOISE_DATASET, None)


def step_config(setting: StepSetting, variant: str, device: torch.device, runs_dir: Path) -> TrainConfig:
    """A run over one batch of noise plus one image outside it (for the 0% case)."""
    return TrainConfig(dataset=NOISE_DATASET, dataset_options={"n_images": setting.batch_size + 1},
                      image_size=setting.image_size, model=setting.model, batch_size=setting.batch_size,
                      annotator="none", device=device.type, runs_dir=str(runs_dir),
                      title=f"cost-{setting.model}-{setting.image_size}-{variant.replace('/', '-')}",
                      feedback_method="penalty",  # what is timed is the penalty (counterexamples join in the epoch loop)
                      teaching_gate="off",  # the penalty from the first mark: noise images tell no class
                      **variant_settings(variant))


def annotated_count(fraction: float, batch_size: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * batch_size))


def measure_steps(setting: StepSetting, variant: str, fractions: tuple[float, ...], plan: Plan,
                  device: torch.device, runs_dir: Path) -> list[dict]:
    cfg = step_config(setting, variant, device, runs_dir)
    parts = build_parts(cfg, _quiet)
    train, batch = parts.data.train, setting.batch_size
    idx = torch.arange(batch)
    x, y = train.batch(idx)
    x, y, idx = x.to(device), y.to(device), idx.to(device)

    def feedback(annotated: list[int]) -> FeedbackSet:
        fs = FeedbackSet(len(train), setting.image_size, setting.image_size, device)
        for i in annotated:
            fs.add(i, train.masks[i])
        return fs

    counts = {f: annotated_count(f, batch) for f in fractions}
    feedback_sets = {"plain": feedback([]), **{str(f): feedback(list(range(n)) if n else [batch])
                                              for f, n in counts.items()}}
    # the trainer's own step, on one model, with each feedback set
    trainers = {name: Trainer(cfg, log=_quiet, parts=replace(parts, feedback=fs)) for name, fs in feedback_sets.items()}
    steps = {name: (lambda t=t: t.train_step(x, y, idx)) for name, t in trainers.items()}
    for _ in range(plan.warmup_steps - 1):
        for step in steps.values():
            step()
    peaks = peak_memory_mb(steps, device, lambda: parts.model.zero_grad(set_to_none=True))  # last warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    started = time.perf_counter()
    while len(times["plain"]) < plan.timed_steps or time.perf_counter() - started < plan.timed_seconds:
        for name, step in steps.items():
            times[name].append(timed(step, device))
    plain_ms = statistics.median(times["plain"])
    rows = []
    for f, n in counts.items():
        penalty_ms = statistics.median(times[str(f)])
        rows.append({
            "model": setting.model, "image_size": setting.image_size, "batch_size": batch, "device": device.type,
            "amp": trainers["plain"].amp, "variant": variant if n else "none", "feedback_fraction": f,
            "n_annotated": n, "plain_ms": round(plain_ms, 2), "penalty_ms": round(penalty_ms, 2),
            "ratio": round(penalty_ms / plain_ms, 3), "plain_peak_mb": round(peaks["plain"], 1),
            "penalty_peak_mb": round(peaks[str(f)], 1), "timed_steps": len(times["plain"]),
        })
    return rows


def run_cost(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    rows = []
    with noise_dataset():
        for setting in plan.steps:
            for i, variant in enumerate(plan.step_variants):
                fractions = tuple(f for f in plan.feedback_fractions if f > 0 or i == 0)
                new = measure_steps(setting, variant, fractions, plan, device, runs_dir)
                rows += new
                log(f"cost {setting.model} {setting.image_size}px batch {setting.batch_size} {variant}: "
                    + ", ".join(f"{r['feedback_fraction']:.0%} {r['ratio']:.2f}x" for r in new)
                    + f" (plain {new[0]['plain_ms']:.0f} ms)")
    return rows


def penalty_gradient(penalty: Penalty, params: list[torch.nn.Parameter], x: torch.Tensor, masks: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """∇θ of the mean penalty, flattened (zeros for parameters it does not reach)."""
    grads = torch.autograd.grad(penalty(x, masks, y).mean(), params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def run_cosine(plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    """Parameter-gradient cosine of ``linearised`` against ``exact`` for each model, trained briefly (plain), on
    batches of training images with their ground-truth masks, in train mode as in a step."""
    setting, rows = plan.cosine, []
    for model_name in plan.cosine_models:
        cfg = TrainConfig(dataset=setting.dataset, epochs=setting.epochs, train_fraction=setting.train_fraction,
                          model=model_name, annotator="none", device=device.type, runs_dir=str(runs_dir),
                          title=f"cosine-{model_name}", track_images=0)
        trainer = Trainer(cfg, log=_quiet)
        trainer.fit()
        model = trainer.model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        train, size = trainer.data.train, plan.cosine_batch_size
        cosines, norms = [], []
        for b in range(plan.cosine_batches):
            idx = torch.arange(b * size, (b + 1) * size)
            x, y = train.batch(idx)
            x, y, masks = x.to(device), y.to(device), train.masks[idx].float().to(device)
            # float64 sums: in float32 a cosine over millions of parameters can come out above 1
            exact, linearised = (penalty_gradient(penalty_class("rrr", impl)(model), params, x, masks, y).double()
                                 for impl in ("exact", "linearised"))
            cosines.append(F.cosine_similarity(linearised, exact, dim=0).item())
            norms.append((linearised.norm() / exact.norm()).item())
        rows.append({"model": model_name, "dataset": setting.dataset, "image_size": trainer.data.image_size,
                     "device": device.type, "impl": "linearised", "reference": "exact",
                     "trained_epochs": setting.epochs, "train_fraction": setting.train_fraction, "batch_size": size,
                     "cosine_mean": round(statistics.mean(cosines), 4), "cosine_min": round(min(cosines), 4),
                     "norm_ratio_mean": round(statistics.mean(norms), 4), "cosines": [round(v, 4) for v in cosines]})
        log(f"cosine linearised vs exact, {model_name}: {rows[-1]['cosine_mean']:.4f} "
            f"(norm ratio {rows[-1]['norm_ratio_mean']:.3f})")
    return rows
