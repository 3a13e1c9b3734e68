"""Where a result was measured, and the device-specific parts of timing and memory."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import timm
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_version() -> str:
    """The commit measured; ``-dirty`` when a tracked file differs (other agents' edits included), but
    not for bench/results/: the results files are what the bench writes, and a ``--match`` run after
    an earlier one finds them changed."""
    try:
        commit = subprocess.run(["git", "describe", "--always"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":(exclude)bench/results"], cwd=REPO, capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        return (commit + ("-dirty" if changed else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git": git_version(),
        # The machine may be shared: a high load means slower, noisier timings (ratios are interleaved).
        "load_average": list(os.getloadavg()),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``step`` in milliseconds, queued GPU work included."""
    synchronize(device)
    t0 = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


@contextmanager
def native_stderr_silenced():
    """File descriptor 2 points at /dev/null inside: C++ logging bypasses Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(steps: dict[str, Callable[[], object]], device: torch.device,
                   before_each: Callable[[], object] = lambda: None) -> dict[str, float]:
    """For each step, the peak of tensor memory allocated during it above what was allocated when it
    began, in MiB: weights and optimiser state already held do not count, activations, gradients and
    the penalty's extra graph do. ``before_each`` runs outside the measured range (the cost benchmark
    drops the previous step's gradients there: the profiler cannot see memory freed that was
    allocated before it started, so a step must not begin by freeing such memory).

    CUDA reads the caching allocator's peak counter. CPU has no such counter, so the steps run under
    the profiler with memory recording and each step's allocation events (tensor memory only, not the
    process RSS) are summed in time order within its ``record_function`` range."""
    if device.type == "cuda":
        peaks = {}
        for name, step in steps.items():
            before_each()
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            peaks[name] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        return peaks
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with native_stderr_silenced():  # kineto prints "USDT: ... profiler_start/stop" lines on every start/stop
        prof.start()
    try:
        for name, step in steps.items():
            before_each()
            with record_function(f"bench:{name}"):
                step()
    finally:
        with native_stderr_silenced():
            prof.stop()
    events = prof.profiler.kineto_results.events()
    ranges = {e.name()[len("bench:"):]: (e.start_ns(), e.start_ns() + e.duration_ns())
              for e in events if e.name().startswith("bench:")}
    allocations = sorted(((e.start_ns(), e.nbytes()) for e in events
                          if e.name() == "[memory]" and e.device_type() == DeviceType.CPU))
    peaks = {}
    for name, (start, end) in ranges.items():
        live = peak = 0
        for t, nbytes in allocations:
            if start <= t <= end:
                live += nbytes
                peak = max(peak, live)
        peaks[name] = peak / 2 ** 20
    return peaks
