"""What each benchmark runs: sizes, epochs and seeds, chosen to fit the time budgets on two CPU
cores (``--quick`` about 3 minutes, the full run about 21) and recorded in the results file."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from trainer.explain import EXPLAINERS
from trainer.teaching import AUTO, BOTH, COUNTEREXAMPLES, PENALTY
from trainer.penalty import PENALTIES

METHODS = ("plain", "hitl", "hitl_late", "hitl_box", "hitl_loose", "hitl_partial", "all_masks", "sgt", "clean",
           "clean_masks")
# The feedback section: how the masks teach (--feedback), each way on the methods that tell them apart
# (issue 15's targets: hitl against plain, rough marks, masks on every image against clean training, and
# what masks cost where there is nothing to unlearn).
FEEDBACK_METHODS = (PENALTY, COUNTEREXAMPLES, BOTH, AUTO)  # auto: the default, the penalty where the finder misses
FEEDBACK_RUNS = ("plain", "clean", "hitl", "hitl_loose", "all_masks", "clean_masks")


def penalty_variants() -> tuple[str, ...]:
    """What reaches the weights: every registered penalty by each of its implementations (``rrr/exact``,
    ``rrr/linearised``, ``gradcam``, …), except those the benchmark's runs cannot tell apart or run: the
    simulated annotator marks forbidden regions only, where a penalty that uses relevance marks is
    another one squared (``hint`` is ``gradcam`` squared there), and the models have the pool head."""
    return tuple(f"{name}/{impl}" if cls.implementations else name
                 for name, cls in PENALTIES.items() if not (cls.uses_relevance or cls.needs_attention_head)
                 for impl in (cls.implementations or (None,)))


PENALTY_VARIANTS = penalty_variants()
REFERENCE_VARIANT = "rrr/exact"


def variant_settings(variant: str) -> dict:
    """TrainConfig fields for a variant: ``rrr/linearised`` -> penalty rrr, impl linearised; ``gradcam``
    -> penalty gradcam (its one implementation)."""
    penalty, _, impl = variant.partition("/")
    return {"penalty": penalty, **({"penalty_impl": impl} if impl else {})}


@dataclass(frozen=True)
class TrainingSetting:
    """One data set's training runs: fewer epochs than the trainer's default, to fit the budget."""

    dataset: str
    epochs: int
    train_fraction: float = 1.0
    queries_per_epoch: int = 10
    seeds: tuple[int, ...] | None = None     # None: the plan's seeds


@dataclass(frozen=True)
class StepSetting:
    """One model and image size whose training step is timed."""

    model: str
    image_size: int
    batch_size: int


@dataclass(frozen=True)
class Plan:
    preset: str
    # learning: every method on every data set and seed
    learning: tuple[TrainingSetting, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    # efficiency: the first N training masks given up front, N per entry
    efficiency: TrainingSetting
    efficiency_counts: tuple[int, ...]
    # cost: Trainer.train_step with masks on a fraction of the batch, per penalty variant
    steps: tuple[StepSetting, ...]
    feedback_fractions: tuple[float, ...]
    step_variants: tuple[str, ...]
    warmup_steps: int
    timed_steps: int      # at least this many interleaved rounds,
    timed_seconds: float  # and more until the rounds have taken this long (cheap steps get many)
    # cosine: parameter gradients of rrr/linearised against exact, per model, after brief training
    cosine: TrainingSetting
    cosine_models: tuple[str, ...]
    cosine_batches: int
    cosine_batch_size: int
    # latency
    query_datasets: tuple[str, ...]
    query_methods: tuple[str, ...]
    queries: int
    query_repeats: int
    resume_rounds: int
    # penalties (not in the default run): what each variant teaches, same runs as learning
    penalty_setting: TrainingSetting
    penalty_methods: tuple[str, ...]
    penalty_variants: tuple[str, ...]
    # feedback (not in the default run): the runs of ``feedback_runs`` on every setting and seed, the mask
    # methods once per feedback method
    feedback_settings: tuple[TrainingSetting, ...] = ()
    feedback_runs: tuple[str, ...] = FEEDBACK_RUNS
    feedback_methods: tuple[str, ...] = FEEDBACK_METHODS
    # loading (not in the default run): a csv set of 28 px PNGs, train images (val and test a fifth each)
    loading_images: int = 800
    loading_epochs: int = 4
    loading_repeats: int = 2
    # review (not in the default run): the browser measurement on the first seed, then plain and reviewed
    # synthetic-lesions runs per sticker placement and seed (bench/review.py)
    review_seeds: tuple[int, ...] = (0, 1, 2)
    review_stickers: tuple[str, ...] = ("corners", "anywhere")
    review_epochs: int = 6
    review_budget: int = 10      # --query-budget: images drawn on, at most
    review_proposals: int = 50   # --proposals per round
    # shapes (not in the default run): plain, hitl and hitl_both on synthetic-lesions variants (bench/shapes.py)
    shapes_seeds: tuple[int, ...] = (0, 1, 2)
    shapes_variants: tuple[str, ...] = ("anywhere", "ruler", "text", "sticker+ruler", "text on 80%")
    shapes_epochs: int = 6
    # harm (not in the default run): feedback where there is nothing to unlearn, small sets (bench/harm.py)
    harm_seeds: tuple[int, ...] = (0, 1, 2)
    harm_sizes: tuple[int, ...] = (300, 600, 1000)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_plan(quick: bool, device: torch.device) -> Plan:
    cuda = device.type == "cuda"
    if quick:
        digits = TrainingSetting("decoy-digits", epochs=3, train_fraction=0.6, queries_per_epoch=25)
        return Plan(
            preset="quick",
            learning=(digits,), methods=METHODS, seeds=(0,),
            efficiency=digits, efficiency_counts=(10, 50),
            steps=_cuda_steps() if cuda else (StepSetting("hitl_cnn", 32, 64), StepSetting("resnet18", 64, 20)),
            feedback_fractions=(0.0, 0.1, 1.0), step_variants=PENALTY_VARIANTS,
            warmup_steps=3 if cuda else 1, timed_steps=10 if cuda else 3, timed_seconds=2.0,
            cosine=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.3), cosine_models=("hitl_cnn",),
            cosine_batches=2, cosine_batch_size=32,
            query_datasets=("decoy-digits",), query_methods=tuple(EXPLAINERS), queries=10, query_repeats=1,
            resume_rounds=2,
            penalty_setting=digits, penalty_methods=("hitl",), penalty_variants=PENALTY_VARIANTS,
            feedback_settings=(digits,), feedback_runs=("plain", "hitl", "hitl_loose", "all_masks"),
            loading_images=300, loading_epochs=2, loading_repeats=1,
            review_seeds=(0,), review_stickers=("corners",), review_epochs=3, review_proposals=10,
            shapes_seeds=(0,), shapes_variants=("ruler",), shapes_epochs=2,
            harm_seeds=(0,), harm_sizes=(300,),
        )
    # Plain training has taken the decoy-digits shortcut by epoch 3 while clean training is at 90%
    # validation accuracy, so 4 epochs separate the methods; hitl gets 4 rounds of queries, ≤10% annotated.
    digits = TrainingSetting("decoy-digits", epochs=4, train_fraction=1.0, queries_per_epoch=25)
    # Clean training needs all 1,000 images and about 6 epochs to learn the border shape (74% after 4,
    # 99% after 8); one seed keeps the six-epoch runs within the budget.
    lesions = TrainingSetting("synthetic-lesions", epochs=6, train_fraction=1.0, queries_per_epoch=10, seeds=(0,))
    # The demo's own step (hitl_cnn on decoy-digits, 32 px, batch 64), then a timm model at two sizes.
    cpu_steps = (StepSetting("hitl_cnn", 32, 64), StepSetting("resnet18", 64, 40), StepSetting("resnet18", 224, 10))
    return Plan(
        preset="full",
        learning=(digits, lesions), methods=METHODS, seeds=(0, 1, 2),
        efficiency=digits, efficiency_counts=(10, 25, 50, 100, 200),
        steps=_cuda_steps() if cuda else cpu_steps,
        feedback_fractions=(0.0, 0.1, 1.0), step_variants=PENALTY_VARIANTS,
        warmup_steps=3 if cuda else 2, timed_steps=20 if cuda else 4, timed_seconds=15.0,
        # the demo's model, a residual network, and the study's own (SiLU, depthwise, squeeze-excite)
        cosine=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.3),
        cosine_models=("hitl_cnn", "resnet18", "efficientnet_b1"), cosine_batches=4, cosine_batch_size=16,
        query_datasets=("decoy-digits", "synthetic-lesions"), query_methods=tuple(EXPLAINERS), queries=10,
        query_repeats=1, resume_rounds=3,
        # 4 variants × 2 methods × 3 seeds: about 12 minutes on 2 cores, hence its own section.
        penalty_setting=digits, penalty_methods=("hitl", "all_masks"), penalty_variants=PENALTY_VARIANTS,
        # issue 15's targets are over 3 seeds on synthetic-lesions too
        feedback_settings=(digits, dataclasses.replace(lesions, seeds=None)),
    )


def _cuda_steps() -> tuple[StepSetting, ...]:
    """The reference figures' setting (224 px, batch 64), plus the small CNN and resnet18 at 64 px."""
    return (StepSetting("hitl_cnn", 64, 64), StepSetting("resnet18", 64, 64), StepSetting("resnet18", 224, 64),
            StepSetting("resnet50", 224, 64), StepSetting("efficientnet_b1", 224, 64))
