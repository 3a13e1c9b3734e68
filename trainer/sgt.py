"""Saliency-guided training (Ismail et al. 2021, "Improving deep learning interpretability by saliency
guided training"): ``--method sgt``.

Every step masks the features the model relies on least and asks it to predict the same on the masked
copy: loss = CE(f(x), y) + λ_kl · KL(p(x) ‖ p(x̃)). Information the gradients call unimportant then
cannot quietly matter, so saliency maps become sparser and more faithful (a steeper masked-accuracy
drop, see trainer/evaluate.py).

A feature is a pixel (all its channels, so masks line up with feedback masks and the evaluation); its
saliency is |∂z_y/∂x| averaged over channels, z_y the true class's logit. The k = round(fraction·H·W)
lowest are masked (``topk``: exactly k per image) and filled with uniform random values in the image's
own [min, max], the paper's choice, or a constant. All on the device for the whole batch at once: the
paper's code loops over samples on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import fill_values, masked
from .modes import batch_stats_as_constants, frozen_norm_stats

METHODS = ("plain", "sgt")
RANDOM_FILL = "random"


def parse_fill(text: str) -> float | None:
    """``random`` (None) or a constant in [0, 1] pixel units; ValueError otherwise."""
    if text == RANDOM_FILL:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected 'random' or a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"a constant fill must be in [0, 1] (images are in [0, 1]), got {text}")
    return value


def input_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, stats: dict | None = None) -> torch.Tensor:
    """|∂z_target/∂x| averaged over channels (N×H×W), without touching parameter gradients or the
    batch-norm running statistics."""
    with batch_stats_as_constants(model, stats):
        x = x.detach().requires_grad_(True)
        score = model(x).gather(1, target.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(score, x)
    return g.abs().mean(1)


def lowest_saliency_mask(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """Bool N×H×W, True on exactly the ``k`` least salient pixels of each image (ties broken by topk)."""
    flat = saliency.flatten(1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, flat.topk(k, dim=1, largest=False).indices, True)
    return mask.view_as(saliency)


class SaliencyGuided:
    """The extra loss term of one step: λ_kl · KL(p(x) ‖ p(x̃)), gradients through both sides (as the
    paper). ``stats``: the training batch's batch-norm statistics (trainer/modes.py), with which the
    saliency is taken; the running statistics never see masked images."""

    def __init__(self, fraction: float, weight: float, fill: str):
        if not 0 < fraction < 1:
            raise ValueError(f"--sgt-fraction must be in (0, 1), got {fraction}")
        self.fraction, self.weight, self.fill = fraction, weight, parse_fill(fill)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 stats: dict | None = None) -> torch.Tensor:
        k = round(self.fraction * x.shape[-2] * x.shape[-1])
        mask = lowest_saliency_mask(input_saliency(model, x, y, stats), k)
        x_tilde = masked(x, mask, fill_values(x, self.fill))
        # The masked copy is normalised by its own batch statistics, gradient included (held constant,
        # the KL term's gradient shrinks the weights in front of batch-norm, which breaks training),
        # and leaves the running statistics alone.
        with frozen_norm_stats(model):
            logits_tilde = model(x_tilde)
        kl = F.kl_div(logits_tilde.float().log_softmax(1), logits.float().log_softmax(1),
                      log_target=True, reduction="batchmean")
        return self.weight * kl
