"""Soak test: kill -9 a small run at random moments, `--resume` it, and check that it ends exactly where
a run never interrupted ends (metrics, weights, feedback set).

    python tests/soak.py --runs 20            # prints one line a run, then "N of M resumed exactly"

Each run is a tiny decoy-digits run (two queues, the first before training) whose queries this script
answers with the simulated annotator after a random delay, so kills land while loading, training,
checkpointing and waiting for feedback alike. Every process has a time limit, so the soak ends by itself.
Exit status 0 when every interrupted run resumed exactly, 1 otherwise. ``--seed`` replays a schedule.
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
MAX_ANSWER_DELAY = 2.0  # seconds the simulated person takes, at most


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
             rng: random.Random, expected: dict) -> tuple[str, str]:
    """Start, kill up to ``kills`` times at random moments within ``window`` seconds of each start,
    resume, and compare. Returns (verdict, one line of detail)."""
    run = protocol.RunDir(workdir / title)
    log = workdir / f"{title}.stderr"
    answerer = Answerer(run, train, random.Random(rng.random()))
    answerer.start()
    interrupted = []
    try:
        args = [*FLAGS, "-md", str(workdir), "-td", title, "--annotator", "human"]
        for attempt in range(kills + 1):
            # killed before it wrote its config, a run does not exist yet: it is started again, as a user would
            resume = attempt > 0 and run.has_config()
            proc = start(["--resume", "-md", str(workdir), "-td", title] if resume else args, log)
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
                return "failed", f"{verb}{kills_so_far} exited {code}: {last_line(log)}"
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
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="hitl-soak-"))
    print(f"soak: {args.runs} runs, up to {args.kills} kill(s) each, seed {seed}, in {workdir}", flush=True)
    try:
        t0 = time.monotonic()
        reference = start([*FLAGS, "-md", str(workdir), "-td", "reference", "--annotator", "oracle"],
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
            verdict, detail = soak_one(workdir, f"victim-{i}", args.kills, window, limit, train, rng, expected)
            verdicts.append(verdict)
            print(f"run {i + 1}: {verdict}: {detail}", flush=True)
        resumed = [v for v in verdicts if v != "uninterrupted"]
        exact = verdicts.count("exact")
        print(f"{exact} of {len(resumed)} interrupted runs resumed exactly"
              + (f" ({len(verdicts) - len(resumed)} finished before their first kill)" if len(resumed) < len(verdicts)
                 else ""))
        return 0 if exact == len(resumed) else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
