"""Plain-Python readers of the run directory for the pages (no Streamlit here, so they are tested
without a server). Every reader tolerates missing and broken files: one bad run or query must never
take the whole page down, it gets a message instead."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainer import protocol


STARTING = "starting"

STATE_LABELS = {
    STARTING: "starting",
    protocol.TRAINING: "training",
    protocol.WAITING: "waiting for feedback",
    protocol.FINISHED: "finished",
    protocol.FAILED: "failed",
    protocol.STOPPED: "stopped",
    protocol.STALE: "stale (trainer not responding)",
    "unknown": "unknown",
}


@dataclass
class RunSummary:
    """One line of the runs table, plus what the detail panel needs."""

    run: protocol.RunDir
    state: str
    epoch: int = 0
    epochs: int | None = None
    best_val_loss: float = math.nan
    best_val_acc: float = math.nan
    dataset: str = ""
    model: str = ""
    annotator: str = ""
    world_size: int = 1                 # processes of its latest start (torchrun)
    waiting_epoch: int | None = None
    error: str | None = None
    traceback: list[str] = field(default_factory=list)
    heartbeat_age: float | None = None
    feedback_error: str | None = None
    result: dict = field(default_factory=dict)
    updated: float = 0.0

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def state_label(self) -> str:
        return STATE_LABELS.get(self.state, self.state)

    @property
    def can_stop(self) -> bool:
        return self.state in (STARTING, protocol.TRAINING, protocol.WAITING)

    @property
    def can_resume(self) -> bool:
        return self.state in (protocol.STALE, protocol.STOPPED, protocol.FAILED) and self.run.has_config()


def list_run_dirs(runs_dir: Path | str) -> list[protocol.RunDir]:
    """Runs under ``runs_dir``, newest first: folders with a config, or started from the dashboard
    (a launch record) even if the trainer has not written its config yet."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    found = [run for p in root.iterdir() if p.is_dir() and (run := protocol.RunDir(p)).is_run()]
    return sorted(found, key=lambda r: mtime(r.config) or mtime(r.launch), reverse=True)


def summarise(run: protocol.RunDir, now: float | None = None) -> RunSummary:
    status = protocol.read_status(run, now)
    try:
        config = protocol.read_config(run)
    except (FileNotFoundError, protocol.ProtocolError):
        config = {}
    summary = RunSummary(
        run=run, state=status.get("state", "unknown"), epoch=int(status.get("epoch") or 0),
        epochs=status.get("epochs") or config.get("epochs"), dataset=config.get("dataset", ""),
        model=config.get("model", ""), annotator=config.get("annotator", ""),
        world_size=config["world_size"] if isinstance(config.get("world_size"), int) else 1,
        waiting_epoch=status.get("waiting_epoch"), error=status.get("error"),
        traceback=list(status.get("traceback") or []), heartbeat_age=status.get("heartbeat_age"),
        feedback_error=status.get("feedback_error"), result=dict(status["result"]) if isinstance(status.get("result"), dict) else {},
        updated=float(status.get("heartbeat") or mtime(run.path)))
    launch = protocol.read_launch(run)
    if launch is not None and protocol.launch_is_newer(launch, status):
        _apply_launch(summary, launch)
    rows = protocol.read_metrics(run)
    if rows:
        best = min(rows, key=lambda r: r["val_loss"] if not math.isnan(r["val_loss"]) else math.inf)
        summary.best_val_loss, summary.best_val_acc = best["val_loss"], best["val_acc"]
    return summary


def _apply_launch(summary: RunSummary, launch: dict) -> None:
    """A trainer the dashboard started that has not reported yet: starting, stopped, or dead."""
    summary.updated = float(launch.get("started_at", summary.updated))
    if protocol.launch_alive(launch):
        summary.state, summary.error = STARTING, None
    elif launch.get("stop_requested_at"):
        summary.state, summary.error = protocol.STOPPED, "stopped before the trainer started"
    else:
        summary.state = protocol.FAILED
        summary.error = "the trainer exited before it started training; its log below says why"


def list_summaries(runs_dir: Path | str) -> list[RunSummary]:
    now = time.time()
    return [summarise(run, now) for run in list_run_dirs(runs_dir)]


