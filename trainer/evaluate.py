"""``hitl-evaluate RUN`` (``python -m trainer.evaluate RUN``): how faithful a run's explanations are.

For each explainer, on a fixed random subset of held-out images (the decorrelated test split where
there is one) and the predicted class:

- masked accuracy (Ismail et al. 2021): accuracy after removing the 0, 10, …, 100% most salient pixels,
  without retraining. The steeper the drop, the more the map points at what the model really uses.
- deletion (Petsiuk et al. 2018): the mean probability of the originally predicted class along the same
  removals, and the area under that curve (lower: more faithful).
- wrong-reason share: the attribution mass inside the ground-truth confounder masks, where the data set
  has them (lower: less shortcut).

Removing fills pixels as saliency-guided training does (uniform noise in each image's range with a
fixed seed, or a constant), with the same values at every step, so the curves differ only by what is
removed. The result goes atomically to ``evaluation.json`` in the run directory; the dashboard's
Evaluation page overlays several runs.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn

from . import checkpoint, protocol
from .config import TrainConfig
from .data import DataError, Split, build_run_dataset
from .explain import EXPLAINERS, create_explainer, wrong_reason_share
from .model import ModelError, create_classifier
from .inputs import fill_values, masked
from .sgt import RANDOM_FILL, parse_fill
from .batches import gather
from .distributed import pick_device


class EvaluationError(ValueError):
    pass


def removal_order(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel by |attribution| (N×H×W, 0 = most salient): removing the top k is ``rank < k``."""
    flat = maps.abs().flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(maps)


@torch.no_grad()
def removal_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, maps: torch.Tensor,
                   fractions: list[float], fill: float | None, seed: int,
                   batch_size: int = 64) -> tuple[list[float], list[float]]:
    """Accuracy and mean probability of the originally predicted class after removing each fraction
    of the most salient pixels; the whole batch and all its removals on the device."""
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    correct = torch.zeros(len(fractions), device=x.device)
    prob = torch.zeros(len(fractions), device=x.device)
    pixels = x.shape[-2] * x.shape[-1]
    for i in range(0, len(x), batch_size):
        xb, yb, pb = x[i:i + batch_size], y[i:i + batch_size], pred[i:i + batch_size]
        ranks = removal_order(maps[i:i + batch_size])
        values = fill_values(xb, fill, generator)
        for j, fraction in enumerate(fractions):
            removed = ranks < round(fraction * pixels)
            p = model(masked(xb, removed, values)).float().softmax(1)
            correct[j] += (p.argmax(1) == yb).sum()
            prob[j] += p.gather(1, pb.view(-1, 1)).sum()
    return (correct / len(x)).tolist(), (prob / len(x)).tolist()


def area_under(fractions: list[float], values: list[float]) -> float:
    """Trapezoidal area over the removed fraction (0 to 1)."""
    return sum((b - a) * (u + v) / 2 for a, b, u, v in zip(fractions, fractions[1:], values, values[1:]))


def evaluate_explainer(model: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None,
                       fractions: list[float], fill: float | None, seed: int, batch_size: int = 64,
                       deeplift_baseline: str = "blur") -> dict:
    t0 = time.time()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    maps = create_explainer(name, model, deeplift_baseline, batch_size).attribute(x, pred).float()
    accuracy, probability = removal_curves(model, x, y, pred, maps, fractions, fill, seed, batch_size)
    wrong_reason = None
    if masks is not None and masks.flatten(1).any(1).any():
        keep = masks.flatten(1).any(1)
        wrong_reason = float(wrong_reason_share(maps[keep], masks[keep]).mean())
    return {"explainer": name, "fractions": fractions, "masked_accuracy": accuracy, "deletion": probability,
            "deletion_auc": area_under(fractions, probability), "wrong_reason": wrong_reason,
            "seconds": time.time() - t0}


# --------------------------------------------------------------------------- a run

def load_model(run: protocol.RunDir, cfg: TrainConfig, num_classes: int, in_chans: int, which: str,
               device: torch.device) -> tuple[nn.Module, int]:
    """The run's model with the weights of its ``best`` or ``last`` checkpoint, and that epoch."""
    path = checkpoint.best_path(run) if which == "best" else run.last_checkpoint
    if not path.exists():
        raise EvaluationError(f"{run.path} has no {path.name} yet (it saves one after its first epoch)")
    try:
        ckpt = checkpoint.read(path, map_location=device)
    except checkpoint.CheckpointError as e:
        raise EvaluationError(str(e)) from None
    model = create_classifier(cfg.model, num_classes, in_chans, pretrained=False, head=cfg.head).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), int(ckpt["state"]["epoch"])


