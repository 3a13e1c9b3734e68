"""How the model's batch-norm layers behave in the passes beside the training forward: eval mode
(explainers), frozen running statistics (penalties), statistics measured afresh (after each epoch),
recorded or constant batch statistics (saliency-guided training, each image's own input gradient)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

BatchStats = dict  # batch-norm module -> (mean, var) of its input, detached


@contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def norm_layers(model: nn.Module) -> list[nn.Module]:
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
             for m in norm_layers(model)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


@contextmanager
def averaged_norm_stats(model: nn.Module):
    """Batch-norm layers forget their running statistics and, over the forwards inside, keep the plain
    average of each batch's (momentum None), in train mode; the model's mode and momenta are put back.
    The forwards then give the statistics of the images they saw under the current weights."""
    was_training, norms = model.training, norm_layers(model)
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        yield model
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


def input_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    hooks = [m.register_forward_pre_hook(lambda module, args: stats.__setitem__(module, input_stats(args[0])))
             for m in norm_layers(model)]
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
    norms = norm_layers(model)
    saved = [(m, m.training, m.running_mean, m.running_var) for m in norms]

    def use_batch_stats(module, args):
        mean, var = stats[module] if stats else input_stats(args[0])
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
