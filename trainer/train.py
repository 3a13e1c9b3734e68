"""The human-in-the-loop training loop.

Per epoch: train, validate, write the metrics row and the checkpoint; then, from the query start
epoch on, pick training images by entropy, explain them, write the query queue, wait for the mask
file, add its masks to the feedback set and checkpoint again. The penalty runs only on annotated
images of a batch, and not at all while the feedback set is empty.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, distributed, proposals, protocol, reliance
from .annotator import OracleAnnotator
from .batches import BatchSource, gather, keep_in_memory
from .config import TrainConfig
from .counterexamples import Counterexamples, dilation_pixels
from .data import DataSplits, Split, build_run_dataset
from .explain import Explainer, Saliency, create_explainer, normalise, wrong_reason_share
from .feedback import FeedbackSet
from .linearised import full_precision_convolutions
from .metrics import classification_metrics
from .model import create_classifier, load_weights
from .modes import averaged_norm_stats, norm_layers, recorded_batch_stats
from .penalty import Penalty, penalty_class, resolve_impl
from .prior import add_prior_masks
from .query_round import QueryRound
from .sgt import SaliencyGuided
from .teaching import Teaching, gate_opens, marks_tell_class, missed_shares

WRONG_REASON_IMAGES = 128  # test images whose attribution is measured each epoch
NORM_STATS_IMAGES = 512    # training images whose batch-norm statistics are measured after each epoch


@dataclass
class TrainState:
    epoch: int = 0                       # last completed training epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list = field(default_factory=list)
    answered: list = field(default_factory=list)  # epochs whose query phase is over (answered or timed out)
    applied: list = field(default_factory=list)   # epochs whose mask file has been applied
    full_teaching_from: int = 0  # the epoch from which the marks teach fully (trainer/teaching.py's gate); 0: not yet


# --------------------------------------------------------------------------- the trainer

@dataclass
class Parts:
    """What a Trainer works with. ``build_parts`` makes them from a config; a benchmark or a test makes a
    variant by replacing one (``dataclasses.replace(parts, feedback=...)``) rather than patching a Trainer."""

    run: protocol.RunDir
    dist: distributed.Distributed
    device: torch.device
    data: DataSplits
    model: nn.Module
    feedback: FeedbackSet
    penalty: Penalty
    explainer: Explainer
    sgt: SaliencyGuided | None
    annotator: OracleAnnotator | None
    teaching: Teaching                        # what the marks do in a step (--feedback, resolved)
    counterexamples: Counterexamples | None   # when teaching uses them; draws from ``feedback``
    config: TrainConfig                       # the config with RESOLVED_FIELDS filled in


# What build_parts resolves: the title (rank 0's under torchrun: one made from the clock could differ by a
# second between ranks), the image size (the data set's) and λ (the feedback method's own where --lambda is
# not given), so the saved config says what the run does and a resume does the same.
RESOLVED_FIELDS = ("title", "image_size", "penalty_weight")


def build_parts(cfg: TrainConfig, log=print) -> Parts:
    """The parts a config names (``cfg`` itself is left as it is). The seed is set before the data set and
    the model are built, so the same seed gives the same initial weights."""
    dist = distributed.setup(distributed.pick_device(cfg.device))  # one process unless under torchrun
    cfg = replace(cfg, title=dist.broadcast(cfg.title))
    device = dist.device
    torch.manual_seed(cfg.seed)
    with dist.writer_first():  # one process fills a data set's cache
        data = build_run_dataset(cfg)
    for note in data.notes if dist.is_writer else ():
        log(f"warning: {note}")
    if cfg.workers is None:  # by default what fits is decoded once; --workers N reads files with N workers
        data, loaded = keep_in_memory(data)
        if loaded and dist.is_writer:
            log(loaded)
    teaching = Teaching(cfg.feedback_method)
    cfg = replace(cfg, image_size=data.image_size,
                  penalty_weight=teaching.penalty_weight if cfg.penalty_weight is None else cfg.penalty_weight)
    model = create_classifier(cfg.model, data.num_classes, data.in_chans, cfg.pretrained, cfg.head).to(device)
    penalty = penalty_class(cfg.penalty, resolve_impl(cfg.penalty_impl, device.type))(model)
    feedback = FeedbackSet(len(data.train), cfg.image_size, cfg.image_size, device)
    return Parts(
        run=protocol.RunDir(Path(cfg.runs_dir) / cfg.title), dist=dist, device=device, data=data, model=model,
        feedback=feedback, penalty=penalty,
        explainer=create_explainer(cfg.saliency, model, cfg.deeplift_baseline),
        sgt=SaliencyGuided(cfg.sgt_fraction, cfg.sgt_weight, cfg.sgt_fill) if cfg.method == "sgt" else None,
        annotator=(OracleAnnotator(data.train, cfg.oracle_style, cfg.oracle_skip, cfg.seed)
                   if cfg.annotator == "oracle" else None),
        teaching=teaching,
        counterexamples=Counterexamples(
            feedback, lambda i: gather(data.train, i), cfg.counterexample_share, cfg.counterexample_fill,
            dilation_pixels(cfg.counterexample_dilate, cfg.image_size), cfg.counterexample_transfer,
            cfg.counterexample_carry)
        if teaching.counterexamples else None,
        config=cfg)


class Trainer:
    """The loop over one run directory. ``parts`` default to those ``cfg`` names (``build_parts``)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print, parts: Parts | None = None):
        parts = parts or build_parts(cfg, log)
        self.dist = parts.dist
        self.cfg = replace(cfg, **{name: getattr(parts.config, name) for name in RESOLVED_FIELDS})
        self.log = log if self.dist.is_writer else _quiet
        self.run, self.device, self.data, self.model = parts.run, parts.device, parts.data, parts.model
        self.feedback, self.penalty, self.explainer = parts.feedback, parts.penalty, parts.explainer
        self.sgt, self.annotator, self.counterexamples = parts.sgt, parts.annotator, parts.counterexamples
        self.teaching = parts.teaching
        self.amp = self.device.type == "cuda"
        if resume and self.dist.is_writer:
            try:
                notes = checkpoint.recover(self.run)
            except checkpoint.CheckpointError as e:
                raise ValueError(f"--resume: {e}") from None
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"--resume: {self.run.last_checkpoint} is not a checkpoint this version wrote "
                                 f"({type(e).__name__}: {checkpoint.first_line(e)})") from None
            for note in notes:
                self.log(note)
            if not self.run.last_checkpoint.exists():  # stopped before its first checkpoint
                self.log(f"{self.run.path} has no checkpoint yet: starting it from the beginning")
                resume = False
        resume = self.dist.broadcast(resume)  # rank 0's decision, after its repair of the checkpoints
        if cfg.init_from and not resume:
            load_weights(self.model, cfg.init_from)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, cfg.epochs))
        self.train_batches = BatchSource(self.data.train, self.dist.local_batch_size(cfg.batch_size), cfg.workers,
                                         self.device)
        self._eval_sources: dict[tuple[int, int], BatchSource] = {}
        self.state = TrainState()
        self.queries = QueryRound(self)
        if cfg.prior_masks and not resume:
            add_prior_masks(self.feedback, self.data.train, cfg.prior_masks)
        self._last_heartbeat = 0.0
        self.status_fields: dict = {}
        self._status_problem: str | None = None
        self._gate_measured: tuple[int, float | None] | None = None  # (feedback version, marks_tell_class)
        self._can_find = True  # False once the model turned out to have no spatial feature map to search
        # --feedback auto: per training image, the share of its mark the finder missed (weighs its penalty)
        self.missed: torch.Tensor | None = None
        if resume:
            self._load_checkpoint()
        self.ddp = self.dist.wrap(self.model)  # the training forward's module (the model itself in one process)

    @property
    def full_teaching(self) -> bool:
        """The marks teach fully (trainer/teaching.py): the gate is off or has opened."""
        return self.cfg.teaching_gate == "off" or self.state.full_teaching_from > 0

    @property
    def marks_teach(self) -> bool:
        """Something is marked and the gate lets it teach; otherwise a step is plain training's."""
        return self.full_teaching and len(self.feedback) > 0

    def check_gate(self, epoch: int) -> float:
        """Before ``epoch``: opens the teaching gate for the rest of the run where the marks tell the class
        (trainer/teaching.py); what was measured, NaN where nothing was (open already, nothing marked, too
        few carriers)."""
        if self.full_teaching or not len(self.feedback):
            return math.nan
        if self._gate_measured is None or self._gate_measured[0] != self.feedback.version:  # new marks since
            self._gate_measured = self.feedback.version, self.dist.broadcast(
                marks_tell_class(self.feedback, self.data.train))
        tells = self._gate_measured[1]
        if gate_opens(tells):
            self.state.full_teaching_from = epoch
            self.log(f"epoch {epoch}: the marks now teach fully (" + (
                "too few images carry what was marked to tell whether it goes with the class)" if tells is None
                else f"images that carry a marked artefact have its class {100 * tells:.0f} points more often "
                     "than by chance)"))
        return math.nan if tells is None else tells

    def find_carriers(self, epoch: int) -> float:
        """Before ``epoch``, where the marks teach fully and are carried by what they look like
        (``--counterexample-carry found``): the marked artefacts looked for on the unannotated training
        images with the model as it is (trainer/counterexamples.py); how many carry one, NaN where not looked."""
        ce = self.counterexamples
        if ce is None or ce.carry != "found" or not ce.transfer or not self.marks_teach or not self._can_find:
            return math.nan
        g = torch.Generator().manual_seed(self.cfg.seed * 104729 + epoch)

        def look() -> tuple | str:  # on rank 0 under torchrun, so that every rank carries the same
            try:
                return ce.find(self.model, self.feedback.excluded.cpu(), g, self.device)
            except ValueError as e:
                return str(e)

        found = self.dist.on_writer(look)
        if isinstance(found, str):
            self._can_find = False
            self.log(f"marks are carried only where they recur at one place: {found}")
            return math.nan
        ce.carry_found(len(self.data.train), *found)
        return float(len(found[0]))

    def weigh_marks(self) -> float:
        """Before an epoch where the marks teach, under ``--feedback auto``: how much of each mark the finder
        misses when it has not learned from it (trainer/teaching.py), which weighs that image's penalty; the
        mean share missed over the marks it learns from, NaN where not measured. A model without a spatial
        map is weighed 1 everywhere (``both``)."""
        if not (self.teaching.weighs_marks and self.marks_teach):
            return math.nan

        def weigh() -> torch.Tensor | None:  # on rank 0 under torchrun, so that every rank weighs the same
            try:
                return missed_shares(self.model, self.feedback, lambda i: gather(self.data.train, i),
                                     len(self.data.train), self.device)
            except ValueError:
                return None

        shares = self.dist.on_writer(weigh)
        if shares is None:
            shares = torch.ones(len(self.data.train))
        self.missed = shares.to(self.device)
        learned = proposals.marked_examples(self.feedback)[0]
        return float(shares[learned].mean()) if len(learned) else math.nan

    @property
    def penalty_impl(self) -> str:
        """The implementation ``--penalty-impl`` resolves to on this device (``auto``: exact or linearised)."""
        return resolve_impl(self.cfg.penalty_impl, self.device.type)

    # ------------------------------------------------------------------ status

    def status(self, state: str, force: bool = True, final: bool = False, **fields) -> None:
        """Write status.json (a heartbeat at most every HEARTBEAT_SECONDS unless ``force``). A write that
        fails is logged once and training goes on; the ``final`` one (failed, stopped) fails quietly: the
        error that ends the run is its one line."""
        if not self.dist.is_writer:
            return
        now = time.time()
        if not force and now - self._last_heartbeat < protocol.HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = now
        self.status_fields.update(fields)
        try:
            protocol.write_status(self.run, state, epoch=self.state.epoch, epochs=self.cfg.epochs,
                                  host=socket.gethostname(), **self.status_fields)
        except OSError as e:  # a read-only or full runs folder: the next write that matters fails the run
            problem = protocol.describe_os_error(e)
            if problem != self._status_problem and not final:
                self.log(f"cannot write the status: {problem}; carrying on")
            self._status_problem = problem
        else:
            if self._status_problem:
                self.log("status written again")
            self._status_problem = None

    # ------------------------------------------------------------------ epoch parts

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        n = len(self.data.train)
        order = torch.randperm(n, generator=g)
        order = order[~self.feedback.excluded.cpu()[order]]
        order, g = self.dist.shard(order, g)
        batch_size = self.train_batches.batch_size
        # fixed for the epoch: while the gate is shut the marks teach nothing, and the epoch is plain training's
        teach = self.marks_teach
        extra = max(1, batch_size // 8) if self.cfg.oversample and teach else 0
        found = self.find_carriers(epoch)
        missed = self.weigh_marks()
        totals = torch.zeros(4, device=self.device)  # loss, correct, penalty, n
        total = math.ceil(len(order) / batch_size)
        bar = _progress(total=total, desc=f"epoch {epoch}")
        started = time.time()
        for done, (x, y, idx) in enumerate(self.train_batches.epoch(order), start=1):
            if extra:
                annotated = self.feedback.indices.cpu()
                pick = annotated[torch.randint(len(annotated), (extra,), generator=g)]
                xo, yo = gather(self.data.train, pick)
                x = torch.cat([x, xo.to(self.device)])
                y = torch.cat([y, yo.to(self.device)])
                idx = torch.cat([idx, pick.to(self.device)])
            if teach and self.counterexamples is not None:
                x, y, idx, _ = self.counterexamples.extend(x, y, idx, g)
            loss, logits, pen = self.train_step(x, y, idx)
            totals += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum(),
                                   pen.detach() * len(y), torch.tensor(float(len(y)), device=self.device)])
            bar.update()
            self.status(protocol.TRAINING, force=False, phase="training",
                        progress=epoch_progress(done, total, time.time() - started))
        bar.close()
        self.status(protocol.TRAINING, phase="validating", progress=epoch_progress(total, total, time.time() - started))
        loss, correct, pen, count = self.dist.sum(totals).tolist()
        return {"train_loss": loss / count, "train_acc": correct / count, "penalty": pen / count,
                "artefacts_found": found, "marks_missed": missed}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """One optimisation step: CE on the batch plus λ × the penalty on its annotated images (under
        ``--feedback auto`` each weighted by the share of its mark the finder misses; those with none to
        miss are not penalised at all).

        A penalty with a probe (``rrr/linearised``: the image and its linearised probe; ``counterfactual``:
        the image and its counterfactual) forwards the probe's images in place of the annotated ones, so
        the penalty and the cross-entropy share one forward and one backward; the others run their own
        pass on the annotated images. ``--method sgt`` adds its KL term on the whole batch (trainer/sgt.py)."""
        rows = masks = probe = weights = None
        if self.marks_teach and self.teaching.penalty:
            rows, masks = self.feedback.lookup(idx, self.penalty.uses_relevance)
            annotated = len(rows)
            if self.missed is not None:  # --feedback auto, once weighed (Trainer.weigh_marks)
                weights = self.missed[idx[rows]]
                some = weights > 0
                rows, masks, weights = rows[some], masks[some], weights[some]
            if len(rows) and self.penalty.has_probe:
                probe = self.penalty.probe(x[rows], masks)
        penalised = rows is not None and len(rows) > 0
        stats: dict = {}
        autocast = self.amp and not (probe is not None and probe.full_precision)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            if probe is None:
                with recorded_batch_stats(self.model) if self.sgt is not None else nullcontext(stats) as stats:
                    logits = self.ddp(x)
            else:
                keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
                keep[rows] = False
                with probe.context(self.model), full_precision_convolutions(probe.full_precision):
                    out = self.ddp(torch.cat([x[keep], probe.inputs]))
                pen, annotated_logits = probe.finish(out[len(out) - len(probe.inputs):])
                order = torch.cat([torch.nonzero(keep).flatten(), rows])
                logits = torch.cat([out[:len(out) - len(probe.inputs)], annotated_logits])[order.argsort()]
            loss = F.cross_entropy(logits.float(), y)
            if self.sgt is not None:
                loss = loss + self.sgt(self.model, x, y, logits, stats)
        if probe is None and penalised:
            pen = self.penalty(x[rows], masks, y[rows])
        if penalised:
            pen = pen.mean() if weights is None else (pen * weights).sum() / annotated
            loss = loss + self.cfg.penalty_weight * pen
        else:
            pen = torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits, pen

    @torch.no_grad()
    def measure_norm_stats(self) -> None:
        """Batch-norm's running statistics replaced by the average of those of NORM_STATS_IMAGES training images (a
        fixed draw) in batches of the training batch's size at most, under the epoch's last weights. The running
        averages trail weights that move fast, as in the short runs on small sets this tool makes: on the sticker
        anywhere they left a model that answers 86% right at 55% (docs/learning.md, batch-norm statistics).
        Everything in eval mode reads them: validation, the queue's predictions and saliency, the finder, the test
        figures, the exported model."""
        if not norm_layers(self.model):
            return
        index = reliance.held_out(self.data.train, NORM_STATS_IMAGES).sort().values  # the same fixed draw
        batches = math.ceil(len(index) / self.train_batches.batch_size)  # of (nearly) equal size: equal weights
        with averaged_norm_stats(self.model):
            for x, _, _ in self.eval_batches(self.data.train, math.ceil(len(index) / batches)).epoch(index):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    self.model(x)

    def eval_batches(self, split: Split, batch_size: int = 256) -> BatchSource:
        """The batch source that reads ``split`` for predictions, one per split and batch size, kept: its
        DataLoader workers persist across epochs and query rounds."""
        key = (id(split), batch_size)
        source = self._eval_sources.get(key)
        if source is None or source.split is not split:
            source = self._eval_sources[key] = BatchSource(split, batch_size, self.cfg.workers, self.device)
        return source

    @torch.no_grad()
    def predict(self, split: Split, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and labels for a whole split, in index order (each rank predicts its
        share under torchrun)."""
        self.model.eval()
        probs, labels = [], []
        for x, y, _ in self.eval_batches(split, batch_size).epoch(self.dist.eval_indices(len(split))):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                probs.append(self.model(x).float().softmax(1))
            labels.append(y)
        n = len(split)
        return self.dist.gather_rows(torch.cat(probs), n), self.dist.gather_rows(torch.cat(labels), n)

    def metrics_on(self, split: Split) -> dict:
        """Classification metrics of the current model on ``split`` (accuracy, F1, confusion, ...)."""
        probs, labels = self.predict(split)
        return classification_metrics(probs, labels, self.data.num_classes)

    def wrong_reason(self, split: Split | None) -> float:
        """Attribution mass inside the ground-truth confounder masks (input gradients of the predicted
        class on a fixed subset of images); NaN where the data set has no masks."""
        if split is None or not split.has_gt_masks:
            return math.nan
        idx = torch.arange(min(len(split), WRONG_REASON_IMAGES))
        x, _ = gather(split, idx)
        masks = torch.stack([split.gt_mask(int(i)) for i in idx]).to(self.device)
        x = x.to(self.device)
        with torch.no_grad():
            self.model.eval()
            pred = self.model(x).argmax(1)
        maps = Saliency(self.model).attribute(x, pred)
        keep = masks.flatten(1).any(1)
        return float(wrong_reason_share(maps[keep], masks[keep]).mean()) if keep.any() else math.nan

    # ------------------------------------------------------------------ queries

    def query_phase(self, epoch: int) -> None:
        """The query round after ``epoch`` (trainer/query_round.py), if one is due. Under torchrun every
        rank predicts its share of the training set (unless the queue exists already), rank 0 alone asks
        and waits, and the others take its feedback set and state."""
        if not self.queries.is_due(epoch):
            return
        if not self.dist.enabled:
            self.queries.run(epoch)
            return
        queued = self.dist.broadcast(protocol.read_manifest(self.run, epoch) is not None)
        predictions = None if queued else tuple(t.cpu() for t in self.predict(self.data.train))

        def ask() -> tuple:
            self.queries.run(epoch, predictions)
            return self.feedback.state_dict(), self.state

        feedback, state = self.dist.on_writer(ask)
        if not self.dist.is_writer:
            self.feedback.load_state_dict(feedback)
            self.state = state

    # ------------------------------------------------------------------ tracking

    def track_annotated(self, epoch: int) -> None:
        """Saliency of annotated images after this epoch and its share inside their masks."""
        if not len(self.feedback) or self.cfg.track_images <= 0 or not self.dist.is_writer:
            return
        idx = self.feedback.indices[: self.cfg.track_images].cpu()
        x, _ = gather(self.data.train, idx)
        x = x.to(self.device)
        with torch.no_grad():
            self.model.eval()
            pred = self.model(x).argmax(1)
        maps = self.explainer.attribute(x, pred)
        rows, masks = self.feedback.lookup(idx.to(self.device))
        share = wrong_reason_share(maps, masks).tolist()
        norm = normalise(maps).cpu().numpy()
        protocol.write_tracking(self.run, epoch, dict(zip(idx.tolist(), share)),
                                {index: norm[i] for i, index in enumerate(idx.tolist())})

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, best: bool) -> None:
        if not self.dist.is_writer:
            return
        checkpoint.save(self.run, {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "feedback": self.feedback.state_dict(),
            "state": {"epoch": self.state.epoch, "best_val_loss": self.state.best_val_loss,
                      "best_epoch": self.state.best_epoch, "history": self.state.history,
                      "answered": self.state.answered, "applied": self.state.applied,
                      "full_teaching_from": self.state.full_teaching_from},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }, best=best)

    def _load_checkpoint(self) -> None:
        path = self.run.last_checkpoint
        try:
            ckpt = checkpoint.read(path, map_location=self.device)
        except checkpoint.CheckpointError as e:
            raise ValueError(f"--resume: {e}") from None
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.feedback.load_state_dict(ckpt["feedback"])
            s = ckpt["state"]
            self.state = TrainState(int(s["epoch"]), float(s["best_val_loss"]), int(s["best_epoch"]),
                                    list(s["history"]), list(s["answered"]), list(s["applied"]),
                                    int(s.get("full_teaching_from", 0)))
            torch.set_rng_state(ckpt["rng"]["torch"].cpu())
            if ckpt["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["rng"]["cuda"]])
        except KeyError as e:
            raise ValueError(f"--resume: {path} has no {e.args[0]!r}: not a checkpoint this version wrote") from None
        except (TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            raise ValueError(f"--resume: {path} does not fit this run ({type(e).__name__}: "
                             f"{checkpoint.first_line(e)})") from None

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        """Ask (before training too, with -se 0), then per epoch: train, validate, record, ask."""
        self.start()
        self.query_phase(self.state.epoch)
        while self.state.epoch < self.cfg.epochs:
            epoch = self.state.epoch + 1
            row, confusion = self.train_and_validate(epoch)
            self.end_epoch(row, confusion)
            self.query_phase(epoch)
        return self.finish()

    def start(self) -> None:
        if self.dist.is_writer:
            protocol.write_config(self.run, {**self.cfg.to_dict(), "world_size": self.dist.world_size})
        self.status(protocol.TRAINING, phase="starting", error=None, pid=os.getpid())
        if self.state.epoch:
            self.log(f"resuming {self.run.path} after epoch {self.state.epoch}")

    def train_and_validate(self, epoch: int) -> tuple[dict, list]:
        """The epoch's metrics row and the validation confusion matrix."""
        t0 = time.time()
        tells = self.check_gate(epoch)
        row = {"epoch": epoch, **self.train_one_epoch(epoch), "marks_tell": tells,
               "full_teaching": float(self.full_teaching)}
        self.scheduler.step()
        self.measure_norm_stats()
        val = self.metrics_on(self.data.val)
        row.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
        row.update(wrong_reason=self.wrong_reason(self.data.test or self.data.val),
                   reliance_flip=reliance.epoch_flip_rate(self),  # what the marks still decide (trainer/reliance.py)
                   n_feedback=len(self.feedback), lr=self.optimizer.param_groups[0]["lr"],
                   seconds=time.time() - t0)
        return row, val["confusion"]

    def end_epoch(self, row: dict, confusion: list) -> None:
        """Metrics, confusion, tracking, then the checkpoint (best by validation loss), then the log line."""
        epoch = self.state.epoch = row["epoch"]
        self.state.history.append(row)
        if self.dist.is_writer:
            protocol.write_metrics(self.run, self.state.history)
            protocol.write_confusion(self.run, epoch, self.data.class_names, confusion)
        self.track_annotated(epoch)
        best = row["val_loss"] < self.state.best_val_loss
        if best:
            self.state.best_val_loss, self.state.best_epoch = row["val_loss"], epoch
        self.save_checkpoint(best=best)
        self.log(f"epoch {epoch}/{self.cfg.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                 f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | penalty {row['penalty']:.3g} | "
                 f"wrong-reason {row['wrong_reason']:.3f} | feedback {len(self.feedback)} | {row['seconds']:.1f}s")

    def finish(self) -> dict:
        result = {"best_epoch": self.state.best_epoch, "best_val_loss": self.state.best_val_loss,
                  "best_val_acc": next((r["val_acc"] for r in self.state.history
                                        if r["epoch"] == self.state.best_epoch), math.nan),
                  "n_feedback": len(self.feedback), "run_dir": str(self.run.path)}
        splits = {name: {"acc": self.metrics_on(split)["acc"], "n": len(split)}
                  for name, split in self.data.held_out().items()}  # test, test_consistent, others by name
        if self.data.test is not None:
            result["test_acc"] = splits["test"]["acc"]
            result["test_wrong_reason"] = self.wrong_reason(self.data.test)
        if self.data.test_consistent is not None:
            result["test_consistent_acc"] = splits["test_consistent"]["acc"]
            if self.data.test is not None:
                # how much the shortcut decides: a behavioural measure, unlike the gradient-based wrong-reason share
                result["shortcut_gap"] = result["test_consistent_acc"] - result["test_acc"]
        if splits:
            result["splits"] = splits
            self.log("held out: " + ", ".join(f"{name} acc {m['acc']:.3f} ({m['n']} images)" for name, m in splits.items())
                     + (f"; shortcut gap {result['shortcut_gap']:+.3f}" if "shortcut_gap" in result else ""))
        result["reliance"] = reliance.of_trainer(self)  # the same from the marks alone, on any data set
        if self.dist.is_writer:
            from .plots import write_plots
            write_plots(self.run, self.state.history)
        self.status(protocol.FINISHED, phase="finished", result=result)
        return result


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0 under torchrun: rank 0 speaks for the job."""


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def epoch_progress(done: int, total: int, elapsed: float) -> dict:
    """Where the epoch stands, for status.json (the dashboard shows it)."""
    return {"batches_done": done, "batches_total": total, "elapsed_s": round(elapsed, 1),
            "eta_s": round(elapsed / done * (total - done), 1) if done else None}


def _progress(total: int, desc: str):
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="batch")
