"""Proposals in the queue: training images the trainer thinks carry what a person marked, each with the
mask it proposes (trainer/proposals.py finds them). Per query round, in the queue folder:

    p000.png, p000_mask.npy, ...   the image and its proposed mask (uint8 0/1, H×W)
    proposals.json                 the index, written after the images and masks, before the manifest

A queue without proposals.json has no proposals (older runs, too few marks yet). The answers come back
in the mask file's ``proposals`` list (trainer/protocol/maskfile.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_save_npy, atomic_write_bytes, atomic_write_json
from .formats import FORMAT, ProtocolError, read_json, upgrade
from .layout import RunDir

PROPOSALS_FILE = "proposals.json"
PROPOSAL_ACCEPT = "accept"      # the proposed (or a corrected) mask is a mark: source "proposed"
PROPOSAL_REJECT = "reject"      # the image does not carry it: nothing is added
PROPOSAL_ACTIONS = (PROPOSAL_ACCEPT, PROPOSAL_REJECT)
SOURCE_DRAWN, SOURCE_PROPOSED = "drawn", "proposed"


@dataclass(frozen=True)
class ProposalEntry:
    """One proposal of a queue: which training image, how sure the trainer is, and its size."""

    proposal_id: str
    index: int          # dataset index of the training image
    score: float        # logit along the fitted direction at the image's best position (higher: surer)
    true_label: int
    height: int
    width: int

    def to_json(self) -> dict:
        return {"proposal_id": self.proposal_id, "index": int(self.index), "score": round(float(self.score), 4),
                "true_label": int(self.true_label), "height": int(self.height), "width": int(self.width)}

    @classmethod
    def from_json(cls, p: Any) -> "ProposalEntry":
        if not isinstance(p, dict):
            raise ProtocolError("proposal: not an object")
        try:
            return cls(str(p["proposal_id"]), int(p["index"]), float(p.get("score", 0.0)),
                       int(p.get("true_label", -1)), int(p["height"]), int(p["width"]))
        except KeyError as e:
            raise ProtocolError(f"proposal: no {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"proposal: {type(e).__name__}: {e}") from None


def proposals_path(run: RunDir, epoch: int) -> Path:
    return run.queue_dir(epoch) / PROPOSALS_FILE


def proposal_image_path(run: RunDir, epoch: int, proposal_id: str) -> Path:
    return run.queue_dir(epoch) / f"{proposal_id}.png"


def proposal_mask_path(run: RunDir, epoch: int, proposal_id: str) -> Path:
    return run.queue_dir(epoch) / f"{proposal_id}_mask.npy"


def write_proposal(run: RunDir, epoch: int, proposal_id: str, image_png: bytes, mask: np.ndarray) -> None:
    """The image and the proposed mask of one proposal (before the index that names them)."""
    atomic_write_bytes(proposal_image_path(run, epoch, proposal_id), image_png)
    atomic_save_npy(proposal_mask_path(run, epoch, proposal_id), np.asarray(mask, dtype=bool).astype(np.uint8))


def write_proposals(run: RunDir, epoch: int, entries: list[ProposalEntry], **info: Any) -> None:
    """The index, written after every image and mask it names. ``info``: how they were found."""
    atomic_write_json(proposals_path(run, epoch), {"format": FORMAT, "epoch": epoch, **info,
                                                   "proposals": [e.to_json() for e in entries]})


def read_proposals(run: RunDir, epoch: int) -> dict | None:
    """The proposals index of a queue (its entries as ProposalEntry under ``entries``); None where the
    queue has none. ProtocolError when it is malformed."""
    try:
        doc = upgrade(read_json(proposals_path(run, epoch)), "proposals")
    except FileNotFoundError:
        return None
    items = doc.get("proposals")
    if not isinstance(items, list):
        raise ProtocolError(f"{PROPOSALS_FILE}: 'proposals' must be a list")
    entries = [ProposalEntry.from_json(p) for p in items]
    if len({e.proposal_id for e in entries}) != len(entries):
        raise ProtocolError(f"{PROPOSALS_FILE}: a proposal_id occurs twice")
    return {**doc, "entries": entries}


def proposal_entries(run: RunDir, epoch: int) -> list[ProposalEntry]:
    """The queue's proposals; none where it has none or its index cannot be read (answers to an index
    that cannot be read are refused by the mask file's check)."""
    try:
        found = read_proposals(run, epoch)
    except (OSError, ProtocolError):
        return []
    return found["entries"] if found else []


def read_proposal_mask(run: RunDir, epoch: int, proposal_id: str) -> np.ndarray:
    """The proposed mask as bool H×W (FileNotFoundError if missing)."""
    return np.load(proposal_mask_path(run, epoch, proposal_id), allow_pickle=False).astype(bool)


def read_proposal_image(run: RunDir, epoch: int, proposal_id: str) -> np.ndarray:
    """The proposal's image as H×W×3 uint8."""
    from PIL import Image

    with Image.open(proposal_image_path(run, epoch, proposal_id)) as im:
        return np.asarray(im.convert("RGB"))
