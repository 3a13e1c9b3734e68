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
             Each image's input gradient is its own: in train mode the batch-norm statistics count
             as constants in x (as in eval mode, and in the saliency the person sees), though the
             parameter gradient still flows through them. (Differentiating through the statistics
             mixes the other images' scores into each gradient; holding them constant in θ as well
             lets the penalty shrink the weights in front of each batch-norm, which breaks Adam.)
             Two implementations (``--penalty-impl``), measured in bench/:
             ``exact`` double backpropagation (create_graph=True), the reference;
             ``fd``    the default. ∇θ Σ W·g² = 2∇θ(g·v) with v = W⊙g held fixed, and g·v = ∂s/∂z · J·v,
                       where J·v is the logits' change along v. Each annotated image rides in the main
                       batch with a probe copy x + h·v/‖v‖ whose every non-linearity (ReLU gate,
                       max-pool choice, SiLU/GELU slope) is linearised at the image's own activations
                       (``linearised_probes``), so the logits' difference is J·v exactly, whatever h:
                       no second-order autograd, no kinks crossed (a plain finite difference, as in
                       Finlay & Oberman 2019, crosses ReLU and max-pool kinks and is a different
                       gradient: cosine 0.3–0.8 with ``exact``). One extra image per annotated one,
                       first-order kernels only.
``gradcam``  the normalised GradCAM map of the true class inside the mask (mean over masked pixels);
             double backpropagation only through the head, so cheap.
``hint``     HINT (Selvaraju et al. 2019) as the XIL typology simplifies it: the normalised GradCAM
             map should be 1 on pixels marked relevant and 0 where the image must not matter; the
             mean squared error over the pixels the person spoke about. Unlike the others it rewards
             the relevant region itself. Without relevant marks it pushes GradCAM off the forbidden
             region (as ``gradcam``, squared), so the simulated annotator works with it too.
``attention`` the attention head's weight on the forbidden region (``--head attention`` only):
             the share of the pooled evidence taken from there. One forward, no second-order terms.
``counterfactual`` KL(p(x) ‖ p(x̃)), x̃ with the forbidden pixels replaced by noise: the prediction
             must not change when the region does. First order, its extra image in the main batch:
             the cheap penalty that teaches at least as well as ``rrr`` (bench/, penalties).

Normalisation, so that one λ (default 10) serves every model and image size: ``gradcam``, ``hint``
and ``attention`` are in [0, 1] by construction (GradCAM divided by its maximum, a mean over
pixels, or a share of weights summing to 1), whatever the network's scale or the image's area;
``counterfactual`` compares two predictions, whatever the image's size; ``rrr`` is scaled by the
area as above.

A mask is a float H×W tensor W: 1 where the model must not look. Pixels outside a "relevant" region
count as forbidden too (the trainer builds W), so "look here" feedback uses the same mechanism.
``hint`` instead takes relevance maps (FeedbackSet.lookup(..., relevance=True)): 1 relevant,
0 must not matter, −1 unmarked.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable

import timm.layers.activations as timm_activations
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12

# The probe's step along v: long enough for the summed log-probability to move by about
# FD_SCORE_CHANGE (so float32 rounding stays far below the difference), short enough that the probes
# barely shift the batch-norm statistics of the batch they ride in, and the second-order terms that
# no linearisation removes (squeeze-excite gates multiplying two probed values) stay small.
# Parameter-gradient cosine with ``exact``: 0.998–1.000 for hitl_cnn, resnet18 and efficientnet_b0
# at 0.1 (0.95 or less at 0.001, from rounding, and at 1, for resnet18). FD_MAX_STEP bounds the step,
# in [0, 1] pixel units (L2 per image), where the gradient inside the mask is nearly zero.
FD_SCORE_CHANGE = 0.1
FD_MAX_STEP = 1.0


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

    Holding the statistics constant in θ as well (detached) was tried and fails: the penalty's
    gradient then shrinks the weights in front of each batch-norm, a direction the real, batch-
    normalised network cannot see, and Adam's effective step grows until training breaks
    (validation accuracy at chance after the first feedback). The rrr penalties hold them constant
    in x only."""
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
    """Per-image Σ_k log p_k, the score whose input gradient RRR penalises."""
    return logits.float().log_softmax(1).sum(1)


def input_gradient(model: nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """∂ Σ_k log p_k / ∂x for each image (only the input gradient; no parameter gradients)."""
    x = x.detach().requires_grad_(True)
    score = summed_log_prob(model(x)).sum()
    (g,) = torch.autograd.grad(score, x, create_graph=create_graph)
    return g


def own_input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``input_gradient`` of each image on its own: in train mode with the batch statistics held
    constant, so that no other image of the batch enters it. A direction, not differentiated again."""
    with batch_stats_as_constants(model) if model.training else nullcontext():
        return input_gradient(model, x)


