"""The linearised probe: J·v, the logits' change along a direction v, from one extra image in the
batch and first-order kernels only.

The batch's last n rows are probes x + h·v of the n rows before them (their images). Every
non-linearity the probe meets (ReLU gate, max-pool choice, SiLU/GELU slope, squeeze-excite product) is
linearised at its image's own activations, and train-mode batch-norm normalises the probes as their
images, with the statistics of the batch without them, so the probe's logits minus the image's are
J·(probe − image) exactly, whatever h. It is not a finite difference: a plain one (Finlay & Oberman
2019) crosses ReLU and max-pool kinks and gives a different gradient (cosine 0.3–0.8 with double
backpropagation). The rrr penalty's ``linearised`` implementation (trainer/penalty.py) is built on it.

It replaces the ``forward`` of live modules for the duration of a pass, calls aten kernels that
batch-norm, ReLU and max-pool use internally, and knows timm's fused batch-norm and squeeze-excite
blocks by their (partly private) classes.
"""
from __future__ import annotations

from contextlib import contextmanager

import timm.layers.activations as timm_activations
from timm.layers.norm_act import BatchNormAct2d
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from timm.models._efficientnet_blocks import SqueezeExcite
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops.misc import SqueezeExcitation

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
