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
from .formats import FORMAT, ProtocolError, read_json, upgrade
from .layout import CONFIG_FILE, LAUNCH_FILE, RunDir

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


def read_config(run: RunDir) -> dict:
    return upgrade(read_json(run.config), "config")


def write_status(run: RunDir, state: str, **fields: Any) -> dict:
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}")
    status = {"format": FORMAT, "state": state, "pid": os.getpid(), "heartbeat": time.time(), **fields}
    atomic_write_json(run.status, status)
    return status


def read_status(run: RunDir, now: float | None = None) -> dict:
    """The status with ``state`` replaced by ``stale`` when a live state has an old heartbeat
    or its process is gone (same machine only)."""
    try:
        status = upgrade(read_json(run.status), "status")
    except FileNotFoundError:
        return {"format": FORMAT, "state": "unknown", "epoch": 0}
    except ProtocolError as e:
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


def read_launch(run: RunDir) -> dict | None:
    """The last launch record; None if there is none or it is unreadable."""
    try:
        launch = upgrade(read_json(run.launch), "launch")
    except (FileNotFoundError, ProtocolError):
        return None
    return launch if isinstance(launch.get("pid"), int) else None


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
