"""Feedback penalties: how a person's mask reaches the weights.

Each penalty is a class in captum's shape, registered by name in ``PENALTIES``: the model in the
constructor, ``penalty(x, masks, y)`` the value per annotated image, on their own pass; the trainer adds
λ × their mean to the loss. A penalty with a probe (``has_probe``) can instead ride in the main batch:
``penalty.probe(x, masks)`` returns the images to forward in place of the annotated ones and how their
logits become the penalty, so the penalty and the cross-entropy share one forward and one backward.
Its properties are class attributes (``uses_relevance``, ``needs_attention_head``, ``has_probe``, the
``implementation`` of a penalty that has several); the CLI's choices, the bench's variants and the
table in docs/usage.md come from the registry.

All penalties run on the annotated images of a batch only, in the same mode as the cross-entropy
(train mode) but without updating batch-norm running statistics. (Penalising the eval-mode model
instead lets training satisfy the penalty by breaking the eval-mode network, whose statistics differ
from the batch statistics the cross-entropy sees: validation accuracy collapsed to chance.)

Normalisation, so that one λ (default 10) serves every model and image size: ``gradcam``, ``hint``
and ``attention`` are in [0, 1] by construction (GradCAM divided by its maximum, a mean over
pixels, or a share of weights summing to 1), whatever the network's scale or the image's area;
``counterfactual`` compares two predictions, whatever the image's size; ``rrr`` is scaled by the
area (see ``RightReasons``).

A mask is a float H×W tensor W: 1 where the model must not look. Pixels outside a "relevant" region
count as forbidden too (the trainer builds W), so "look here" feedback uses the same mechanism.
A penalty that ``uses_relevance`` (``hint``) takes relevance maps instead
(FeedbackSet.lookup(..., relevance=True)): 1 relevant, 0 must not matter, −1 unmarked.

``--penalty-impl`` picks among a penalty's implementations (only ``rrr`` has two); ``auto``, the
default, is ``exact`` on CPU and ``linearised`` on CUDA (``resolve_impl``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .explain import gradcam_map
from .inputs import fill_values, input_gradient, masked, summed_log_prob
from .linearised import linearised_probes
from .modes import batch_stats_as_constants, frozen_norm_stats

EPS = 1e-12


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


class Penalty(ABC):
    """A feedback penalty on ``model``: ``penalty(x, masks, y)``, one value per annotated image."""

    name: ClassVar[str]
    summary: ClassVar[str]                        # one line for --help and docs/usage.md
    implementation: ClassVar[str | None] = None   # None: the penalty's only one, whatever --penalty-impl says
    implementations: ClassVar[dict[str, type[Penalty]]] = {}  # a penalty with several: by name (register fills it)
    uses_relevance: ClassVar[bool] = False        # takes relevance maps instead of forbidden masks
    needs_attention_head: ClassVar[bool] = False  # only with --head attention
    has_probe: ClassVar[bool] = False             # ``probe`` rides in the main batch

    def __init__(self, model: nn.Module):
        self.model = model

    @abstractmethod
    def __call__(self, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The penalty per image, on its own pass."""


class ProbePenalty(Penalty):
    """A penalty whose extra images ride in the main batch (``probe``); called on its own, it forwards
    them in a pass of their own."""

    has_probe = True

    @abstractmethod
    def probe(self, x: torch.Tensor, masks: torch.Tensor) -> Probe:
        """The images to forward in place of the annotated ones, and how the penalty follows."""

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probe = self.probe(x, masks)
        with frozen_norm_stats(self.model), probe.context(self.model):
            return probe.finish(self.model(probe.inputs))[0]


PENALTIES: dict[str, type[Penalty]] = {}   # by name: the penalty (its reference implementation)
IMPL_ALIASES = {"fd": "linearised", "jvp": "linearised"}  # names old runs' config.json may hold


def register(cls: type[Penalty]) -> type[Penalty]:
    """A new penalty by its name, or (a subclass with the same name) another implementation of one."""
    if cls.name not in PENALTIES:
        PENALTIES[cls.name] = cls
        cls.implementations = {} if cls.implementation is None else {cls.implementation: cls}
    else:
        PENALTIES[cls.name].implementations[cls.implementation] = cls
    return cls


def implementation_names() -> list[str]:
    """Every implementation any penalty has (the choices of --penalty-impl besides ``auto``)."""
    return sorted({impl for cls in PENALTIES.values() for impl in cls.implementations})


