"""Plain-Python readers of the run directory for the pages (no Streamlit here, so they are tested
without a server). Every reader tolerates missing and broken files: one bad run or query must never
take the whole page down, it gets a message instead. The rule: whatever a protocol reader refuses
(ProtocolError), and whatever cannot be read at all (OSError, UnicodeDecodeError), marks the run
"unreadable: <file>: <reason>", one line that the pages show in place of what the file would have
given; the run's other files and every other run still show."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trainer import protocol


STARTING = "starting"
UNREADABLE = "unreadable"
READ_ERRORS = (protocol.ProtocolError, OSError, UnicodeDecodeError)

STATE_LABELS = {
    STARTING: "starting",
    protocol.TRAINING: "training",
    protocol.WAITING: "waiting for feedback",
    protocol.FINISHED: "finished",
    protocol.FAILED: "failed",
    protocol.STOPPED: "stopped",
    protocol.STALE: "stale (trainer not responding)",
    "unknown": "unknown",
    UNREADABLE: "unreadable",
}


def unreadable_line(run: protocol.RunDir, path: Path, error: BaseException) -> str:
    """``unreadable: <file>: <reason>`` in one line, the file named inside its run folder."""
    try:
        name = Path(path).relative_to(run.path).as_posix()
    except ValueError:
        name = Path(path).name
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
    else:
        reason = str(error) or type(error).__name__
    for prefix in (name, Path(path).name, Path(path).stem, Path(path).parent.name):  # the reader named it too
        if reason.startswith(f"{prefix}: "):
            reason = reason[len(prefix) + 2:]
    line = " ".join(f"unreadable: {name}: {reason}".split())
    return line if len(line) <= 240 else line[:237] + "..."


def attempt(run: protocol.RunDir, path: Path, read, default, problems: list[str]):
    """``read()``; ``default`` if the file is missing, or if it is unreadable: then its line is added to
    ``problems``."""
    try:
        return read()
    except FileNotFoundError:
        return default
    except READ_ERRORS as e:
        problems.append(unreadable_line(run, path, e))
        return default


# Whether a run's confusion matrix and evaluation can be read, by (path, mtime, size): the runs list
# asks every refresh, and those files change once an epoch at most.
_CHECKED: dict[tuple, str | None] = {}


def _check(run: protocol.RunDir, path: Path, read) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return unreadable_line(run, path, e)
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    if key not in _CHECKED:
        if len(_CHECKED) > 1024:
            _CHECKED.clear()
        problems: list[str] = []
        attempt(run, path, read, None, problems)
        _CHECKED[key] = problems[0] if problems else None
    return _CHECKED[key]


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
    unreadable: str | None = None       # "unreadable: <file>: <reason>" of its first unreadable file

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def state_label(self) -> str:
        return STATE_LABELS[UNREADABLE] if self.unreadable else STATE_LABELS.get(self.state, self.state)

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
    """The run's line in the runs table. A run file that cannot be read (status, config, launch record,
    metrics, confusion matrix, evaluation) marks it unreadable with that file's line; an unreadable
    status leaves its state unknown: ``UNREADABLE``."""
    problems: list[str] = []
    status = attempt(run, run.status, lambda: protocol.read_status(run, now, strict=True), None, problems)
    if status is None:
        status = {"state": UNREADABLE if problems else "unknown", "epoch": 0}
    config = attempt(run, run.config, lambda: protocol.read_config(run), {}, problems)
    summary = RunSummary(
        run=run, state=status.get("state", "unknown"), epoch=int(status.get("epoch") or 0),
        epochs=status.get("epochs") or config.get("epochs"), dataset=config.get("dataset") or "",
        model=config.get("model") or "", annotator=config.get("annotator") or "",
        world_size=config.get("world_size") or 1,
        waiting_epoch=status.get("waiting_epoch"), error=status.get("error"),
        traceback=list(status.get("traceback") or []), heartbeat_age=status.get("heartbeat_age"),
        feedback_error=status.get("feedback_error"), result=dict(status.get("result") or {}),
        updated=float(status.get("heartbeat") or mtime(run.path)))
    launch = attempt(run, run.launch, lambda: protocol.read_launch(run, strict=True), None, problems)
    if launch is not None and summary.state != UNREADABLE and protocol.launch_is_newer(launch, status):
        _apply_launch(summary, launch)
    rows = attempt(run, run.metrics, lambda: protocol.read_metrics(run), [], problems)
    if rows:
        best = min(rows, key=lambda r: r["val_loss"] if not math.isnan(r["val_loss"]) else math.inf)
        summary.best_val_loss, summary.best_val_acc = best["val_loss"], best["val_acc"]
    for path, read in ((run.confusion, protocol.read_confusion), (run.evaluation, protocol.read_evaluation)):
        if (line := _check(run, path, lambda: read(run))) is not None:
            problems.append(line)
    summary.unreadable = problems[0] if problems else None
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
    """Modification time, the pages' cache key; 0 for a missing file (or one that cannot be looked at:
    its reader says why)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- metrics

