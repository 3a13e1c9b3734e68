"""Counterexamples: annotated images re-entered with what a person marked replaced, same label.

A mark says "this region must not decide the class". A counterexample states it as data: the annotated
image with its marked pixels taken from elsewhere, keeping its label, so a model that reads the label
off the marked region is wrong on it (the explanatory-interactive-learning typology's CE strategy,
Teso & Kersting 2019). Fills are drawn afresh for every batch, so one annotated image yields a new
counterexample each time it is used. An annotated image never enters a batch as it is: where the
sampler or the oversampling brings one, it comes as a counterexample of itself (with masks on every
image that makes the confounder uninformative in every batch: 96.5% instead of 88.8% on
synthetic-lesions, docs/learning.md). Marks can grow by ``--counterexample-dilate`` pixels first
(``auto``: 1/32 of the image side), so that a quickly drawn box that cuts into the region leaves none
of it; with exact marks that costs accuracy, so the default is 0 (docs/learning.md, rough marks).

Two fills, mixed half and half by default (``--counterexample-fill``):

``region``  the same pixels of another image of the batch (mostly background: what the image would
            look like without the marked object);
``paste``   the marked content of another annotated image, resized into this image's marked box (the
            marked object, from an image of any class: what it looks like when it does not go with
            the label).

Marks are carried to images nobody marked (``--counterexample-transfer``: 0 carries nothing): the
shortcut stops paying on the whole training set and not only on the few images a person marked
(synthetic-lesions hitl: 79.6% instead of 63.3% with recurring marks alone, docs/learning.md). Two
ways, ``--counterexample-carry``:

``found``      (default) before each epoch in which the marks teach fully, the marked artefact is looked
               for on the unannotated images (the proposals' finder, trainer/proposals.py, without
               anyone confirming), and every image where it is found gets its own localised mask, grown
               by 1/32 of the side (the finder's edges are rough: a rim left keeps the label), filled in
               every batch; of the rest, the share gets a recurring mark as below. An artefact that moves
               (a sticker anywhere, a ruler along any edge) is removed where it is, not only where it
               was marked, and where it is seen it never pays.
``recurring``  only marks that recur at one place: a sticker in a corner, a ruler along the edge, a
               scanner's text label sit where the camera or the clinic put them, so when at least three
               annotated images have a mark at the same place, that place is an artefact's and the
               share (``--counterexample-transfer``) of each batch's unannotated images gets one of those
               marks filled.

Marks on the object itself (hair over a lesion) do not recur at one place and are not carried as
recurring marks; neither are large marks nor answers with a relevant region (nor does the finder learn
from them).

The input-gradient penalty does not need to see a shortcut's gradient for this to work, which is why
it removes the sticker of ``synthetic-lesions`` where RRR does not (docs/learning.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .feedback import FeedbackSet
from .proposals import candidates_for, find_artefacts

FILLS = ("mix", "region", "paste")
CARRIES = ("found", "recurring")  # --counterexample-carry
AUTO_DILATION_SHARE = 1 / 32  # of the image's longer side (docs/learning.md: rough marks)
# a mark recurs when at least RECUR_OTHERS other marks cover the same place (IoU >= RECUR_IOU on a
# RECUR_GRID x RECUR_GRID grid, so that marks a few pixels apart match) and it is small: an artefact's
RECUR_OTHERS, RECUR_IOU, RECUR_GRID, RECUR_MAX_AREA = 2, 0.5, 16, 0.25
RECUR_REFERENCES = 1024  # each mark is compared with at most this many (the first annotated): bounded cost
FIND_LIMIT = 1024  # unannotated images looked at for the marked artefacts before an epoch: a bounded cost


def dilation_pixels(setting: int | str, image_size: int) -> int:
    """``--counterexample-dilate``: a number of pixels, or ``auto``: 1/32 of the image side (2 px at
    64 px, 7 at 224), about how far a quickly drawn box misses a region's edge."""
    if setting == "auto":
        return max(1, round(image_size * AUTO_DILATION_SHARE))
    return int(setting)


