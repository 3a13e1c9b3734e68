"""The one rule for paths a page visitor may give: every path-valued trainer option (the parser marks
them, ``trainer.cli.path_options``), whether typed on the Runs page or read from a ``--config`` file,
must lead (through symbolic links too) into one of the allowed folders, and is checked before any file
is opened.

The dashboard checks typed flags itself (``dashboard/launcher.py``) and starts the trainer with the
allowed folders in ``HITL_ALLOWED_ROOTS``; under it the trainer checks its path flags, and the paths a
config file holds, with the same function. A trainer started from a shell has no such variable and reads
wherever its user points it. Kept free of heavy imports: the dashboard imports it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

ROOTS_ENV = "HITL_ALLOWED_ROOTS"


class OutsideRoots(ValueError):
    """A path that leads outside every allowed folder; the message is one line."""


def roots_from_env(environ: Mapping[str, str] | None = None) -> list[Path] | None:
    """The allowed folders a dashboard started this process with, or None (no confinement)."""
    text = (os.environ if environ is None else environ).get(ROOTS_ENV)
    if text is None:
        return None
    return [Path(r) for r in text.split(os.pathsep) if r]


def roots_env(roots: Iterable[Path | str]) -> dict[str, str]:
    """The environment entry that confines a trainer to ``roots`` (resolved here, so a link swapped
    later cannot widen them)."""
    return {ROOTS_ENV: os.pathsep.join(os.path.realpath(r) for r in roots)}


def is_inside(path_text: str | os.PathLike, roots: Iterable[Path | str]) -> bool:
    """Whether the path, resolved after symbolic links (and with ``~`` both expanded and not, as
    readers differ on it), lies in one of ``roots``."""
    text = os.fspath(path_text)
    if not text or "\0" in text:
        return False
    real_roots = [Path(os.path.realpath(r)) for r in roots]

    def within(candidate: str) -> bool:
        real = Path(os.path.realpath(candidate))
        return any(real == root or root in real.parents for root in real_roots)

    home = os.path.expanduser(text)
    return within(text) and (home == text or within(home))


def check(path_text: str | os.PathLike, roots: Iterable[Path | str], what: str, show_value: bool = True) -> None:
    """Refuse a path outside every allowed folder. ``what`` names the option (or config key); the
    value is quoted only when ``show_value`` (never for one read from a file)."""
    roots = list(roots)
    if is_inside(path_text, roots):
        return
    shown = f" {os.fspath(path_text)!r}" if show_value else ""
    raise OutsideRoots(f"{what}{shown} is outside the folders this dashboard may read "
                       f"({', '.join(str(r) for r in roots)}; `hitl-serve --allow-root` adds one)")
