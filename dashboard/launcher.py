"""Start, stop, resume and delete trainer runs from a page. The trainer runs as a subprocess of its
own session, so it outlives page reloads and even the dashboard. The trainer writes its pid into
status.json; until it does (torch import and data set loading take a few seconds), the launch record
(``launch.json``, the one file the dashboard writes besides ``feedback/``) holds the pid, so a run that
dies before its first status still shows up with its log.

A page may be open to anyone who can reach the dashboard, so what it may ask of the trainer is
limited: the run name and runs folder come from the form alone, and every path-valued option typed on
the page (the trainer marks them: ``--data-dir``, ``--init-from``, ``--config``, ...) must lie inside one
of the folders the dashboard was started with (``hitl-serve --allow-root``) or its runs folder. The
trainer is started with those folders (``trainer/confine.py``), so it holds the paths inside a
``--config`` file to the same rule, before it opens anything they name.
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

from trainer import confine as path_rule
from trainer import protocol

from .run_reader import summarise

TITLE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
LIVE_STATES = (protocol.TRAINING, protocol.WAITING)
DATASETS_ROOT = Path(__file__).resolve().parents[1] / "datasets"

# Trainer options a page may not set, and why (the form, or a button, sets them).
FORM_ONLY = {
    "runs_dir": "the runs folder is the dashboard's",
    "title": "the run name comes from the Run name field",
    "resume": "resume a run with its Resume button",
    "options_json": "it is not a training option",
}
_NUMBER = re.compile(r"^-\d*\.?\d+([eE][-+]?\d+)?$")

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
    penalty_weight: float | None  # None: the feedback method's own λ
    saliency: str
    annotator: str
    data_dir: str = ""
    feedback_method: str = "auto"       # how marks teach (--feedback)
    proposals: int = 0                  # images proposed per round as carrying a marked artefact (--proposals)
    query_budget: int = 0               # images asked about over the whole run, 0: no limit (--query-budget)
    processes: int = 1                  # > 1: torchrun with this many processes (DDP, docs/distributed.md)
    extra_args: list[str] = field(default_factory=list)

    def trainer_args(self, runs_dir: Path) -> list[str]:
        args = ["--runs-dir", str(runs_dir), "--title", self.title, "--dataset", self.dataset,
                "--model", self.model, "--epochs", str(self.epochs), "--sampling", self.sampling,
                "--queries-per-epoch", str(self.queries_per_epoch),
                "--query-start-epoch", str(self.query_start_epoch),
                "--saliency", self.saliency, "--annotator", self.annotator, "--feedback", self.feedback_method]
        if self.penalty_weight is not None and self.feedback_method != "counterexamples":  # they have no λ
            args += ["--lambda", f"{self.penalty_weight:g}"]
        if self.data_dir.strip():
            args += ["--data-dir", self.data_dir.strip()]
        if self.proposals:
            args += ["--proposals", str(self.proposals)]
        if self.query_budget:
            args += ["--query-budget", str(self.query_budget)]
        return args + list(self.extra_args)


MAX_PROCESSES = os.cpu_count() or 1  # processes on this machine; one per GPU where there are GPUs


def default_title(dataset: str) -> str:
    return f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def parse_extra_args(text: str) -> list[str]:
    """Extra trainer flags typed by the user, split like a shell would (never run through one)."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise LaunchError(f"could not read the extra flags: {e}") from None


