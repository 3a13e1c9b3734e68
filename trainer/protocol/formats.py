"""The format number every run file carries, the upgrades of older documents, and strict JSON reading.

A document from a newer version is refused with a message naming it; an older one is brought up to
``FORMAT`` by an ordered list of small upgrade functions, so old runs keep opening as the format grows.
"""
from __future__ import annotations

import json
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable

FORMAT = 1

# A run file larger than this is refused unread: the largest the trainer writes (a confusion matrix of
# a thousand classes, the metrics of thousands of epochs) is a few MiB.
RUN_FILE_MAX_BYTES = 32 * 2**20
# Integers in run files are counts, epochs, indices and sizes: beyond this one is not one of them.
MAX_INT = 2**53


class ProtocolError(ValueError):
    """A run-directory file that does not follow the protocol; the message names the problem."""


def read_json(path: Path | str) -> Any:
    """Read a JSON file the trainer or dashboard wrote; a missing file raises FileNotFoundError, a broken
    one ProtocolError. Runs of earlier versions wrote NaN and Infinity: they still read."""
    path = Path(path)
    return parse_json(read_bytes(path), path.name, finite_only=False)


_NOT_REGULAR = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def not_regular(mode: int) -> str | None:
    """What a file that is not a regular one is, in words (a link only as ``lstat`` sees it); None for a
    regular file. Readers refuse these: a folder, pipe or device could block or never end."""
    return next((kind for test, kind in _NOT_REGULAR if test(mode)), None)


def read_bytes(path: Path | str, limit: int = RUN_FILE_MAX_BYTES) -> bytes:
    """The bytes of a run file, read without trusting what is at its name: FileNotFoundError if nothing
    is there (a dangling link too), ProtocolError naming the file for a folder, pipe or device (nothing
    that could block or never end) and for a file over ``limit`` bytes; OSError for the rest."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ProtocolError(f"{path.name}: is a folder, not a file") from None
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    kind = not_regular(mode)
    if kind:
        os.close(fd)
        raise ProtocolError(f"{path.name}: is {kind}, not a file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ProtocolError(f"{path.name}: larger than the {limit // 2**20} MiB a run file may hold")
    return data


def read_text(path: Path | str, limit: int = RUN_FILE_MAX_BYTES) -> str:
    """A run file's UTF-8 text (see ``read_bytes``); ProtocolError if it is not UTF-8."""
    path = Path(path)
    return _utf8(read_bytes(path, limit), path.name)


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def parse_json(data: bytes, name: str, finite_only: bool = True) -> Any:
    """JSON text as written by this protocol: UTF-8 and, with ``finite_only`` (a mask file), no NaN or
    Infinity; anything else is a ProtocolError naming ``name`` (never quoting the content)."""
    text = _utf8(data, name)
    try:
        if finite_only:  # 1e400 never reaches parse_constant: json makes it inf through float()
            return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                              parse_int=_finite_int)
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{name}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ProtocolError(f"{name}: nested too deeply to be a run file") from None
    except ValueError as e:  # NaN/Infinity, or an integer too long to convert
        raise ProtocolError(f"{name}: {str(e).splitlines()[0][:120]}") from None


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
        return "(a huge number)"
    text = repr(value) if isinstance(value, (int, float, bool)) or value is None else _kind(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]}{'...' if len(text) > 24 else ''} is out of range")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:  # no float holds it: every reader would overflow
        raise ValueError(f"the integer {text[:24]}... is out of range")
    return value


# Ordered upgrades: _UPGRADES[kind][n] turns a format-n document into format n+1.
_UPGRADES: dict[str, dict[int, Any]] = {kind: {} for kind in (
    "config", "status", "manifest", "feedback", "evaluation", "confusion", "launch", "proposals")}


def upgrade(doc: dict, kind: str) -> dict:
    """Bring an older document up to FORMAT; a document from a newer version is refused."""
    if not isinstance(doc, dict):
        raise ProtocolError(f"{kind}: expected a JSON object")
    version = doc.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ProtocolError(f"{kind}: format {_short(version)} is not a format number")
    if version > FORMAT:
        raise ProtocolError(f"{kind}: format {_short(version)} is newer than this version understands ({FORMAT})")
    while version < FORMAT:
        doc = _UPGRADES[kind][version](doc)
        version += 1
        doc["format"] = version
    return doc


# --------------------------------------------------------------------------- field checks
# Readers check the type of every field they hand on: a page must be able to format what it gets.

def is_int(value: Any, minimum: int = 0) -> bool:
    """An integer (not a bool) in [minimum, MAX_INT)."""
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value < MAX_INT


def is_number(value: Any, finite: bool = False) -> bool:
    """A JSON number (not a bool); with ``finite``, not NaN or infinite."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not finite or (abs(value) < MAX_INT if isinstance(value, int) else math.isfinite(value))))


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check_fields(doc: dict, what: str, fields: dict[str, tuple[Callable[[Any], bool], str]],
                 required: tuple[str, ...] = ()) -> dict:
    """``doc`` if each named field is absent (or null) or passes its test; else ProtocolError naming the
    field and what it should be (never quoting the value)."""
    for key in required:
        if doc.get(key) is None:
            raise ProtocolError(f"{what}: no {key}")
    for key, (test, expected) in fields.items():
        value = doc.get(key)
        if value is not None and not test(value):
            raise ProtocolError(f"{what}: {key} is {_kind(value)}, not {expected}")
    return doc


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number out of range" if not isinstance(value, int) or value >= 0 else "a negative number"
    return {str: "text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
