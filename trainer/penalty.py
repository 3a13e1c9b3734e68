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
                       max-pool choice, SiLU/GELU slope, squeeze-excite product) is linearised at the
                       image's own activations and whose batch-norm uses the batch's statistics
                       without the probes (``linearised_probes``), so the logits' difference is J·v
                       exactly, whatever h: no second-order autograd, no kinks crossed (a plain finite
                       difference, as in Finlay & Oberman 2019, crosses ReLU and max-pool kinks and is
                       a different gradient: cosine 0.3–0.8 with ``exact``). One extra image per
                       annotated one, first-order kernels only; parameter-gradient cosine with
                       ``exact`` 0.9999+ on hitl_cnn, resnet18 and efficientnet_b0/b1.
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
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from timm.models._efficientnet_blocks import SqueezeExcite
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops.misc import SqueezeExcitation

EPS = 1e-12

# The probe's step along v. Through the linearised network the probe's logits move by exactly h·J·v̂,
# so only float32 rounding limits a long step's accuracy... and a short one's: the backward meets
# gradients of ±1/h in the same sums (batch-norm's, the weights'), so a score change of 0.01 leaves
# cosine ≈ 0.6 with ``exact`` on efficientnet_b1, 0.1 leaves 0.98, 1 or more 0.9999+. A step is
# long here when non-linearities the linearisation cannot see (functions inside a model's forward)
# would start to bend. FD_MAX_STEP bounds it, in [0, 1] pixel units (L2 per image), where the
# gradient inside the mask is nearly zero.
FD_SCORE_CHANGE = 1.0
FD_MAX_STEP = 10.0


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
    """Per-channel mean and (biased) variance, by batch-norm's own kernel: on CPU it collects them in
    a third of ``var_mean``'s time over (N, H, W). With eps 0 its σ⁻¹ is var^-½, and 0 for a constant
    channel."""
    _, mean, invstd = torch.ops.aten.native_batch_norm(x.detach().float(), None, None, None, None, True, 0.0, 0.0)
    return mean, torch.where(invstd > 0, invstd.pow(-2), 0.0)


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


# Batch-norm layers whose forward is the plain normalisation (then, for timm's, drop and act modules).
_PROBE_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNormAct2d)

# Blocks whose forward is x * gate(...), by the attribute that holds the gate.
_SQUEEZE_EXCITE_GATES = {SqueezeExcite: "gate", SEModule: "gate", EffectiveSEModule: "gate",
                         SqueezeExcitation: "scale_activation"}


def _probe_rows(a: torch.Tensor, n: int) -> tuple[slice, slice]:
    """The images' rows and their probes' rows: the batch's last 2n rows, n of each."""
    return slice(len(a) - 2 * n, len(a) - n), slice(len(a) - n, len(a))