@lru_cache(maxsize=1)
def trainer_options() -> dict:
    """``options``: the trainer's own description of its options (``hitl-train --options-json``);
    ``choices``: its menus (data sets, sampling, saliency methods, ...) by option name; ``defaults``: its
    default config. Asked once per dashboard process (importing torch takes seconds)."""
    try:
        done = subprocess.run([sys.executable, "-m", "trainer", "--options-json"], capture_output=True, text=True,
                              timeout=120, check=True)
        described = json.loads(done.stdout)
    except (subprocess.SubprocessError, json.JSONDecodeError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise LaunchError(f"could not ask the trainer for its options: {detail.strip()[-500:]}") from None
    return {"options": described["options"], "defaults": described["defaults"],
            "choices": {o["name"]: o["choices"] for o in described["options"] if o["choices"]}}


def default_allowed_roots(runs_dir: Path | str) -> list[Path]:
    """Where typed paths may point unless the dashboard was told otherwise: the project's data sets
    and the runs folder (another run's checkpoint for --init-from)."""
    return [DATASETS_ROOT, Path(runs_dir)]


def confine(path_text: str, allowed_roots: list[Path], what: str) -> None:
    """Refuse a typed path that leads (through links too) outside every allowed folder (the rule the
    trainer applies to paths in a config file too: trainer/confine.py)."""
    try:
        path_rule.check(path_text, allowed_roots, what)
    except path_rule.OutsideRoots as e:
        raise LaunchError(str(e)) from None


def check_extra_args(args: list[str], options: list[dict], allowed_roots: list[Path]) -> None:
    """Accept only the trainer's own flags, spelled in full, that a page may set; the value of every
    option the trainer marks as a path is confined. A token that starts with "-" is always taken as a
    flag, as the trainer's parser does."""
    by_flag = {flag: o for o in options for flag in o["flags"]}
    i = 0
    while i < len(args):
        token = args[i]
        flag, has_value, value = token.partition("=")
        if not token.startswith("-") or _NUMBER.match(token):
            raise LaunchError(f"{token!r} in the trainer options is not a flag (a value goes right after its flag)")
        option = by_flag.get(flag)
        if option is None:
            raise LaunchError(f"{flag} is not an option of the trainer (give each flag in full, as "
                              f"`python -m trainer --help` lists it)")
        if option["name"] in FORM_ONLY:
            raise LaunchError(f"{flag} cannot be given here: {FORM_ONLY[option['name']]}")
        if not has_value and option["value"] != "none":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is not None and (not following.startswith("-") or _NUMBER.match(following)):
                value, has_value = following, "="
                i += 1
            elif option["value"] == "required":
                raise LaunchError(f"{flag} needs a value")
        if option.get("path") and has_value:
            confine(value, allowed_roots, flag)
        i += 1


def start_run(runs_dir: Path | str, request: RunRequest, allowed_roots: list[Path] | None = None) -> protocol.RunDir:
    """Create the run folder and start the trainer in it; its output goes to trainer.log. Nothing is
    created when the request is refused."""
    if not TITLE_PATTERN.match(request.title):
        raise LaunchError("the run name may use letters, digits, '.', '_' and '-' (no spaces or slashes), "
                          "starting with a letter or digit")
    if not 1 <= request.processes <= MAX_PROCESSES:
        raise LaunchError(f"processes must be between 1 and {MAX_PROCESSES}, got {request.processes}")
    runs_dir = Path(runs_dir).resolve()
    roots = default_allowed_roots(runs_dir) if allowed_roots is None else [*allowed_roots, runs_dir]
    if request.data_dir.strip():
        confine(request.data_dir.strip(), roots, "the data folder")
    if request.extra_args:
        check_extra_args(request.extra_args, trainer_options()["options"], roots)
    run = protocol.RunDir(runs_dir / request.title)
    try:
        run.path.mkdir(parents=True)
    except FileExistsError:
        raise LaunchError(f"a run named {request.title!r} already exists; choose another name") from None
    _spawn(run, request.trainer_args(runs_dir), append_log=False, processes=request.processes,
           env=path_rule.roots_env(roots))
    return run


@dataclass
class StartOutcome:
    """How a just-started trainer is doing: ``running`` (it wrote its status), ``starting`` (still
    loading), or ``exited`` with the error line of its log."""

    state: str
    message: str = ""


def await_start(run: protocol.RunDir, timeout: float = 15.0, poll: float = 0.2) -> StartOutcome:
    """Wait until the trainer started in ``run`` reports a status or exits, at most ``timeout`` seconds:
    a bad option ends it within seconds, and a page must not say "started" for it."""
    deadline = time.monotonic() + timeout
    while True:
        launch = protocol.read_launch(run)
        status = protocol.read_status(run)
        if launch is not None and not protocol.launch_is_newer(launch, status):
            if status.get("state") == protocol.FAILED:
                return StartOutcome("exited", str(status.get("error") or error_line(run)))
            return StartOutcome("running")
        if launch is None or not protocol.launch_alive(launch):
            _reap()
            return StartOutcome("exited", error_line(run))
        if time.monotonic() > deadline:
            return StartOutcome("starting")
        time.sleep(poll)


def error_line(run: protocol.RunDir) -> str:
    """The trainer's one-line error from its log (the last line when it printed none)."""
    lines = [ln for ln in protocol.read_log_tail(run, 40).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("hitl-train: error:")]
    return (errors or lines or ["the trainer exited without a message"])[-1]


def delete_run(run: protocol.RunDir) -> None:
    """Remove a failed or stopped run and all its files."""
    state = summarise(run).state
    if live_pid(run) is not None or state not in (protocol.FAILED, protocol.STOPPED):
        raise LaunchError(f"{run.name} is {state.replace('_', ' ')}: only a failed or stopped run can be deleted")
    protocol.delete_run(run)


def resume_run(run: protocol.RunDir) -> None:
    """Continue a stopped, failed or stale run from its last checkpoint (from the beginning when it stopped
    before its first one)."""
    if protocol.lock_holder(run) is not None:  # the trainer's own refusal, said before starting one
        raise LaunchError(protocol.busy_message(run))
    if live_pid(run) is not None or protocol.read_status(run)["state"] in LIVE_STATES:
        raise LaunchError(f"{run.name} is still running")
    if not run.has_config():
        raise LaunchError(f"{run.name} has no {protocol.CONFIG_FILE} to resume from (it stopped while starting); "
                          f"delete it or start a new run")
    try:  # with as many processes as its latest start
        processes = int(protocol.read_config(run).get("world_size", 1))
    except (OSError, ValueError, TypeError, protocol.ProtocolError):
        processes = 1
    _spawn(run, ["--resume", "--runs-dir", str(run.path.parent.resolve()), "--title", run.name], append_log=True,
           processes=min(max(processes, 1), MAX_PROCESSES))


def stop_run(run: protocol.RunDir) -> None:
    """Ask the trainer to stop (SIGTERM): it saves its state and writes "stopped"."""
    pid = live_pid(run)
    if pid is None:
        raise LaunchError(f"{run.name} is not running")
    launch = protocol.read_launch(run)
    if launch is not None and launch.get("pid") == pid:
        protocol.mark_stop_requested(run, launch)
    os.kill(pid, signal.SIGTERM)
    _reap()


def live_pid(run: protocol.RunDir) -> int | None:
    """The pid of the trainer working on ``run`` on this machine, if one is alive."""
    status = protocol.read_status(run)
    if status.get("state") in LIVE_STATES and _is_local(status.get("host")):
        pid = status.get("pid")
        if isinstance(pid, int) and protocol.pid_alive(pid):
            return pid
    launch = protocol.read_launch(run)
    if launch is not None and protocol.launch_is_newer(launch, status) and protocol.launch_alive(launch):
        return launch["pid"]
    return None


def _is_local(host: str | None) -> bool:
    return not host or host == os.uname().nodename


def _spawn(run: protocol.RunDir, args: list[str], append_log: bool, processes: int = 1,
           env: dict[str, str] | None = None) -> None:
    """Start the trainer in its own session (one process, or torchrun's N on this machine); ``env``
    adds to the dashboard's environment (the allowed folders of a run started from the form)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    argv = [*launch, "-m", "trainer", *args]
    _reap()
    with protocol.open_log(run, append=append_log) as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    _children.append(child)
    protocol.write_launch(run, child.pid, argv)


def _reap() -> None:
    """Collect exited children so they do not linger as zombies while the dashboard runs."""
    _children[:] = [c for c in _children if c.poll() is None]
