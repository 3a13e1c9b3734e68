"""A training run's life around the loop: the run's lock, the temp files a killed trainer left, and what
status.json says when the run stops or fails. ``run_training`` is what ``hitl-train`` and ``make demo``
call; the loop itself is trainer/train.py."""
from __future__ import annotations

import os
import signal
import traceback
from contextlib import contextmanager
from pathlib import Path

from . import protocol
from .config import TrainConfig
from .train import Trainer


class Stopped(Exception):
    """SIGTERM/SIGINT: the run stops cleanly and can be resumed."""


def install_stop_handlers() -> None:
    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run_training(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train with status bookkeeping: a failure or stop is written to status.json before it propagates.

    The run's lock (protocol/lock.py) is held throughout, by rank 0 under torchrun: a second trainer on
    the run is refused (``protocol.RunBusy``) before it reads or writes anything there. Holding it, the
    trainer removes the temp files a killed trainer left. A resume that cannot start (a broken
    checkpoint, a data set gone) writes "failed" with its one-line error, since the run can no longer be
    resumed as it is; a new run that cannot start has no status to write."""
    run = protocol.RunDir(Path(cfg.runs_dir) / cfg.title)
    with _hold(run, log) as lock:
        if not resume and lock is not None and run.has_config():  # another start got there first
            raise ValueError(f"run {cfg.title!r} already exists in {cfg.runs_dir}; pass --resume or another --title")
        try:
            trainer = Trainer(cfg, resume=resume, log=log)
        except Stopped:
            raise
        except BaseException as e:
            if resume and lock is not None:
                mark_failed(run, str(e) if isinstance(e, ValueError) else error_line(e))
            raise
        try:
            return trainer.fit()
        except Stopped as e:
            trainer.status(protocol.STOPPED, final=True, phase="stopped", error=f"stopped by {e}; resume with --resume")
            raise
        except BaseException as e:
            tail = traceback.format_exc().splitlines()[-12:]
            trainer.status(protocol.FAILED, final=True, phase="failed", error=error_line(e), traceback=tail)
            raise


def error_line(e: BaseException) -> str:
    """What status.json says of a failure: one line."""
    return protocol.describe_os_error(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


def mark_failed(run: protocol.RunDir, error: str) -> None:
    """A resume that could not start: "failed" with its error, the rest of the old status kept (epoch,
    result). Best effort: a folder that cannot be written keeps what it says."""
    try:
        old = protocol.read_status(run)
    except Exception:
        old = {}
    keep = {k: v for k, v in old.items() if k not in ("format", "state", "pid", "heartbeat", "reported_state",
                                                      "heartbeat_age", "traceback", "phase", "error")}
    try:
        protocol.write_status(run, protocol.FAILED, **{**keep, "phase": "failed", "error": error})
    except (OSError, ValueError, TypeError):
        pass


@contextmanager
def _hold(run: protocol.RunDir, log):
    """The run's lock for the writer (rank 0: torchrun sets RANK before the process group exists), after
    which the temp files of a killed writer are removed; None on the other ranks."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    lock = protocol.hold_run(run)
    try:
        if lock.warning:
            log(f"warning: {lock.warning}")
        removed = protocol.remove_trainer_temps(run)
        if removed:
            log(f"removed {len(removed)} temp file(s) left by a write that was interrupted: "
                f"{', '.join(str(p.relative_to(run.path)) for p in removed[:5])}{' ...' if len(removed) > 5 else ''}")
        yield lock
    finally:
        lock.release()
