"""The human-in-the-loop training loop.

Per epoch: train, validate, write the metrics row and the checkpoint; then, from the query start
epoch on, pick training images by entropy, explain them, write the query queue, wait for the mask
file, add its masks to the feedback set and checkpoint again. The penalty runs only on annotated
images of a batch, and not at all while the feedback set is empty.
"""
from __future__ import annotations

import io
import math
import os
import signal
import socket
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import protocol
from .annotator import OracleAnnotator
from .config import TrainConfig
from .counterexamples import Counterexamples
from .data import DataRequest, DataSplits, Split, build_dataset
from .explain import explain, normalise, wrong_reason_share
from .feedback import FeedbackSet
from .model import create_classifier, load_weights
from .penalty import (PROBES, USES_RELEVANCE, full_precision_convolutions, get_penalty, recorded_batch_stats,
                      resolve_impl)
from .prior import add_prior_masks
from .sampling import SAMPLERS, entropy
from .sgt import SaliencyGuided

CHECKPOINT_FORMAT = 1
WRONG_REASON_IMAGES = 128  # test images whose attribution is measured each epoch


class Stopped(Exception):
    """SIGTERM/SIGINT: the run stops cleanly and can be resumed."""


@dataclass
class TrainState:
    epoch: int = 0                       # last completed training epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list = field(default_factory=list)
    answered: list = field(default_factory=list)  # epochs whose query phase is over (answered or timed out)
    applied: list = field(default_factory=list)   # epochs whose mask file has been applied


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device(name)


# --------------------------------------------------------------------------- batches

class BatchSource:
    """Shuffled batches of (images, labels, dataset indices), deterministic per (seed, epoch).

    In-memory splits are gathered with one index op per batch; file-backed splits go through a
    DataLoader whose workers decode in parallel."""

    def __init__(self, split: Split, batch_size: int, workers: int | None, device: torch.device):
        if workers is None:  # decode in parallel but leave the training process a core
            workers = min(4, max(0, (os.cpu_count() or 1) - 1))
        self.split, self.batch_size, self.workers, self.device = split, batch_size, workers, device

    def epoch(self, order: torch.Tensor):
        if self.split.in_memory:
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                x, y = self.split.batch(idx)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)
        else:
            loader = DataLoader(torch.utils.data.Subset(self.split, order.tolist()), batch_size=self.batch_size,
                                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                persistent_workers=False)
            for x, y, idx in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx.to(self.device)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)