class _ProbeBatchNorm(torch.autograd.Function):
    """Train-mode batch-norm whose statistics (and running-statistics update) come from the batch
    without its last ``n`` rows: each probe is normalised as its image, y_p = y_i + (a_p − a_i)·γσ⁻¹, so
    probes neither shift the statistics the cross-entropy sees nor add an O(step) error to J·v. The
    statistics still carry the gradient in θ. One batch-norm kernel each way (the backward's in eval
    mode) plus one affine pass over the batch rows for what the statistics add."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                module: nn.modules.batchnorm._BatchNorm, n: int) -> torch.Tensor:
        size, (image, probe) = len(a) - n, _probe_rows(a, n)
        factor = 0.0 if module.momentum is None else module.momentum
        if module.track_running_stats and module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            if module.momentum is None:
                factor = 1.0 / float(module.num_batches_tracked)
        out, mean, invstd = torch.empty_like(a), a.new_empty(a.shape[1]), a.new_empty(a.shape[1])
        torch.ops.aten.native_batch_norm.out(a[:size], weight, bias, module.running_mean, module.running_var, True,
                                             factor, module.eps, out=out[:size], save_mean=mean, save_invstd=invstd)
        scale = invstd if weight is None else weight * invstd
        torch.addcmul(out[image], a[probe] - a[image], _per_channel(scale, a), out=out[probe])
        ctx.save_for_backward(a, weight, mean, invstd)
        ctx.n, ctx.eps, ctx.has_bias = n, module.eps, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, weight, mean, invstd = ctx.saved_tensors
        size = len(a) - ctx.n
        count = a[:size].numel() // a.shape[1]
        # With the statistics held constant (eval mode's backward), every row's gradient is grad·γσ⁻¹,
        # the probes' exact, and the weight and bias gradients Σ grad·x̂ and Σ grad over all rows (a
        # probe's x̂ is its own, (a_p − μ)σ⁻¹) are exact too. What the statistics add reaches the batch
        # rows only: −γσ⁻¹(Σ grad + x̂·Σ grad·x̂)/M, the usual train-mode term but with the sums over the
        # probes as well (they are normalised by the same statistics) and M counting the batch alone.
        grad_a, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad, a, weight, mean, invstd.pow(-2) - ctx.eps, None, None, False, ctx.eps, [True, True, True])
        scale = invstd if weight is None else weight * invstd
        slope = -scale * invstd * grad_weight / count
        offset = -scale * grad_bias / count - slope * mean
        grad_a[:size].addcmul_(a[:size], _per_channel(slope, a)).add_(_per_channel(offset, a))
        return (grad_a, grad_weight if weight is not None else None,
                grad_bias if ctx.has_bias else None, None, None)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view((1, -1) + (1,) * (like.dim() - 2))


class _ProbeReLU(torch.autograd.Function):
    """ReLU over the whole batch, its last ``n`` rows gated as the ``n`` rows before them. One ReLU
    kernel each way plus the probe rows gated by their images' outputs (threshold_backward is "pass
    where the other tensor is positive": a tenth of the cost of ``where`` on CPU), so linearising costs
    the plain batch nearly nothing."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, n: int) -> torch.Tensor:
        image, probe = _probe_rows(a, n)
        out = torch.relu(a)
        torch.ops.aten.threshold_backward.grad_input(a[probe], out[image], 0, grad_input=out[probe])
        ctx.save_for_backward(out)
        ctx.n = n
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        image, probe = _probe_rows(out, ctx.n)
        grad_in = torch.ops.aten.threshold_backward(grad, out, 0)
        torch.ops.aten.threshold_backward.grad_input(grad[probe], out[image], 0, grad_input=grad_in[probe])
        return grad_in, None