def area_scale(x: torch.Tensor) -> float:
    return x.shape[-2] * x.shape[-1] / 32 ** 2


def rrr_exact(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each image rides in the batch twice, at x + δ and x − δ, and the gradient is taken of half their
    scores' difference at δ = 0: the batch statistics see +δ − δ, so they are constant in x, while the
    second backward still differentiates them in θ."""
    with frozen_norm_stats(model):
        delta = torch.zeros_like(x, requires_grad=True)
        plus, minus = summed_log_prob(model(torch.cat([x + delta, x - delta]))).chunk(2)
        (g,) = torch.autograd.grad((plus - minus).sum() / 2, delta, create_graph=True)
    return (mask[:, None] * g.pow(2)).flatten(1).sum(1) * area_scale(x)


# Element-wise non-linearities the probe linearises by their slope at the image's own activation.
SMOOTH_ACTIVATIONS = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.SiLU, nn.GELU, nn.Sigmoid,
                      nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus,
                      *(getattr(timm_activations, name) for name in (
                          "GELU", "GELUTanh", "HardMish", "HardSigmoid", "HardSwish", "Mish", "PReLU", "QuickGELU",
                          "Sigmoid", "Swish", "Tanh")))


@contextmanager
def linearised_probes(model: nn.Module, n: int):
    """The batch's last ``n`` rows are probes of the ``n`` rows before them (their images). Through
    every ReLU, max-pool and element-wise activation module, a probe follows the linearisation of the
    network at its image: the ReLU gate and max-pool choice of the image, the activation's slope there.
    The probe's logits minus the image's are then J·(probe − image) exactly. (Non-linearities written
    as functions in a model's forward are not seen, and stay an ordinary finite difference.)"""

    def split(args):
        a = args[0]
        return a[len(a) - 2 * n:len(a) - n], a[len(a) - n:]

    def relu(module, args, out):
        image, probe = split(args)
        return torch.cat([out[:len(out) - n], probe * (image > 0)])

    def smooth(module, args, out):
        image, probe = split(args)
        with torch.enable_grad():
            at = image if image.requires_grad else image.detach().requires_grad_(True)
            value = module.forward(at)
            (slope,) = torch.autograd.grad(value.sum(), at, create_graph=image.requires_grad)
        return torch.cat([out[:len(out) - n], value + slope * (probe - image)])

    def max_pool(module, args, out):
        image, probe = split(args)
        _, idx = F.max_pool2d(image, module.kernel_size, module.stride, module.padding, module.dilation,
                              module.ceil_mode, return_indices=True)
        return torch.cat([out[:len(out) - n], probe.flatten(2).gather(2, idx.flatten(2)).view_as(idx)])

    hooks, was_inplace = [], []
    for m in model.modules():
        hook = (relu if type(m) is nn.ReLU else max_pool if type(m) is nn.MaxPool2d
                else smooth if isinstance(m, SMOOTH_ACTIVATIONS) else None)
        if hook is None:
            continue
        if getattr(m, "inplace", False):
            was_inplace.append(m)
            m.inplace = False
        hooks.append(m.register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in was_inplace:
            m.inplace = True


@contextmanager
def full_precision_convolutions(enabled: bool = True):
    """cuDNN convolutions without TF32, whose 10-bit mantissa would swamp a probe's small difference
    (CPU convolutions are float32 already)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = previous and not enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


@dataclass
class Probe:
    """Images to forward with the batch in place of the annotated ones, and how their logits become
    the penalty.

    ``finish(logits)`` returns (penalty per annotated image, the annotated images' own logits);
    ``context(model)`` is entered around the forward. ``full_precision``: the penalty is a
    difference of nearby outputs that bf16 or TF32 would round away, so the step runs without autocast
    and without TF32 convolutions."""
    inputs: torch.Tensor
    finish: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    context: Callable[[nn.Module], AbstractContextManager] = nullcontext
    full_precision: bool = False


def rrr_fd_probe(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> Probe:
    g = own_input_gradient(model, x)
    scale = area_scale(x)
    v = mask[:, None] * g
    value = v.pow(2).flatten(1).sum(1) * scale  # Σ W·g², exact (W is 0/1)
    norm = v.flatten(1).norm(dim=1).clamp_min(EPS)
    step = (FD_SCORE_CHANGE / norm).clamp_max(FD_MAX_STEP)  # g·(step·v/‖v‖) = step·‖v‖

    def finish(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        own, probe = logits.float().chunk(2)
        jv = (probe - own) * (norm / step).view(-1, 1)                   # J·v, the logits' change along v
        directional = ((1 - own.shape[1] * own.softmax(1)) * jv).sum(1)  # g·v = ∂s/∂z · J·v
        surrogate = 2 * scale * directional
        # The value is the exact penalty; the gradient is 2∇θ(g·v).
        return value + surrogate - surrogate.detach(), logits[:len(x)]

    probes = x + (step / norm).view(-1, 1, 1, 1) * v
    return Probe(torch.cat([x, probes]), finish, context=partial(linearised_probes, n=len(x)), full_precision=True)


def rrr_fd(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The probe penalty on its own (the trainer folds the probe into the batch)."""
    probe = rrr_fd_probe(model, x, mask)
    with frozen_norm_stats(model), probe.context(model):
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


def counterfactual_probe(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> Probe:
    """KL(p(x) ‖ p(x̃)) per image, x̃ with the marked pixels replaced by uniform noise in the image's
    range: the prediction must not depend on what is there. Unlike an input-gradient penalty it sees a
    detector that saturates (zero gradient on the region, yet decisive). x̃ rides in the main batch
    next to x, so the penalty costs one more image in the forward and backward, nothing second-order."""
    x_tilde = masked(x, mask > 0, fill_values(x, None))

    def finish(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        own, tilde = logits.chunk(2)
        log_p, log_q = own.float().log_softmax(1), tilde.float().log_softmax(1)
        return (log_p.exp() * (log_p - log_q)).sum(1), own

    return Probe(torch.cat([x, x_tilde]), finish)


def counterfactual_penalty(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The counterfactual penalty on its own (the trainer folds the probe into the batch)."""
    probe = counterfactual_probe(model, x, mask)
    with frozen_norm_stats(model):
        return probe.finish(model(probe.inputs))[0]


PenaltyFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

PENALTY_IMPLS = ("fd", "exact")
PENALTIES: dict[str, dict[str, PenaltyFn]] = {
    "rrr": {"fd": rrr_fd, "exact": rrr_exact},
    **{name: dict.fromkeys(PENALTY_IMPLS, fn) for name, fn in (
        ("gradcam", gradcam_penalty), ("hint", hint_penalty), ("attention", attention_penalty),
        ("counterfactual", counterfactual_penalty))},
}
# Runs written before ``jvp`` gave way to ``fd`` (the same directional derivative, batched).
IMPL_ALIASES = {"jvp": "fd"}
USES_RELEVANCE = ("hint",)            # take relevance maps instead of forbidden masks
NEEDS_ATTENTION_HEAD = ("attention",)


# Penalties whose extra passes ride in the main batch's forward and backward.
PROBES: dict[tuple[str, str], Callable[[nn.Module, torch.Tensor, torch.Tensor], Probe]] = {
    ("rrr", "fd"): rrr_fd_probe,
    **{("counterfactual", impl): counterfactual_probe for impl in PENALTY_IMPLS},
}


def get_penalty(name: str, impl: str) -> PenaltyFn:
    return PENALTIES[name][IMPL_ALIASES.get(impl, impl)]
