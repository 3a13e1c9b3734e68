"""The run-directory protocol shared by the trainer, the dashboard and the simulated annotator.

Torch-free on purpose: the dashboard imports only this module, so a trainer on another machine
that shares the folder is enough. One writer per file: the trainer writes everything except
``feedback/``, which only an annotator (the dashboard or the oracle) writes, and ``evaluation.json``,
which only ``hitl-evaluate`` writes. Every file is written to a temporary file in the same folder and
renamed into place, so a reader never sees half a file.

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
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import reprlib
import shutil
import stat
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FORMAT = 1

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
TRACKING_COLUMNS = ("epoch", "index", "masked_share")

# Limits on a mask file, which anyone who can write feedback/ may put there: above them it is refused
# unread. 16 MiB holds 500 brush-marked 224x224 answers several times over; a run-length list never
# needs more runs than the image has pixels, plus one.
MASK_FILE_MAX_BYTES = 16 * 1024 * 1024

# Trainer states. "stale" is never written: readers derive it from an old heartbeat.
TRAINING = "training"
WAITING = "waiting_for_feedback"
FINISHED = "finished"
FAILED = "failed"
STOPPED = "stopped"
STALE = "stale"
STATES = (TRAINING, WAITING, FINISHED, FAILED, STOPPED)

HEARTBEAT_SECONDS = 2.0
STALE_AFTER_SECONDS = 30.0

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_precision", "val_recall",
    "val_f1", "penalty", "wrong_reason", "n_feedback", "lr", "seconds",
)

# What an annotator may say about one query.
ACTION_MASK = "mask"          # apply the forbidden (and optional relevant) mask
ACTION_SKIP = "skip"          # no feedback for this image
ACTION_WRONG_LABEL = "wrong_label"  # the label looks wrong: the trainer excludes the image
ACTIONS = (ACTION_MASK, ACTION_SKIP, ACTION_WRONG_LABEL)


class ProtocolError(ValueError):
    """A run-directory file that does not follow the protocol; the message names the problem."""


# --------------------------------------------------------------------------- atomic writes

def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask can only be read by setting it, which is not thread-safe


def _complete_temp(path: Path, data: bytes) -> str:
    """A flushed, fsynced temp file beside ``path`` (same filesystem, so it can be renamed or linked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide run files from a lab's other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write via a temp file in the same folder and ``os.replace`` (same filesystem, so atomic)."""
    tmp = _complete_temp(Path(path), data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Strict JSON: a NaN or infinite number (an undefined metric, a best loss before any epoch) is null."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=1, sort_keys=False, default=_json_default,
                                       allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def exclusive_write_bytes(path: Path | str, data: bytes) -> bool:
    """Create ``path`` atomically unless anything is already there (even a dangling link); returns
    False if so.

    A hard link of a complete temp file either creates the name or fails, so two tabs that submit
    the same epoch cannot overwrite each other.
    """
    tmp = _complete_temp(Path(path), data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)
    return True


def atomic_save_npy(path: Path | str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path | str) -> Any:
    """Read a JSON file the trainer or dashboard wrote; a missing file raises FileNotFoundError, a broken
    one ProtocolError. Runs of earlier versions wrote NaN and Infinity: they still read."""
    path = Path(path)
    return parse_json(path.read_bytes(), path.name, finite_only=False)


def parse_json(data: bytes, name: str, finite_only: bool = True) -> Any:
    """JSON text as written by this protocol: UTF-8 and, with ``finite_only`` (a mask file), no NaN or
    Infinity; anything else is a ProtocolError naming ``name`` (never quoting the content)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant) if finite_only else json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{name}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ProtocolError(f"{name}: nested too deeply to be a run file") from None
    except ValueError as e:  # NaN/Infinity, or an integer too long to convert
        raise ProtocolError(f"{name}: {str(e).splitlines()[0][:120]}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# --------------------------------------------------------------------------- layout

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

    def queue_dir(self, epoch: int) -> Path:
        return self.queue_root / f"epoch_{epoch:03d}"

    def feedback_file(self, epoch: int) -> Path:
        return self.feedback_root / f"epoch_{epoch:03d}.json"

    def tracking_dir(self, epoch: int) -> Path:
        return self.path / TRACKING_DIR / f"epoch_{epoch:03d}"

    def tracking_map(self, epoch: int, index: int) -> Path:
        return self.tracking_dir(epoch) / f"{index}.npy"

    def exists(self) -> bool:
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
    if not found.exists():
        raise ProtocolError(f"{path} is not a run directory (no {CONFIG_FILE})")
    return found


# --------------------------------------------------------------------------- config and status

def write_config(run: RunDir, config: dict) -> None:
    atomic_write_json(run.config, {"format": FORMAT, **config})


def read_config(run: RunDir) -> dict:
    return upgrade(read_json(run.config), "config")


def write_status(run: RunDir, state: str, **fields: Any) -> dict:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    status = {"format": FORMAT, "state": state, "pid": os.getpid(), "heartbeat": time.time(), **fields}
    atomic_write_json(run.status, status)
    return status


def read_status(run: RunDir, now: float | None = None) -> dict:
    """The status with ``state`` replaced by ``stale`` when a live state has an old heartbeat
    or its process is gone (same machine only)."""
    try:
        status = upgrade(read_json(run.status), "status")
    except FileNotFoundError:
        return {"format": FORMAT, "state": "unknown", "epoch": 0}
    except ProtocolError as e:
        return {"format": FORMAT, "state": "unknown", "epoch": 0, "error": str(e)}
    if status.get("state") in (TRAINING, WAITING):
        now = time.time() if now is None else now
        heartbeat = status.get("heartbeat")
        age = now - (heartbeat if isinstance(heartbeat, (int, float)) else 0.0)
        if age > STALE_AFTER_SECONDS or not pid_alive(status.get("pid"), status.get("host")):
            status["reported_state"] = status["state"]
            status["state"] = STALE
            status["heartbeat_age"] = age
    return status


def pid_alive(pid: Any, host: str | None = None) -> bool:
    """True unless ``pid`` certainly is not a live process on this machine."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    if host and host != os.uname().nodename:
        return True  # another machine: only the heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------- metrics

def write_metrics(run: RunDir, rows: list[dict]) -> None:
    """Rewrite the whole CSV (a few hundred bytes per epoch) so readers never see a partial row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    atomic_write_text(run.metrics, buf.getvalue())


def read_metrics(run: RunDir) -> list[dict]:
    """Rows as dicts of floats (epoch as int); missing columns of older runs come back as NaN."""
    try:
        text = run.metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for k in METRIC_COLUMNS:
            v = raw.get(k)
            try:
                row[k] = float(v) if v not in (None, "") else math.nan
            except ValueError:
                row[k] = math.nan
        if math.isnan(row["epoch"]):
            continue
        row["epoch"] = int(row["epoch"])
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


# --------------------------------------------------------------------------- confusion matrix

def write_confusion(run: RunDir, epoch: int, class_names: list[str], matrix: list[list[int]]) -> None:
    """The latest validation confusion matrix (rows: true class, columns: predicted class)."""
    atomic_write_json(run.confusion, {"format": FORMAT, "epoch": epoch, "class_names": list(class_names),
                                      "matrix": matrix})


def read_confusion(run: RunDir) -> dict | None:
    """``{"epoch", "class_names", "matrix"}``, or None if there is none yet or it cannot be read."""
    try:
        doc = upgrade(read_json(run.confusion), "confusion")
    except (FileNotFoundError, ProtocolError):
        return None
    matrix = doc.get("matrix")
    if not isinstance(matrix, list) or not matrix:
        return None
    names = doc.get("class_names") or [str(i) for i in range(len(matrix))]
    return {"epoch": doc.get("epoch"), "class_names": [str(n) for n in names], "matrix": matrix}


# --------------------------------------------------------------------------- tracking

def write_tracking(run: RunDir, epoch: int, shares: dict[int, float], maps: dict[int, np.ndarray]) -> None:
    """After ``epoch``: each annotated image's saliency map (float16, in [-1, 1]) and the share of its
    attribution inside its mask. The maps go first, the CSV row last; rows of an epoch written again
    (a resumed run) replace the old ones."""
    for index, saliency in maps.items():
        atomic_save_npy(run.tracking_map(epoch, index), np.asarray(saliency, dtype=np.float16))
    rows = [r for r in read_tracking(run) if r[0] != epoch]
    rows += [(epoch, int(index), float(share)) for index, share in shares.items()]
    lines = [",".join(TRACKING_COLUMNS), *(f"{e},{i},{s:.6f}" for e, i, s in rows)]
    atomic_write_text(run.tracking, "\n".join(lines) + "\n")


def read_tracking(run: RunDir) -> list[tuple[int, int, float]]:
    """(epoch, index, masked_share) rows in file order; malformed lines (a partial last one) are skipped."""
    try:
        text = run.tracking.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split(",")
        if len(parts) != len(TRACKING_COLUMNS):
            continue
        try:
            rows.append((int(parts[0]), int(parts[1]), float(parts[2])))
        except ValueError:
            continue
    return [r for r in rows if math.isfinite(r[2])]


def read_saliency(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A saliency map (queue or tracking) as float32 in [-1, 1], or None if it is missing, unreadable
    or not of ``shape``."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(arr, np.ndarray) or arr.shape != shape or not np.issubdtype(arr.dtype, np.number):
        return None
    return np.nan_to_num(arr.astype(np.float32)).clip(-1, 1)


# --------------------------------------------------------------------------- launch record and log

def write_launch(run: RunDir, pid: int, argv: list[str], **fields: Any) -> None:
    """What the dashboard started in ``run``: the one file it writes besides ``feedback/``."""
    atomic_write_json(run.launch, {"format": FORMAT, "pid": pid, "host": os.uname().nodename, "argv": argv,
                                   "started_at": time.time(), **fields})


def read_launch(run: RunDir) -> dict | None:
    """The last launch record; None if there is none or it is unreadable."""
    try:
        launch = upgrade(read_json(run.launch), "launch")
    except (FileNotFoundError, ProtocolError):
        return None
    return launch if isinstance(launch.get("pid"), int) else None


def delete_run(run: RunDir) -> None:
    """Remove a run folder and everything in it; refuses a folder that is not a run."""
    if not run.is_run():
        raise ProtocolError(f"{run.path} is not a run folder (no {CONFIG_FILE} or {LAUNCH_FILE})")
    shutil.rmtree(run.path)


def mark_stop_requested(run: RunDir, launch: dict) -> None:
    atomic_write_json(run.launch, {**launch, "stop_requested_at": time.time()})


def open_log(run: RunDir, append: bool):
    """trainer.log for a trainer's stdout and stderr; a new run truncates it, a resumed one appends."""
    run.path.mkdir(parents=True, exist_ok=True)
    return open(run.log, "a" if append else "w", encoding="utf-8")


def read_log_tail(run: RunDir, lines: int = 40) -> str:
    """The end of trainer.log (reading only its last 64 KiB: logs of long runs grow)."""
    try:
        with open(run.log, "rb") as f:
            f.seek(0, io.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(deque(text.replace("\r", "\n").splitlines(), maxlen=lines))


# --------------------------------------------------------------------------- evaluation

def write_evaluation(run: RunDir, doc: dict) -> None:
    atomic_write_json(run.evaluation, {"format": FORMAT, **doc})


def read_evaluation(run: RunDir) -> dict | None:
    """The latest ``hitl-evaluate`` result, or None if the run has not been evaluated."""
    try:
        return upgrade(read_json(run.evaluation), "evaluation")
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- masks

def encode_mask(mask: np.ndarray) -> dict:
    """Run-length encode a boolean H×W mask (row-major runs, starting with a run of False)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"height": int(mask.shape[0]), "width": int(mask.shape[1]), "rle": runs}


def decode_mask(obj: Any, height: int, width: int, what: str = "mask") -> np.ndarray:
    """Decode and validate a mask object: ``{"height","width","rle"}`` or ``{"height","width","boxes"}``
    (boxes as ``[x0, y0, x1, y1]`` in pixels, end exclusive). Raises ProtocolError naming the problem."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected an object with height, width and rle or boxes")
    h, w = obj.get("height"), obj.get("width")
    if (h, w) != (height, width):
        raise ProtocolError(f"{what}: size {h}x{w} does not match the image size {height}x{width}")
    if "rle" in obj:
        runs = obj["rle"]
        if not isinstance(runs, list):
            raise ProtocolError(f"{what}: rle must be a list of non-negative integers")
        if len(runs) > height * width + 1:
            raise ProtocolError(f"{what}: rle has {len(runs)} runs, more than the {height * width} pixels allow")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in runs):
            raise ProtocolError(f"{what}: rle must be a list of non-negative integers")
        if sum(runs) != height * width:
            raise ProtocolError(f"{what}: rle covers {sum(runs)} pixels, the image has {height * width}")
        values = np.zeros(len(runs), dtype=bool)
        values[1::2] = True
        return np.repeat(values, runs).reshape(height, width)
    if "boxes" in obj:
        mask = np.zeros((height, width), dtype=bool)
        boxes = obj["boxes"]
        if not isinstance(boxes, list):
            raise ProtocolError(f"{what}: boxes must be a list of [x0, y0, x1, y1]")
        if len(boxes) > height * width:
            raise ProtocolError(f"{what}: {len(boxes)} boxes, more than the image has pixels")
        for b in boxes:
            if (not isinstance(b, list) or len(b) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
                raise ProtocolError(f"{what}: box {b!r} is not [x0, y0, x1, y1]")
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ProtocolError(f"{what}: box {b!r} lies outside the {width}x{height} image")
            mask[y0:y1, x0:x1] = True
        return mask
    raise ProtocolError(f"{what}: needs rle or boxes")


# --------------------------------------------------------------------------- query queue

@dataclass(frozen=True)
class QueryEntry:
    """One query of a manifest: which training image, what the model said about it, and its size."""

    query_id: str
    index: int                 # dataset index of the training image
    true_label: int
    predicted_label: int
    probabilities: list[float]
    entropy: float             # nats
    height: int
    width: int
    already_annotated: bool = False

    def to_json(self) -> dict:
        return {"query_id": self.query_id, "index": int(self.index), "true_label": int(self.true_label),
                "predicted_label": int(self.predicted_label),
                "probabilities": [round(float(p), 6) for p in self.probabilities], "entropy": float(self.entropy),
                "height": int(self.height), "width": int(self.width),
                "already_annotated": bool(self.already_annotated)}

    @classmethod
    def from_json(cls, q: Any) -> "QueryEntry":
        """Raises ProtocolError naming the missing or malformed field."""
        if not isinstance(q, dict):
            raise ProtocolError("not an object")
        try:
            return cls(query_id=str(q["query_id"]), index=int(q["index"]), true_label=int(q["true_label"]),
                       predicted_label=int(q["predicted_label"]),
                       probabilities=[float(p) for p in q.get("probabilities") or []],
                       entropy=float(q.get("entropy", math.nan)), height=int(q["height"]), width=int(q["width"]),
                       already_annotated=bool(q.get("already_annotated", False)))
        except KeyError as e:
            raise ProtocolError(f"no {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"{type(e).__name__}: {e}") from None


def write_query_image(run: RunDir, epoch: int, query_id: str, image_png: bytes, saliency: np.ndarray) -> None:
    qdir = run.queue_dir(epoch)
    atomic_write_bytes(qdir / f"{query_id}.png", image_png)
    atomic_save_npy(qdir / f"{query_id}_saliency.npy", saliency.astype(np.float32))


def write_manifest(run: RunDir, epoch: int, manifest: dict) -> None:
    """Written last: a queue folder without a manifest is not a queue yet."""
    atomic_write_json(run.queue_dir(epoch) / MANIFEST_FILE, {"format": FORMAT, "epoch": epoch, **manifest})


def read_manifest(run: RunDir, epoch: int) -> dict | None:
    try:
        return upgrade(read_json(run.queue_dir(epoch) / MANIFEST_FILE), "manifest")
    except FileNotFoundError:
        return None


def query_image_path(run: RunDir, epoch: int, query_id: str) -> Path:
    return run.queue_dir(epoch) / f"{query_id}.png"


def query_saliency_path(run: RunDir, epoch: int, query_id: str) -> Path:
    return run.queue_dir(epoch) / f"{query_id}_saliency.npy"


def read_query_image(run: RunDir, epoch: int, query_id: str) -> np.ndarray:
    """The queued image as H×W×3 uint8. FileNotFoundError if it is missing, OSError if unreadable."""
    from PIL import Image  # only readers of images pay for it

    with Image.open(query_image_path(run, epoch, query_id)) as im:
        return np.asarray(im.convert("RGB"))


def queue_epochs(run: RunDir) -> list[int]:
    """Epochs that have a complete queue (a manifest), ascending."""
    if not run.queue_root.is_dir():
        return []
    epochs = []
    for d in run.queue_root.iterdir():
        if d.name.startswith("epoch_") and (d / MANIFEST_FILE).exists():
            try:
                epochs.append(int(d.name[6:]))
            except ValueError:
                continue
    return sorted(epochs)


def pending_epoch(run: RunDir) -> int | None:
    """The newest queued epoch that has no feedback file yet."""
    for epoch in reversed(queue_epochs(run)):
        return None if feedback_sent(run, epoch) else epoch
    return None


# --------------------------------------------------------------------------- feedback (mask file)

@dataclass
class QueryFeedback:
    query_id: str
    index: int
    action: str
    forbidden: np.ndarray | None = None   # bool H×W: the model must not rely on these pixels
    relevant: np.ndarray | None = None    # bool H×W: the model should rely on these pixels

    def must_not_use(self) -> np.ndarray | None:
        """Where the model must not look: the forbidden marks and, where a relevant region was drawn,
        everything outside it, so both kinds of mark feed one penalty. None when the answer marks nothing
        (a skip, a wrong label, empty marks)."""
        if self.action != ACTION_MASK:
            return None
        mask = None if self.forbidden is None else self.forbidden.copy()
        if self.relevant is not None and self.relevant.any():
            mask = ~self.relevant if mask is None else mask | ~self.relevant
        return mask if mask is not None and mask.any() else None


def feedback_document(epoch: int, annotator: str, answers: Iterable[QueryFeedback]) -> dict:
    queries = []
    for a in answers:
        q: dict[str, Any] = {"query_id": a.query_id, "index": int(a.index), "action": a.action}
        if a.forbidden is not None:
            q["forbidden"] = encode_mask(a.forbidden)
        if a.relevant is not None:
            q["relevant"] = encode_mask(a.relevant)
        queries.append(q)
    return {"format": FORMAT, "epoch": epoch, "annotator": annotator, "submitted_at": time.time(),
            "queries": queries}


def submit_feedback(run: RunDir, epoch: int, annotator: str, answers: Iterable[QueryFeedback]) -> bool:
    """Write the mask file for ``epoch``; returns False if one was already sent. A document over the
    size limit is refused (ProtocolError) before anything is written."""
    doc = feedback_document(epoch, annotator, answers)
    data = (json.dumps(doc, separators=(",", ":"), default=_json_default) + "\n").encode("utf-8")
    if len(data) > MASK_FILE_MAX_BYTES:
        raise ProtocolError(f"the answers for epoch {epoch} come to {len(data) / 2**20:.1f} MiB, over the "
                            f"{MASK_FILE_MAX_BYTES // 2**20} MiB limit of a mask file")
    return exclusive_write_bytes(run.feedback_file(epoch), data)


def feedback_sent(run: RunDir, epoch: int) -> bool:
    """Whether anything is at the mask file's name, even a dangling link or a folder: the trainer then
    reads it (and moves aside what it cannot use), and no annotator writes over it. Trainer and
    dashboard both ask this, so they agree on what counts as sent."""
    return os.path.lexists(run.feedback_file(epoch))


_NOT_A_FILE = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def read_mask_file(path: Path) -> Any:
    """The JSON in a mask file, read without trusting it: only a regular file (no link, pipe, device or
    folder: nothing that could block or never end), at most MASK_FILE_MAX_BYTES. FileNotFoundError if
    nothing is there; ProtocolError naming the file for everything else."""
    name = f"{FEEDBACK_DIR}/{path.name}"
    try:
        kind = _file_kind(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None  # nothing there, as feedback_sent sees it
    except OSError as e:
        raise ProtocolError(f"{name}: cannot be looked at ({e.strerror or type(e).__name__})") from None
    if kind:
        raise ProtocolError(f"{name}: is {kind}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ProtocolError(f"{name}: cannot be opened ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        kind = _file_kind(os.fstat(f.fileno()).st_mode)  # replaced between lstat and open
        if kind:
            raise ProtocolError(f"{name}: is {kind}, not a regular file")
        try:
            data = f.read(MASK_FILE_MAX_BYTES + 1)
        except OSError as e:
            raise ProtocolError(f"{name}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(data) > MASK_FILE_MAX_BYTES:
        raise ProtocolError(f"{name}: larger than the {MASK_FILE_MAX_BYTES // 2**20} MiB limit of a mask file")
    return parse_json(data, name)


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    return next((kind for test, kind in _NOT_A_FILE if test(mode)), None)


def load_feedback(run: RunDir, epoch: int, manifest: dict) -> list[QueryFeedback] | None:
    """The validated answers of the mask file for ``epoch``; None while nothing was sent. Anything the
    file holds that cannot be used is a ProtocolError with one line naming the file: the caller refuses
    it and keeps going, whatever it contains."""
    path = run.feedback_file(epoch)
    try:
        doc = read_mask_file(path)
    except FileNotFoundError:
        return None
    try:
        return parse_feedback(doc, manifest)
    except ProtocolError as e:
        raise ProtocolError(f"{FEEDBACK_DIR}/{path.name}: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        # parse_feedback checks each field; this keeps a case it did not foresee from killing the trainer
        raise ProtocolError(f"{FEEDBACK_DIR}/{path.name}: cannot be used ({type(e).__name__})") from None


def reject_feedback(run: RunDir, epoch: int) -> Path:
    """Move the mask file for ``epoch`` (whatever it is: file, link, folder, pipe) into
    ``feedback/rejected/`` under a name never used before, so every refused file is kept."""
    run.rejected_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while True:
        kept = run.rejected_root / f"epoch_{epoch:03d}.{stamp}.{uuid.uuid4().hex[:12]}.json"
        if not os.path.lexists(kept):
            break
    os.rename(run.feedback_file(epoch), kept)
    return kept


def parse_feedback(doc: Any, manifest: dict) -> list[QueryFeedback]:
    """Validate a mask file against the queue it answers. Raises ProtocolError with the reason."""
    if not isinstance(doc, dict):
        raise ProtocolError("the mask file must hold a JSON object")
    doc = upgrade(doc, "feedback")
    if doc.get("epoch") != manifest.get("epoch"):
        raise ProtocolError(f"epoch {_short(doc.get('epoch'))} does not match the queue's epoch {manifest.get('epoch')}")
    queries = doc.get("queries")
    if not isinstance(queries, list):
        raise ProtocolError("'queries' must be a list")
    known = {q["query_id"]: q for q in manifest["queries"]}
    seen: set[str] = set()
    answers = []
    for i, q in enumerate(queries):
        if not isinstance(q, dict):
            raise ProtocolError(f"query #{i} is not an object")
        qid = q.get("query_id")
        if not isinstance(qid, str) or qid not in known:
            raise ProtocolError(f"query #{i}: unknown query_id {_short(qid)}")
        if qid in seen:
            raise ProtocolError(f"query {qid}: answered twice")
        seen.add(qid)
        ref = known[qid]
        if q.get("index") != ref["index"]:
            raise ProtocolError(f"query {qid}: index {_short(q.get('index'))} does not match the queue ({ref['index']})")
        action = q.get("action", ACTION_MASK)
        if not isinstance(action, str) or action not in ACTIONS:
            raise ProtocolError(f"query {qid}: unknown action {_short(action)} (expected one of {', '.join(ACTIONS)})")
        h, w = ref["height"], ref["width"]
        forbidden = decode_mask(q["forbidden"], h, w, f"query {qid} forbidden") if q.get("forbidden") is not None else None
        relevant = decode_mask(q["relevant"], h, w, f"query {qid} relevant") if q.get("relevant") is not None else None
        answers.append(QueryFeedback(qid, ref["index"], action, forbidden, relevant))
    return answers


def _short(value: Any) -> str:
    """A value from an untrusted file, quoted for a one-line message and cut short."""
    text = reprlib.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- format upgrades

# Ordered upgrades: _UPGRADES[kind][n] turns a format-n document into format n+1.
_UPGRADES: dict[str, dict[int, Any]] = {kind: {} for kind in (
    "config", "status", "manifest", "feedback", "evaluation", "confusion", "launch")}


def upgrade(doc: dict, kind: str) -> dict:
    """Bring an older document up to FORMAT; a document from a newer version is refused."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"{kind}: expected a JSON object")
    version = doc.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise ProtocolError(f"{kind}: format {version!r} is newer than this version understands ({FORMAT})")
    while version < FORMAT:
        doc = _UPGRADES[kind][version](doc)
        version += 1
        doc["format"] = version
    return doc


# --------------------------------------------------------------------------- drafts
# The reviewer's unsent work on a queue, kept beside the run so a reload or a browser crash loses
# nothing. Only the dashboard writes drafts and only the dashboard reads them; the trainer never
# looks here: the mask file, which Submit alone writes, stays the one answer.

DRAFTS_DIR = "drafts"


def _draft_file(self: RunDir, epoch: int) -> Path:
    return self.path / DRAFTS_DIR / f"epoch_{epoch:03d}.json"


RunDir.draft_file = _draft_file


def write_draft(run: RunDir, epoch: int, draft: dict) -> None:
    atomic_write_json(run.draft_file(epoch), {"format": FORMAT, "epoch": epoch, **draft})


def read_draft(run: RunDir, epoch: int) -> dict | None:
    """The draft for ``epoch``; None when there is none or it cannot be read (a draft is a convenience)."""
    try:
        doc = read_json(run.draft_file(epoch))
    except (FileNotFoundError, ProtocolError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format", 1) == FORMAT else None