def pick_images(split: Split, n: int, seed: int) -> torch.Tensor:
    """A fixed random subset, so every run of the same data set is evaluated on the same images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(split), generator=g)[:n].sort().values


def evaluate_run(run: protocol.RunDir, explainers: list[str] | None = None, images: int = 256, steps: int = 10,
                 checkpoint: str = "best", split_name: str | None = None, fill: str = RANDOM_FILL, seed: int = 0,
                 batch_size: int = 64, device: str = "auto", log=print) -> dict:
    """Evaluate and write ``evaluation.json``; returns the document."""
    cfg = TrainConfig.from_dict(protocol.read_config(run))
    explainers = explainers or default_explainers(cfg)
    for name in explainers:
        if name not in EXPLAINERS:
            raise EvaluationError(f"unknown explainer {name!r}; choose from {', '.join(sorted(EXPLAINERS))}")
        if EXPLAINERS[name].needs_attention_head and cfg.head != "attention":
            raise EvaluationError(f"explainer {name} needs a run trained with --head attention")
    data = build_run_dataset(cfg)
    split_name = split_name or ("test" if data.test is not None else "val")
    split = data.test if split_name == "test" else data.val
    if split is None:
        raise EvaluationError(f"{cfg.dataset} has no {split_name} split")
    dev = pick_device(device)
    model, epoch = load_model(run, cfg, data.num_classes, data.in_chans, checkpoint, dev)
    idx = pick_images(split, images, seed)
    x, y = gather(split, idx)
    x, y = x.to(dev), y.to(dev)
    masks = torch.stack([split.gt_mask(int(i)) for i in idx]).to(dev) if split.has_gt_masks else None
    fractions = [round(i / steps, 6) for i in range(steps + 1)]
    results = []
    for name in explainers:
        result = evaluate_explainer(model, name, x, y, masks, fractions, parse_fill(fill), seed, batch_size,
                                    cfg.deeplift_baseline)
        accuracy, mid = result["masked_accuracy"], len(fractions) // 2
        log(f"{name}: accuracy {accuracy[0]:.3f}, {accuracy[mid]:.3f} with {fractions[mid]:.0%} of the pixels removed; "
            f"deletion AUC {result['deletion_auc']:.3f}; wrong-reason share {_fmt(result['wrong_reason'])} "
            f"({result['seconds']:.1f} s)")
        results.append(result)
    doc = {"run": run.name, "checkpoint": checkpoint, "epoch": epoch, "split": split_name, "images": len(idx),
           "fill": fill, "seed": seed, "deeplift_baseline": cfg.deeplift_baseline, "created_at": time.time(),
           "results": results}
    protocol.write_evaluation(run, doc)
    return doc


def default_explainers(cfg: TrainConfig) -> list[str]:
    """The run's own query explainer, plain gradients and GradCAM (and the attention map, if it has one)."""
    names = [cfg.saliency, "saliency", "gradcam"] + (["attention"] if cfg.head == "attention" else [])
    return list(dict.fromkeys(names))


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


# --------------------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="hitl-evaluate", description="How faithful a run's explanations are: masked "
                                "accuracy, deletion AUC and wrong-reason share, written to evaluation.json.")
    p.add_argument("run", help="run directory, or a run name under --runs-dir")
    p.add_argument("-md", "--runs-dir", default="checkpoints")
    p.add_argument("--explainers", help=f"comma-separated, from: {', '.join(EXPLAINERS)} "
                                        "(default: the run's --saliency, saliency and gradcam)")
    p.add_argument("--images", type=int, default=256, help="held-out images evaluated (default 256)")
    p.add_argument("--steps", type=int, default=10, help="removal steps from 0 to 100%% (default 10: 10%% each)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--split", choices=["test", "val"], help="default: test where the data set has one, else val")
    p.add_argument("--fill", default=RANDOM_FILL, help="removed pixels become noise in the image's range (random, "
                                                       "default) or a constant in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the noise (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = p.parse_args(argv)
    try:
        run = protocol.run_from_argument(args.run, args.runs_dir)
        if args.images < 1 or args.steps < 1 or args.batch_size < 1:
            raise EvaluationError("--images, --steps and --batch-size must be positive")
        parse_fill(args.fill)
        explainers = [e.strip() for e in args.explainers.split(",") if e.strip()] if args.explainers else None
        evaluate_run(run, explainers, args.images, args.steps, args.checkpoint, args.split, args.fill, args.seed,
                     args.batch_size, args.device)
    except (EvaluationError, DataError, ModelError, protocol.ProtocolError, ValueError) as e:
        print(f"hitl-evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"written to {run.evaluation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