def resolve_impl(impl: str, device_type: str) -> str:
    """``auto`` (the default): ``exact`` on CPU, ``linearised`` on CUDA. On CPU double backpropagation
    costs a little more than the probe with a tenth of a batch annotated (1.5× a plain step against
    1.3×), and there it taught more: with part of a batch annotated, the linearised probe's Jacobian
    sees the whole batch's batch-norm statistics where ``exact`` and v see the annotated images' (bench/,
    penalties). On CUDA double backpropagation costs 4–30× a plain step (depthwise convolutions,
    batch-norm). Old names (``fd``, ``jvp``) resolve to ``linearised``."""
    if impl == "auto":
        return "linearised" if device_type == "cuda" else "exact"
    impl = IMPL_ALIASES.get(impl, impl)
    known = implementation_names()
    if impl not in known:
        raise ValueError(f"unknown penalty implementation {impl!r}; choose from auto, {', '.join(known)}")
    return impl


def penalty_class(name: str, impl: str) -> type[Penalty]:
    """The penalty ``name`` as ``impl`` computes it (a resolved implementation: see ``resolve_impl``);
    a penalty with one implementation ignores ``impl``."""
    cls = PENALTIES[name]
    return cls.implementations[impl] if cls.implementations else cls


def area_scale(x: torch.Tensor) -> float:
    return x.shape[-2] * x.shape[-1] / 32 ** 2


@register
class RightReasons(Penalty):
    """Right for the Right Reasons (Ross et al. 2017): the input-gradient energy of the summed
    log-probabilities inside the mask, Σ_chw W·g², scaled by the image area over 32² so the default λ
    carries across image sizes (a pooled CNN's per-pixel gradient shrinks as 1/area, so Σ W·g² over a
    fixed share of the image shrinks as 1/area too). (A share A/Σg² or a per-image normalisation looks
    scale-free but teaches far less: the model keeps its shortcut and raises the gradient energy
    elsewhere.)

    Each image's input gradient is its own: in train mode the batch-norm statistics count as constants
    in x (as in eval mode, and in the saliency the person sees), though the parameter gradient still
    flows through them. (Differentiating through the statistics mixes the other images' scores into each
    gradient; holding them constant in θ as well lets the penalty shrink the weights in front of each
    batch-norm, which breaks Adam.)

    This class is the reference implementation, ``exact``: double backpropagation (create_graph=True).
    Each image rides in the batch twice, at x + δ and x − δ, and the gradient is taken of half their
    scores' difference at δ = 0: the batch statistics see +δ − δ, so they are constant in x, while the
    second backward still differentiates them in θ. ``LinearisedRightReasons`` is the other; bench/
    measures both."""

    name = "rrr"
    summary = "input-gradient energy inside the forbidden marks (Right for the Right Reasons)"
    implementation = "exact"

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_norm_stats(self.model):
            delta = torch.zeros_like(x, requires_grad=True)
            plus, minus = summed_log_prob(self.model(torch.cat([x + delta, x - delta]))).chunk(2)
            (g,) = torch.autograd.grad((plus - minus).sum() / 2, delta, create_graph=True)
        return (masks[:, None] * g.pow(2)).flatten(1).sum(1) * area_scale(x)


# The probe's step along v. Through the linearised network the probe's logits move by exactly h·J·v̂,
# so only float32 rounding limits a long step's accuracy... and a short one's: the backward meets
# gradients of ±1/h in the same sums (batch-norm's, the weights'), so a score change of 0.01 leaves
# cosine ≈ 0.6 with ``exact`` on efficientnet_b1, 0.1 leaves 0.98, 1 or more 0.9999+. A step is
# long here when non-linearities the linearisation cannot see (functions inside a model's forward)
# would start to bend. PROBE_MAX_STEP bounds it, in [0, 1] pixel units (L2 per image), where the
# gradient inside the mask is nearly zero.
PROBE_SCORE_CHANGE = 1.0
PROBE_MAX_STEP = 10.0


