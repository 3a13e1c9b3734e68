"""Explainers: one interface over captum's attribution methods, used for the query queue, for
tracking annotated images over epochs and for evaluation (trainer/evaluate.py).

Every explainer takes images in [0, 1] (N×C×H×W) and the target classes and returns one map per image
(N×H×W, summed over channels), computed with the model in eval mode. Maps are raw; use ``normalise``
for display (divided by the largest magnitude, as the original tool did).

``deeplift``              DeepLIFT (rescale rule) against a baseline: a Gaussian-blurred copy of the
                          image, as the original tool, or black (``--deeplift-baseline blur|zero``).
                          Needs ReLU-family activations as modules (ReLU, LeakyReLU, ELU, Softplus,
                          Sigmoid, Tanh, max-pooling), each used once per forward: captum falls back to
                          plain gradients for GELU/SiLU (ViTs, EfficientNets, ConvNeXts) and for
                          functional activations, so there it is little more than input × gradient.
``saliency``              the signed input gradient of the target logit; any differentiable model.
``input_x_gradient``      input × gradient; any model.
``integrated_gradients``  16-step path integral from black; any model, 16× the cost of ``saliency``.
``gradient_shap``         expected gradients from black and blurred baselines with noise; any model.
``gradcam``               GradCAM at the last feature map, upsampled; CNNs (features N×C×h×w) only.
``occlusion``             grey squares of 1/8 of the side slid by half a square: the change of the
                          target logit; model-agnostic but one forward per position.
``attention``             the weights of the attention-pooling head (``--head attention`` only): what
                          the model actually pools, the same for every class.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .penalty import eval_mode, gradcam_map

Explainer = Callable[..., torch.Tensor]


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


def _captum(method: str):
    def explain(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: str = "blur") -> torch.Tensor:
        import captum.attr as ca

        with eval_mode(model):
            x = x.detach().clone().requires_grad_(True)
            if method == "deeplift":
                with warnings.catch_warnings():  # captum announces its temporary hooks on every call
                    warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
                    a = ca.DeepLift(model).attribute(x, baselines=DEEPLIFT_BASELINES[baseline](x.detach()),
                                                     target=target)
            elif method == "saliency":
                a = ca.Saliency(model).attribute(x, target=target, abs=False)
            elif method == "input_x_gradient":
                a = ca.InputXGradient(model).attribute(x, target=target)
            elif method == "integrated_gradients":
                a = ca.IntegratedGradients(model).attribute(
                    x, baselines=torch.zeros_like(x), target=target, n_steps=16, internal_batch_size=64)
            elif method == "gradient_shap":
                baselines = torch.stack([torch.zeros_like(x[0]), blurred(x[:1].detach())[0]])
                a = ca.GradientShap(model).attribute(x, baselines=baselines, target=target, n_samples=8, stdevs=0.05)
            elif method == "occlusion":
                side = max(2, x.shape[-1] // 8)
                a = ca.Occlusion(model).attribute(
                    x, sliding_window_shapes=(x.shape[1], side, side), strides=(x.shape[1], side // 2, side // 2),
                    target=target, baselines=0.5, perturbations_per_eval=16)
            else:  # pragma: no cover - registry and dispatch are written together
                raise KeyError(method)
        return a.detach().sum(1)
    return explain


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        return gradcam_map(model, x, target, create_graph=False).detach()


@torch.no_grad()
def attention(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with eval_mode(model):
        w = model.attention_map(x).float()
    return F.interpolate(w[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


EXPLAINERS: dict[str, Explainer] = {
    "deeplift": _captum("deeplift"),
    "saliency": _captum("saliency"),
    "input_x_gradient": _captum("input_x_gradient"),
    "integrated_gradients": _captum("integrated_gradients"),
    "gradient_shap": _captum("gradient_shap"),
    "occlusion": _captum("occlusion"),
    "gradcam": gradcam,
    "attention": attention,
}
NEEDS_ATTENTION_HEAD = ("attention",)


def explain(name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 32,
            deeplift_baseline: str = "blur") -> torch.Tensor:
    fn = EXPLAINERS[name]
    options = {"baseline": deeplift_baseline} if name == "deeplift" else {}
    return torch.cat([fn(model, x[i:i + batch_size], target[i:i + batch_size], **options)
                      for i in range(0, len(x), batch_size)])


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map by its largest magnitude, keeping the sign: values in [-1, 1]."""
    scale = maps.abs().flatten(1).amax(1).clamp_min(1e-12)
    return maps / scale.view(-1, 1, 1)


def wrong_reason_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the absolute attribution mass that falls inside each mask (the "wrong reason")."""
    mass = maps.abs().flatten(1)
    return (mass * masks.flatten(1).float()).sum(1) / mass.sum(1).clamp_min(1e-12)
