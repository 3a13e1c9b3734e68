"""Feedback penalties: how a person's mask reaches the weights.

All penalties run on the annotated images of a batch only, in the same mode as the cross-entropy
(train mode) but without updating batch-norm running statistics. (Penalising the eval-mode model
instead lets training satisfy the penalty by breaking the eval-mode network, whose statistics differ
from the batch statistics the cross-entropy sees: validation accuracy collapsed to chance.) Each returns one value per annotated image, in [0, 1] before weighting:

``rrr``      Right for the Right Reasons: the share of the input-gradient energy of the summed
             log-probabilities that falls inside the mask, A/D = Σ W·g² / Σ g². A share, unlike the raw
             Σ W·g², cannot be lowered by making the model insensitive to its whole input, and it does
             not depend on the scale of input gradients, which differs by orders of magnitude between
             models and image sizes: the default λ works across them.
             Two implementations with the same gradient:
             ``exact`` double backpropagation (create_graph=True), the reference;
             ``fd``    finite differences (Finlay & Oberman 2019): ∇θ(A/D) = (2/D) ∇θ(g·v) with
                       v = (W − A/D)⊙g held fixed, and g·v is a directional derivative,
                       (s(x+hu) − s(x−hu))·‖v‖/2h. No second-order autograd, so depthwise convolutions
                       and batch-norm keep their fast first-order kernels.
``gradcam``  the normalised GradCAM map of the true class inside the mask (mean over masked pixels);
             double backpropagation only through the head, so cheap.

A mask is a float H×W tensor W: 1 where the model must not look. Pixels outside a "relevant" region
count as forbidden too (the trainer builds W), so "look here" feedback uses the same mechanism.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12

# Step of the finite difference, as an L2 norm in [0, 1] pixel units per image. Large enough to
# rise above float32 rounding, small enough for the second-order error to stay small: checked
# against ``exact`` by tests/test_penalty.py (parameter-gradient cosine).
FD_STEP = 0.5


@contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen_norm_stats(model: nn.Module):
    """Batch-norm layers normalise with the batch's statistics but leave their running ones alone."""
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _ in saved:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, momentum in saved:
            m.momentum = momentum


def summed_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """Per-image Σ_k log p_k, the score whose input gradient RRR penalises."""
    return F.log_softmax(logits.float(), dim=1).sum(dim=1)


def input_gradient(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """∂ Σ_k log p_k / ∂x for each image (only the input gradient; no parameter gradients)."""
    x = x.detach().requires_grad_(True)
    score = summed_log_prob(model(x)).sum()
    (g,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return g


def rrr_exact(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        g2 = input_gradient(model, x, create_graph=True).pow(2).sum(1).flatten(1)
        return (mask.flatten(1) * g2).sum(1) / (g2.sum(1) + EPS)


def rrr_fd(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
           step: float = FD_STEP) -> torch.Tensor:
    with frozen_norm_stats(model):
        g = input_gradient(model, x)
        energy = g.pow(2).sum(1).flatten(1).sum(1) + EPS
        share = (mask[:, None] * g.pow(2)).flatten(1).sum(1) / energy
        # ∇θ (A/D) = (2/D) ∇θ (g·v) with v = (W − A/D) ⊙ g held fixed: one directional derivative.
        v = (mask[:, None] - share.view(-1, 1, 1, 1)) * g
        norm = v.flatten(1).norm(dim=1).clamp_min(EPS)
        u = v / norm.view(-1, 1, 1, 1)
        s = summed_log_prob(model(torch.cat([x + step * u, x - step * u])))
        s_plus, s_minus = s.chunk(2)
        directional = (s_plus - s_minus) * norm / (2 * step)  # ≈ g·v, differentiable in θ
        surrogate = 2 * directional / energy
        # The value is the exact share; the gradient is the finite-difference one.
        return share + surrogate - surrogate.detach()


def gradcam_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """GradCAM of ``target`` upsampled to the image, normalised per image to [0, 1]."""
    features = model.features(x)
    if not create_graph:
        features = features.detach().requires_grad_(True)
    logits = model.head(features)
    score = logits.gather(1, target.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, features, create_graph=create_graph)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / (cam.flatten(1).amax(1).view(-1, 1, 1) + EPS)


def gradcam_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        cam = gradcam_map(model, x, y, create_graph=True)
        return (mask * cam).flatten(1).sum(1) / (mask.flatten(1).sum(1) + EPS)


PenaltyFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PENALTIES: dict[str, dict[str, PenaltyFn]] = {
    "rrr": {"fd": rrr_fd, "exact": rrr_exact},
    "gradcam": {"exact": gradcam_penalty, "fd": gradcam_penalty},
}
PENALTY_IMPLS = ("fd", "exact")


def get_penalty(name: str, impl: str) -> PenaltyFn:
    return PENALTIES[name][impl]
