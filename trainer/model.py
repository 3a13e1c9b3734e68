"""Models: any timm architecture behind an input normalisation layer, so the trainer, the explainers and
the penalty all work on images in [0, 1] and masks line up with pixels.

``hitl_cnn`` is a small ReLU CNN registered in timm's registry, the CPU default: DeepLIFT-friendly and
fast enough for the demo on two cores.
"""
from __future__ import annotations

import os

import timm
import torch
from torch import nn
from timm.models import register_model

from . import checkpoint
from .head import AttentionPool, HeadError


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks and global average pooling; a timm-compatible interface."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, **_: object):
        super().__init__()
        w = width
        blocks, c = [], in_chans
        for i, out in enumerate((w, 2 * w, 4 * w, 4 * w)):
            blocks += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if i < 3:
                blocks.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*blocks)
        self.num_features = c
        self.num_classes = num_classes
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def hitl_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ValueError("hitl_cnn has no pretrained weights")
    return SmallCNN(**kwargs)


class Classifier(nn.Module):
    """Normalise [0, 1] images with the backbone's mean/std, then run it.

    ``features`` and ``head`` split the backbone at its last feature map (for GradCAM, the attention
    head and the GradCAM penalty). With an ``attention_pool`` (``--head attention``) the head pools
    the feature map by attention before the backbone's own head."""

    def __init__(self, backbone: nn.Module, attention_pool: AttentionPool | None = None):
        super().__init__()
        self.backbone = backbone
        self.attention_pool = attention_pool
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        in_chans = getattr(backbone, "in_chans", None) or _first_conv_in(backbone) or len(mean)
        if len(mean) != in_chans:
            mean, std = mean.mean().repeat(in_chans), std.mean().repeat(in_chans)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features((x - self.mean) / self.std)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        if self.attention_pool is not None:
            f = self.attention_pool(f)
        return self.backbone.forward_head(f)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention pool's weights over feature-map positions (N×h×w, each summing to 1)."""
        if self.attention_pool is None:
            raise HeadError("the attention map needs a model trained with --head attention")
        return self.attention_pool.weights(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _first_conv_in(m: nn.Module) -> int | None:
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            return mod.in_channels
    return None


class ModelError(ValueError):
    pass


def create_classifier(name: str, num_classes: int, in_chans: int, pretrained: bool = False,
                      head: str = "pool") -> Classifier:
    """A timm model by name; pretrained weights come from the local cache or the hub and fail with a
    clear message (not a hang) when neither is reachable. ``head="attention"`` adds the attention pool."""
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ModelError(f"unknown model {name!r}: not a timm architecture (see timm.list_models())")
    if not pretrained:
        return _with_head(timm.create_model(name, num_classes=num_classes, in_chans=in_chans), head)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    try:
        backbone = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans)
    except Exception as e:  # network errors, missing cache, no weights for this name
        raise ModelError(f"could not load pretrained weights for {name!r}: not in the local cache and the "
                         f"hub is not reachable ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                         f"run without --pretrained or pre-download the weights") from None
    return _with_head(backbone, head)


def _with_head(backbone: nn.Module, head: str) -> Classifier:
    if head == "pool":
        return Classifier(backbone)
    if head == "attention":
        return Classifier(backbone, AttentionPool(backbone.num_features))
    raise ModelError(f"unknown head {head!r}: choose pool or attention")


def load_weights(model: Classifier, path: str | os.PathLike) -> None:
    """``--init-from``: start from another run's checkpoint (or a bare state dict). Only the attention
    pool may be missing from it (it starts as average pooling, so the loaded model predicts as before)."""
    try:
        state = checkpoint.read_weights(path)
    except checkpoint.CheckpointError as e:
        raise ModelError(f"--init-from: {e}") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: another architecture or number of classes
        detail = str(e).splitlines()[-1].strip()[:200]
        raise ModelError(f"--init-from: {path} does not fit this model: {detail}") from None
    missing = [k for k in missing if not k.startswith("attention_pool.")]
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise ModelError(f"--init-from: {path} does not fit this model ({len(missing)} weights missing, "
                         f"{len(unexpected)} unexpected, e.g. {names}); same --model and data set needed")
