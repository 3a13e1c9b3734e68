"""Checkpoint files: the one writer, the one reader, ordered format upgrades and the best/last rule.

Each checkpoint is serialised once: its bytes go to a temp file that is renamed over ``last.pt``, and
when the epoch is the best so far ``best.pt`` becomes a hard link to it (a link, not a second write;
timm's CheckpointSaver does the same). A kill between the rename and the link leaves ``best.pt`` one
best behind the best epoch that ``last.pt`` records. Readers get the right file from ``best_path``, and
``recover`` (on resume) re-links ``best.pt``, so both files always agree on the best epoch. ``recover``
also removes the temp files that a kill during a write left behind.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import torch

from . import protocol

FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is from a newer version; the message names the file."""


def _v1_to_v2(ckpt: dict) -> dict:
    """Format 1 checkpoints written before feedback answered late was tracked lack ``applied``."""
    ckpt["state"].setdefault("applied", [])
    return ckpt


# Ordered upgrades: _UPGRADES[n] turns a format-n checkpoint into format n+1.
_UPGRADES: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def upgrade(ckpt: dict, path: Path) -> dict:
    version = ckpt.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError(f"{path} was written by a newer version (checkpoint format {version!r}; "
                              f"this version reads up to {FORMAT})")
    while version < FORMAT:
        ckpt = _UPGRADES[version](ckpt)
        version += 1
        ckpt["format"] = version
    return ckpt


def _load(path: Path, map_location: Any) -> Any:
    """``torch.load`` of tensors only (``weights_only``), failing with one line that names the file."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"cannot read {path}: the file is empty (0 bytes)")
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one line: its message's first non-empty line, or its type when it has none."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(e).__name__


def read(path: Path | str, map_location: Any = "cpu") -> dict:
    """A training checkpoint, upgraded to the current format."""
    path = Path(path)
    ckpt = _load(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of this tool")
    return upgrade(ckpt, path)


def read_weights(path: Path | str) -> dict:
    """Model weights from a checkpoint of this tool or from a bare state dict (``--init-from``)."""
    obj = _load(Path(path), "cpu")
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model weights")
    return state


def save(run: protocol.RunDir, ckpt: dict, best: bool) -> None:
    """Write ``last.pt`` (and ``best.pt`` as a hard link to the same bytes when ``best``)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **ckpt}, buf)
    protocol.atomic_write_bytes(run.last_checkpoint, buf.getvalue())
    if best:
        _link_over(run.last_checkpoint, run.best_checkpoint)


def _link_over(source: Path | str, target: Path) -> None:
    """Make ``target`` a hard link to ``source``, replacing it atomically (link to a temp name, rename)."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a filesystem without hard links: a copy, still replaced atomically
        protocol.atomic_write_bytes(target, Path(source).read_bytes())
        return
    os.replace(tmp, target)


def _saved_epoch(path: Path) -> int | None:
    try:
        return int(read(path)["state"]["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def _best_is_behind(run: protocol.RunDir) -> bool:
    """True when ``last.pt`` is the best epoch but ``best.pt`` does not hold it (the kill window)."""
    if run.best_checkpoint.exists() and os.path.samefile(run.last_checkpoint, run.best_checkpoint):
        return False
    state = read(run.last_checkpoint)["state"]
    best_epoch = int(state.get("best_epoch", 0))
    return bool(best_epoch) and best_epoch == int(state["epoch"]) and _saved_epoch(run.best_checkpoint) != best_epoch


def best_path(run: protocol.RunDir) -> Path:
    """The file that holds the run's best weights, read-only: ``best.pt``, or ``last.pt`` in the kill
    window that ``recover`` mends on resume."""
    if run.last_checkpoint.exists() and _best_is_behind(run):
        return run.last_checkpoint
    return run.best_checkpoint


def recover(run: protocol.RunDir) -> list[str]:
    """Put a run's checkpoints back in order after a kill; returns what it did, one line each."""
    notes = []
    for tmp in sorted(run.path.glob(f".{protocol.LAST_CHECKPOINT}.*.tmp")) + \
            sorted(run.path.glob(f".{protocol.BEST_CHECKPOINT}.*tmp")):
        tmp.unlink(missing_ok=True)
        notes.append(f"removed {tmp.name}, left by a write that was interrupted")
    if run.last_checkpoint.exists() and _best_is_behind(run):
        _link_over(run.last_checkpoint, run.best_checkpoint)
        notes.append(f"{protocol.BEST_CHECKPOINT} re-linked to the best epoch that {protocol.LAST_CHECKPOINT} "
                     f"records (a kill came between the checkpoint's rename and its link)")
    return notes
