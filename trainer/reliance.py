"""Reliance: how much what people marked still decides, measured on held-out images of any data set.

The shortcut gap (``Trainer.finish``) needs a test split whose confounder is decorrelated from the
label, which only the generated sets have. Reliance needs only the marks: it takes the artefacts people
marked, swaps them in held-out images and counts how many of the model's answers change.

Artefacts. The marks that recur at one place (``counterexamples.recurring_marks``: an artefact's, a
sticker, a ruler, a scanner's label) with, for each, the marked pixels of the annotated training image
it comes from and that image's label (the artefact's class ``c``). At most ``MAX_ARTEFACTS``, the first
annotated. When no mark recurs yet (fewer than three annotated images share a place) every small mark
without a relevant region stands in (``source: "marks"``): what a person marked on the object itself
then travels to the same place of other images, which is a weaker test; the result says which it used.
With no usable mark at all (a plain run, annotator none) the result has ``flip_rate`` None and a
``reason``; ``measure_run`` measures any run with another run's marks (``python -m trainer.reliance RUN
--marks-from HITL_RUN``), which is how a plain run is compared with its feedback run.

Held-out images. The test split, or the validation split where a data set has none; the same
``IMAGES`` (256) images for every run of a data set (a fixed seed), and their first ``EPOCH_IMAGES``
(128) for the cheap per-epoch figure in the metrics rows (``reliance_flip``).

The swap, per image (label ``y``):

remove  every artefact the image carries (its pixels under the artefact's mark within ``CARRY_TOL``
        of the artefact's, mean absolute difference in [0, 1] units) is filled the way counterexamples
        fill a marked region ("region"): the same pixels of another of the held-out images, one that
        carries no artefact overlapping that place;
paste   one artefact of a class other than ``y`` (drawn with the fixed seed, not one the image carried)
        replaces the pixels under its mark, at the same place: the image now shows what went with class
        ``c`` in training.

An image that neither carries an artefact nor can take one of another class is left out (``n_images``
counts the swapped ones). Reported: ``flip_rate`` (share of answers that differ from the answer on the
unmodified image), ``swapped_test_acc`` (accuracy on the swapped images), ``test_acc`` on the same
images unmodified, ``toward_rate`` (of the images that got an artefact pasted, the share now answered
with the artefact's class ``c``: does the answer move toward ``c``), ``toward_gain`` (that share less the
share answered ``c`` before the swap: what the paste itself did, near 0 for a model that ignores the
marked region however often it errs), and what was swapped (``n_artefacts``,
``n_pasted``, ``n_removed``, ``source``, ``split``). A model that ignores the marked region keeps its
answers (flip rate near 0); one that decides by it follows the artefact (near 1 where, as in most
people's data, held-out images carry the artefact of their own class). On a test split whose artefact
is drawn at random (the generated sets' decorrelated split) a model that follows the artefact already
answers the pasted class on the images whose own artefact showed it, so its flip rate tops out near
1 − 1/classes there; its ``toward_rate`` is still near 1 and its ``swapped_test_acc`` near 0.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import NamedTuple

import torch
from torch import nn

from .batches import gather
from .counterexamples import RECUR_MAX_AREA, bounding_box, recurring_marks
from .data import Split
from .feedback import FeedbackSet

IMAGES = 256        # held-out images measured after training (a fixed seed: the same for every run of a data set)
EPOCH_IMAGES = 128  # of those, measured after each epoch (the metrics rows' reliance_flip)
MAX_ARTEFACTS = 64  # the first annotated recurring marks
CARRY_TOL = 0.08    # mean absolute pixel difference under the mark below which an image carries the artefact
SEED = 0


class Artefacts(NamedTuple):
    """The marked artefacts (module docstring), on the CPU."""
    masks: torch.Tensor    # A×H×W bool: where each sits
    pixels: torch.Tensor   # A×C×H×W: the annotated image it was marked on
    classes: torch.Tensor  # A: that image's label
    images: torch.Tensor   # A: that image's index in the training split
    source: str            # "recurring", "marks" (no mark recurs: every small mark without a relevant region), "" (none)


def artefacts(feedback: FeedbackSet, train: Split) -> Artefacts:
    """The artefacts of ``feedback``'s marks: the recurring marks, else every small mark (module docstring)."""
    masks, relevant = feedback.masks.cpu(), feedback.relevant.cpu()
    source, pick = "recurring", recurring_marks(masks, relevant)
    if not len(pick):
        flat = masks.flatten(1)
        usable = (flat.float().mean(1) <= RECUR_MAX_AREA) & ~relevant.flatten(1).any(1) & flat.any(1)
        source, pick = "marks", torch.nonzero(usable).flatten()
    pick = pick[:MAX_ARTEFACTS]
    if not len(pick):
        none = torch.zeros(0, dtype=torch.long)
        return Artefacts(masks[:0], torch.zeros(0), none, none, "")
    index = feedback.indices.cpu()[pick]  # the annotated image each mark belongs to
    x, y = gather(train, index)
    return Artefacts(masks[pick], x, y.long(), index, source)


