"""The query round at the end of an epoch: pick training images, explain them, write the queue, wait for
the mask file, add its masks to the feedback set. Resumable: an existing queue is reused, never
resampled, and an answer that arrives after its queue timed out is still applied."""
from __future__ import annotations

import math
import time
import torch

from . import protocol
from .batches import gather
from .data.images import png_bytes
from .explain import normalise
from .proposals import MIN_MARKED, SCAN_LIMIT, Finder, candidates_for, predict_and_rank, rejected_before
from .sampling import SAMPLERS, entropy


class QueryRound:
    """Asks the annotator about the trainer's current model. It works on the parts of ``trainer`` (a
    train.Trainer: data, model, feedback set, state) and writes only through the run-directory protocol."""

    def __init__(self, trainer):
        self.trainer = trainer

    def is_due(self, epoch: int) -> bool:
        """Whether ``epoch`` ends with a round that has not happened yet."""
        t = self.trainer
        due = (t.cfg.annotator != "none" and t.cfg.queries_per_epoch > 0
               and t.cfg.query_start_epoch <= epoch < t.cfg.epochs and epoch not in t.state.answered)
        # once --query-budget is spent, a round only brings proposals: none to bring, no round
        return due and (self.queries_left(epoch) > 0 or t.cfg.proposals_per_epoch > 0)

    def queries_left(self, epoch: int) -> int:
        """Images ``epoch``'s round may ask about: ``--queries-per-epoch``, at least MIN_MARKED in the first
        round (the finder, which carrying and proposals use, needs that many marks; asked one a round, a
        small set's model learns the shortcut before they exist: docs/learning.md), less what
        ``--query-budget`` has left after the earlier rounds' queues (read from the run, so a resume counts
        the same)."""
        t = self.trainer
        wanted = t.cfg.queries_per_epoch
        if epoch == t.cfg.query_start_epoch and wanted > 0:
            wanted = max(wanted, MIN_MARKED)
        if not t.cfg.query_budget:
            return wanted
        asked = sum(len((protocol.read_manifest(t.run, e) or {"queries": ()})["queries"])
                    for e in protocol.queue_epochs(t.run) if e < epoch)
        return max(0, min(wanted, t.cfg.query_budget - asked))

    def run(self, epoch: int, train_predictions: tuple | None = None) -> None:
        """Queue → wait → apply, then checkpoint. ``train_predictions``: the training set's probabilities
        and labels when the ranks under torchrun predicted them together (Trainer.query_phase)."""
        t = self.trainer
        self.apply_late_feedback()
        if not t.run.last_checkpoint.exists():  # asking before training: --resume needs a checkpoint
            t.save_checkpoint(best=False)
        with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
            manifest = protocol.read_manifest(t.run, epoch) or self.build_queue(epoch, train_predictions)
        n_proposed = len(protocol.proposal_entries(t.run, epoch))
        if not manifest["queries"] and not n_proposed:
            t.log(f"epoch {epoch}: no training image to ask about (the sampling rule or --query-budget); no queries")
            answers = []
        else:
            t.log(f"epoch {epoch}: {len(manifest['queries'])} queries"
                  + (f" and {n_proposed} proposals" if n_proposed else "") + f" in {t.run.queue_dir(epoch)}")
            answers = self.wait_for_feedback(epoch, manifest)
        t.state.answered.append(epoch)
        if answers:
            self.apply(epoch, answers)
        t.save_checkpoint(best=False)
        t.status(protocol.TRAINING, phase="training", waiting_epoch=None)

    def build_queue(self, epoch: int, train_predictions: tuple | None = None) -> dict:
        """Sample, explain and write the queue; images and saliency first, the manifest last."""
        t = self.trainer
        started = time.perf_counter()
        finder = self.proposal_finder()
        scores = None
        if train_predictions is None and finder is not None:  # the ranking shares the prediction pass
            batches = t.eval_batches(t.data.train).epoch(torch.arange(len(t.data.train)))
            probs, labels, scores = predict_and_rank(t.model, batches, len(t.data.train), finder, t.amp, t.device)
        else:
            probs, labels = train_predictions or t.predict(t.data.train)
        probs, labels = probs.cpu(), labels.cpu()
        allowed = ~t.feedback.excluded.cpu()
        candidates = torch.nonzero(allowed).flatten()
        g = torch.Generator().manual_seed(t.cfg.seed * 7919 + epoch)
        marked = torch.bincount(labels[t.feedback.indices.cpu()], minlength=t.data.num_classes)
        chosen = candidates[SAMPLERS[t.cfg.sampling](probs[candidates], labels[candidates],
                                                     t.cfg.entropy_threshold, self.queries_left(epoch), g, marked)]
        queries = []
        if len(chosen):
            x, _ = gather(t.data.train, chosen)
            x = x.to(t.device)
            pred = probs[chosen].argmax(1)
            maps = normalise(t.explainer.attribute(x, pred.to(t.device))).cpu().numpy()
            h = entropy(probs[chosen])
            for i, index in enumerate(chosen.tolist()):
                qid = f"q{i:03d}"
                protocol.write_query_image(t.run, epoch, qid, png_bytes(x[i].cpu()), maps[i])
                queries.append(protocol.QueryEntry(
                    query_id=qid, index=index, true_label=int(labels[index]), predicted_label=int(pred[i]),
                    probabilities=probs[index].tolist(), entropy=float(h[i]), height=int(x.shape[-2]),
                    width=int(x.shape[-1]), already_annotated=bool(t.feedback.position[index] >= 0)).to_json())
        if finder is not None:
            self.write_proposals(epoch, finder, scores, chosen, labels, started)
        manifest = {"class_names": t.data.class_names, "saliency": t.cfg.saliency,
                    "sampling": t.cfg.sampling, "entropy_threshold": t.cfg.entropy_threshold,
                    "created_at": time.time(), "queries": queries}
        protocol.write_manifest(t.run, epoch, manifest)
        return protocol.read_manifest(t.run, epoch)

    def proposal_finder(self) -> Finder | None:
        """The directions fitted from the marks so far, when this run proposes (``--proposals``) and
        enough images carry a usable mark."""
        t = self.trainer
        if t.cfg.proposals_per_epoch <= 0:
            return None
        try:
            return Finder.fit(t.model, t.feedback, lambda i: gather(t.data.train, i), t.device)
        except ValueError as e:  # a model without a spatial feature map (a vision transformer's tokens)
            t.log(f"no proposals: {e}")
            return None

    def write_proposals(self, epoch: int, finder: Finder, scores: torch.Tensor | None, queried: torch.Tensor,
                        labels: torch.Tensor, started: float) -> None:
        """Images and masks of the best unannotated images (not queried now, not excluded as mislabelled,
        not rejected as a proposal before), then the index; before the manifest, so a complete queue has
        its proposals."""
        t = self.trainer
        exclude = t.feedback.excluded.cpu().clone()
        exclude[queried] = True
        exclude[sorted(rejected_before(t.run, t.state.applied))] = True  # a rejected proposal is not proposed again
        candidates = candidates_for(t.feedback, exclude)
        take = lambda i: gather(t.data.train, i)  # noqa: E731
        if scores is None:  # under torchrun the prediction pass was the ranks': a bounded scan of its own
            if len(candidates) > SCAN_LIMIT:
                g = torch.Generator().manual_seed(t.cfg.seed * 7919 + epoch)
                candidates = candidates[torch.randperm(len(candidates), generator=g)[:SCAN_LIMIT]].sort().values
            scores = finder.rank(take, candidates)
        else:
            scores = scores[candidates]
        found = finder.choose(candidates, scores, t.cfg.proposals_per_epoch, take, labels[candidates])
        entries = []
        for i, p in enumerate(found):
            pid = f"p{i:03d}"
            x, _ = take(torch.tensor([p.index]))
            protocol.write_proposal(t.run, epoch, pid, png_bytes(x[0]), p.mask)
            entries.append(protocol.ProposalEntry(pid, p.index, p.score, int(labels[p.index]),
                                                  int(x.shape[-2]), int(x.shape[-1])))
        seconds = time.perf_counter() - started
        protocol.write_proposals(t.run, epoch, entries, method="cav", marked=finder.marked,
                                 scanned=len(candidates), created_at=time.time())
        t.log(f"epoch {epoch}: {len(entries)} proposals from {finder.marked} marked images "
              f"({len(candidates)} scanned; queue and proposals in {seconds:.2f} s)")

    def wait_for_feedback(self, epoch: int, manifest: dict) -> list[protocol.QueryFeedback] | None:
        """Block until a valid mask file for ``epoch`` arrives (or the timeout passes: then None).
        Whatever else turns up in its place is moved to feedback/rejected/ with the reason in the
        status, and waiting goes on."""
        t = self.trainer
        deadline = time.time() + t.cfg.feedback_timeout if t.cfg.feedback_timeout > 0 else math.inf
        t.status(protocol.WAITING, phase="waiting", waiting_epoch=epoch, n_queries=len(manifest["queries"]))
        if t.annotator is not None and not protocol.feedback_sent(t.run, epoch):
            t.annotator(t.run, epoch)
        while True:
            try:
                answers = protocol.load_feedback(t.run, epoch, manifest)
            except protocol.ProtocolError as e:
                self.reject(epoch, str(e))
            else:
                if answers is not None:
                    t.status_fields.pop("feedback_error", None)
                    return answers
            if time.time() > deadline:
                t.log(f"epoch {epoch}: no feedback within {t.cfg.feedback_timeout:g} s; training goes on "
                      f"without it (a later answer to this queue is still applied)")
                return None
            t.status(protocol.WAITING, force=False)
            time.sleep(0.2)

    def reject(self, epoch: int, reason: str) -> None:
        """Refuse the mask file for ``epoch``: kept under feedback/rejected/, the reason in the status."""
        t = self.trainer
        try:
            kept = protocol.reject_feedback(t.run, epoch)
        except FileNotFoundError:
            return  # gone already: nothing to keep, keep waiting
        except OSError as e:  # it stays; the same reason is not logged again at every look
            error = f"{reason}; it cannot be moved aside ({e.strerror or type(e).__name__}): remove it"
        else:
            error = f"{reason} (kept as {protocol.FEEDBACK_DIR}/{protocol.REJECTED_DIR}/{kept.name})"
        if t.status_fields.get("feedback_error") != error:
            t.log(f"epoch {epoch}: mask file rejected: {error}")
            t.status(protocol.WAITING, feedback_error=error)

    def apply_late_feedback(self) -> None:
        """Answers that arrived after their queue timed out still count."""
        t = self.trainer
        for epoch in protocol.queue_epochs(t.run):
            if epoch in t.state.answered and epoch not in t.state.applied:
                manifest = protocol.read_manifest(t.run, epoch)
                try:
                    answers = protocol.load_feedback(t.run, epoch, manifest)
                except protocol.ProtocolError as e:
                    self.reject(epoch, str(e))
                    continue
                if answers is not None:
                    self.apply(epoch, answers)

    def apply(self, epoch: int, answers: list[protocol.QueryFeedback]) -> None:
        t = self.trainer
        counts = t.feedback.apply(answers)
        t.state.applied = sorted(set(t.state.applied) | {epoch})
        proposed = f" ({counts['proposed']} accepted proposals, {counts['rejected']} rejected)" if counts["offered"] else ""
        t.log(f"epoch {epoch}: feedback applied: {counts['masked']} masked{proposed}, {counts['skipped']} skipped, "
              f"{counts['excluded']} excluded as mislabelled; {len(t.feedback)} images in the feedback set")
