"""Feedback penalties: how a person's mask reaches the weights.

All penalties run on the annotated images of a batch only, in the same mode as the cross-entropy
(train mode) but without updating batch-norm running statistics. (Penalising the eval-mode model
instead lets training satisfy the penalty by breaking the eval-mode network, whose statistics differ
from the batch statistics the cross-entropy sees: validation accuracy collapsed to chance.)
Each returns one value per annotated image; the trainer adds λ × their mean to the loss.

``rrr``      Right for the Right Reasons (Ross et al. 2017): the input-gradient energy of the summed
             log-probabilities inside the mask, Σ_chw W·g², scaled by the image area over 32² so the
             default λ carries across image sizes (a pooled CNN's per-pixel gradient shrinks as
             1/area, so Σ W·g² over a fixed share of the image shrinks as 1/area too).
             (A share A/Σg² or a per-image normalisation looks scale-free but teaches far less: the
             model keeps its shortcut and raises the gradient energy elsewhere.)
             Three implementations (``--penalty-impl``), measured in bench/:
             ``exact`` double backpropagation (create_graph=True), the reference and the default;
             ``jvp``   ∇θ Σ W·g² = 2∇θ(g·v) with v = W⊙g held fixed, g·v being the forward-mode
                       tangent of s along v, which reverse mode then differentiates: no second-order
                       autograd, so depthwise convolutions keep their fast first-order kernels (their
                       double backward is slow on GPUs). Identical to ``exact`` for networks without
                       batch-norm or in eval mode; through train-mode batch-norm PyTorch's forward-mode
                       rule differs (parameter-gradient cosine about 0.87 on the small CNN);
             ``fd``    g·v by central finite differences, (s(x+hu) − s(x−hu))·‖v‖/2h with
                       u = v/‖v‖ (Finlay & Oberman 2019), the perturbed copies riding in the main
                       batch. Cheapest, but ReLU and max-pool kinks make it approximate: cosine
                       0.7–0.8 against ``exact`` on the small CNN.
``gradcam``  the normalised GradCAM map of the true class inside the mask (mean over masked pixels);
             double backpropagation only through the head, so cheap.
``hint``     HINT (Selvaraju et al. 2019) as the XIL typology simplifies it: the normalised GradCAM
             map should be 1 on pixels marked relevant and 0 where the image must not matter; the
             mean squared error over the pixels the person spoke about. Unlike the others it rewards
             the relevant region itself. Without relevant marks it pushes GradCAM off the forbidden
             region (as ``gradcam``, squared), so the simulated annotator works with it too.
``attention`` the attention head's weight on the forbidden region (``--head attention`` only):
             the share of the pooled evidence taken from there. One forward, no second-order terms.

Normalisation, so that one λ (default 10) serves every model and image size: ``gradcam``, ``hint``
and ``attention`` are in [0, 1] by construction (GradCAM divided by its maximum, a mean over
pixels, or a share of weights summing to 1), whatever the network's scale or the image's area;
``rrr`` is scaled by the area as above.

A mask is a float H×W tensor W: 1 where the model must not look. Pixels outside a "relevant" region
count as forbidden too (the trainer builds W), so "look here" feedback uses the same mechanism.
``hint`` instead takes relevance maps (FeedbackSet.lookup(..., relevance=True)): 1 relevant,
0 must not matter, −1 unmarked.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.autograd.forward_ad as forward_ad
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


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def frozen_norm_stats(model: nn.Module):
    """Batch-norm layers normalise the annotated images with their own batch statistics, gradient
    included, but leave the running statistics alone.

    Holding the statistics constant instead (per-image gradients) was tried and fails: the penalty's
    gradient then shrinks the weights in front of each batch-norm, a direction the real, batch-
    normalised network cannot see, and Adam's effective step grows until training breaks
    (validation accuracy at chance after the first feedback)."""
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in _norm_layers(model)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


BatchStats = dict  # batch-norm module -> (mean, var) of its input, detached


def _input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().float()
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False)


@contextmanager
def recorded_batch_stats(model: nn.Module):
    """Records each batch-norm layer's batch statistics during a forward (the training batch's), so
    an extra pass (saliency-guided training's masked copy) is normalised as the batch was."""
    stats: BatchStats = {}
    hooks = [m.register_forward_pre_hook(lambda module, args: stats.__setitem__(module, _input_stats(args[0])))
             for m in _norm_layers(model)]
    try:
        yield stats
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def batch_stats_as_constants(model: nn.Module, stats: BatchStats | None = None):
    """Batch-norm layers normalise with batch statistics held constant: the training batch's when
    ``stats`` holds them, else the current input's; the running statistics stay untouched. Works for
    timm's fused BatchNormAct layers, which read the same buffers. (Not for the feedback penalty: see
    ``frozen_norm_stats``.)"""
    norms = _norm_layers(model)
    saved = [(m, m.training, m.running_mean, m.running_var) for m in norms]

    def use_batch_stats(module, args):
        mean, var = stats[module] if stats else _input_stats(args[0])
        module._buffers["running_mean"], module._buffers["running_var"] = mean, var

    hooks = [m.register_forward_pre_hook(use_batch_stats) for m in norms]
    for m in norms:
        m.training = False
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m, training, mean, var in saved:
            m.training = training
            m._buffers["running_mean"], m._buffers["running_var"] = mean, var


def summed_log_prob(logits: torch.Tensor) -> torch.Tensor:
    """Per-image Σ_k log p_k = Σ_k z_k − K·logsumexp(z), the score whose input gradient RRR penalises.
    Written out (not log_softmax or logsumexp, whose forward-mode derivatives cannot be differentiated
    again) so that the ``jvp`` penalty can backpropagate through its tangent."""
    z = logits.float()
    top = z.detach().amax(dim=1, keepdim=True)
    log_sum_exp = top[:, 0] + (z - top).exp().sum(1).log()
    return z.sum(1) - z.shape[1] * log_sum_exp


def input_gradient(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """∂ Σ_k log p_k / ∂x for each image (only the input gradient; no parameter gradients)."""
    x = x.detach().requires_grad_(True)
    score = summed_log_prob(model(x)).sum()
    (g,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return g


def area_scale(x: torch.Tensor) -> float:
    return x.shape[-2] * x.shape[-1] / 32 ** 2


def rrr_exact(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        g = input_gradient(model, x, create_graph=True)
        return (mask[:, None] * g.pow(2)).flatten(1).sum(1) * area_scale(x)


def rrr_jvp(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        g = input_gradient(model, x)  # input gradient only: no parameter gradients are computed
        v = mask[:, None] * g
        with forward_ad.dual_level():
            s = summed_log_prob(model(forward_ad.make_dual(x, v)))
            directional = forward_ad.unpack_dual(s).tangent  # g·v, exact, differentiable in θ
    scale = area_scale(x)
    surrogate = 2 * scale * directional
    value = v.pow(2).flatten(1).sum(1) * scale
    return value + surrogate - surrogate.detach()


@dataclass
class Probe:
    """Extra images to forward with the batch, and how their logits become the penalty.

    ``finish(logits)`` returns (penalty per annotated image, logits standing in for the annotated
    images' own: the mean of the two perturbed copies, equal to them up to O(h²))."""
    inputs: torch.Tensor
    finish: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rrr_fd_probe(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, step: float = FD_STEP) -> Probe:
    with frozen_norm_stats(model):
        g = input_gradient(model, x)  # input gradient only: no parameter gradients are computed
    scale = area_scale(x)
    v = mask[:, None] * g
    value = v.pow(2).flatten(1).sum(1) * scale  # Σ W·g², exact (W is 0/1)
    norm = v.flatten(1).norm(dim=1).clamp_min(EPS)
    u = v / norm.view(-1, 1, 1, 1)

    def finish(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plus, minus = logits.chunk(2)
        directional = (summed_log_prob(plus) - summed_log_prob(minus)) * norm / (2 * step)  # ≈ g·v
        surrogate = 2 * scale * directional
        # The value is the exact penalty; the gradient is the finite-difference one.
        return value + surrogate - surrogate.detach(), (plus + minus) / 2

    return Probe(torch.cat([x + step * u, x - step * u]), finish)


def rrr_fd(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
           step: float = FD_STEP) -> torch.Tensor:
    """The finite-difference penalty on its own (the trainer folds the probe into the batch)."""
    probe = rrr_fd_probe(model, x, mask, step)
    with frozen_norm_stats(model):
        return probe.finish(model(probe.inputs))[0]


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


def hint_penalty(model: nn.Module, x: torch.Tensor, relevance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        cam = gradcam_map(model, x, y, create_graph=True)
    known = (relevance >= 0).float()
    error = known * (cam - relevance.clamp_min(0)).pow(2)
    return error.flatten(1).sum(1) / known.flatten(1).sum(1).clamp_min(1)


def attention_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with frozen_norm_stats(model):
        weights = model.attention_map(x)
    covered = F.adaptive_avg_pool2d(mask[:, None], weights.shape[-2:])[:, 0]  # share of each cell forbidden
    return (weights.float() * covered).flatten(1).sum(1)


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


def counterfactual_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(p(x) ‖ p(x̃)) per image, x̃ with the marked pixels replaced by uniform noise in the image's
    range: the prediction must not depend on what is there. Unlike an input-gradient penalty it sees a
    detector that saturates (zero gradient on the region, yet decisive), and it costs one forward."""
    x_tilde = masked(x, mask > 0, fill_values(x, None))
    with frozen_norm_stats(model):
        log_p, log_q = model(torch.cat([x, x_tilde])).float().log_softmax(1).chunk(2)
    return (log_p.exp() * (log_p - log_q)).sum(1)


PenaltyFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PENALTIES: dict[str, dict[str, PenaltyFn]] = {
    "rrr": {"jvp": rrr_jvp, "fd": rrr_fd, "exact": rrr_exact},
    "gradcam": {"jvp": gradcam_penalty, "exact": gradcam_penalty, "fd": gradcam_penalty},
    "hint": {"jvp": hint_penalty, "exact": hint_penalty, "fd": hint_penalty},
    "attention": {"jvp": attention_penalty, "exact": attention_penalty, "fd": attention_penalty},
    "counterfactual": {"jvp": counterfactual_penalty, "exact": counterfactual_penalty, "fd": counterfactual_penalty},
}
PENALTY_IMPLS = ("exact", "jvp", "fd")
USES_RELEVANCE = ("hint",)            # take relevance maps instead of forbidden masks
NEEDS_ATTENTION_HEAD = ("attention",)


# Penalties whose extra passes ride in the main batch's forward and backward.
PROBES: dict[tuple[str, str], Callable[[nn.Module, torch.Tensor, torch.Tensor], Probe]] = {
    ("rrr", "fd"): rrr_fd_probe,
}


def get_penalty(name: str, impl: str) -> PenaltyFn:
    return PENALTIES[name][impl]
