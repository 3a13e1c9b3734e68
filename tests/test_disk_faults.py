"""A read-only or full runs folder: one line naming the problem, the run's status says failed where it can
be written, nothing half-written, and a waiting trainer survives the folder turning read-only for a while."""
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import protocol
from trainer.annotator import OracleAnnotator
from trainer.config import TrainConfig
from trainer.data import DataRequest, build_dataset, build_run_dataset

from test_trainer import wait_for

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["-ds", "decoy-digits", "-tf", "0.1", "-vf", "0.2", "-E", "2", "-qu", "3", "--batch-size", "32", "--seed", "1"]


def train(args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *FLAGS, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def mountable(tmp_path):
    """A folder that the test can turn read-only with a bind mount (as root, like CI)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bound.returncode:
        pytest.skip(f"bind mounts need root: {bound.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,bind,{mode}", str(folder)], check=True)


def test_a_read_only_runs_folder_is_one_line_naming_it(mountable):
    remount(mountable, "ro")
    proc = train(["-md", str(mountable), "-td", "ro", "--annotator", "none"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "Read-only file system" in err and str(mountable) in err


def test_a_waiting_trainer_outlives_its_folder_turning_read_only(mountable):
    proc = train(["-md", str(mountable), "-td", "w", "--annotator", "human", "-se", "1"])
    run = protocol.RunDir(mountable / "w")
    wait_for(lambda: run.status.exists() and protocol.read_status(run).get("waiting_epoch") == 1, what="the queue")
    remount(mountable, "ro")
    time.sleep(2 * protocol.HEARTBEAT_SECONDS + 1)  # heartbeats fail meanwhile
    assert proc.poll() is None, proc.stderr.read()
    remount(mountable, "rw")
    cfg = TrainConfig.from_dict(protocol.read_config(run))
    data = build_run_dataset(cfg)
    assert OracleAnnotator(data.train)(run, 1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "cannot write the status: Read-only file system" in out
    assert protocol.read_status(run)["state"] == protocol.FINISHED


def test_a_full_disk_at_a_checkpoint_fails_the_run_in_one_line_and_leaves_no_half_file(tmp_path):
    build_dataset("decoy-digits", DataRequest(None, None, 1, 0.1, 0.2, {}))  # the data set's cache is not the subject

    def small_files_only():  # files above 1 MiB cannot be written: the 3 MB checkpoint hits a "full disk"
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 ** 20, 2 ** 20))
    proc = train(["-md", str(tmp_path), "-td", "full", "--annotator", "none"], preexec_fn=small_files_only)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert err.strip().count("\n") == 0 and "File too large" in err
    run = protocol.RunDir(tmp_path / "full")
    status = protocol.read_status(run)
    assert status["state"] == protocol.FAILED and "File too large" in status["error"]
    assert not list(run.path.glob(".*tmp")) and not run.last_checkpoint.exists()