class Counterexamples:
    """Turns a batch's annotated images into counterexamples and appends ``share × batch size``
    counterexamples of randomly chosen annotated images."""

    def __init__(self, feedback: FeedbackSet, gather, share: float, fill: str = "mix", dilate: int = 0,
                 transfer: float = 0.0, carry: str = "recurring"):
        if carry not in CARRIES:
            raise ValueError(f"counterexample carry must be one of {', '.join(CARRIES)}, got {carry!r}")
        if fill not in FILLS:
            raise ValueError(f"counterexample fill must be one of {', '.join(FILLS)}, got {fill!r}")
        if share <= 0:
            raise ValueError(f"counterexample share must be positive, got {share}")
        if dilate < 0:
            raise ValueError(f"counterexample dilation must not be negative, got {dilate}")
        if not 0 <= transfer <= 1:
            raise ValueError(f"counterexample transfer must be a share between 0 and 1, got {transfer}")
        self.feedback, self.gather, self.share, self.fill, self.dilate = feedback, gather, share, fill, dilate
        self.transfer, self.carry = transfer, carry
        self._recurring: tuple[int, torch.Tensor] | None = None  # (feedback version, positions)
        self._found: tuple[torch.Tensor, torch.Tensor] | None = None  # (position by dataset index or -1, masks)

    def find(self, model, excluded: torch.Tensor, g: torch.Generator,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The unannotated images (at most FIND_LIMIT, drawn with ``g`` where there are more) on which
        ``model`` as it is now finds a marked artefact, and its mask on each, grown by 1/32 of the side
        (the finder's edges are rough; a rim left uncovered keeps the label, docs/learning.md): the
        arguments of ``carry_found``. ValueError for a model without a spatial feature map."""
        candidates = candidates_for(self.feedback, excluded)
        if len(candidates) > FIND_LIMIT:
            candidates = candidates[torch.randperm(len(candidates), generator=g)[:FIND_LIMIT]].sort().values
        indices, masks = find_artefacts(model, self.feedback, self.gather, candidates, device)
        return indices, grow(masks, dilation_pixels("auto", max(masks.shape[-2:])))

    def carry_found(self, n_images: int, indices: torch.Tensor, masks: torch.Tensor) -> None:
        """From now on, the unannotated images ``indices`` (of ``n_images``) carry ``masks`` (bool k×H×W)
        when drawn for carrying; nothing found: recurring marks alone, as without."""
        if not len(indices):
            self._found = None
            return
        position = torch.full((n_images,), -1, dtype=torch.long)
        position[indices] = torch.arange(len(indices))
        self._found = position, masks

    def extend(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, g: torch.Generator):
        """The batch with its annotated images replaced by counterexamples of themselves and ``share ×
        batch size`` counterexamples of random annotated images appended:
        (x, y, idx, number appended).
        An annotated image is never shown as it is: with its shortcut intact it would teach the shortcut
        again. Every row keeps its annotated image's ``idx``, so a penalty that also runs (``--feedback
        both``) sees them as annotated."""
        if not len(self.feedback):
            return x, y, idx, 0
        rows, masks = self.feedback.lookup(idx)
        annotated = self.feedback.indices.cpu()
        if len(rows) or self.transfer:
            x = x.clone()
        if len(rows):
            x[rows] = self._replace_marked(x[rows], masks.to(x.device), x, annotated, g)
        if self.transfer:
            self._carry(x, idx, rows, annotated, g)
        k = max(1, round(self.share * len(x)))
        pick = annotated[torch.randint(len(annotated), (k,), generator=g)]
        xs, ys = self.gather(pick)
        _, masks = self.feedback.lookup(pick.to(self.feedback.device))
        ce = self._replace_marked(xs.to(x.device), masks.to(x.device), x, annotated, g)
        return torch.cat([x, ce]), torch.cat([y, ys.to(y.device)]), torch.cat([idx, pick.to(idx.device)]), k

    def _carry(self, x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, annotated: torch.Tensor,
               g: torch.Generator) -> None:
        """Fills, in place, the artefact found on each of the batch's unannotated rows that carry one, and
        a recurring mark on ``transfer`` of the others."""
        recurring = self.recurring()
        if (not len(recurring) and self._found is None) or len(rows) == len(x):  # nothing to carry: no draw
            return
        chosen = torch.rand(len(x), generator=g) < self.transfer
        chosen[rows.cpu()] = False
        if self._found is not None:
            position, found_masks = self._found
            at = position[idx.cpu()]
            at[rows.cpu()] = -1
            here = at >= 0
            if here.any():
                on = here.to(x.device)
                x[on] = self._replace_marked(x[on], found_masks[at[here]].to(x.device, torch.float32), x, annotated, g)
            chosen &= ~here
            if not len(recurring):
                return
        if not chosen.any():
            return
        pick = recurring[torch.randint(len(recurring), (int(chosen.sum()),), generator=g)]
        masks = self.feedback.masks[pick.to(self.feedback.device)].to(x.device, torch.float32)
        chosen = chosen.to(x.device)
        x[chosen] = self._replace_marked(x[chosen], masks, x, annotated, g)

    def recurring(self) -> torch.Tensor:
        """Positions in the feedback set of the marks that recur at one place; kept until a mask changes."""
        if self._recurring is None or self._recurring[0] != self.feedback.version:
            self._recurring = self.feedback.version, recurring_marks(self.feedback.masks, self.feedback.relevant).cpu()
        return self._recurring[1]

    def _replace_marked(self, xs: torch.Tensor, masks: torch.Tensor, batch: torch.Tensor, annotated: torch.Tensor,
                        g: torch.Generator) -> torch.Tensor:
        """``xs`` with the (dilated) marked pixels taken from the fill."""
        if self.dilate:  # a loose mark that cuts into the region would leave a strip of it, label and all
            masks = grow(masks, self.dilate)
        fill = fill_region(xs, batch, g)
        if self.fill != "region":
            pasted = fill_paste(xs, masks, self.gather, annotated, self.feedback, g)
            use = torch.ones(len(xs), dtype=torch.bool) if self.fill == "paste" else torch.rand(len(xs), generator=g) < 0.5
            fill[use.to(xs.device)] = pasted[use.to(xs.device)]
        m = masks[:, None]
        return xs * (1 - m) + fill * m


def grow(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """N×H×W masks (bool or float) grown by ``pixels`` in every direction (a square neighbourhood)."""
    if not pixels or not len(masks):
        return masks
    return F.max_pool2d(masks[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0].to(masks.dtype)


def recurring_marks(masks: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """Indices of the (N×H×W) marks that cover at most RECUR_MAX_AREA of the image, come without a
    relevant region, and share their place with at least RECUR_OTHERS of the first RECUR_REFERENCES
    marks."""
    if not len(masks):
        return torch.zeros(0, dtype=torch.long)
    cells = F.adaptive_max_pool2d(masks[:, None].float(), RECUR_GRID).flatten(1)
    references = cells[:RECUR_REFERENCES]
    overlap = cells @ references.T
    union = cells.sum(1)[:, None] + references.sum(1)[None] - overlap
    same_place = (overlap / union.clamp_min(1) >= RECUR_IOU).sum(1) - (torch.arange(len(cells), device=cells.device)
                                                                        < len(references)).long()
    small = masks.flatten(1).float().mean(1) <= RECUR_MAX_AREA
    return torch.nonzero((same_place >= RECUR_OTHERS) & small & ~relevant.flatten(1).any(1)).flatten()


def fill_region(xs: torch.Tensor, donors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each image of ``xs``, a random image of ``donors`` (the same pixels are used)."""
    return donors[torch.randint(len(donors), (len(xs),), generator=g).to(donors.device)]


def fill_paste(xs: torch.Tensor, masks: torch.Tensor, gather, annotated: torch.Tensor, feedback: FeedbackSet,
               g: torch.Generator) -> torch.Tensor:
    """For each image, another annotated image's marked box resized onto this image's marked box
    (the rest of the returned image is the original; only the marked pixels are used)."""
    donors = annotated[torch.randint(len(annotated), (len(xs),), generator=g)]
    dx, _ = gather(donors)
    dx = dx.to(xs.device)
    _, dmasks = feedback.lookup(donors.to(feedback.device))
    out = xs.clone()
    for i in range(len(xs)):
        box, dbox = bounding_box(masks[i]), bounding_box(dmasks[i].to(xs.device))
        if box is None or dbox is None:
            continue
        (y0, y1, x0, x1), (v0, v1, u0, u1) = box, dbox
        crop = dx[i:i + 1, :, v0:v1, u0:u1]
        out[i, :, y0:y1, x0:x1] = F.interpolate(crop, size=(y1 - y0, x1 - x0), mode="bilinear",
                                                align_corners=False)[0]
    return out


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """The bounding box (y0, y1, x0, x1) of an H×W mask's nonzero pixels; None when empty."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
