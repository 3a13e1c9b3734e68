"""Toy data the tests share: small images with a shortcut whose place is known."""
from __future__ import annotations

import torch


def toy_images(n: int, confounded: bool, g: torch.Generator, noise: float = 0.3):
    """12×12 grey images whose class is a faint bar (horizontal: 1, vertical: 0) under noise, with a
    3×3 corner patch that is white for class 1 and black for class 0 (or random when not confounded);
    images, labels and the patch's masks."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.5 + noise * torch.randn(n, 1, 12, 12, generator=g)
    x[y == 1, :, 5:7, 2:10] += 0.4
    x[y == 0, :, 2:10, 5:7] += 0.4
    patch = y if confounded else torch.randint(0, 2, (n,), generator=g)
    x[:, :, 0:3, 0:3] = patch[:, None, None, None].float()
    masks = torch.zeros(n, 12, 12, dtype=torch.bool)
    masks[:, 0:3, 0:3] = True
    return x, y, masks