class _ProbeMaxPool(torch.autograd.Function):
    """``nn.MaxPool2d`` over the whole batch, its last ``n`` rows taking the positions their images
    chose: the probes' indices are the images', and max-pool's own backward scatters through them."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, module: nn.MaxPool2d, n: int) -> torch.Tensor:
        image, probe = _probe_rows(a, n)
        ctx.args = (*(_pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation)),
                    module.ceil_mode)
        out, idx = torch.ops.aten.max_pool2d_with_indices(a, *ctx.args)
        idx[probe] = idx[image]
        out[probe] = a[probe].flatten(2).gather(2, idx[probe].flatten(2)).view_as(out[probe])
        ctx.save_for_backward(a, idx)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, a, *ctx.args, idx), None, None


@contextmanager
def linearised_probes(model: nn.Module, n: int):
    """The batch's last ``n`` rows are probes of the ``n`` rows before them (their images). Through
    every ReLU, max-pool, element-wise activation and squeeze-excite module, a probe follows the
    linearisation of the network at its image: the ReLU gate and max-pool choice of the image, the
    activation's slope there; train-mode batch-norm normalises the probes as their images, with the
    statistics of the batch without them. The probe's logits minus the image's are then
    J·(probe − image) exactly, and the other rows come out as they would without probes.
    (Non-linearities written as functions in a model's forward are not seen, and stay an ordinary
    finite difference.)"""

    def smooth(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        image, probe = (args[0][r] for r in _probe_rows(args[0], n))
        with torch.enable_grad():
            at = image if image.requires_grad else image.detach().requires_grad_(True)
            value = module.forward(at)
            (slope,) = torch.autograd.grad(value.sum(), at, create_graph=image.requires_grad)
        return torch.cat([out[:len(out) - n], value + slope * (probe - image)])

    def batch_norm(module: nn.modules.batchnorm._BatchNorm, a: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return type(module).forward(module, a)
        out = _ProbeBatchNorm.apply(a, module.weight, module.bias, module, n)
        return module.act(module.drop(out)) if isinstance(module, BatchNormAct2d) else out

    hooks, replaced, was_inplace = [], [], []
    for m in model.modules():
        if type(m) in _PROBE_BATCH_NORMS:
            m.forward = lambda a, m=m: batch_norm(m, a)
            replaced.append(m)
        elif type(m) is nn.ReLU:
            m.forward = lambda a: _ProbeReLU.apply(a, n)
            replaced.append(m)
        elif type(m) is nn.MaxPool2d:
            m.forward = lambda a, m=m: _ProbeMaxPool.apply(a, m, n)
            replaced.append(m)
        elif isinstance(m, SMOOTH_ACTIVATIONS):
            if getattr(m, "inplace", False):
                was_inplace.append(m)
                m.inplace = False
            hooks.append(m.register_forward_hook(smooth))
    # A squeeze-excite block multiplies two probed values, x and its gate s(x): the probe's output gets
    # the cross term (x_p − x_i)(s_p − s_i) on top of the linearisation x_p·s_i + x_i·(s_p − s_i).
    gates: dict[nn.Module, torch.Tensor] = {}

    def gated_product(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x, s = args[0], gates.pop(module)
        image, probe = _probe_rows(x, n)
        return torch.cat([out[:len(out) - n], out[probe] - (x[probe] - x[image]) * (s[probe] - s[image])])

    for m in model.modules():
        gate = getattr(m, _SQUEEZE_EXCITE_GATES.get(type(m), ""), None)
        if gate is not None:  # after the gate's own linearisation, so its output is the linearised one
            hooks.append(gate.register_forward_hook(lambda g, args, out, m=m: gates.__setitem__(m, out)))
            hooks.append(m.register_forward_hook(gated_product))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        for m in replaced:
            del m.forward
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


def resolve_impl(impl: str, device_type: str) -> str:
    """``auto`` (the default): ``exact`` on CPU, ``fd`` on CUDA. On CPU double backpropagation costs
    a little more than the probe with a tenth of a batch annotated (1.5× a plain step against 1.3×), and
    there it taught more: with part of a batch annotated, fd's Jacobian sees the whole batch's
    batch-norm statistics where ``exact`` and v see the annotated images' (bench/, penalties). On CUDA
    double backpropagation costs 4–30× a plain step (depthwise convolutions, batch-norm)."""
    if impl == "auto":
        return "fd" if device_type == "cuda" else "exact"
    return IMPL_ALIASES.get(impl, impl)


USES_RELEVANCE = ("hint",)            # take relevance maps instead of forbidden masks
NEEDS_ATTENTION_HEAD = ("attention",)


# Penalties whose extra passes ride in the main batch's forward and backward.
PROBES: dict[tuple[str, str], Callable[[nn.Module, torch.Tensor, torch.Tensor], Probe]] = {
    ("rrr", "fd"): rrr_fd_probe,
    **{("counterfactual", impl): counterfactual_probe for impl in PENALTY_IMPLS},
}


def get_penalty(name: str, impl: str) -> PenaltyFn:
    """The penalty ``name`` as ``impl`` computes it (a resolved implementation: see ``resolve_impl``)."""
    return PENALTIES[name][impl]
