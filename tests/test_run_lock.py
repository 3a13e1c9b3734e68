"""One trainer per run (trainer.lock), a resume that ends in one line for every broken run file, and the
temp files a killed trainer leaves removed on resume (issue 26)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard import launcher
from trainer import cli, protocol

from test_trainer import wait_for

ROOT = Path(__file__).resolve().parents[1]
# a run that asks before training (-se 0) and waits for a person: it holds the lock without training
FLAGS = ["-ds", "decoy-digits", "-tf", "0.05", "-vf", "0.1", "-E", "1", "-qu", "2", "--batch-size", "32",
         "--seed", "1", "-se", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def signal_handlers():
    """cli.main installs its stop handlers; the test process gets its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def trainer(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def waiting_with(run: protocol.RunDir, pid: int) -> bool:
    status = protocol.read_status(run)
    return status.get("state") == protocol.WAITING and status.get("pid") == pid


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


# --------------------------------------------------------------------------- the lock

def test_the_lock_is_exclusive_names_its_holder_and_goes_with_its_holder(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    with protocol.hold_run(run) as lock:
        assert not lock.warning and run.lock.read_text().strip() == str(os.getpid())
        assert protocol.lock_holder(run) == os.getpid()
        with pytest.raises(protocol.RunBusy, match=rf"in use by another trainer \(pid {os.getpid()}\)"):
            protocol.hold_run(run)  # a second open file is a second holder, even in one process
    assert protocol.lock_holder(run) is None
    protocol.hold_run(run).release()


def test_two_resumes_at_once_one_trains_and_a_kill_9_leaves_nothing_to_clean(tmp_path):
    run = protocol.RunDir(tmp_path / "twice")
    first = trainer([*FLAGS, "-md", str(tmp_path), "-td", "twice", "--annotator", "human"])
    wait_for(lambda: waiting_with(run, first.pid), what="the first queue")
    kill9(first)
    resume = ["--resume", "-md", str(tmp_path), "-td", "twice"]
    a, b = trainer(resume), trainer(resume)
    wait_for(lambda: a.poll() is not None or b.poll() is not None, what="one resume to be refused")
    refused, holder = (a, b) if a.poll() is not None else (b, a)
    _, err = refused.communicate()
    assert refused.returncode == 2
    assert err.strip() == f"hitl-train: error: {run.path} is in use by another trainer (pid {holder.pid}); " \
                          f"stop it, or wait until it ends"
    wait_for(lambda: waiting_with(run, holder.pid), what="the holder's queue")
    assert holder.poll() is None and protocol.lock_holder(run) == holder.pid
    with pytest.raises(launcher.LaunchError, match=f"pid {holder.pid}"):
        launcher.resume_run(run)  # the dashboard's Resume says the same
    kill9(holder)
    last = trainer([*resume, "--annotator", "oracle"])
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    assert protocol.read_status(run)["state"] == protocol.FINISHED


# --------------------------------------------------------------------------- broken run files

@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped after its config (what a kill before the first checkpoint leaves)."""
    cfg, _ = cli.parse_args([*FLAGS, "-md", str(tmp_path), "-td", "broken", "--annotator", "none"])
    run = protocol.RunDir(tmp_path / "broken")
    protocol.write_config(run, cfg.to_dict())
    protocol.write_status(run, protocol.STOPPED, epoch=0, epochs=1, error="stopped by SIGTERM; resume with --resume")
    return run


def _config(run, doc):
    run.config.write_text(json.dumps(doc))


BROKEN = {
    "an empty last.pt": (lambda run: run.last_checkpoint.write_bytes(b""), "last.pt", "the file is empty (0 bytes)"),
    "a last.pt of junk": (lambda run: run.last_checkpoint.write_bytes(b"junk"), "last.pt", "cannot read"),
    "config format 0": (lambda run: _config(run, {"format": 0}), "config.json", "format 0 is not a format"),
    "epochs: many": (lambda run: _config(run, {**json.loads(run.config.read_text()), "epochs": "many"}),
                     "config.json", "epochs: expected a int"),
    "dataset_options a list": (lambda run: _config(run, {**json.loads(run.config.read_text()),
                                                         "dataset_options": [1]}),
                               "config.json", "dataset_options must be an object"),
    "config a folder": (lambda run: (run.config.unlink(), run.config.mkdir()), "config.json", "is a folder"),
    "config not JSON": (lambda run: run.config.write_text("{"), "config.json", "not valid JSON"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_resume_of_a_broken_run_file_is_one_line_naming_it_and_the_status_says_failed(stopped_run, kind, capsys):
    make, name, reason = BROKEN[kind]
    make(stopped_run)
    code = cli.main(["--resume", "-md", str(stopped_run.path.parent), "-td", "broken"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hitl-train: error: --resume") and "Traceback" not in err
    assert str(stopped_run.path / name) in err and reason in err
    status = protocol.read_status(stopped_run)
    assert status["state"] == protocol.FAILED and status["error"] == err.strip().removeprefix("hitl-train: error: ")
    assert protocol.lock_holder(stopped_run) is None


def test_a_config_given_again_is_not_checked(stopped_run, capsys):
    """A flag given with --resume replaces the saved setting: a broken one can be mended that way."""
    _config(stopped_run, {**json.loads(stopped_run.config.read_text()), "epochs": "many"})
    cfg, resume = cli.parse_args(["--resume", "-md", str(stopped_run.path.parent), "-td", "broken", "-E", "1"])
    assert resume and cfg.epochs == 1


def test_a_run_folder_that_cannot_be_written_is_one_line(stopped_run, capsys, monkeypatch):
    """The run's first write fails (a folder turned read-only after the lock): the one error line, not a
    "cannot write the status ... carrying on" before it (the final status write fails quietly)."""
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(stopped_run.config))

    monkeypatch.setattr(protocol, "write_config", read_only)
    monkeypatch.setattr(protocol, "write_status", read_only)
    code = cli.main(["--resume", "-md", str(stopped_run.path.parent), "-td", "broken"])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip() and "no checkpoint yet" not in line]
    assert code == 2 and lines == [f"hitl-train: error: Read-only file system: {stopped_run.config}"]


# --------------------------------------------------------------------------- temp files

def test_resume_removes_the_trainers_temps_and_spares_the_other_writers(stopped_run, capsys):
    run = stopped_run
    mine = [run.path / ".status.json.k1ll3d.tmp", run.path / ".metrics.csv.abc.tmp", run.path / ".last.pt.x.tmp",
            run.queue_dir(0) / ".q000.png.y.tmp", run.queue_dir(0) / ".manifest.json.z.tmp",
            run.tracking_dir(1) / ".12.npy.w.tmp"]
    theirs = [run.feedback_root / ".epoch_000.json.a.tmp", run.rejected_root / ".x.json.b.tmp",
              run.path / ".launch.json.c.tmp", run.path / ".evaluation.json.d.tmp"]
    for path in mine + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert cli.main(["--resume", "-md", str(run.path.parent), "-td", "broken", "-E", "1", "-qu", "0"]) == 0
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in theirs)
    assert "removed 6 temp file(s)" in capsys.readouterr().out
