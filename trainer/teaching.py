"""How a run's marks teach (``--feedback``): what each training step does with them.

"Feedback" is what a person says (the mask file, the feedback set); *teaching* is what the trainer does
with it: an input-gradient penalty on the annotated images (trainer/penalty.py), counterexamples
(trainer/counterexamples.py), both, or ``auto`` (the default): counterexamples, and the penalty on each
annotated image weighted by how much of its mark the trainer cannot find again by itself. Counterexamples
reach the images nobody marked through the finder (trainer/proposals.py), so they remove what it finds;
where it localises badly (decoy-digits' 6 px patch on noisy digits: the whole patch covered on about 65%
of the images) the rest keeps the label, and the person's exact mark has to teach through the gradient
too. Before each epoch the marks teach, every mark is localised by a finder fitted on the other marks
(``proposals.found_held_out``) and its image's penalty weighted by the share of the mark left uncovered
(about a third on decoy-digits, a tenth on the lesion-like sets, where the penalty at full weight slows
learning the lesion), at λ = AUTO_PENALTY_WEIGHT. One rule for every data set, read off the run's own marks and
model, in place of a table of data-set names; measured against it in docs/learning.md ("A rule in place
of the names"): as good on both generated sets, 5 to 6 points under counterexamples alone on two
lesion-like shapes (a sticker beside a ruler, a label on 80% of the images).

The gate (``--teaching-gate``). Marks teach fully only where what they mark tells the class in the
training data. Before each epoch, the artefacts people marked (``reliance.artefacts``) are looked for in
training images nobody annotated, at the same place (``reliance.carriers``), and where too few of them
carry one (most of a small set annotated), in the annotated images too, each artefact's own image left
out; ``marks_tell_class`` is how much more often than the classes' shares those carriers have the
artefact's class. At TELLS or more, or where too few images carry one to say (MIN_CARRIERS), the marks
teach fully from that epoch to the end of the run. Until then they teach nothing: the model has nothing
there to unlearn, and the epoch is plain training's, bit for bit. Half a batch of counterexamples drawn
from a couple of dozen marks cost 3.4 points on 300 digits whose marked patch said nothing of the class,
and even the annotated images' share of a batch delayed learning the lesion by an epoch on
synthetic-lesions' clean variant (4.4 points at 1,000 images); the sticker of synthetic-lesions, which
says everything, needs the full share (docs/learning.md, feedback where there is nothing to unlearn).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reliance
from .batches import gather
from .data import Split
from .feedback import FeedbackSet
from .proposals import found_held_out

PENALTY, COUNTEREXAMPLES, BOTH, AUTO = "penalty", "counterexamples", "both", "auto"
TEACHING_METHODS = (AUTO, PENALTY, COUNTEREXAMPLES, BOTH)  # the --feedback choices
# λ where --lambda is not given: 10 for the penalty alone or beside counterexamples, as their benchmark rows
# were measured; 1 for auto, whose weights only lower it mark by mark (`both` at λ = 1 beat λ = 10 on all
# seven shortcut sets measured, docs/learning.md)
PENALTY_WEIGHT, AUTO_PENALTY_WEIGHT = 10.0, 1.0
GATES = ("marks", "off")  # --teaching-gate: teaching once the marks tell the class | from the first mark
TELLS = 0.25          # carriers of a marked artefact have its class this much more often than by chance
MIN_CARRIERS = 16     # fewer images carrying a marked artefact cannot say: full teaching
GATE_IMAGES = 512     # unannotated training images searched (a fixed seed)


def marks_tell_class(feedback: FeedbackSet, train: Split) -> float | None:
    """How much more often than the classes' shares the training images that carry a marked artefact have
    that artefact's class (0: carrying it says nothing, 1 − share: every carrier has it); None where fewer
    than MIN_CARRIERS images carry one, or nothing usable is marked. Judged on images nobody annotated;
    where too few of them carry one (most of a small set annotated), on the annotated images too, each
    artefact's own image left out."""
    art = reliance.artefacts(feedback, train)
    if not len(art.masks):
        return None
    annotated = torch.zeros(len(train), dtype=torch.bool)
    annotated[feedback.indices.cpu()] = True
    order = reliance.held_out(train, len(train))
    y, carries = _carriers(train, order[~annotated[order]][:GATE_IMAGES], art)
    if carries.sum() < MIN_CARRIERS:
        more_y, more = _carriers(train, order[annotated[order]][:GATE_IMAGES], art)
        y, carries = torch.cat([y, more_y]), torch.cat([carries, more])
    if carries.sum() < MIN_CARRIERS:
        return None
    shares = torch.bincount(train.labels, minlength=int(art.classes.max()) + 1).float() / len(train)
    same = (y.long()[:, None] == art.classes[None]).float()
    return float(((same - shares[art.classes][None]) * carries).sum() / carries.sum())


def _carriers(train: Split, index: torch.Tensor, art: reliance.Artefacts) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, carries: float images × artefacts) of training images ``index``; an artefact's own
    image does not count as carrying it."""
    x, y = gather(train, index)
    carries = reliance.carriers(x, art.masks, art.pixels)
    carries &= index[:, None] != art.images[None]
    return y, carries.float()


def gate_opens(tells: float | None) -> bool:
    """Full teaching: the marks tell the class, or too few images carry what was marked to say."""
    return tells is None or tells >= TELLS


@dataclass(frozen=True)
class Teaching:
    """What runs in a training step once the feedback set holds marks."""

    method: str  # one of TEACHING_METHODS

    def __post_init__(self) -> None:
        if self.method not in TEACHING_METHODS:
            raise ValueError(f"unknown teaching method {self.method!r} (expected one of {', '.join(TEACHING_METHODS)})")

    @property
    def penalty(self) -> bool:
        """The input-gradient penalty runs on the annotated images of each batch."""
        return self.method in (PENALTY, BOTH, AUTO)

    @property
    def counterexamples(self) -> bool:
        """Annotated images enter batches with their marked pixels replaced (and marks are carried)."""
        return self.method in (COUNTEREXAMPLES, BOTH, AUTO)

    @property
    def weighs_marks(self) -> bool:
        """Each annotated image's penalty is weighted by the share of its mark the finder misses."""
        return self.method == AUTO

    @property
    def penalty_weight(self) -> float:
        """λ where ``--lambda`` is not given."""
        return AUTO_PENALTY_WEIGHT if self.weighs_marks else PENALTY_WEIGHT


def missed_shares(model, feedback: FeedbackSet, gather_train, n_images: int, device: torch.device) -> torch.Tensor:
    """Per training image (CPU, float): the share of its mark not covered by what the finder, fitted on the
    other marks, finds there (``proposals.found_held_out``); 1 on marks the finder does not learn from
    (large ones, those with a relevant region) and on images nobody marked. ValueError for a model without a
    spatial feature map."""
    shares = torch.ones(n_images)
    marked, masks, found = found_held_out(model, feedback, gather_train, device)
    if len(marked):
        shares[marked] = 1 - (found & masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    return shares
