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
from .formats import (FORMAT, MAX_INT, ProtocolError, check_fields, is_int, is_number, is_str, read_bytes, read_json,
                      read_text, upgrade)
from .layout import CONFUSION_FILE, EVALUATION_FILE, METRICS_FILE, RunDir

TRACKING_COLUMNS = ("epoch", "index", "masked_share")

METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_precision", "val_recall",
    "val_f1", "penalty", "wrong_reason", "n_feedback", "lr", "seconds",
    "reliance_flip",  # answers that swapping the marked artefacts changes (trainer/reliance.py); NaN: older runs
    "marks_tell",     # how much more often than by chance images carrying a marked artefact have its class (the gate)
    "full_teaching",  # 1 once the marks teach fully (trainer/teaching.py), 0 while they wait; NaN: older runs
    "artefacts_found",  # unannotated training images the marked artefacts were found on, carried (NaN: not looked)
    "marks_missed",   # --feedback auto: mean share of a mark the finder misses, held out (weighs the penalty; NaN: not measured)
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
    """Rows as dicts of floats (epoch as int); missing columns of older runs and empty cells come back as
    NaN. ProtocolError naming the line if the file is not UTF-8 CSV, a cell is not a number or an epoch
    not a whole number."""
    try:
        text = read_text(run.metrics)
    except FileNotFoundError:
        return []
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text))
        for raw in reader:
            row: dict[str, Any] = {}
            for k in METRIC_COLUMNS:
                v = raw.get(k)
                try:
                    row[k] = float(v) if v not in (None, "") else math.nan
                except (TypeError, ValueError):
                    raise ProtocolError(f"{METRICS_FILE}: line {reader.line_num}: {k} is not a number") from None
            if math.isnan(row["epoch"]):
                continue
            if not (row["epoch"].is_integer() and 0 <= row["epoch"] < MAX_INT):
                raise ProtocolError(f"{METRICS_FILE}: line {reader.line_num}: epoch is not a whole number")
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    except csv.Error as e:
        raise ProtocolError(f"{METRICS_FILE}: not CSV ({str(e)[:80]})") from None
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


# --------------------------------------------------------------------------- reliance

RELIES, SOMEWHAT = 0.2, 0.05  # flip rates the sentence calls "relies on it" / "relies on it a little"


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
    verdict = ("the model relies on it" if rate >= RELIES else
               "the model relies on it a little" if rate >= SOMEWHAT else "the model hardly relies on it")
    sentence = (f"Swapping the {what} in {n} held-out images (pasting it where it was not, removing it where it "
                f"was) changed {rate:.0%} of the model's answers: {verdict}.")
    acc, before = reliance.get("swapped_test_acc"), reliance.get("test_acc")
    if isinstance(acc, (int, float)) and isinstance(before, (int, float)):
        sentence += f" Accuracy on those images went from {before:.0%} to {acc:.0%}."
    return sentence


def describe_teaching(rows: list[dict], gate: object) -> str | None:
    """A sentence about the teaching gate (trainer/teaching.py) from a run's metrics rows and its config's
    ``teaching_gate``: whether the marks teach fully and why, and on how many other images what was marked
    was found and covered (trainer/counterexamples.py); None for runs before the gate, with it off, or
    without marks yet."""
    if gate != "marks":
        return None
    gated = [r for r in rows if isinstance(r.get("full_teaching"), float) and not math.isnan(r["full_teaching"])]
    if not gated or not any(r.get("n_feedback", 0) > 0 for r in gated):
        return None
    opened = next((r for r in gated if r["full_teaching"] == 1), None)
    if opened is None:
        tells = [r["marks_tell"] for r in gated if not math.isnan(r.get("marks_tell", math.nan))]
        how = f" ({100 * tells[-1]:+.0f} points against chance)" if tells else ""
        return ("Your marks do not teach yet: the training images that carry what you marked have its class no "
                f"more often than by chance{how}, so the model has nothing there to unlearn, and it trains as it "
                "would without them. They teach as soon as what you mark goes with the class.")
    tells = opened.get("marks_tell", math.nan)
    why = ("too few other images carry what you marked where you marked it to tell whether it goes with the class"
           if math.isnan(tells) else
           f"training images that carry what you marked have its class {100 * tells:.0f} points more often than by chance")
    found = [r["artefacts_found"] for r in rows if not math.isnan(r.get("artefacts_found", math.nan))]
    carried = (f" In its latest epoch the trainer also saw what you marked on {int(found[-1])} training images "
               "nobody marked, wherever it was on them, and covered it up there while training, so the model "
               "cannot lean on it there either."
               if found and found[-1] > 0 else "")
    missed = [r["marks_missed"] for r in rows if not math.isnan(r.get("marks_missed", math.nan))]
    penalised = (f" Looking for it by itself on the images you marked, without your mark, it found "
                 f"{100 * (1 - missed[-1]):.0f}% of what you marked; for the rest it also penalises the model for "
                 "looking there." if missed else "")
    return f"Your marks teach fully from epoch {int(opened['epoch'])}: {why}.{carried}{penalised}"