def own_input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``input_gradient`` of each image on its own: in train mode with the batch statistics held
    constant, so that no other image of the batch enters it. A direction, not differentiated again."""
    with batch_stats_as_constants(model) if model.training else nullcontext():
        return input_gradient(model, x)


@register
class LinearisedRightReasons(ProbePenalty, RightReasons):
    """``rrr`` by the linearised probe (trainer/linearised.py), first order only; ``fd`` in runs
    written before it was named for what it is.

    ∇θ Σ W·g² = 2∇θ(g·v) with v = W⊙g held fixed, and g·v = ∂s/∂z · J·v, where J·v is the logits'
    change along v. Each annotated image rides in the main batch with a probe copy x + h·v/‖v‖ through
    the network linearised at the image, so the logits' difference is J·v exactly, whatever h: no
    second-order autograd, no kinks crossed. One extra image per annotated one, first-order kernels
    only; parameter-gradient cosine with ``exact`` 0.9999+ on hitl_cnn, resnet18 and
    efficientnet_b0/b1."""

    implementation = "linearised"

    def probe(self, x: torch.Tensor, masks: torch.Tensor) -> Probe:
        g = own_input_gradient(self.model, x)
        scale = area_scale(x)
        v = masks[:, None] * g
        value = v.pow(2).flatten(1).sum(1) * scale  # Σ W·g², exact (W is 0/1)
        norm = v.flatten(1).norm(dim=1).clamp_min(EPS)
        step = (PROBE_SCORE_CHANGE / norm).clamp_max(PROBE_MAX_STEP)  # g·(step·v/‖v‖) = step·‖v‖

        def finish(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            own, probe = logits.float().chunk(2)
            jv = (probe - own) * (norm / step).view(-1, 1)                   # J·v, the logits' change along v
            directional = ((1 - own.shape[1] * own.softmax(1)) * jv).sum(1)  # g·v = ∂s/∂z · J·v
            surrogate = 2 * scale * directional
            # The value is the exact penalty; the gradient is 2∇θ(g·v).
            return value + surrogate - surrogate.detach(), logits[:len(x)]

        probes = x + (step / norm).view(-1, 1, 1, 1) * v
        return Probe(torch.cat([x, probes]), finish, context=partial(linearised_probes, n=len(x)),
                     full_precision=True)


@register
class GradCAMPenalty(Penalty):
    """The normalised GradCAM map of the true class inside the mask (mean over masked pixels); double
    backpropagation only through the head, so cheap."""

    name = "gradcam"
    summary = "the normalised GradCAM map inside the forbidden marks"

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_norm_stats(self.model):
            cam = gradcam_map(self.model, x, y, create_graph=True)
            return (masks * cam).flatten(1).sum(1) / (masks.flatten(1).sum(1) + EPS)


@register
class Hint(Penalty):
    """HINT (Selvaraju et al. 2019) as the XIL typology simplifies it: the normalised GradCAM map
    should be 1 on pixels marked relevant and 0 where the image must not matter; the mean squared error
    over the pixels the person spoke about. Unlike the others it rewards the relevant region itself.
    Without relevant marks it pushes GradCAM off the forbidden region (as ``gradcam``, squared), so the
    simulated annotator works with it too."""

    name = "hint"
    summary = "GradCAM fitted to the marks, 1 on relevant regions and 0 on forbidden ones"
    uses_relevance = True

    def __call__(self, x: torch.Tensor, relevance: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_norm_stats(self.model):
            cam = gradcam_map(self.model, x, y, create_graph=True)
        known = (relevance >= 0).float()
        error = known * (cam - relevance.clamp_min(0)).pow(2)
        return error.flatten(1).sum(1) / known.flatten(1).sum(1).clamp_min(1)


@register
class AttentionPenalty(Penalty):
    """The attention head's weight on the forbidden region: the share of the pooled evidence taken from
    there. One forward, no second-order terms."""

    name = "attention"
    summary = "the attention head's weight inside the forbidden marks"
    needs_attention_head = True

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with frozen_norm_stats(self.model):
            weights = self.model.attention_map(x)
        covered = F.adaptive_avg_pool2d(masks[:, None], weights.shape[-2:])[:, 0]  # share of each cell forbidden
        return (weights.float() * covered).flatten(1).sum(1)


@register
class Counterfactual(ProbePenalty):
    """KL(p(x) ‖ p(x̃)) per image, x̃ with the marked pixels replaced by uniform noise in the image's
    range: the prediction must not depend on what is there. Unlike an input-gradient penalty it sees a
    detector that saturates (zero gradient on the region, yet decisive). x̃ rides in the main batch
    next to x, so the penalty costs one more image in the forward and backward, nothing second-order:
    the cheap penalty that teaches at least as well as ``rrr`` (bench/, penalties)."""

    name = "counterfactual"
    summary = "the prediction must not change when the marked pixels are replaced by noise"

    def probe(self, x: torch.Tensor, masks: torch.Tensor) -> Probe:
        x_tilde = masked(x, masks > 0, fill_values(x, None))

        def finish(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            own, tilde = logits.chunk(2)
            log_p, log_q = own.float().log_softmax(1), tilde.float().log_softmax(1)
            return (log_p.exp() * (log_p - log_q)).sum(1), own

        return Probe(torch.cat([x, x_tilde]), finish)