def held_out(split: Split, n: int = IMAGES) -> torch.Tensor:
    """The indices measured: a fixed random subset (the same for every run of a data set)."""
    g = torch.Generator().manual_seed(SEED)
    return torch.randperm(len(split), generator=g)[:n]


def carriers(x: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """carries[i, a] (bool N×A): image i shows artefact a: its pixels under a's mark lie within CARRY_TOL
    (mean absolute difference) of the artefact's. Compared within each mark's bounding box."""
    out = torch.zeros(len(x), len(masks), dtype=torch.bool)
    for a, mask in enumerate(masks):
        box = bounding_box(mask)
        if box is None:
            continue
        rows, cols = slice(box[0], box[1]), slice(box[2], box[3])
        m = mask[rows, cols].float()
        diff = ((x[:, :, rows, cols] - pixels[a, :, rows, cols]).abs().mean(1) * m).flatten(1).sum(1)
        out[:, a] = diff / m.sum() < CARRY_TOL
    return out


def swap(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, pixels: torch.Tensor, classes: torch.Tensor,
         seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images with the artefacts they carry removed and one of another class pasted (module
    docstring). Returns (swapped images, changed: bool N, pasted class or −1 per image, removed: bool N)."""
    g = torch.Generator().manual_seed(seed)
    m = masks.float()
    carries = carriers(x, masks, pixels)
    overlap = (m.flatten(1) @ m.flatten(1).T) > 0
    blocked = (carries.float() @ overlap.float()) > 0  # blocked[j, a]: j carries something where a sits
    out = x.clone()
    removed = carries.any(1)
    for i, a in torch.nonzero(carries).tolist():
        donors = torch.nonzero(~blocked[:, a]).flatten()
        donors = donors[donors != i]
        if not len(donors):  # every image carries something there: the median of the place
            fill = x.median(0).values
        else:
            fill = x[donors[torch.randint(len(donors), (1,), generator=g)][0]]
        out[i] = out[i] * (1 - m[a]) + fill * m[a]
    pasted = torch.full((len(x),), -1, dtype=torch.long)
    for i in range(len(x)):
        others = torch.nonzero((classes != y[i]) & ~carries[i]).flatten()  # one it shows already changes nothing
        if not len(others):
            continue
        a = int(others[torch.randint(len(others), (1,), generator=g)])
        out[i] = out[i] * (1 - m[a]) + pixels[a] * m[a]
        pasted[i] = classes[a]
    return out, removed | (pasted >= 0), pasted, removed


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def measure(model: nn.Module, split: Split | None, feedback: FeedbackSet, train: Split, device: torch.device,
            images: int = IMAGES, split_name: str = "test") -> dict:
    """The reliance figures (module docstring) of ``model`` on ``images`` held-out images of ``split``."""
    empty = {"flip_rate": None, "swapped_test_acc": None, "test_acc": None, "toward_rate": None, "toward_gain": None,
             "n_images": 0, "n_artefacts": 0, "n_pasted": 0, "n_removed": 0, "source": "", "split": split_name}
    if split is None or not len(split):
        return {**empty, "reason": "no held-out split"}
    masks, pixels, classes, _, source = artefacts(feedback, train)
    if not len(masks):
        # a plain run: python -m trainer.reliance RUN --marks-from OTHER_RUN measures it with another run's marks
        return {**empty, "reason": "nobody marked anything in this run"}
    x, y = gather(split, held_out(split, images))
    y = y.long()
    swapped, changed, pasted, removed = swap(x, y, masks, pixels, classes)
    result = {**empty, "n_artefacts": len(masks), "source": source}
    if not changed.any():
        return {**result, "reason": "no held-out image carries a marked artefact or can take one of another class"}
    was = model.training
    model.eval()
    try:
        before = _predict(model, x[changed], device)
        after = _predict(model, swapped[changed], device)
    finally:
        model.train(was)
    y, pasted_c = y[changed], pasted[changed]
    put = pasted_c >= 0
    toward = float((after[put] == pasted_c[put]).float().mean()) if put.any() else None
    return {**result, "flip_rate": float((after != before).float().mean()),
            "swapped_test_acc": float((after == y).float().mean()), "test_acc": float((before == y).float().mean()),
            "toward_rate": toward,
            "toward_gain": toward - float((before[put] == pasted_c[put]).float().mean()) if put.any() else None,
            "n_images": int(changed.sum()), "n_pasted": int(put.sum()), "n_removed": int(removed[changed].sum())}


def of_trainer(trainer, images: int = IMAGES) -> dict:
    """``measure`` for a Trainer's model, marks and held-out split (test, else validation)."""
    split, name = (trainer.data.test, "test") if trainer.data.test is not None else (trainer.data.val, "val")
    return measure(trainer.model, split, trainer.feedback, trainer.data.train, trainer.device, images, name)


def epoch_flip_rate(trainer) -> float:
    """The cheap per-epoch figure: the flip rate on the first EPOCH_IMAGES held-out images; NaN without marks."""
    if not len(trainer.feedback):
        return math.nan
    rate = of_trainer(trainer, EPOCH_IMAGES)["flip_rate"]
    return math.nan if rate is None else rate


# --------------------------------------------------------------------------- any run, any run's marks

def measure_run(run_path: str, marks_from: str | None = None, which: str = "last", images: int = IMAGES,
                device: str = "cpu") -> dict:
    """Reliance of a finished run's model (``which`` checkpoint) with its own marks or those another run
    (``marks_from``, same data set) collected: a plain run has none of its own."""
    from . import checkpoint, protocol
    from .config import TrainConfig
    from .data import build_run_dataset
    from .distributed import pick_device
    from .evaluate import load_model

    run = protocol.RunDir(run_path)
    cfg = TrainConfig.from_dict(protocol.read_config(run))
    data = build_run_dataset(cfg)
    dev = pick_device(device)
    model, epoch = load_model(run, cfg, data.num_classes, data.in_chans, which, dev)
    source = protocol.RunDir(marks_from) if marks_from else run
    feedback = FeedbackSet(len(data.train), data.image_size, data.image_size)
    feedback.load_state_dict(checkpoint.read(source.last_checkpoint, map_location="cpu")["feedback"])
    split, name = (data.test, "test") if data.test is not None else (data.val, "val")
    result = measure(model, split, feedback, data.train, dev, images, name)
    return {**result, "run": run.name, "epoch": epoch, "marks_from": source.name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.reliance",
                                description="How much the marked artefacts decide a run's answers on held-out images.")
    p.add_argument("run", help="the run folder")
    p.add_argument("--marks-from", help="another run folder (same data set) whose marks to swap")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--images", type=int, default=IMAGES)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from . import protocol

    result = measure_run(args.run, args.marks_from, args.checkpoint, args.images, args.device)
    print(json.dumps(result, indent=2))
    print(protocol.describe_reliance(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