# --------------------------------------------------------------------------- confusion matrix

def write_confusion(run: RunDir, epoch: int, class_names: list[str], matrix: list[list[int]]) -> None:
    """The latest validation confusion matrix (rows: true class, columns: predicted class)."""
    atomic_write_json(run.confusion, {"format": FORMAT, "epoch": epoch, "class_names": list(class_names),
                                      "matrix": matrix})


def read_confusion(run: RunDir) -> dict | None:
    """``{"epoch", "class_names", "matrix"}``, or None if there is none yet. ProtocolError unless the
    matrix is a square list of lists of counts (non-negative whole numbers), one row per class name."""
    try:
        doc = upgrade(read_json(run.confusion), "confusion")
    except FileNotFoundError:
        return None
    check_fields(doc, CONFUSION_FILE, {"epoch": (is_int, "a whole number")}, ("matrix",))
    matrix = doc["matrix"]
    if not isinstance(matrix, list) or not matrix:
        raise ProtocolError(f"{CONFUSION_FILE}: matrix is not a list of rows")
    n = len(matrix)
    if not all(isinstance(row, list) and len(row) == n for row in matrix):
        raise ProtocolError(f"{CONFUSION_FILE}: matrix is not square ({n} rows, each of {n} counts)")
    if not all(is_int(v) for row in matrix for v in row):
        raise ProtocolError(f"{CONFUSION_FILE}: matrix holds something other than counts")
    names = doc.get("class_names")
    if names is None:
        names = [str(i) for i in range(n)]
    if not isinstance(names, list) or len(names) != n or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                                  for v in names):
        raise ProtocolError(f"{CONFUSION_FILE}: class_names is not a list of {n} names, one per row")
    return {"epoch": doc.get("epoch"), "class_names": [str(v) for v in names], "matrix": matrix}


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
        text = read_bytes(run.tracking).decode("utf-8", errors="replace")
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
    return [r for r in rows if is_int(r[0]) and is_int(r[1]) and math.isfinite(r[2])]


def read_saliency(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A saliency map (queue or tracking) as float32 in [-1, 1], or None if it is missing, unreadable
    or not of ``shape``. Only a regular .npy file is read, and only once its header says ``shape``."""
    try:
        data = read_bytes(path, limit=64 + 8 * shape[0] * shape[1] + 4096)
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        if tuple(header[0]) != tuple(shape) or not _real_number(header[2]):
            return None
        f.seek(0)
        arr = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, TypeError, ProtocolError):
        return None
    if not isinstance(arr, np.ndarray) or arr.shape != shape or not _real_number(arr.dtype):
        return None
    return np.nan_to_num(arr.astype(np.float32)).clip(-1, 1)


def _real_number(dtype: np.dtype) -> bool:
    """A saliency map holds real numbers (a complex one is refused, not cast)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def write_evaluation(run: RunDir, doc: dict) -> None:
    atomic_write_json(run.evaluation, {"format": FORMAT, **doc})


_NUMBERS = (lambda v: isinstance(v, list) and bool(v) and all(is_number(x) for x in v), "a list of numbers")
EVALUATION_FIELDS = {"epoch": (is_int, "a whole number"), "split": (is_str, "text"),
                     "images": (is_int, "a whole number"), "results": (lambda v: isinstance(v, list), "a list")}
RESULT_FIELDS = {"explainer": (is_str, "text"), "fractions": _NUMBERS, "masked_accuracy": _NUMBERS,
                 "deletion": _NUMBERS, "deletion_auc": (is_number, "a number"), "wrong_reason": (is_number, "a number")}


def read_evaluation(run: RunDir) -> dict | None:
    """The latest ``hitl-evaluate`` result, or None if the run has not been evaluated. ProtocolError if
    it is broken: each result needs an explainer and its curves as lists of numbers of one length."""
    try:
        doc = upgrade(read_json(run.evaluation), "evaluation")
    except FileNotFoundError:
        return None
    check_fields(doc, EVALUATION_FILE, EVALUATION_FIELDS, ("results",))
    for i, result in enumerate(doc["results"]):
        what = f"{EVALUATION_FILE}: result #{i}"
        if not isinstance(result, dict):
            raise ProtocolError(f"{what} is not an object")
        check_fields(result, what, RESULT_FIELDS, ("explainer", "fractions", "masked_accuracy", "deletion"))
        if not len(result["fractions"]) == len(result["masked_accuracy"]) == len(result["deletion"]):
            raise ProtocolError(f"{what}: its curves differ in length")
    return doc
