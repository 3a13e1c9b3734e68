"""The query queue: per query round, the images, their saliency and a manifest written last (a queue
folder without a manifest is not a queue yet)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json
from .formats import FORMAT, ProtocolError, check_fields, is_int, is_number, is_str, is_str_list, read_json, upgrade
from .layout import MANIFEST_FILE, RunDir
from .maskfile import feedback_sent
from .proposals import proposal_entries

# A query id names the query's files in its queue folder: a plain file name, nothing that leaves it.
QUERY_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_SIDE = 16384  # pixels: larger is not an image any model here trains on


def _is_query_id(value: Any) -> bool:
    return isinstance(value, str) and QUERY_ID.fullmatch(value) is not None


_SIDE = (lambda v: is_int(v, 1) and v <= MAX_SIDE, f"a whole number from 1 to {MAX_SIDE}")
_LABEL = (is_int, "a whole number")
QUERY_FIELDS = {"query_id": (_is_query_id, "a plain file name"), "index": _LABEL, "true_label": _LABEL,
                "predicted_label": _LABEL, "height": _SIDE, "width": _SIDE,
                "probabilities": (lambda v: isinstance(v, list) and all(is_number(p, finite=True) for p in v),
                                  "a list of numbers"),
                "entropy": (is_number, "a number"), "already_annotated": (lambda v: isinstance(v, bool), "true or false")}
MANIFEST_FIELDS = {"epoch": (is_int, "a whole number"), "class_names": (is_str_list, "a list of text"),
                   "saliency": (is_str, "text"), "queries": (lambda v: isinstance(v, list), "a list")}

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
        missing = next((k for k in ("query_id", "index", "true_label", "predicted_label", "height", "width")
                        if k not in q), None)
        if missing:
            raise ProtocolError(f"no {missing}")
        check_fields(q, "query", QUERY_FIELDS)
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
    """The manifest of ``epoch``'s queue; None if there is none. ProtocolError if it is broken or a field
    has the wrong type: each query needs a query id that is a plain file name, an index and its size."""
    name = f"queue/epoch_{epoch:03d}/{MANIFEST_FILE}"
    try:
        doc = upgrade(read_json(run.queue_dir(epoch) / MANIFEST_FILE), "manifest")
    except FileNotFoundError:
        return None
    check_fields(doc, name, MANIFEST_FIELDS, ("queries",))
    seen = set()
    for i, q in enumerate(doc["queries"]):
        if not isinstance(q, dict):
            raise ProtocolError(f"{name}: query #{i} is not an object")
        check_fields(q, f"{name}: query #{i}", QUERY_FIELDS, ("query_id", "index", "height", "width"))
        if q["query_id"] in seen:
            raise ProtocolError(f"{name}: query #{i}: its query_id is used twice")
        seen.add(q["query_id"])
    return doc


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
    """The newest queued epoch that has no feedback file yet and asks something."""
    for epoch in reversed(queue_epochs(run)):
        if feedback_sent(run, epoch):
            return None
        if not asks_nothing(run, epoch):
            return epoch
    return None


def asks_nothing(run: RunDir, epoch: int) -> bool:
    """Whether the queue has neither a query nor a proposal (the sampling rule or ``--query-budget``
    left nothing to ask): the trainer went on without waiting for an answer to it."""
    try:
        manifest = read_manifest(run, epoch)
    except (OSError, ProtocolError):
        return False
    return bool(manifest) and not manifest["queries"] and not proposal_entries(run, epoch)
