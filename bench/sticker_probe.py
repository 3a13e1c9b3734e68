"""``python -m bench.sticker_probe RUN ...``: does a synthetic-lesions model's input gradient on the
sticker predict what the sticker's colour does? (docs/learning.md, "Why the RRR penalty does not
remove the sticker".)

For the first 200 test images, the sticker is repainted in the regular class's colour (blue) and in the
irregular class's (orange); printed: the decision margin's change (logit irregular − regular) between
the two, that change as predicted to first order by the input gradient at either image (g·Δx), the mean
|margin| at each, and the mean |g| per pixel on the sticker and elsewhere."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from trainer import protocol
from trainer.config import TrainConfig
from trainer.data import DataRequest, build_dataset
from trainer.data.synthetic import PALETTE
from trainer.model import create_classifier

BLUE, ORANGE = 2, 6  # the palette's sticker colours for regular and irregular


def probe(run_path: Path, images: int = 200) -> dict:
    run = protocol.RunDir(run_path)
    cfg = TrainConfig.from_dict(protocol.read_config(run))
    data = build_dataset(cfg.dataset, DataRequest(None, cfg.image_size, cfg.seed))
    model = create_classifier(cfg.model, data.num_classes, data.in_chans, False, cfg.head)
    model.load_state_dict(torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    idx = torch.arange(images)
    x, _ = data.test.batch(idx)
    m = data.test.masks[idx][:, None].float()
    at = {}
    for name, colour in (("blue", BLUE), ("orange", ORANGE)):
        xi = (x * (1 - m) + PALETTE[colour][None, :, None, None] * m).requires_grad_(True)
        out = model(xi)
        margin = out[:, 1] - out[:, 0]
        g, = torch.autograd.grad(margin.sum(), xi)
        at[name] = (xi.detach(), margin.detach(), g)
    dx = at["orange"][0] - at["blue"][0]
    g = at["blue"][2].abs().sum(1, keepdim=True)
    return {"actual": float((at["orange"][1] - at["blue"][1]).mean()),
            "first_order_at_blue": float((at["blue"][2] * dx).flatten(1).sum(1).mean()),
            "first_order_at_orange": float((at["orange"][2] * dx).flatten(1).sum(1).mean()),
            "margin_blue": float(at["blue"][1].abs().mean()), "margin_orange": float(at["orange"][1].abs().mean()),
            "grad_sticker": float(((g * m).flatten(1).sum(1) / m.flatten(1).sum(1)).mean()),
            "grad_rest": float(((g * (1 - m)).flatten(1).sum(1) / (1 - m).flatten(1).sum(1)).mean())}


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        r = probe(Path(path))
        print(f"{Path(path).name}: margin change blue→orange {r['actual']:.2f}; first order at blue "
              f"{r['first_order_at_blue']:.2f}, at orange {r['first_order_at_orange']:.2f}; |margin| blue "
              f"{r['margin_blue']:.2f}, orange {r['margin_orange']:.2f}; |g| per pixel sticker {r['grad_sticker']:.4f}, "
              f"rest {r['grad_rest']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
