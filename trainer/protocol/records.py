"""What a run measured, for the dashboard: the metrics rows, the latest confusion matrix, the
tracking of annotated images' saliency, and the faithfulness evaluation."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_save_npy, atomic_write_json, atomic_write_text
from .formats import FORMAT, ProtocolError, read_json, upgrade
from .layout import RunDir

TRACKING_COLUMNS = ("epoch", "index", "masked_share")

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_precision", "val_recall",
    "val_f1", "penalty", "wrong_reason", "n_feedback", "lr", "seconds",
    "reliance_flip",  # answers that swapping the marked artefacts changes (trainer/reliance.py); NaN: older runs
)


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


# --------------------------------------------------------------------------- reliance

RELIES, SOMEWHAT = 0.2, 0.05  # flip rates the sentence calls "still relies on it" / "relies on it a little"


def describe_reliance(reliance: dict | None) -> str | None:
    """One sentence a clinician reads about a run's ``result["reliance"]`` (trainer/reliance.py): what swapping
    the marked artefact did to the model's answers; None without one."""
    if not isinstance(reliance, dict):
        return None
    rate, n = reliance.get("flip_rate"), reliance.get("n_images")
    if not isinstance(rate, (int, float)) or not isinstance(n, int) or not n:
        reason = reliance.get("reason")
        return f"Reliance on the marked artefacts was not measured: {reason}." if reason else None
    what = "marked artefact" if reliance.get("source") == "recurring" else "marked regions"
    verdict = ("the model still relies on it" if rate >= RELIES else
               "the model relies on it a little" if rate >= SOMEWHAT else "the model hardly relies on it any more")
    sentence = (f"Swapping the {what} in {n} held-out images (pasting it where it was not, removing it where it "
                f"was) changed {rate:.0%} of the model's answers: {verdict}.")
    acc, before = reliance.get("swapped_test_acc"), reliance.get("test_acc")
    if isinstance(acc, (int, float)) and isinstance(before, (int, float)):
        sentence += f" Accuracy on those images went from {before:.0%} to {acc:.0%}."
    return sentence


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


def write_evaluation(run: RunDir, doc: dict) -> None:
    atomic_write_json(run.evaluation, {"format": FORMAT, **doc})


def read_evaluation(run: RunDir) -> dict | None:
    """The latest ``hitl-evaluate`` result, or None if the run has not been evaluated."""
    try:
        return upgrade(read_json(run.evaluation), "evaluation")
    except FileNotFoundError:
        return None
