"""``--head attention``: a self-interpretable attention-pooling head in place of the backbone's global
pool, after LAP (an attention-based module for faithful interpretation and knowledge injection in
CNNs) and local importance pooling (Gao et al. 2019).

pool(f) = Σ_p softmax(a)_p · f_p, with a = conv1×1(ReLU(conv1×1(f))) one score per feature-map
position. The weights are the explanation (``--saliency attention``): they are exactly how much each
position enters the prediction, not an after-the-fact estimate. Masks reach them directly
(``--penalty attention``: the attention weight on the forbidden region).

The last convolution starts at zero, so the weights start uniform and the pool is exactly average
pooling: added to an already-trained network (``--init-from``) it changes nothing until fine-tuning
moves it.
"""
from __future__ import annotations

import torch
from torch import nn

HEADS = ("pool", "attention")


class HeadError(ValueError):
    pass


class AttentionPool(nn.Module):
    """N×C×h×w features → N×C×1×1 attention-weighted means (the backbone's own head then pools a 1×1
    map, which any average, max or adaptive pool passes through unchanged, and classifies it)."""

    def __init__(self, channels: int, hidden: int | None = None):
        super().__init__()
        self.channels = channels
        hidden = hidden or max(16, channels // 8)
        self.score = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    def weights(self, f: torch.Tensor) -> torch.Tensor:
        """Attention over positions, N×h×w, each map summing to 1."""
        if f.dim() != 4 or f.shape[1] != self.channels:
            raise HeadError(f"--head attention needs a CNN whose features are an N×{self.channels}×H×W map; "
                            f"this backbone gives {tuple(f.shape)} (transformers and channels-last models "
                            f"are not supported)")
        a = self.score(f).flatten(1).float().softmax(1)
        return a.view(f.shape[0], *f.shape[-2:]).to(f.dtype)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = self.weights(f)
        return (f * w[:, None]).sum(dim=(2, 3), keepdim=True)