def mtime(path: Path) -> float:
    """Modification time, the pages' cache key; 0 for a missing file."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# --------------------------------------------------------------------------- metrics

def metrics_frame(runs: list[protocol.RunDir]) -> pd.DataFrame:
    """Per-epoch metrics of several runs, one row per run and epoch, with a ``run`` column."""
    frames = [pd.DataFrame(rows).assign(run=run.name) for run in runs if (rows := protocol.read_metrics(run))]
    if not frames:
        return pd.DataFrame(columns=["run", *protocol.METRIC_COLUMNS])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- query queue

@dataclass(frozen=True)
class Query(protocol.QueryEntry):
    """One queued image (its manifest entry) with what the reviewer needs; ``problem`` says why it cannot
    be shown."""

    class_names: list[str] = field(default_factory=list)
    image: np.ndarray | None = None        # H×W×3 uint8
    saliency: np.ndarray | None = None     # H×W float in [-1, 1]
    problem: str | None = None             # the image cannot be used: the query goes out as "skip"
    warning: str | None = None             # usable, but something is missing (e.g. the saliency map)

    def label(self, i: int) -> str:
        return self.class_names[i] if 0 <= i < len(self.class_names) else str(i)


@dataclass
class Queue:
    epoch: int
    queries: list[Query]
    error: str | None = None


def load_queue(run: protocol.RunDir, epoch: int) -> Queue:
    """Read a queue; a broken manifest spoils the whole queue, a broken image only its query."""
    try:
        manifest = protocol.read_manifest(run, epoch)
    except protocol.ProtocolError as e:
        return Queue(epoch, [], f"the list of queries for epoch {epoch} cannot be read: {e}")
    if manifest is None:
        return Queue(epoch, [], f"there is no queue for epoch {epoch}")
    names = [str(n) for n in manifest.get("class_names") or []]
    queries = []
    for i, q in enumerate(manifest.get("queries") or []):
        try:
            entry = protocol.QueryEntry.from_json(q)
        except protocol.ProtocolError as e:
            return Queue(epoch, [], f"query #{i} of epoch {epoch} is incomplete ({e})")
        queries.append(_load_query(run, epoch, entry, names))
    return Queue(epoch, queries)


def _load_query(run: protocol.RunDir, epoch: int, entry: protocol.QueryEntry, class_names: list[str]) -> Query:
    """The entry with its image and saliency map read, or the reason they cannot be used."""
    shape = (entry.height, entry.width)
    image_name = protocol.query_image_path(run, epoch, entry.query_id).name
    image = problem = warning = None
    try:
        image = protocol.read_query_image(run, epoch, entry.query_id)
    except FileNotFoundError:
        problem = f"the image file {image_name} is missing"
    except OSError as e:
        problem = f"the image file {image_name} cannot be read ({e})"
    if image is not None and image.shape[:2] != shape:
        problem = (f"the image is {image.shape[1]}×{image.shape[0]} pixels, "
                   f"the queue says {entry.width}×{entry.height}")
        image = None
    saliency_path = protocol.query_saliency_path(run, epoch, entry.query_id)
    saliency = protocol.read_saliency(saliency_path, shape)
    if saliency is None and problem is None:
        warning = f"the saliency map {saliency_path.name} is missing or unreadable; you can still mark the image"
    return Query(**vars(entry), class_names=class_names, image=image, saliency=saliency, problem=problem,
                 warning=warning)


# --------------------------------------------------------------------------- feedback and tracking

def sent_answers(run: protocol.RunDir, epoch: int) -> dict[str, protocol.QueryFeedback] | None:
    """The answers sent for ``epoch`` by query id, decoded; None if there are none or they do not fit the queue."""
    try:
        manifest = protocol.read_manifest(run, epoch)
        answers = protocol.load_feedback(run, epoch, manifest) if manifest else None
    except protocol.ProtocolError:
        return None
    return None if answers is None else {a.query_id: a for a in answers}


def feedback_masks(run: protocol.RunDir) -> dict[int, np.ndarray]:
    """Per training-image index, the union of what every accepted mask file says the model must not
    use, the way the trainer's feedback set adds them up."""
    marks = protocol.union_marks(a for epoch in protocol.queue_epochs(run)
                                 for a in (sent_answers(run, epoch) or {}).values())
    return {index: m.must_not_use for index, m in marks.items()}


