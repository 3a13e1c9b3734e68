"""Proposals: "mark once, confirm many". Once a few images carry a mark, find the other training images
that carry the same artefact, and where, so a person confirms them in bulk instead of drawing each.

The search does not depend on where the marks are (trainer/counterexamples.py carries marks that recur
at one place; a sticker that moves is not found that way). It works in the model's last feature map:

1. every feature-map position of the marked images is a sample: positive where the mark covers at
   least half of the position's cell (the best-covered cell where none does), negative where the mark
   does not touch it;
2. a linear direction separates them (a concept activation vector: Fisher's linear discriminant on
   standardised features with a shrunk covariance, closed form);
3. every candidate image's feature map is scored along it; the image's score is the best position's,
   and the images are ranked by it;
4. each top-ranked image is localised the same way in a finer feature map (the deepest one with at
   least FINE_FACTOR times the last map's side, found by forward hooks; a second direction fitted
   there): its per-position logits are upsampled to the image, blurred by half a cell, thresholded at
   the fitted boundary (log-odds 0), and only the connected region around the peak is kept: the
   proposed mask, localised on that image (not a copy of a drawn box). The last map ranks well but its
   cells are coarse (8 px at 64 px for hitl_cnn: mean IoU 0.70 with the ground-truth sticker, against
   0.87 in the 32×32 map, on one trained model; bench/proposals.py).

Cost: the ranking rides on the query round's prediction pass over the training set
(``predict_and_rank``: the same forward, the probabilities from the same features), so a round pays
only a forward of the marked images, two small fits and a forward of the top images; where the pass is
not shared (under torchrun) ``rank`` scans at most SCAN_LIMIT candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import protocol
from .feedback import FeedbackSet
from .sampling import by_class

MIN_MARKED = 3          # marked images needed before anything is proposed
MAX_MARK_AREA = 0.25    # larger marks (or marks with a relevant region) say "not this object", not "this artefact"
SCAN_LIMIT = 1024       # candidate images scored per round: a bounded cost on any data set
BATCH = 256
FIND_BATCH = 64         # images a forward when finding artefacts (every feature map of the batch is kept)
FINE_FACTOR = 4        # the localising map has at least this many times the last map's side, where one does
POSITIVE_COVER = 0.5    # share of a feature cell a mark must cover for the cell to be a positive sample
SHRINK = 0.1          # of the pooled covariance replaced by the identity (few positive samples)
HELD_OUT_FOLDS = 5      # found_held_out: each mark localised by a finder fitted on the other four fifths


@dataclass
class Proposal:
    index: int              # dataset index of the training image
    score: float            # the image's best position's logit along the direction (higher: more likely)
    mask: np.ndarray        # bool H×W, the proposed mark


@dataclass
class Direction:
    """A linear direction in feature space: logit = ((f - mean) / std) · weight + bias."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-position logits (N×h×w, float32) of a feature map (N×C×h×w), on the map's device."""
        mean, std, weight, bias = (t.to(feats.device) for t in (self.mean, self.std, self.weight, self.bias))
        z = (feats.float() - mean[None, :, None, None]) / std[None, :, None, None]
        return torch.einsum("nchw,c->nhw", z, weight) + bias


