"""Where everything of a run lives: the file names and ``RunDir``, which turns them into paths.

Layout of ``<runs_dir>/<run>/`` (see docs/run-directory.md):

    config.json                 resolved training config                       (trainer)
    status.json                 state, epoch, pid, heartbeat, last error        (trainer)
    metrics.csv                 one row per finished epoch                      (trainer)
    confusion.json              confusion matrix of the latest validation       (trainer)
    tracking.csv                wrong-reason share of each annotated image      (trainer)
    tracking/epoch_NNN/<index>.npy  saliency of annotated images after epoch    (trainer)
    last.pt, best.pt            checkpoints (best by validation loss)           (trainer)
    queue/epoch_NNN/            query images + saliency; manifest.json last     (trainer)
    feedback/epoch_NNN.json     the mask file answering that queue              (annotator)
    feedback/rejected/          mask files the trainer refused, kept verbatim   (trainer)
    plots/                      the original tool's two PNG plots               (trainer)
    evaluation.json             faithfulness of the explanations                (hitl-evaluate)
    launch.json                 how the dashboard started (and asked to stop) a trainer  (dashboard)
    trainer.log                 stdout/stderr of a trainer started by the dashboard
    trainer.lock                pid of the trainer holding the run's lock (protocol/lock.py)  (trainer)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .formats import ProtocolError

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
CONFUSION_FILE = "confusion.json"
TRACKING_FILE = "tracking.csv"
TRACKING_DIR = "tracking"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
QUEUE_DIR = "queue"
FEEDBACK_DIR = "feedback"
REJECTED_DIR = "rejected"
PLOTS_DIR = "plots"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "trainer.log"
EVALUATION_FILE = "evaluation.json"
LAUNCH_FILE = "launch.json"
LOCK_FILE = "trainer.lock"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run; creating this object touches nothing on disk."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    config = property(lambda self: self.path / CONFIG_FILE)
    status = property(lambda self: self.path / STATUS_FILE)
    metrics = property(lambda self: self.path / METRICS_FILE)
    confusion = property(lambda self: self.path / CONFUSION_FILE)
    tracking = property(lambda self: self.path / TRACKING_FILE)
    last_checkpoint = property(lambda self: self.path / LAST_CHECKPOINT)
    best_checkpoint = property(lambda self: self.path / BEST_CHECKPOINT)
    queue_root = property(lambda self: self.path / QUEUE_DIR)
    feedback_root = property(lambda self: self.path / FEEDBACK_DIR)
    rejected_root = property(lambda self: self.path / FEEDBACK_DIR / REJECTED_DIR)
    plots = property(lambda self: self.path / PLOTS_DIR)
    log = property(lambda self: self.path / LOG_FILE)
    evaluation = property(lambda self: self.path / EVALUATION_FILE)
    launch = property(lambda self: self.path / LAUNCH_FILE)
    lock = property(lambda self: self.path / LOCK_FILE)

    def queue_dir(self, epoch: int) -> Path:
        return self.queue_root / f"epoch_{epoch:03d}"

    def feedback_file(self, epoch: int) -> Path:
        return self.feedback_root / f"epoch_{epoch:03d}.json"

    def tracking_dir(self, epoch: int) -> Path:
        return self.path / TRACKING_DIR / f"epoch_{epoch:03d}"

    def tracking_map(self, epoch: int, index: int) -> Path:
        return self.tracking_dir(epoch) / f"{index}.npy"

    def has_config(self) -> bool:
        """The trainer has started this run (and so it can be resumed or read)."""
        return self.config.exists()

    def is_run(self) -> bool:
        """A folder the trainer has written its config in, or the dashboard a launch record (the trainer
        takes a few seconds to start)."""
        return self.config.exists() or self.launch.exists()


def run_from_argument(run: str, runs_dir: str | Path) -> RunDir:
    """A command's run argument: a run folder, or a run name under ``runs_dir``; ProtocolError if it
    holds no run."""
    path = Path(run) if Path(run).is_dir() else Path(runs_dir) / run
    found = RunDir(path)
    if not found.has_config():
        raise ProtocolError(f"{path} is not a run directory (no {CONFIG_FILE})")
    return found
