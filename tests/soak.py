"""Soak test: kill -9 a small run at random moments, `--resume` it, and check that it ends exactly where
a run never interrupted ends (metrics, weights, feedback set).

    python tests/soak.py --runs 20            # prints one line a run, then "N of M resumed exactly"

Each run is a tiny decoy-digits run (two queues, the first before training) whose queries this script
answers with the simulated annotator after a random delay, so kills land while loading, training,
checkpointing and waiting for feedback alike. Every process has a time limit, so the soak ends by itself.
Exit status 0 when every interrupted run resumed exactly, 1 otherwise. ``--seed`` replays a schedule.

The concurrent cases, always on: every resume is two ``--resume`` of the run started at the same moment,
of which exactly one may train (the other must exit 2 with the one line naming the holder's pid:
trainer.lock); and a reader reads every run the whole time as the dashboard does (``read_status``,
``read_metrics``, ``read_manifest`` of each queue, in a loop), and must never fail or see a state that
is not one. ``--quick`` is a smaller run (the form ``make test`` runs, tests/test_soak.py).
"""
from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from trainer import protocol
from trainer.annotator import OracleAnnotator
from trainer.config import TrainConfig
from trainer.data import Split, build_run_dataset

FLAGS = ["-ds", "decoy-digits", "-tf", "0.2", "-vf", "0.3", "-E", "3", "-qu", "4", "--batch-size", "32",
         "--seed", "3", "-se", "0", "--device", "cpu"]
QUICK_FLAGS = ["-ds", "decoy-digits", "-tf", "0.05", "-vf", "0.05", "-E", "1", "-qu", "2", "--batch-size", "32",
               "--seed", "3", "-se", "0", "--device", "cpu"]
MAX_ANSWER_DELAY = 2.0  # seconds the simulated person takes, at most
RETRIES_UNINTERRUPTED = 3  # a run that finished before its first kill is run again, this many times at most
READABLE_STATES = {*protocol.STATES, protocol.STALE, "unknown"}


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err)


def last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"


def doing(run: protocol.RunDir, pid: int) -> str:
    """What process ``pid`` of the run was doing, from the status file: the moment a kill interrupted."""
    try:
        status = protocol.read_status(run) if run.status.exists() else {}
    except protocol.ProtocolError:
        return "status unreadable"
    if status.get("pid") != pid:
        return "starting"
    waiting = status.get("waiting_epoch")
    return f"waiting, epoch {waiting}" if waiting is not None else f"{status.get('phase')}, epoch {status.get('epoch')}"


class Answerer(threading.Thread):
    """Answers each queue of ``run`` from the ground-truth masks after a random delay, across restarts."""

    def __init__(self, run: protocol.RunDir, train: Split, rng: random.Random):
        super().__init__(daemon=True)
        self.run_dir, self.oracle, self.rng = run, OracleAnnotator(train), rng
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                epoch = protocol.pending_epoch(self.run_dir) if self.run_dir.path.is_dir() else None
                if epoch is not None and not self.stop.wait(self.rng.uniform(0, MAX_ANSWER_DELAY)):
                    self.oracle(self.run_dir, epoch)
            except (protocol.ProtocolError, OSError):
                pass  # a queue being written; try again
            self.stop.wait(0.1)


class Reader(threading.Thread):
    """Reads every run under ``workdir`` in a loop as the dashboard does; ``problems`` collects what it
    should never meet (an exception, a state that is not one)."""

    def __init__(self, workdir: Path):
        super().__init__(daemon=True)
        self.workdir, self.reads, self.problems = workdir, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for folder in sorted(self.workdir.iterdir()):
                if not folder.is_dir():
                    continue
                run = protocol.RunDir(folder)
                try:
                    state = protocol.read_status(run).get("state")
                    if state not in READABLE_STATES:
                        self.problems.append(f"{run.name}: status state {state!r}")
                    protocol.read_metrics(run)
                    for epoch in protocol.queue_epochs(run):
                        protocol.read_manifest(run, epoch)
                except FileNotFoundError:
                    pass  # a folder that went away while it was read
                except Exception as e:  # noqa: BLE001 - whatever a reader meets is the finding
                    self.problems.append(f"{run.name}: {type(e).__name__}: {e}")
                self.reads += 1
            self.stop.wait(0.05)


def start_two(args: list[str], log: Path) -> tuple[subprocess.Popen | None, Path, str]:
    """Two resumes at the same moment, each with its own log (``log`` and a second one beside it). Exactly
    one may go on: returns it (None when neither did), its log, and a problem ("" when the other exited 2
    naming the first's pid, as it must)."""
    logs = {}
    for name in (log, log.with_suffix(".second.stderr")):
        logs[start(args, name)] = name
    a, b = logs
    deadline = time.monotonic() + 120
    while a.poll() is None and b.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if a.poll() is None and b.poll() is None:
        for p in (a, b):
            p.kill()
            p.wait()
        return None, log, "neither resume ended within 120 s: both are running"
    loser, winner = (a, b) if a.poll() is not None else (b, a)
    if loser.returncode == 2 and f"in use by another trainer (pid {winner.pid})" in last_line(logs[loser]):
        return winner, logs[winner], ""
    if loser.returncode == 0 and winner.wait() == 0:
        return winner, logs[winner], ""  # the first ended before the second asked: one after the other
    return winner, logs[winner], f"the second resume exited {loser.returncode}: {last_line(logs[loser])}"


