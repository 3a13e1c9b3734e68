"""The format number every run file carries, the upgrades of older documents, and strict JSON reading.

A document from a newer version is refused with a message naming it; an older one is brought up to
``FORMAT`` by an ordered list of small upgrade functions, so old runs keep opening as the format grows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = 1


class ProtocolError(ValueError):
    """A run-directory file that does not follow the protocol; the message names the problem."""


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


# Ordered upgrades: _UPGRADES[kind][n] turns a format-n document into format n+1.
_UPGRADES: dict[str, dict[int, Any]] = {kind: {} for kind in (
    "config", "status", "manifest", "feedback", "evaluation", "confusion", "launch", "proposals")}


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
