"""Start, stop and resume the trainer as a subprocess of its own session, so it outlives page reloads
and even the dashboard. The trainer writes its pid into status.json; until it does (torch import and
data set loading take a few seconds), ``launch.json`` - the one file the dashboard writes besides
``feedback/`` - holds the pid, so a run that dies before its first status still shows up with its log.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from trainer import protocol

LAUNCH_FILE = "launch.json"
TITLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
LIVE_STATES = (protocol.TRAINING, protocol.WAITING)

# Asks the trainer's own argument parser and config for the form's menus and defaults, in a child
# process: the choices live in the trainer's registries (torch modules), and the dashboard stays torch-free.
_OPTIONS_SCRIPT = (
    "import json; from trainer.cli import build_parser; from trainer.config import TrainConfig; "
    "print(json.dumps({'choices': {a.dest: list(a.choices) for a in build_parser()._actions if a.choices}, "
    "'defaults': TrainConfig().to_dict()}))"
)

_children: list[subprocess.Popen] = []


class LaunchError(Exception):
    """A start, stop or resume that cannot happen; the message says why in plain words."""


@dataclass
class RunRequest:
    """What the "new run" form asks for; everything else keeps the trainer's defaults."""

    title: str
    dataset: str
    model: str
    epochs: int
    sampling: str
    queries_per_epoch: int
    query_start_epoch: int
    penalty_weight: float
    saliency: str
    annotator: str
    data_dir: str = ""
    extra_args: list[str] = field(default_factory=list)

    def trainer_args(self, runs_dir: Path) -> list[str]:
        args = ["--runs-dir", str(runs_dir), "--title", self.title, "--dataset", self.dataset,
                "--model", self.model, "--epochs", str(self.epochs), "--sampling", self.sampling,
                "--queries-per-epoch", str(self.queries_per_epoch),
                "--query-start-epoch", str(self.query_start_epoch),
                "--lambda", f"{self.penalty_weight:g}", "--saliency", self.saliency,
                "--annotator", self.annotator]
        if self.data_dir.strip():
            args += ["--data-dir", self.data_dir.strip()]
        return args + list(self.extra_args)


def default_title(dataset: str) -> str:
    return f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def parse_extra_args(text: str) -> list[str]:
    """Extra trainer flags typed by the user, split like a shell would (never run through one)."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise LaunchError(f"could not read the extra flags: {e}") from None


@lru_cache(maxsize=1)
def trainer_options() -> dict[str, dict]:
    """``choices``: the trainer's menus (data sets, sampling, saliency methods, ...) by option name;
    ``defaults``: its default config. Asked once per dashboard process (importing torch takes seconds)."""
    try:
        done = subprocess.run([sys.executable, "-c", _OPTIONS_SCRIPT], capture_output=True, text=True,
                              timeout=120, check=True)
        return json.loads(done.stdout)
    except (subprocess.SubprocessError, json.JSONDecodeError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise LaunchError(f"could not ask the trainer for its options: {detail.strip()[-500:]}") from None


def start_run(runs_dir: Path | str, request: RunRequest) -> protocol.RunDir:
    """Create the run folder and start the trainer in it; its output goes to trainer.log."""
    if not TITLE_PATTERN.match(request.title):
        raise LaunchError("the run name may use letters, digits, '.', '_' and '-' (no spaces or slashes), "
                          "starting with a letter or digit")
    runs_dir = Path(runs_dir).resolve()
    run = protocol.RunDir(runs_dir / request.title)
    try:
        run.path.mkdir(parents=True)
    except FileExistsError:
        raise LaunchError(f"a run named {request.title!r} already exists; choose another name") from None
    _spawn(run, request.trainer_args(runs_dir), log_mode="w")
    return run


def resume_run(run: protocol.RunDir) -> None:
    """Continue a stopped, failed or stale run from its last checkpoint."""
    if live_pid(run) is not None or protocol.read_status(run)["state"] in LIVE_STATES:
        raise LaunchError(f"{run.name} is still running")
    if not run.last_checkpoint.exists():
        raise LaunchError(f"{run.name} has no checkpoint to resume from (it ended before its first epoch "
                          f"finished); start a new run instead")
    _spawn(run, ["--resume", "--runs-dir", str(run.path.parent.resolve()), "--title", run.name], log_mode="a")


def stop_run(run: protocol.RunDir) -> None:
    """Ask the trainer to stop (SIGTERM): it saves its state and writes "stopped"."""
    pid = live_pid(run)
    if pid is None:
        raise LaunchError(f"{run.name} is not running")
    launch = read_launch(run)
    if launch is not None and launch.get("pid") == pid:
        protocol.atomic_write_json(run.path / LAUNCH_FILE, {**launch, "stop_requested_at": time.time()})
    os.kill(pid, signal.SIGTERM)
    _reap()


def live_pid(run: protocol.RunDir) -> int | None:
    """The pid of the trainer working on ``run`` on this machine, if one is alive."""
    status = protocol.read_status(run)
    if status.get("state") in LIVE_STATES and _is_local(status.get("host")):
        pid = status.get("pid")
        if isinstance(pid, int) and protocol.pid_alive(pid):
            return pid
    launch = read_launch(run)
    if launch is not None and launch_is_newer(launch, status) and launch_alive(launch):
        return launch["pid"]
    return None


def read_launch(run: protocol.RunDir) -> dict | None:
    """The last launch record of a run started from the dashboard; None if there is none or it is unreadable."""
    try:
        launch = protocol.read_json(run.path / LAUNCH_FILE)
    except (FileNotFoundError, protocol.ProtocolError):
        return None
    return launch if isinstance(launch, dict) and isinstance(launch.get("pid"), int) else None


def launch_is_newer(launch: dict, status: dict) -> bool:
    """True while the trainer started by this launch has not written a status yet."""
    return float(launch.get("started_at", 0)) > float(status.get("heartbeat", 0) or 0)


def launch_alive(launch: dict) -> bool:
    return _is_local(launch.get("host")) and protocol.pid_alive(launch["pid"])


def _is_local(host: str | None) -> bool:
    return not host or host == os.uname().nodename


def _spawn(run: protocol.RunDir, args: list[str], log_mode: str) -> None:
    argv = [sys.executable, "-m", "trainer", *args]
    _reap()
    with open(run.log, log_mode, encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _children.append(child)
    protocol.atomic_write_json(run.path / LAUNCH_FILE, {
        "format": protocol.FORMAT, "pid": child.pid, "host": os.uname().nodename, "argv": argv,
        "started_at": time.time()})


def _reap() -> None:
    """Collect exited children so they do not linger as zombies while the dashboard runs."""
    _children[:] = [c for c in _children if c.poll() is None]