def same(a, b) -> bool:
    """Exact equality of nested checkpoint parts: tensors bit for bit, NaN equal to NaN."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def outcome(run: protocol.RunDir) -> dict:
    """What an exact resume must reproduce: every metric but the wall time, the weights, the feedback set."""
    checkpoint = torch.load(run.last_checkpoint, weights_only=True)
    return {"state": protocol.read_status(run)["state"],
            "metrics": [{k: v for k, v in row.items() if k != "seconds"} for row in protocol.read_metrics(run)],
            "weights": checkpoint["model"], "feedback set": checkpoint["feedback"]}


def soak_one(workdir: Path, title: str, kills: int, window: float, limit: float, train: Split,
             rng: random.Random, expected: dict, flags: list[str] = FLAGS) -> tuple[str, str]:
    """Start, kill up to ``kills`` times at random moments within ``window`` seconds of each start,
    resume, and compare. Returns (verdict, one line of detail)."""
    run = protocol.RunDir(workdir / title)
    log = workdir / f"{title}.stderr"
    answerer = Answerer(run, train, random.Random(rng.random()))
    answerer.start()
    interrupted = []
    try:
        args = [*flags, "-md", str(workdir), "-td", title, "--annotator", "human"]
        for attempt in range(kills + 1):
            # killed before it wrote its config, a run does not exist yet: it is started again, as a user would
            resume = attempt > 0 and run.has_config()
            if resume:  # twice at once: exactly one may train
                proc, proc_log, problem = start_two(["--resume", "-md", str(workdir), "-td", title], log)
                if problem:
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                    return "concurrent", problem
            else:
                proc, proc_log = start(args, log), log
            at = rng.uniform(0, window) if attempt < kills else limit
            try:
                code = proc.wait(timeout=at)
            except subprocess.TimeoutExpired:
                moment = doing(run, proc.pid)
                proc.kill()
                proc.wait()
                if attempt == kills:
                    return "hung", f"no end within {limit:.0f} s ({moment})"
                interrupted.append(f"at {at:.1f} s after {'resume' if attempt else 'start'} ({moment})")
                continue
            if code != 0:
                verb = "resume" if attempt else "start"
                kills_so_far = f" after the kill(s) {', '.join(interrupted)}" if interrupted else ""
                return "failed", f"{verb}{kills_so_far} exited {code}: {last_line(proc_log)}"
            break
    finally:
        answerer.stop.set()
        answerer.join()
    if not interrupted:
        return "uninterrupted", "finished before the first kill"
    got = outcome(run)
    differ = [part for part in expected if not same(expected[part], got[part])]
    where = f"killed {', '.join(interrupted)}"
    return ("exact", where) if not differ else ("different", f"{where}; differs in {', '.join(differ)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="interrupted runs (default 10)")
    p.add_argument("--kills", type=int, default=2, help="kills per run at most, each followed by --resume (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill and answer schedule (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the run directories (their path is printed)")
    p.add_argument("--quick", action="store_true", help="smaller runs (one epoch of 5%% of the images)")
    args = p.parse_args(argv)
    flags = QUICK_FLAGS if args.quick else FLAGS
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="hitl-soak-"))
    print(f"soak: {args.runs} runs, up to {args.kills} kill(s) each, seed {seed}, in {workdir}", flush=True)
    reader = Reader(workdir)
    reader.start()
    try:
        t0 = time.monotonic()
        reference = start([*flags, "-md", str(workdir), "-td", "reference", "--annotator", "oracle"],
                          workdir / "reference.stderr")
        if reference.wait(timeout=1800) != 0:
            print(f"soak: the uninterrupted reference run failed: {last_line(workdir / 'reference.stderr')}")
            return 1
        window = time.monotonic() - t0
        limit = 10 * window + 120
        ref_run = protocol.RunDir(workdir / "reference")
        expected = outcome(ref_run)
        cfg = TrainConfig.from_dict(protocol.read_config(ref_run))
        train = build_run_dataset(cfg).train
        print(f"reference: {window:.1f} s uninterrupted; kills land within that time of each start", flush=True)
        verdicts = []
        for i in range(args.runs):
            # a run that ends before its first kill tests nothing: it is run again, kills drawn within the
            # time it took (a machine less loaded than during the reference run is faster than the window)
            run_window = window
            for again in range(RETRIES_UNINTERRUPTED + 1):
                started = time.monotonic()
                verdict, detail = soak_one(workdir, f"victim-{i}" + (f"-again-{again}" if again else ""), args.kills,
                                           run_window, limit, train, rng, expected, flags)
                if verdict != "uninterrupted":
                    break
                run_window = min(run_window, time.monotonic() - started)
                detail += f", {again + 1} time(s)"
            verdicts.append(verdict)
            print(f"run {i + 1}: {verdict}: {detail}", flush=True)
        resumed = [v for v in verdicts if v != "uninterrupted"]
        exact = verdicts.count("exact")
        print(f"{exact} of {len(resumed)} interrupted runs resumed exactly"
              + (f" ({len(verdicts) - len(resumed)} finished before their first kill)" if len(resumed) < len(verdicts)
                 else ""))
        reader.stop.set()
        reader.join()
        print(f"reader: {reader.reads} reads of every run folder, {len(reader.problems)} problem(s)"
              + "".join(f"\n  {problem}" for problem in reader.problems[:10]))
        return 0 if exact == len(resumed) and not reader.problems else 1
    finally:
        reader.stop.set()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