def marked_examples(feedback: FeedbackSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset indices and masks of the marks that can stand for an artefact: small forbidden marks
    without a relevant region."""
    idx = feedback.indices.cpu()
    if not len(idx):
        return idx, torch.zeros((0, *feedback.shape), dtype=torch.bool)
    pos = feedback.position[idx.to(feedback.device)]
    masks, relevant = feedback.masks[pos].cpu(), feedback.relevant[pos].cpu()
    keep = (masks.flatten(1).float().mean(1) <= MAX_MARK_AREA) & ~relevant.flatten(1).any(1) & masks.flatten(1).any(1)
    return idx[keep], masks[keep]


def fit_direction(feats: torch.Tensor, masks: torch.Tensor) -> Direction | None:
    """The direction separating marked feature positions from unmarked ones of the same images; None
    when there are no positives or no negatives."""
    h, w = feats.shape[-2:]
    cover = F.adaptive_avg_pool2d(masks[:, None].float(), (h, w))[:, 0]  # N×h×w share of each cell marked
    positive = cover >= POSITIVE_COVER
    for i in range(len(cover)):  # a mark smaller than a cell still gives its best-covered cell
        if cover[i].max() > 0 and not positive[i].any():
            positive[i].view(-1)[cover[i].argmax()] = True
    negative = cover == 0
    if not positive.any() or not negative.any():
        return None
    samples = feats.permute(0, 2, 3, 1)  # N×h×w×C
    xp, xn = samples[positive], samples[negative]
    x = torch.cat([xp, xn])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    zp, zn = (xp - mean) / std, (xn - mean) / std
    mp, mn = zp.mean(0), zn.mean(0)
    # Fisher's discriminant with a shrunk pooled covariance: the log-odds of "marked" under Gaussian
    # classes with equal priors, in closed form (a logistic regression fit costs seconds on two loaded cores)
    centred = torch.cat([zp - mp, zn - mn])
    cov = centred.T @ centred / max(1, len(centred) - 2)
    cov = (1 - SHRINK) * cov + SHRINK * torch.eye(len(cov))
    weight = torch.linalg.solve(cov, mp - mn)
    bias = -0.5 * (mp + mn) @ weight
    return Direction(mean, std, weight, bias)


def localise(logit_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The proposed mask of one image from its per-position logits (h×w): upsampled to ``size``, blurred
    by about half a cell, thresholded at the fitted boundary, and only the connected region around the
    peak kept."""
    h, w = logit_map.shape
    up = F.interpolate(logit_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    sigma = max(size[0] / h, size[1] / w) / 2
    up = _blur(up, sigma)
    inside = (up > 0).numpy()
    if not inside.any():
        return inside
    from scipy import ndimage  # noqa: PLC0415 (scipy comes with scikit-learn)

    labels, _ = ndimage.label(inside)
    peak = np.unravel_index(int(torch.argmax(up)), up.shape)
    return labels == labels[peak]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.conv2d(F.pad(x[None, None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y[0, 0]


@torch.no_grad()
def layered_maps(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last feature map and the finer map used to localise (both N×C×h×w, float32 on the CPU), from
    one forward with hooks on the model's leaf modules."""
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            seen.append(output)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if not any(True for _ in m.children())]
    try:
        last = model.features(x)
    finally:
        for h in hooks:
            h.remove()
    if last.ndim != 4:
        raise ValueError("proposals need a model whose features are a spatial map (N×C×h×w)")
    side = last.shape[-1]
    wanted = min(FINE_FACTOR * side, x.shape[-1] // 2)
    fine = [s for s in seen if s.shape[0] == len(x) and s.shape[-1] >= max(wanted, side)]
    fine_map = fine[-1] if fine else last
    return last.float().cpu(), fine_map.float().cpu()


def _maps_of(model, x: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``layered_maps`` of ``x`` in batches, the model in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    try:
        maps = [layered_maps(model, x[i:i + BATCH].to(device)) for i in range(0, len(x), BATCH)]
    finally:
        model.train(was_training)
    return torch.cat([c for c, _ in maps]), torch.cat([f for _, f in maps])


class Finder:
    """The directions fitted from the current marks: ``rank`` scores images by the last feature map,
    ``localise`` proposes masks on the chosen ones."""

    def __init__(self, model, coarse: Direction, fine: Direction, marked: int, device: torch.device):
        self.model, self.coarse, self.fine, self.marked, self.device = model, coarse, fine, marked, device

    @classmethod
    def fit(cls, model, feedback: FeedbackSet, gather, device: torch.device) -> "Finder | None":
        """None until MIN_MARKED images carry a usable mark."""
        marked, masks = marked_examples(feedback)
        if len(marked) < MIN_MARKED:
            return None
        coarse, fine = _maps_of(model, gather(marked)[0], device)
        return cls.from_maps(model, coarse, fine, masks, device)

    @classmethod
    def from_maps(cls, model, coarse: torch.Tensor, fine: torch.Tensor, masks: torch.Tensor,
                  device: torch.device) -> "Finder | None":
        """Fitted to the marked images' maps (``layered_maps``) and their marks; None where a direction
        cannot be fitted."""
        c_dir, f_dir = fit_direction(coarse, masks), fit_direction(fine, masks)
        return None if c_dir is None or f_dir is None else cls(model, c_dir, f_dir, len(masks), device)

    def best_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Each image's best position's logit (on the CPU), from its last feature map (any device)."""
        return self.coarse.logits(feats).flatten(1).max(1).values.cpu()

    def localise_each(self, coarse: torch.Tensor, fine: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray | None]:
        """Per image of these maps (``layered_maps``): where the marked artefact is on it (``localise``),
        None where the image is off the marked side of the boundary."""
        on_marked_side = self.best_logits(coarse) > 0
        out: list[np.ndarray | None] = [None] * len(coarse)
        for j, lm in zip(torch.nonzero(on_marked_side).flatten().tolist(), self.fine.logits(fine[on_marked_side])):
            out[j] = localise(lm, size)
        return out

    @torch.no_grad()
    def rank(self, gather, candidates: torch.Tensor) -> torch.Tensor:
        """Best logits of ``candidates`` by a pass of their own."""
        was_training = self.model.training
        self.model.eval()
        try:
            return torch.cat([self.best_logits(self.model.features(gather(candidates[i:i + BATCH])[0].to(self.device)))
                              for i in range(0, len(candidates), BATCH)]) if len(candidates) else torch.zeros(0)
        finally:
            self.model.train(was_training)

    def choose(self, candidates: torch.Tensor, scores: torch.Tensor, count: int, gather,
               labels: torch.Tensor | None = None) -> list[Proposal]:
        """The ``count`` best-scoring candidates on the marked side of the boundary, each with a mask;
        with ``labels`` (the candidates'), taken from the classes in turn (``sampling.by_class``): a
        shortcut's artefact goes with the class (a blue sticker on one class, an orange one on the other),
        and a direction fitted to all the marks scores one look higher: the best alone were all of one
        class on synthetic-lesions (50 of 50), and counterexamples of one class taught the shortcut back
        (docs/learning.md)."""
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[scores[order] > 0]
        order = (by_class(order, labels[order]) if labels is not None else order)[:count]
        if not len(order):
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            x, _ = gather(candidates[order])
            _, fine = layered_maps(self.model, x.to(self.device))
        finally:
            self.model.train(was_training)
        logits = self.fine.logits(fine)
        out = []
        for j, lm in zip(order.tolist(), logits):
            mask = localise(lm, tuple(x.shape[-2:]))
            if mask.any():
                out.append(Proposal(int(candidates[j]), float(scores[j]), mask))
        return out


@torch.no_grad()
def find_artefacts(model, feedback: FeedbackSet, gather, candidates: torch.Tensor,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the marked artefacts are on ``candidates`` (dataset indices), without anyone confirming:
    the candidates on the marked side of the boundary, each with its localised mask (as a proposal's),
    one forward each. (indices, bool masks k×H×W); none before MIN_MARKED images carry a usable mark.
    ValueError for a model without a spatial feature map."""
    finder = Finder.fit(model, feedback, gather, device)
    found, masks = [], []
    if finder is not None:
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(candidates), FIND_BATCH):
                idx = candidates[i:i + FIND_BATCH]
                x, _ = gather(idx)
                coarse, fine = layered_maps(model, x.to(device))
                for j, where in enumerate(finder.localise_each(coarse, fine, tuple(x.shape[-2:]))):
                    if where is None:
                        continue
                    mask = torch.from_numpy(where)
                    if mask.any() and mask.float().mean() <= MAX_MARK_AREA:
                        found.append(int(idx[j]))
                        masks.append(mask)
        finally:
            model.train(was_training)
    size = tuple(feedback.shape)
    return (torch.tensor(found, dtype=torch.long),
            torch.stack(masks) if masks else torch.zeros((0, *size), dtype=torch.bool))


@torch.no_grad()
def found_held_out(model, feedback: FeedbackSet, gather, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each usable mark (``marked_examples``) against what the finder finds on its image when it has not
    learned from it: the marks split into HELD_OUT_FOLDS folds (a fixed draw), the directions fitted on the
    other folds, each held-out image localised as ``find_artefacts`` localises (empty where the image is
    off the marked side, or too few marks to fit on). (dataset indices, the marks, what was found: bool
    k×H×W.) How much of what a person marks counterexamples can carry without one."""
    marked, masks = marked_examples(feedback)
    found = torch.zeros_like(masks)
    if len(marked) < HELD_OUT_FOLDS:
        return marked, masks, found
    x, _ = gather(marked)
    coarse, fine = _maps_of(model, x, device)
    folds = torch.randperm(len(marked), generator=torch.Generator().manual_seed(0)).chunk(HELD_OUT_FOLDS)
    for k, held in enumerate(folds):
        fit = torch.cat([fold for j, fold in enumerate(folds) if j != k])
        finder = Finder.from_maps(model, coarse[fit], fine[fit], masks[fit], device)
        if finder is None:
            continue
        for i, where in zip(held.tolist(), finder.localise_each(coarse[held], fine[held], tuple(x.shape[-2:]))):
            if where is not None:
                found[i] = torch.from_numpy(where)
    return marked, masks, found


def candidates_for(feedback: FeedbackSet, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Training images that may be proposed: not annotated, not in ``exclude`` (a bool per image)."""
    allowed = feedback.position.cpu() < 0
    if exclude is not None:
        allowed &= ~exclude.cpu()
    return torch.nonzero(allowed).flatten()


def propose(model, feedback: FeedbackSet, count: int, device: torch.device, gather,
            exclude: torch.Tensor | None = None, g: torch.Generator | None = None) -> list[Proposal]:
    """Up to ``count`` unannotated training images most likely to carry what the marks mark, best
    first, each with its proposed mask, by a scan of their own (at most SCAN_LIMIT candidates); nothing
    before MIN_MARKED images carry a usable mark. ``gather(idx)`` returns images in [0, 1] and labels."""
    if count <= 0:
        return []
    finder = Finder.fit(model, feedback, gather, device)
    if finder is None:
        return []
    candidates = candidates_for(feedback, exclude)
    if len(candidates) > SCAN_LIMIT:
        candidates = candidates[torch.randperm(len(candidates), generator=g)[:SCAN_LIMIT]].sort().values
    return finder.choose(candidates, finder.rank(gather, candidates), count, gather)


@torch.no_grad()
def predict_and_rank(model, batches, n: int, finder: Finder | None, amp: bool, device: torch.device):
    """The training set's probabilities and labels (as ``Trainer.predict``: ``model(x)`` is
    ``head(features(x))``) and, with a ``finder``, every image's best logit from the same features.
    ``batches``: (x, y, idx) in index order."""
    model.eval()
    probs, labels, scores = [], [], []
    for x, y, _ in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = model.features(x)
            probs.append(model.head(f).float().softmax(1))
        if finder is not None:
            scores.append(finder.best_logits(f))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels), (torch.cat(scores) if finder is not None else None)


def rejected_before(run: protocol.RunDir, epochs) -> set[int]:
    """Training images whose proposal a reviewer rejected in the mask files of ``epochs`` (those the
    trainer applied): not proposed again. Files that cannot be read are passed over (the query round
    refuses them on its own)."""
    rejected: set[int] = set()
    for epoch in epochs:
        try:
            manifest = protocol.read_manifest(run, epoch)
            answers = protocol.load_feedback(run, epoch, manifest) if manifest else None
        except (OSError, protocol.ProtocolError):
            continue
        rejected |= {a.index for a in answers or () if a.source == protocol.SOURCE_PROPOSED
                     and a.must_not_use() is None}
    return rejected
