"""One trainer per run: an OS lock on ``trainer.lock`` in the run folder.

The trainer (rank 0 under torchrun) takes an exclusive ``flock`` on the file before it touches the run
and keeps it for the whole run, new or resumed, then writes its pid into it. The kernel releases the lock
when the process ends however it ends (``kill -9`` included), so a stale lock file needs no cleanup: the
file stays, the lock does not. A second trainer on the same run is refused with ``RunBusy``, one line
naming the holder's pid. A ``flock`` does not cross machines on every shared filesystem (NFS emulates it
with POSIX locks, some filesystems refuse it): where the filesystem refuses it, ``hold_run`` says so in
``RunLock.warning`` and the run goes on unlocked.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

from pathlib import Path

from .atomic import TEMP_GLOB, remove_stale_temps
from .layout import EVALUATION_FILE, FEEDBACK_DIR, LAUNCH_FILE, RunDir

# Files in a run folder that another program writes while a trainer may be starting: their temp files are
# not the trainer's to remove (a dashboard's launch record, hitl-evaluate's result, an annotator's masks).
OTHER_WRITERS_FILES = (LAUNCH_FILE, EVALUATION_FILE)
OTHER_WRITERS_DIRS = (FEEDBACK_DIR,)


class RunBusy(Exception):
    """Another live process holds the run's lock; the message names its pid."""


class RunLock:
    """A held lock; ``release`` (or the end of the process) frees it."""

    def __init__(self, fd: int | None, warning: str = ""):
        self.fd, self.warning = fd, warning

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor of the file releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_run(run: RunDir) -> RunLock:
    """Take the run's lock (creating the run folder if need be) and write this pid into the lock file.
    Raises RunBusy when another process holds it, OSError when the folder cannot be written."""
    run.path.mkdir(parents=True, exist_ok=True)
    # held through a read-only descriptor (a flock needs no write access): a file open for writing for the
    # whole run would stop the folder from being remounted read-only; the pid goes through a second one
    fd = os.open(run.lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusy(busy_message(run)) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            os.close(fd)
            raise
        return RunLock(fd, f"cannot lock {run.lock} ({os.strerror(e.errno)}): a second trainer on this run "
                           f"would not be stopped")
    try:
        with open(run.lock, "w", encoding="ascii") as f:  # closing it keeps the lock: it is fd's
            f.write(f"{os.getpid()}\n")
    except BaseException:
        os.close(fd)
        raise
    return RunLock(fd)


def lock_holder(run: RunDir) -> int | None:
    """The pid of the live process holding the run's lock, None when nobody holds it (a probe: it takes
    and drops a shared lock, so it never blocks and never writes)."""
    try:
        fd = os.open(run.lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_pid(run) or -1
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def busy_message(run: RunDir) -> str:
    pid = _holder_pid(run)
    who = f"pid {pid}" if pid else "a process that has not written its pid yet"
    return f"{run.path} is in use by another trainer ({who}); stop it, or wait until it ends"


def _holder_pid(run: RunDir) -> int | None:
    """The pid the holder wrote after locking (it may be a moment behind the lock: read a few times)."""
    for _ in range(20):
        try:
            text = run.lock.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


def remove_trainer_temps(run: RunDir) -> list[Path]:
    """Remove the temp files a killed trainer left in its run folder (``.status.json.*.tmp``,
    ``.metrics.csv.*.tmp``, queue and tracking temps, checkpoints' ...). Call it holding the run's lock, so
    no trainer is writing; the temps of the other writers (``feedback/``, ``launch.json``,
    ``evaluation.json``) are spared: they may be writing now. Returns what was removed."""
    removed: list[Path] = []
    if not run.path.is_dir():
        return removed
    for entry in run.path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if entry.name not in OTHER_WRITERS_DIRS:
                removed += remove_stale_temps(entry)
        elif entry.match(TEMP_GLOB) and entry.is_file() and not entry.is_symlink() and \
                not any(entry.name.startswith(f".{name}.") for name in OTHER_WRITERS_FILES):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
