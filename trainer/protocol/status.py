"""What a run is and what it is doing: its config, its status (state, heartbeat, pid), the dashboard's
launch record and the trainer's log. "stale" is never written: readers derive it from an old heartbeat or a
dead process."""
from __future__ import annotations

import io
import os
import shutil
import time
from collections import deque
from typing import Any

from .atomic import atomic_write_json
from .formats import (FORMAT, ProtocolError, check_fields, is_int, is_number, is_str, is_str_list, read_json,
                      upgrade)
from .layout import CONFIG_FILE, LAUNCH_FILE, STATUS_FILE, RunDir

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


def write_config(run: RunDir, config: dict) -> None:
    atomic_write_json(run.config, {"format": FORMAT, **config})


_INT = (is_int, "a whole number")
_TEXT = (is_str, "text")
_TIME = (lambda v: is_number(v, finite=True), "a number")
CONFIG_FIELDS = {"title": _TEXT, "dataset": _TEXT, "model": _TEXT, "annotator": _TEXT, "epochs": _INT,
                 "world_size": (lambda v: is_int(v, 1), "a whole number from 1")}
STATUS_FIELDS = {"state": _TEXT, "epoch": _INT, "epochs": _INT, "waiting_epoch": _INT, "pid": _INT,
                 "heartbeat": _TIME, "host": _TEXT, "error": _TEXT, "feedback_error": _TEXT,
                 "traceback": (is_str_list, "a list of text"), "result": (lambda v: isinstance(v, dict), "an object"),
                 "progress": (lambda v: isinstance(v, dict), "an object")}
LAUNCH_FIELDS = {"pid": _INT, "host": _TEXT, "argv": (is_str_list, "a list of text"), "started_at": _TIME,
                 "stop_requested_at": _TIME}


def read_config(run: RunDir) -> dict:
    """The run's config; FileNotFoundError without one, ProtocolError if it is broken or a field the
    dashboard shows has the wrong type."""
    return check_fields(upgrade(read_json(run.config), "config"), CONFIG_FILE, CONFIG_FIELDS)


def write_status(run: RunDir, state: str, **fields: Any) -> dict:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    status = {"format": FORMAT, "state": state, "pid": os.getpid(), "heartbeat": time.time(), **fields}
    atomic_write_json(run.status, status)
    return status


def read_status(run: RunDir, now: float | None = None, strict: bool = False) -> dict:
    """The status with ``state`` replaced by ``stale`` when a live state has an old heartbeat
    or its process is gone (same machine only). A missing status reads as state "unknown"; so does a
    broken one or one with a field of the wrong type, unless ``strict``: then that is a ProtocolError."""
    try:
        status = check_fields(upgrade(read_json(run.status), "status"), STATUS_FILE, STATUS_FIELDS, ("state",))
    except FileNotFoundError:
        return {"format": FORMAT, "state": "unknown", "epoch": 0}
    except ProtocolError as e:
        if strict:
            raise
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


def write_launch(run: RunDir, pid: int, argv: list[str], **fields: Any) -> None:
    """What the dashboard started in ``run``: the one file it writes besides ``feedback/``."""
    atomic_write_json(run.launch, {"format": FORMAT, "pid": pid, "host": os.uname().nodename, "argv": argv,
                                   "started_at": time.time(), **fields})


def read_launch(run: RunDir, strict: bool = False) -> dict | None:
    """The last launch record; None if there is none, or if it is unreadable or has a field of the
    wrong type, unless ``strict``: then that is a ProtocolError."""
    try:
        return check_fields(upgrade(read_json(run.launch), "launch"), LAUNCH_FILE, LAUNCH_FIELDS, ("pid",))
    except FileNotFoundError:
        return None
    except ProtocolError:
        if strict:
            raise
        return None


def launch_is_newer(launch: dict, status: dict) -> bool:
    """True while the trainer started by this launch has not written a status yet."""
    started, heartbeat = launch.get("started_at"), status.get("heartbeat")
    return (started if isinstance(started, (int, float)) else 0) > (heartbeat if isinstance(heartbeat, (int, float)) else 0)


def launch_alive(launch: dict) -> bool:
    """Whether the process a launch record names is alive; a launch on another machine is not this
    dashboard's to watch."""
    host = launch.get("host")
    return (not host or host == os.uname().nodename) and pid_alive(launch["pid"])


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