def gather(split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if split.in_memory:
        return split.batch(idx)
    items = [split[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])


# --------------------------------------------------------------------------- the trainer

class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print):
        self.cfg, self.log = cfg, log
        self.run = protocol.RunDir(Path(cfg.runs_dir) / cfg.title)
        self.device = pick_device(cfg.device)
        self.amp = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)
        self.data: DataSplits = build_dataset(cfg.dataset, DataRequest(
            cfg.data_dir, cfg.image_size, cfg.seed, cfg.train_fraction, cfg.val_fraction, cfg.dataset_options))
        cfg.image_size = self.data.image_size
        self.model = create_classifier(cfg.model, self.data.num_classes, self.data.in_chans, cfg.pretrained,
                                       cfg.head).to(self.device)
        if cfg.init_from and not resume:
            load_weights(self.model, cfg.init_from)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, cfg.epochs))
        self.penalty_impl = resolve_impl(cfg.penalty_impl, self.device.type)
        self.penalty_fn = get_penalty(cfg.penalty, self.penalty_impl)
        self.probe_fn = PROBES.get((cfg.penalty, self.penalty_impl))
        self.relevance = cfg.penalty in USES_RELEVANCE
        self.sgt = SaliencyGuided(cfg.sgt_fraction, cfg.sgt_weight, cfg.sgt_fill) if cfg.method == "sgt" else None
        self.train_batches = BatchSource(self.data.train, cfg.batch_size, cfg.workers, self.device)
        self.feedback = FeedbackSet(len(self.data.train), cfg.image_size, cfg.image_size, self.device)
        self.state = TrainState()
        self.annotator = (OracleAnnotator(self.data.train, cfg.oracle_style, cfg.oracle_skip, cfg.seed)
                          if cfg.annotator == "oracle" else None)
        if cfg.prior_masks and not resume:
            add_prior_masks(self.feedback, self.data.train, cfg.prior_masks)
        self.penalise = cfg.feedback_method != "counterexamples"
        self.counterexamples = (None if cfg.feedback_method == "penalty" else Counterexamples(
            self.feedback, lambda i: gather(self.data.train, i), cfg.counterexample_share, cfg.counterexample_fill,
            cfg.counterexample_dilate))
        self._last_heartbeat = 0.0
        self._status_fields: dict = {}
        if resume:
            self._load_checkpoint()

    # ------------------------------------------------------------------ status

    def status(self, state: str, force: bool = True, **fields) -> None:
        now = time.time()
        if not force and now - self._last_heartbeat < protocol.HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = now
        self._status_fields.update(fields)
        protocol.write_status(self.run, state, epoch=self.state.epoch, epochs=self.cfg.epochs,
                              host=socket.gethostname(), **self._status_fields)

    # ------------------------------------------------------------------ epoch parts

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        n = len(self.data.train)
        order = torch.randperm(n, generator=g)
        order = order[~self.feedback.excluded.cpu()[order]]
        extra = max(1, self.cfg.batch_size // 8) if self.cfg.oversample else 0
        totals = torch.zeros(4, device=self.device)  # loss, correct, penalty, n
        bar = _progress(total=math.ceil(len(order) / self.cfg.batch_size), desc=f"epoch {epoch}", log=self.log)
        for x, y, idx in self.train_batches.epoch(order):
            if extra and len(self.feedback):
                annotated = self.feedback.indices.cpu()
                pick = annotated[torch.randint(len(annotated), (extra,), generator=g)]
                xo, yo = gather(self.data.train, pick)
                x = torch.cat([x, xo.to(self.device)])
                y = torch.cat([y, yo.to(self.device)])
                idx = torch.cat([idx, pick.to(self.device)])
            if self.counterexamples is not None:
                x, y, idx, _ = self.counterexamples.extend(x, y, idx, g)
            loss, logits, pen = self.train_step(x, y, idx)
            totals += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum(),
                                   pen.detach() * len(y), torch.tensor(float(len(y)), device=self.device)])
            bar.update()
            self.status(protocol.TRAINING, force=False, phase="training")
        bar.close()
        loss, correct, pen, count = totals.tolist()
        return {"train_loss": loss / count, "train_acc": correct / count, "penalty": pen / count}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
        """One optimisation step: CE on the batch plus λ × the penalty on its annotated images.

        A penalty with a probe (``fd``: the image and its linearised probe; ``counterfactual``: the
        image and its counterfactual) forwards the probe's images in place of the annotated ones, so the
        penalty and the cross-entropy share one forward and one backward; the others run their own pass
        on the annotated images. ``--method sgt`` adds its KL term on the whole batch (trainer/sgt.py)."""
        rows = masks = probe = None
        if len(self.feedback) and self.penalise:
            rows, masks = self.feedback.lookup(idx, self.relevance)
            if len(rows) and self.probe_fn is not None:
                probe = self.probe_fn(self.model, x[rows], masks)
        penalised = rows is not None and len(rows) > 0
        stats: dict = {}
        autocast = self.amp and not (probe is not None and probe.full_precision)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            if probe is None:
                with recorded_batch_stats(self.model) if self.sgt is not None else nullcontext(stats) as stats:
                    logits = self.model(x)
            else:
                keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
                keep[rows] = False
                with probe.context(self.model), full_precision_convolutions(probe.full_precision):
                    out = self.model(torch.cat([x[keep], probe.inputs]))
                pen, annotated_logits = probe.finish(out[len(out) - len(probe.inputs):])
                order = torch.cat([torch.nonzero(keep).flatten(), rows])
                logits = torch.cat([out[:len(out) - len(probe.inputs)], annotated_logits])[order.argsort()]
            loss = F.cross_entropy(logits.float(), y)
            if self.sgt is not None:
                loss = loss + self.sgt(self.model, x, y, logits, stats)
        if probe is None and penalised:
            pen = self.penalty_fn(self.model, x[rows], masks, y[rows])
        if penalised:
            pen = pen.mean()
            loss = loss + self.cfg.penalty_weight * pen
        else:
            pen = torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits, pen

    @torch.no_grad()
    def predict(self, split: Split, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax probabilities and labels for a whole split, in index order."""
        self.model.eval()
        probs, labels = [], []
        source = BatchSource(split, batch_size, self.cfg.workers, self.device)
        for x, y, _ in source.epoch(torch.arange(len(split))):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                probs.append(self.model(x).float().softmax(1))
            labels.append(y)
        return torch.cat(probs), torch.cat(labels)

    def evaluate(self, split: Split) -> dict:
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
        maps = explain("saliency", self.model, x, pred)
        keep = masks.flatten(1).any(1)
        return float(wrong_reason_share(maps[keep], masks[keep]).mean()) if keep.any() else math.nan

    # ------------------------------------------------------------------ queries

    def is_query_epoch(self, epoch: int) -> bool:
        return (self.cfg.annotator != "none" and self.cfg.queries_per_epoch > 0
                and self.cfg.query_start_epoch <= epoch < self.cfg.epochs)

    def build_queue(self, epoch: int) -> dict:
        """Sample, explain and write the queue; images and saliency first, the manifest last."""
        probs, labels = self.predict(self.data.train)
        probs, labels = probs.cpu(), labels.cpu()
        allowed = ~self.feedback.excluded.cpu()
        candidates = torch.nonzero(allowed).flatten()
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        chosen = candidates[SAMPLERS[self.cfg.sampling](probs[candidates], labels[candidates],
                                                        self.cfg.entropy_threshold, self.cfg.queries_per_epoch, g)]
        queries = []
        if len(chosen):
            x, _ = gather(self.data.train, chosen)
            x = x.to(self.device)
            pred = probs[chosen].argmax(1)
            maps = normalise(explain(self.cfg.saliency, self.model, x, pred.to(self.device),
                                     deeplift_baseline=self.cfg.deeplift_baseline)).cpu().numpy()
            h = entropy(probs[chosen])
            for i, index in enumerate(chosen.tolist()):
                qid = f"q{i:03d}"
                protocol.write_query_image(self.run, epoch, qid, png_bytes(x[i].cpu()), maps[i])
                queries.append({
                    "query_id": qid, "index": index, "true_label": int(labels[index]),
                    "predicted_label": int(pred[i]), "probabilities": [round(float(p), 6) for p in probs[index]],
                    "entropy": float(h[i]), "height": int(x.shape[-2]), "width": int(x.shape[-1]),
                    "already_annotated": bool(self.feedback.position[index] >= 0),
                })
        manifest = {"class_names": self.data.class_names, "saliency": self.cfg.saliency,
                    "sampling": self.cfg.sampling, "entropy_threshold": self.cfg.entropy_threshold,
                    "created_at": time.time(), "queries": queries}
        protocol.write_manifest(self.run, epoch, manifest)
        return protocol.read_manifest(self.run, epoch)

    def wait_for_feedback(self, epoch: int, manifest: dict) -> list[protocol.QueryFeedback] | None:
        """Block until a valid mask file for ``epoch`` arrives (or the timeout passes: then None).
        A bad file is moved to feedback/rejected/ with the reason in the status; waiting goes on."""
        path = self.run.feedback_file(epoch)
        deadline = time.time() + self.cfg.feedback_timeout if self.cfg.feedback_timeout > 0 else math.inf
        self.status(protocol.WAITING, phase="waiting", waiting_epoch=epoch, n_queries=len(manifest["queries"]))
        if self.annotator is not None and not path.exists():
            self.annotator(self.run, epoch)
        while True:
            if path.exists():
                try:
                    answers = protocol.parse_feedback(protocol.read_json(path), manifest)
                    self._status_fields.pop("feedback_error", None)
                    return answers
                except protocol.ProtocolError as e:
                    self.reject(path, epoch, str(e))
            if time.time() > deadline:
                self.log(f"epoch {epoch}: no feedback within {self.cfg.feedback_timeout:g} s; training goes on "
                         f"without it (a later answer to this queue is still applied)")
                return None
            self.status(protocol.WAITING, force=False)
            time.sleep(0.2)

    def reject(self, path: Path, epoch: int, reason: str) -> None:
        self.run.rejected_root.mkdir(parents=True, exist_ok=True)
        kept = self.run.rejected_root / f"epoch_{epoch:03d}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.json"
        os.replace(path, kept)
        self.log(f"epoch {epoch}: mask file rejected: {reason} (kept as {kept.name})")
        self.status(protocol.WAITING, feedback_error=f"mask file for epoch {epoch} rejected: {reason}")

    def apply_late_feedback(self) -> None:
        """Answers that arrived after their queue timed out still count."""
        for epoch in protocol.queue_epochs(self.run):
            if epoch in self.state.answered and epoch not in self.state.applied:
                path = self.run.feedback_file(epoch)
                if path.exists():
                    manifest = protocol.read_manifest(self.run, epoch)
                    try:
                        answers = protocol.parse_feedback(protocol.read_json(path), manifest)
                    except protocol.ProtocolError as e:
                        self.reject(path, epoch, str(e))
                        continue
                    self.apply(epoch, answers)

    def apply(self, epoch: int, answers: list[protocol.QueryFeedback]) -> None:
        counts = self.feedback.apply(answers)
        self.state.applied = sorted(set(self.state.applied) | {epoch})
        self.log(f"epoch {epoch}: feedback applied: {counts['masked']} masked, {counts['skipped']} skipped, "
                 f"{counts['excluded']} excluded as mislabelled; {len(self.feedback)} images in the feedback set")

    def query_phase(self, epoch: int) -> None:
        """Queue → wait → apply, resumable: an existing queue is reused, never resampled."""
        if not self.is_query_epoch(epoch) or epoch in self.state.answered:
            return
        self.apply_late_feedback()
        if not self.run.last_checkpoint.exists():  # asking before training: --resume needs a checkpoint
            self.save_checkpoint(best=False)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            manifest = protocol.read_manifest(self.run, epoch) or self.build_queue(epoch)
        if not manifest["queries"]:
            self.log(f"epoch {epoch}: no training image matches the sampling rule; no queries")
            answers = []
        else:
            self.log(f"epoch {epoch}: {len(manifest['queries'])} queries in {self.run.queue_dir(epoch)}")
            answers = self.wait_for_feedback(epoch, manifest)
        self.state.answered.append(epoch)
        if answers:
            self.apply(epoch, answers)
        self.save_checkpoint(best=False)
        self.status(protocol.TRAINING, phase="training", waiting_epoch=None)

    # ------------------------------------------------------------------ tracking

    def track_annotated(self, epoch: int) -> None:
        """Saliency of annotated images after this epoch and its share inside their masks."""
        if not len(self.feedback) or self.cfg.track_images <= 0:
            return
        idx = self.feedback.indices[: self.cfg.track_images].cpu()
        x, _ = gather(self.data.train, idx)
        x = x.to(self.device)
        with torch.no_grad():
            self.model.eval()
            pred = self.model(x).argmax(1)
        maps = explain(self.cfg.saliency, self.model, x, pred, deeplift_baseline=self.cfg.deeplift_baseline)
        rows, masks = self.feedback.lookup(idx.to(self.device))
        share = wrong_reason_share(maps, masks).tolist()
        out = self.run.tracking_dir(epoch)
        norm = normalise(maps).cpu().numpy().astype(np.float16)
        for i, index in enumerate(idx.tolist()):
            protocol.atomic_save_npy(out / f"{index}.npy", norm[i])
        lines = [f"{epoch},{index},{s:.6f}" for index, s in zip(idx.tolist(), share)]
        old = self.run.tracking.read_text().splitlines()[1:] if self.run.tracking.exists() else []
        old = [ln for ln in old if not ln.startswith(f"{epoch},")]
        protocol.atomic_write_text(self.run.tracking, "\n".join(["epoch,index,masked_share", *old, *lines]) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, best: bool) -> None:
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "feedback": self.feedback.state_dict(),
            "state": {"epoch": self.state.epoch, "best_val_loss": self.state.best_val_loss,
                      "best_epoch": self.state.best_epoch, "history": self.state.history,
                      "answered": self.state.answered, "applied": self.state.applied},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
        protocol.atomic_write_bytes(self.run.last_checkpoint, data)
        if best:
            protocol.atomic_write_bytes(self.run.best_checkpoint, data)

    def _load_checkpoint(self) -> None:
        path = self.run.last_checkpoint
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"--resume: cannot read {path}: {str(e).splitlines()[0][:200]}") from None
        if ckpt.get("format", 0) > CHECKPOINT_FORMAT:
            raise ValueError(f"--resume: {path} was written by a newer version (format {ckpt['format']})")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.feedback.load_state_dict(ckpt["feedback"])
        s = ckpt["state"]
        self.state = TrainState(s["epoch"], s["best_val_loss"], s["best_epoch"], s["history"], s["answered"],
                                s.get("applied", []))
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in ckpt["rng"]["cuda"]])

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        protocol.write_config(self.run, self.cfg.to_dict())
        self.status(protocol.TRAINING, phase="starting", error=None, pid=os.getpid())
        if self.state.epoch:
            self.log(f"resuming {self.run.path} after epoch {self.state.epoch}")
        self.query_phase(self.state.epoch)
        while self.state.epoch < self.cfg.epochs:
            epoch = self.state.epoch + 1
            t0 = time.time()
            row = {"epoch": epoch, **self.train_one_epoch(epoch)}
            self.scheduler.step()
            val = self.evaluate(self.data.val)
            row.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
            row.update(wrong_reason=self.wrong_reason(self.data.test or self.data.val),
                       n_feedback=len(self.feedback), lr=self.optimizer.param_groups[0]["lr"],
                       seconds=time.time() - t0)
            self.state.epoch = epoch
            self.state.history.append(row)
            protocol.write_metrics(self.run, self.state.history)
            protocol.atomic_write_json(self.run.confusion, {"format": protocol.FORMAT, "epoch": epoch,
                                                            "class_names": self.data.class_names,
                                                            "matrix": val["confusion"]})
            self.track_annotated(epoch)
            best = row["val_loss"] < self.state.best_val_loss
            if best:
                self.state.best_val_loss, self.state.best_epoch = row["val_loss"], epoch
            self.save_checkpoint(best=best)
            self.log(f"epoch {epoch}/{self.cfg.epochs}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
                     f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | penalty {row['penalty']:.3g} | "
                     f"wrong-reason {row['wrong_reason']:.3f} | feedback {len(self.feedback)} | {row['seconds']:.1f}s")
            self.query_phase(epoch)
        return self.finish()

    def finish(self) -> dict:
        result = {"best_epoch": self.state.best_epoch, "best_val_loss": self.state.best_val_loss,
                  "best_val_acc": next((r["val_acc"] for r in self.state.history
                                        if r["epoch"] == self.state.best_epoch), math.nan),
                  "n_feedback": len(self.feedback), "run_dir": str(self.run.path)}
        if self.data.test is not None:
            result["test_acc"] = self.evaluate(self.data.test)["acc"]
            result["test_wrong_reason"] = self.wrong_reason(self.data.test)
        if self.data.test_consistent is not None:
            result["test_consistent_acc"] = self.evaluate(self.data.test_consistent)["acc"]
            # how much the shortcut decides: a behavioural measure, unlike the gradient-based wrong-reason share
            result["shortcut_gap"] = result["test_consistent_acc"] - result["test_acc"]
        from .plots import write_plots
        write_plots(self.run, self.state.history)
        self.status(protocol.FINISHED, phase="finished", result=result)
        return result


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, log):
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="batch")


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Loss, accuracy, macro precision/recall/F1 and the confusion matrix (rows: true class)."""
    pred = probs.argmax(1)
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    cm = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes).double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp_min(1)
    recall = tp / cm.sum(1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    present = cm.sum(1) > 0
    return {"loss": loss, "acc": float(tp.sum() / cm.sum().clamp_min(1)),
            "precision": float(precision[present].mean()), "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()), "confusion": cm.long().tolist()}


def png_bytes(image: torch.Tensor) -> bytes:
    """A C×H×W image in [0, 1] as PNG bytes (grey for one channel)."""
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]).save(buf, format="PNG")
    return buf.getvalue()


def install_stop_handlers() -> None:
    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run_training(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train with status bookkeeping: a failure or stop is written to status.json before it propagates."""
    trainer = Trainer(cfg, resume=resume, log=log)
    try:
        return trainer.fit()
    except Stopped as e:
        trainer.status(protocol.STOPPED, phase="stopped", error=f"stopped by {e}; resume with --resume")
        raise
    except BaseException as e:
        tail = traceback.format_exc().splitlines()[-12:]
        trainer.status(protocol.FAILED, phase="failed", error=f"{type(e).__name__}: {e}", traceback=tail)
        raise
