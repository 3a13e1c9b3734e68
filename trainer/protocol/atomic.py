"""Atomic writing: the one way anything of this project writes a file another process reads.

Every file is written to a temporary file in the same folder (same filesystem, so a rename is atomic) and
``os.replace``d into place, so a reader never sees half a file. The temp files share one name pattern
(``TEMP_GLOB``), so what a killed writer leaves behind can be found and removed (``remove_stale_temps``).
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f".*{TEMP_SUFFIX}"  # ".<name>.<random>.tmp", as _complete_temp names them


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask can only be read by setting it, which is not thread-safe


def _complete_temp(path: Path, data: bytes) -> str:
    """A flushed, fsynced temp file beside ``path`` (same filesystem, so it can be renamed or linked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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
    atomic_write_text(path, json.dumps(_finite(obj), indent=1, sort_keys=False, default=json_default,
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


def json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def describe_os_error(e: OSError) -> str:
    """One line for a file-system error: what went wrong and where (never the file's contents)."""
    where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "") if e.filename else ""
    what = e.strerror or type(e).__name__
    return f"{what}: {where}" if where else what


def remove_stale_temps(folder: Path | str) -> list[Path]:
    """Remove the temp files a killed writer left in ``folder`` and below (a resumed run's own writer
    is the only one: nothing else is writing there). Returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(TEMP_GLOB):
        if tmp.is_file() and not tmp.is_symlink():
            _unlink_quietly(tmp)
            removed.append(tmp)
    return removed
