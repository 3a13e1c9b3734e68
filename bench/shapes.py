"""Other shapes of shortcut (issue 25), so that nothing is fitted to a square sticker in a corner: plain
training and the simulated annotator (hitl: the trainer's defaults, 10 queries a round; hitl_both: the same
with ``--feedback both``, the penalty at full weight beside counterexamples) on
synthetic-lesions variants (trainer/data/synthetic.py): the sticker anywhere, a thin ruler along an
edge, a text-like label, a sticker and a ruler together, and a text label on 80% of the images only.
Decorrelated test accuracy, the shortcut gap and the reliance on the marks, per variant and seed."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from trainer.config import TrainConfig

from .learning import train_rows
from .machine import git_version

VARIANTS = {
    "anywhere": {"sticker": "anywhere"},
    "ruler": {"artefact": "ruler"},
    "text": {"artefact": "text"},
    "sticker+ruler": {"second_artefact": "ruler"},
    "text on 80%": {"artefact": "text", "sticker_share": 0.8},
}
# each run: (--annotator, --feedback); hitl with the trainer's default feedback
METHODS = {"plain": ("none", "auto"), "hitl": ("oracle", "auto"), "hitl_both": ("oracle", "both")}
HOW = ("synthetic-lesions variants (trainer/data/synthetic.py), plain and hitl (the simulated annotator, 10 queries a "
       "round, the trainer's default feedback; hitl_both: with --feedback both), per seed; points = hitl's "
       "decorrelated test accuracy over plain's")


def run_title(variant: str, method: str, seed: int) -> str:
    return f"lesions-{variant.replace(' ', '-').replace('%', 'pc').replace('+', '-and-')}-{method}-s{seed}"


def run_shapes(seeds: tuple[int, ...], variants: tuple[str, ...], epochs: int, runs_dir: Path,
               log: Callable[[str], None], jobs: int = 1,
               progress: Callable[[list, list], None] = lambda rows, left: None,
               match: tuple[str, ...] = ()) -> list[dict]:
    """Rows for every (variant, seed, method); ``progress`` and ``match`` as in learning.run_grid."""
    planned = []
    for variant in variants:
        for seed in seeds:
            for method, (annotator, feedback) in METHODS.items():
                title = run_title(variant, method, seed)
                if match and not any(m in title for m in match):
                    continue
                planned.append((variant, seed, method, TrainConfig(
                    dataset="synthetic-lesions", epochs=epochs, seed=seed, device="cpu", track_images=0,
                    runs_dir=str(runs_dir), title=title, dataset_options=dict(VARIANTS[variant]),
                    annotator=annotator, feedback_method=feedback)))
    version = git_version()

    def to_row(i: int, row: dict) -> dict:
        variant, seed, method, cfg = planned[i]
        return {"title": cfg.title, "variant": variant, "seed": seed, "method": method, "epochs": epochs, **row,
                "git": version}

    return train_rows([p[-1] for p in planned], jobs, log, to_row, progress)