def metrics_frame(runs: list[protocol.RunDir], problems: list[str] | None = None) -> pd.DataFrame:
    """Per-epoch metrics of several runs, one row per run and epoch, with a ``run`` column; an unreadable
    metrics file is left out and its line added to ``problems``."""
    problems = [] if problems is None else problems
    frames = [pd.DataFrame(rows).assign(run=run.name) for run in runs
              if (rows := attempt(run, run.metrics, lambda: protocol.read_metrics(run), [], problems))]
    if not frames:
        return pd.DataFrame(columns=["run", *protocol.METRIC_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def confusion(run: protocol.RunDir) -> tuple[dict | None, str | None]:
    """The latest confusion matrix (None if there is none), and the line saying why it cannot be read."""
    problems: list[str] = []
    doc = attempt(run, run.confusion, lambda: protocol.read_confusion(run), None, problems)
    return doc, (problems[0] if problems else None)


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
    except READ_ERRORS as e:
        line = unreadable_line(run, run.queue_dir(epoch) / protocol.MANIFEST_FILE, e)
        return Queue(epoch, [], f"the list of queries for epoch {epoch} cannot be read ({line})")
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
    except (OSError, ValueError, SyntaxError, MemoryError) as e:  # PIL's ways to refuse a file that is not an image
        problem = f"the image file {image_name} cannot be read ({type(e).__name__})"
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
    return answers_and_problem(run, epoch)[0]


def answers_and_problem(run: protocol.RunDir, epoch: int) -> tuple[dict[str, protocol.QueryFeedback] | None, str | None]:
    """``sent_answers`` and, when the manifest or the mask file cannot be read, the line saying why."""
    path = run.queue_dir(epoch) / protocol.MANIFEST_FILE
    try:
        manifest = protocol.read_manifest(run, epoch)
        path = run.feedback_file(epoch)
        answers = protocol.load_feedback(run, epoch, manifest) if manifest else None
    except READ_ERRORS as e:
        return None, unreadable_line(run, path, e)
    return (None if answers is None else {a.query_id: a for a in answers}), None


def answer_problems(run: protocol.RunDir) -> list[str]:
    """The lines of the run's queues and mask files that cannot be read."""
    return [problem for epoch in protocol.queue_epochs(run) if (problem := answers_and_problem(run, epoch)[1])]


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


def read_tracking(run: protocol.RunDir, problems: list[str] | None = None) -> pd.DataFrame:
    """tracking.csv as a frame (epoch, index, masked_share), by image and epoch; empty if it cannot be read
    (its line added to ``problems``)."""
    rows = attempt(run, run.tracking, lambda: protocol.read_tracking(run), [], [] if problems is None else problems)
    frame = pd.DataFrame(rows, columns=list(protocol.TRACKING_COLUMNS))
    return frame.astype({"epoch": int, "index": int}).sort_values(["index", "epoch"], ignore_index=True)


def tracked_saliency(run: protocol.RunDir, epoch: int, index: int, shape: tuple[int, int]) -> np.ndarray | None:
    return protocol.read_saliency(run.tracking_map(epoch, index), shape)


# --------------------------------------------------------------------------- test results

TEST_COLUMNS = ["run", "test_acc", "test_consistent_acc", "shortcut_gap", "reliance_flip_rate", "reliance_swapped_acc",
                "reliance_images", "test_wrong_reason"]
RELIANCE_COLUMNS = {"reliance_flip_rate": "flip_rate", "reliance_swapped_acc": "swapped_test_acc",
                    "reliance_images": "n_images"}  # the table's column: the key in result["reliance"]


def test_results(runs: list[protocol.RunDir]) -> pd.DataFrame:
    """The held-out test figures finished runs report in their status (one row per run that has a test
    split or a reliance measurement): accuracy, accuracy where the confounder still matches the label, the
    gap between them (how much the shortcut decides), the reliance on the marked artefacts (share of
    answers that swapping them changes, accuracy on the swapped images, how many: trainer/reliance.py) and
    the wrong-reason share. Missing or malformed figures are NaN. Reads the status files only: the Metrics
    page calls it every refresh. Further held-out splits a run reports by name (a csv set's
    ``test_site_b``) come after, one column ``split:<name>`` each."""
    results = [(run.name, protocol.read_status(run).get("result")) for run in runs]
    results = [(name, result, _other_splits(result)) for name, result in results if isinstance(result, dict)]
    others = list(dict.fromkeys(split for _, _, splits in results for split in splits))
    rows = []
    for name, result, splits in results:
        reliance = result.get("reliance") if isinstance(result.get("reliance"), dict) else {}
        if not ("test_acc" in result or reliance or splits):
            continue
        rows.append((name, *(_number(reliance.get(RELIANCE_COLUMNS[c])) if c in RELIANCE_COLUMNS
                             else _number(result.get(c)) for c in TEST_COLUMNS[1:]),
                     *(splits.get(o, math.nan) for o in others)))
    return pd.DataFrame(rows, columns=TEST_COLUMNS + [f"split:{o}" for o in others])


def _other_splits(result: dict) -> dict[str, float]:
    """The accuracy of each held-out split other than test and test_consistent in a run's result."""
    splits = result.get("splits")
    if not isinstance(splits, dict):
        return {}
    return {str(name): _number(m.get("acc")) for name, m in splits.items()
            if name not in ("test", "test_consistent") and isinstance(m, dict)}


def reliance(run: protocol.RunDir) -> dict | None:
    """A finished run's reliance measurement (``result["reliance"]``), or None."""
    result = protocol.read_status(run).get("result")
    value = result.get("reliance") if isinstance(result, dict) else None
    return value if isinstance(value, dict) else None


def teaching(run: protocol.RunDir) -> str | None:
    """The teaching gate's sentence (``protocol.describe_teaching``) for a run; None where its metrics or
    config cannot be read (the pages say so elsewhere) or there is nothing to say."""
    try:
        rows, config = protocol.read_metrics(run), protocol.read_config(run)
    except (OSError, protocol.ProtocolError):
        return None
    return protocol.describe_teaching(rows, config.get("teaching_gate"))


# --------------------------------------------------------------------------- evaluation

CURVE_COLUMNS = ["run", "explainer", "fraction", "masked_accuracy", "deletion"]
SUMMARY_COLUMNS = ["run", "explainer", "epoch", "split", "images", "accuracy", "half_removed", "deletion_auc",
                   "wrong_reason"]


def evaluation_frames(runs: list[protocol.RunDir], problems: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``hitl-evaluate`` results of several runs: the curves (one row per run, explainer and removed
    fraction) and a summary (one row per run and explainer). Runs without an evaluation, or with an
    unreadable one (its line added to ``problems``), are left out."""
    curves, summary = [], []
    problems = [] if problems is None else problems
    for run in runs:
        doc = attempt(run, run.evaluation, lambda: protocol.read_evaluation(run), None, problems)
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