def query_images(run: protocol.RunDir) -> dict[int, np.ndarray]:
    """The image of each training index that was ever queried (the newest copy)."""
    images: dict[int, np.ndarray] = {}
    for epoch in protocol.queue_epochs(run):
        for q in load_queue(run, epoch).queries:
            if q.image is not None:
                images[q.index] = q.image
    return images


def read_tracking(run: protocol.RunDir) -> pd.DataFrame:
    """tracking.csv as a frame (epoch, index, masked_share), by image and epoch."""
    frame = pd.DataFrame(protocol.read_tracking(run), columns=list(protocol.TRACKING_COLUMNS))
    return frame.astype({"epoch": int, "index": int}).sort_values(["index", "epoch"], ignore_index=True)


def tracked_saliency(run: protocol.RunDir, epoch: int, index: int, shape: tuple[int, int]) -> np.ndarray | None:
    return protocol.read_saliency(run.tracking_map(epoch, index), shape)


# --------------------------------------------------------------------------- test results

TEST_COLUMNS = ["run", "test_acc", "test_consistent_acc", "shortcut_gap", "test_wrong_reason"]


def test_results(runs: list[protocol.RunDir]) -> pd.DataFrame:
    """The held-out test figures finished runs report in their status (one row per run that has a test
    split): accuracy, accuracy where the confounder still matches the label, the gap between them (how
    much the shortcut decides) and the wrong-reason share. Missing or malformed figures are NaN. Reads
    the status files only: the Metrics page calls it every refresh. Further held-out splits a run
    reports by name (a csv set's ``test_site_b``) come after, one column ``split:<name>`` each."""
    results = [(run.name, protocol.read_status(run).get("result")) for run in runs]
    results = [(name, result, _other_splits(result)) for name, result in results if isinstance(result, dict)]
    others = list(dict.fromkeys(split for _, _, splits in results for split in splits))
    rows = [(name, *(_number(result.get(c)) for c in TEST_COLUMNS[1:]), *(splits.get(o, math.nan) for o in others))
            for name, result, splits in results if "test_acc" in result or splits]
    return pd.DataFrame(rows, columns=TEST_COLUMNS + [f"split:{o}" for o in others])


def _other_splits(result: dict) -> dict[str, float]:
    """The accuracy of each held-out split other than test and test_consistent in a run's result."""
    splits = result.get("splits")
    if not isinstance(splits, dict):
        return {}
    return {str(name): _number(m.get("acc")) for name, m in splits.items()
            if name not in ("test", "test_consistent") and isinstance(m, dict)}


# --------------------------------------------------------------------------- evaluation

CURVE_COLUMNS = ["run", "explainer", "fraction", "masked_accuracy", "deletion"]
SUMMARY_COLUMNS = ["run", "explainer", "epoch", "split", "images", "accuracy", "half_removed", "deletion_auc",
                   "wrong_reason"]


def evaluation_frames(runs: list[protocol.RunDir]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``hitl-evaluate`` results of several runs: the curves (one row per run, explainer and removed
    fraction) and a summary (one row per run and explainer). Runs without an evaluation, or with an
    unreadable one, and malformed results are left out."""
    curves, summary = [], []
    for run in runs:
        try:
            doc = protocol.read_evaluation(run)
        except protocol.ProtocolError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            continue
        for result in doc["results"]:
            try:
                fractions = [float(f) for f in result["fractions"]]
                accuracy = [float(a) for a in result["masked_accuracy"]]
                deletion = [float(d) for d in result["deletion"]]
                name = str(result["explainer"])
            except (KeyError, TypeError, ValueError):
                continue
            if not fractions or not len(fractions) == len(accuracy) == len(deletion):
                continue
            curves += [(run.name, name, f, a, d) for f, a, d in zip(fractions, accuracy, deletion)]
            half = min(range(len(fractions)), key=lambda i: abs(fractions[i] - 0.5))
            summary.append((run.name, name, doc.get("epoch"), doc.get("split"), doc.get("images"), accuracy[0],
                            accuracy[half], _number(result.get("deletion_auc")), _number(result.get("wrong_reason"))))
    return pd.DataFrame(curves, columns=CURVE_COLUMNS), pd.DataFrame(summary, columns=SUMMARY_COLUMNS)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
