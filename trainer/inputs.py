"""Operations on input images shared by the penalties, saliency-guided training and the evaluation:
the input gradient of the summed log-probabilities, and pixels replaced by noise or a constant."""
from __future__ import annotations

import torch
from torch import nn


def summed_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """Per-image Σ_k log p_k, the score whose input gradient RRR penalises."""
    return logits.float().log_softmax(1).sum(1)


def input_gradient(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """∂ Σ_k log p_k / ∂x for each image (only the input gradient; no parameter gradients)."""
    x = x.detach().requires_grad_(True)
    score = summed_log_prob(model(x)).sum()
    (g,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return g


def fill_values(x: torch.Tensor, fill: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """What masked pixels become: uniform in each image's own [min, max], or the constant."""
    if fill is not None:
        return torch.full_like(x, fill)
    lo = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return lo + (hi - lo) * u


def masked(x: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with the pixels of ``mask`` (N×H×W, every channel) replaced by ``values``."""
    return torch.where(mask[:, None], values, x)
