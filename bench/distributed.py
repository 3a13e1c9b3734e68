"""Throughput under torchrun: the same plain run in one process, then through torchrun on 1 and on N
processes (N = the GPUs on CUDA, 2 on CPU), timed from its own metrics.

The torchrun row with one process shows the launcher's overhead (one process trains exactly as without
torchrun); the N-process row what DDP buys. On CPU every run gets the machine's cores in total
(OMP_NUM_THREADS = cores / N), so the rows compare ways of using the same machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from trainer import checkpoint, protocol

EPOCHS = 2  # the first epoch pays for start-up; the second is the one timed


def launches(device: torch.device) -> list[tuple[str, int]]:
    """(launcher, processes) to time."""
    n = max(2, torch.cuda.device_count()) if device.type == "cuda" else 2
    return [("python", 1), ("torchrun", 1), ("torchrun", n)]


def run_distributed(device: torch.device, runs_dir: Path, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for launcher, nproc in launches(device):
        title = f"throughput-{launcher}-{nproc}"
        command = [sys.executable, "-m", "trainer"] if launcher == "python" else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
             "-m", "trainer"]
        flags = ["-ds", "decoy-digits", "-E", str(EPOCHS), "--annotator", "none", "--batch-size", "64",
                 "--seed", "0", "--device", device.type, "-md", str(runs_dir), "-td", title]
        threads = max(1, (os.cpu_count() or 1) // nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                             os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        done = subprocess.run(command + flags, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{launcher} × {nproc}: {done.stderr.strip().splitlines()[-1:]}")
        run = protocol.RunDir(runs_dir / title)
        seconds = protocol.read_metrics(run)[-1]["seconds"]
        n_train = len(checkpoint.read(run.last_checkpoint)["feedback"]["position"])
        rows.append({"launcher": launcher, "processes": nproc, "device": device.type, "threads_per_process": threads,
                     "n_train": n_train, "epoch_seconds": round(seconds, 2),
                     "samples_per_s": round(n_train / seconds, 1),
                     "wall_seconds": round(time.perf_counter() - started, 1)})
        log(f"throughput: {launcher} × {nproc}: {rows[-1]['samples_per_s']} images/s")
    return rows
