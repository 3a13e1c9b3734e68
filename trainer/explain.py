"""Explainers: one interface over captum's attribution methods, used for the query queue, for
tracking annotated images over epochs and for evaluation (trainer/evaluate.py).

Each explainer is a class in captum's shape, registered by name in ``EXPLAINERS``: the model in the
constructor, ``attribute(x, target)`` for images in [0, 1] (N×C×H×W) and their target classes, one map
per image back (N×H×W, summed over channels), computed with the model in eval mode. Maps are raw; use
``normalise`` for display (divided by the largest magnitude, as the original tool did). The CLI's
``--saliency`` choices, ``hitl-evaluate --explainers`` and docs/usage.md's table come from the registry.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .modes import eval_mode

EPS = 1e-12


class Explainer(ABC):
    """Attribution maps of ``model``'s predictions, ``batch_size`` images at a time."""

    name: ClassVar[str]
    summary: ClassVar[str]                       # one line for --help and docs/usage.md
    needs_attention_head: ClassVar[bool] = False  # only with --head attention

    def __init__(self, model: nn.Module, batch_size: int = 32):
        self.model, self.batch_size = model, batch_size

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.attribute_batch(x[i:i + self.batch_size], target[i:i + self.batch_size])
                          for i in range(0, len(x), self.batch_size)])

    @abstractmethod
    def attribute_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The maps of one batch."""


EXPLAINERS: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    EXPLAINERS[cls.name] = cls
    return cls


def create_explainer(name: str, model: nn.Module, deeplift_baseline: str = "blur", batch_size: int = 32) -> Explainer:
    """The explainer ``name`` on ``model``; ``deeplift_baseline`` (--deeplift-baseline) reaches DeepLIFT alone."""
    cls = EXPLAINERS[name]
    if cls is DeepLift:
        return DeepLift(model, deeplift_baseline, batch_size)
    return cls(model, batch_size)


def blurred(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian-blurred copy, the original tool's DeepLIFT baseline (sigma ≈ 1/20 of the image)."""
    sigma = sigma or max(1.0, x.shape[-1] / 20)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


DEEPLIFT_BASELINES = {"blur": blurred, "zero": torch.zeros_like}


class CaptumExplainer(Explainer):
    """A captum attribution method on a copy of the images that requires grad, in eval mode."""

    def attribute_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            x = x.detach().clone().requires_grad_(True)
            a = self.captum_attribute(x, target)
        return a.detach().sum(1)

    @abstractmethod
    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """captum's N×C×H×W attribution (captum is imported here: a CLI's --help need not load it)."""


@register
class DeepLift(CaptumExplainer):
    """DeepLIFT (rescale rule) against a baseline: a Gaussian-blurred copy of the image, as the original
    tool, or black (``--deeplift-baseline blur|zero``). Needs ReLU-family activations as modules (ReLU,
    LeakyReLU, ELU, Softplus, Sigmoid, Tanh, max-pooling), each used once per forward: captum falls back
    to plain gradients for GELU/SiLU (ViTs, EfficientNets, ConvNeXts) and for functional activations, so
    there it is little more than input × gradient."""

    name = "deeplift"
    summary = ("DeepLIFT against a blurred copy of the image (as the original tool) or black "
               "(`--deeplift-baseline`); ReLU-family networks")

    def __init__(self, model: nn.Module, baseline: str = "blur", batch_size: int = 32):
        super().__init__(model, batch_size)
        self.baseline = DEEPLIFT_BASELINES[baseline]

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        with warnings.catch_warnings():  # captum announces its temporary hooks on every call
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return ca.DeepLift(self.model).attribute(x, baselines=self.baseline(x.detach()), target=target)


@register
class Saliency(CaptumExplainer):
    name = "saliency"
    summary = "the signed input gradient of the target logit; any differentiable model"

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        return ca.Saliency(self.model).attribute(x, target=target, abs=False)


@register
class InputXGradient(CaptumExplainer):
    name = "input_x_gradient"
    summary = "input × gradient; any model"

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        return ca.InputXGradient(self.model).attribute(x, target=target)


@register
class IntegratedGradients(CaptumExplainer):
    name = "integrated_gradients"
    summary = "16-step path integral from black; any model, 16× the cost of saliency"

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        return ca.IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=16, internal_batch_size=64)


@register
class GradientShap(CaptumExplainer):
    name = "gradient_shap"
    summary = "expected gradients from black and blurred baselines with noise; any model"

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        baselines = torch.stack([torch.zeros_like(x[0]), blurred(x[:1].detach())[0]])
        return ca.GradientShap(self.model).attribute(x, baselines=baselines, target=target, n_samples=8, stdevs=0.05)


@register
class Occlusion(CaptumExplainer):
    name = "occlusion"
    summary = ("grey squares of 1/8 of the side slid by half a square: the change of the target logit; "
               "model-agnostic, one forward per position")

    def captum_attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import captum.attr as ca

        side = max(2, x.shape[-1] // 8)
        return ca.Occlusion(self.model).attribute(
            x, sliding_window_shapes=(x.shape[1], side, side), strides=(x.shape[1], side // 2, side // 2),
            target=target, baselines=0.5, perturbations_per_eval=16)


def gradcam_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """GradCAM of ``target`` upsampled to the image, normalised per image to [0, 1]. ``create_graph``:
    differentiable in the parameters, for the gradcam and hint penalties."""
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


@register
class GradCAM(Explainer):
    name = "gradcam"
    summary = "GradCAM at the last feature map, upsampled; CNNs (features N×C×h×w) only"

    def attribute_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            return gradcam_map(self.model, x, target, create_graph=False).detach()


@register
class Attention(Explainer):
    name = "attention"
    summary = "the attention-pooling head's weights: what the model actually pools, the same for every class"
    needs_attention_head = True

    @torch.no_grad()
    def attribute_batch(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            w = self.model.attention_map(x).float()
        return F.interpolate(w[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its largest magnitude, keeping the sign: values in [-1, 1]."""
    scale = maps.abs().flatten(1).amax(1).clamp_min(1e-12)
    return maps / scale.view(-1, 1, 1)


def wrong_reason_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the absolute attribution mass that falls inside each mask (the "wrong reason")."""
    mass = maps.abs().flatten(1)
    return (mass * masks.flatten(1).float()).sum(1) / mass.sum(1).clamp_min(1e-12)
