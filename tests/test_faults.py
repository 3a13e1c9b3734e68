"""Faults and hostile input: what lands in feedback/ never kills or hangs the waiting trainer, and a
page visitor cannot make the launcher write or read outside the folders it was given."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dashboard import launcher, run_reader, serve
from trainer import protocol

ROOT = Path(__file__).resolve().parents[1]
MASK_FILE = "feedback/epoch_001.json"
PR_CAPBSET_DROP = 24  # linux/prctl.h


def make_manifest(run: protocol.RunDir, epoch: int = 1, size: int = 8) -> dict:
    queries = [protocol.QueryEntry(f"q{i:03d}", 10 + i, i % 2, 0, [0.5, 0.5], 0.69, size, size).to_json()
               for i in range(3)]
    protocol.write_manifest(run, epoch, {"class_names": ["a", "b"], "saliency": "deeplift", "queries": queries})
    return protocol.read_manifest(run, epoch)


def mask_doc(**query) -> dict:
    q = {"query_id": "q000", "index": 10, "action": "mask",
         "forbidden": {"height": 8, "width": 8, "boxes": [[0, 0, 4, 4]]}, **query}
    return {"format": 1, "epoch": 1, "queries": [q]}


@contextlib.contextmanager
def at_most(seconds: int):
    """Fail instead of hanging: a blocked open() or an endless read is what these tests look for."""
    def timeout(signum, frame):
        raise AssertionError(f"still busy after {seconds} s")
    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- hostile mask files

def _text(text: str):
    return lambda path: path.write_text(text)


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _over_size(path: Path) -> None:
    doc = json.dumps(mask_doc())
    path.write_text(doc[:-1] + " " * protocol.MASK_FILE_MAX_BYTES + "}")  # valid JSON, one byte too many and more


def _too_many_runs(path: Path) -> None:
    path.write_text(json.dumps(mask_doc(forbidden={"height": 8, "width": 8, "rle": [1] * 64 + [0, 0]})))


HOSTILE = {
    "nan in a box": (_text(json.dumps(mask_doc())
                           .replace("[0, 0, 4, 4]", "[0, 0, NaN, 4]")), "NaN is not a JSON number"),
    "infinity in a box": (_text(json.dumps(mask_doc()).replace("[0, 0, 4, 4]", "[0, 0, Infinity, 4]")),
                          "Infinity is not a JSON number"),
    "overflowing number in a box": (_text(json.dumps(mask_doc()).replace("[0, 0, 4, 4]", "[0, 0, 1e999, 4]")),
                                    "the number 1e999 is out of range"),
    "overflowing submitted_at": (_text(json.dumps(mask_doc()).replace('"format": 1', '"submitted_at": 1e400, "format": 1')),
                                 "the number 1e400 is out of range"),
    "integer beyond any float": (_text(json.dumps(mask_doc()).replace('"format": 1', '"submitted_at": 1' + "0" * 400
                                                                      + ', "format": 1')), "is out of range"),
    "query_id as a list": (_text(json.dumps(mask_doc(query_id=["q000"]))), "unknown query_id"),
    "action as an object": (_text(json.dumps(mask_doc(action={"a": 1}))), "unknown action"),
    "not UTF-8": (_bytes(b'{"format": 1, "epoch": 1, "annotator": "\xff\xfe", "queries": []}'), "not UTF-8"),
    "nested 200,000 deep": (_text("[" * 200_000 + "]" * 200_000), "nested too deeply"),
    "a folder": (lambda path: path.mkdir(), "is a folder"),
    "a named pipe": (lambda path: os.mkfifo(path), "is a named pipe"),
    "a link to /dev/zero": (lambda path: path.symlink_to("/dev/zero"), "is a symbolic link"),
    "a dangling link": (lambda path: path.symlink_to(path.parent / "nowhere.json"), "is a symbolic link"),
    "over the size limit": (_over_size, "larger than the 16 MiB limit"),
    "more runs than pixels": (_too_many_runs, "66 runs, more than the 64 pixels allow"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_mask_file_is_refused_naming_it_and_kept_aside(tmp_path, kind):
    make, reason = HOSTILE[kind]
    run = protocol.RunDir(tmp_path / "r")
    manifest = make_manifest(run)
    path = run.feedback_file(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    assert protocol.feedback_sent(run, 1)  # the dashboard will not write over it: it waits for the trainer
    with at_most(20):
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.load_feedback(run, 1, manifest)
        assert run_reader.sent_answers(run, 1) is None  # the dashboard's reader neither hangs nor fails
    message = str(refused.value)
    assert message.startswith(MASK_FILE) and reason in message and "\n" not in message and len(message) < 300
    kept = protocol.reject_feedback(run, 1)
    assert os.path.lexists(kept) and kept.parent == run.rejected_root
    assert not protocol.feedback_sent(run, 1) and protocol.pending_epoch(run) == 1


def without_permission_override() -> None:
    """In a child about to exec: drop root's power to read any file (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave the bounding set), so file modes bind it as they bind every other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_mask_file_is_refused(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    make_manifest(run)
    protocol.submit_feedback(run, 1, "test", [])
    os.chmod(run.feedback_file(1), 0o000)
    reader = ("import sys; from trainer import protocol; run = protocol.RunDir(sys.argv[1]); "
              "manifest = protocol.read_manifest(run, 1)\n"
              "try:\n    protocol.load_feedback(run, 1, manifest)\n"
              "except protocol.ProtocolError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", reader, str(run.path)], capture_output=True, text=True, timeout=60,
                          preexec_fn=without_permission_override if os.geteuid() == 0 else None,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{MASK_FILE}: cannot be opened (Permission denied)"
    assert protocol.reject_feedback(run, 1).parent == run.rejected_root  # moving needs only the folder


def test_rejected_files_are_all_kept(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    make_manifest(run)
    for i in range(30):
        run.feedback_root.mkdir(exist_ok=True)
        run.feedback_file(1).write_text(f"not json {i}")
        protocol.reject_feedback(run, 1)
    kept = sorted(p.read_text() for p in run.rejected_root.iterdir())
    assert kept == sorted(f"not json {i}" for i in range(30))


def test_a_dangling_link_counts_as_sent_for_both_sides_until_the_trainer_moves_it(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    manifest = make_manifest(run)
    run.feedback_root.mkdir()
    run.feedback_file(1).symlink_to(tmp_path / "gone.json")
    assert protocol.feedback_sent(run, 1) and protocol.pending_epoch(run) is None
    assert not protocol.submit_feedback(run, 1, "dashboard", [])  # "already sent", as the trainer sees it
    with pytest.raises(protocol.ProtocolError, match="symbolic link"):
        protocol.load_feedback(run, 1, manifest)
    protocol.reject_feedback(run, 1)
    assert protocol.pending_epoch(run) == 1
    assert protocol.submit_feedback(run, 1, "dashboard", [])
    assert protocol.load_feedback(run, 1, manifest) == []


def test_answers_over_the_size_limit_are_refused_before_writing(tmp_path, monkeypatch):
    run = protocol.RunDir(tmp_path / "r")
    make_manifest(run)
    monkeypatch.setattr(protocol.maskfile, "MASK_FILE_MAX_BYTES", 100)  # where the check reads it
    answers = [protocol.QueryFeedback(f"q{i:03d}", 10 + i, protocol.ACTION_SKIP) for i in range(3)]
    with pytest.raises(protocol.ProtocolError, match="over the 0 MiB limit"):
        protocol.submit_feedback(run, 1, "dashboard", answers)
    assert not protocol.feedback_sent(run, 1)


def test_hostile_files_do_not_kill_a_waiting_trainer(tmp_path):
    """The real trainer waiting on its first queue: one hostile thing after another lands where the
    mask file goes; each is refused with its reason in the status and kept, and a valid answer still
    finishes the run."""
    from trainer.annotator import OracleAnnotator
    from trainer.config import TrainConfig
    from trainer.train import Trainer

    cfg = TrainConfig(dataset="decoy-digits", train_fraction=0.2, val_fraction=0.3, epochs=1, queries_per_epoch=2,
                      batch_size=32, seed=3, query_start_epoch=0, annotator="human", runs_dir=str(tmp_path),
                      title="hostile")
    trainer = Trainer(cfg, log=lambda *a: None)
    run = trainer.run
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("result", trainer.fit()), daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not (run.status.exists() and protocol.read_status(run).get("waiting_epoch") == 0):
        assert time.time() < deadline, "the trainer never asked"
        time.sleep(0.1)
    kinds = ["a named pipe", "a dangling link", "nan in a box", "query_id as a list", "not UTF-8",
             "nested 200,000 deep", "a folder", "a link to /dev/zero"]
    run.feedback_root.mkdir(exist_ok=True)
    previous = None
    for n, kind in enumerate(kinds, start=1):
        make, reason = HOSTILE[kind]
        staged = run.feedback_root / f".staged-{n}"  # complete before it appears under the mask file's name
        make(staged)
        os.rename(staged, run.feedback_file(0))
        deadline = time.time() + 30
        while (status := protocol.read_status(run)).get("feedback_error") in (None, previous):
            assert time.time() < deadline and thread.is_alive(), f"{kind}: not refused"
            time.sleep(0.05)
        previous = status["feedback_error"]
        assert status["state"] == protocol.WAITING, kind
        if kind != "query_id as a list":  # its fixture answers epoch 1: the epoch check refuses it first
            assert reason in status["feedback_error"], (kind, status["feedback_error"])
        assert status["feedback_error"].startswith("feedback/epoch_000.json")
    assert OracleAnnotator(trainer.data.train)(run, 0)
    thread.join(180)
    assert done["result"]["n_feedback"] >= 1 and protocol.read_status(run)["state"] == protocol.FINISHED
    assert len(list(run.rejected_root.iterdir())) == len(kinds)


# --------------------------------------------------------------------------- what a page visitor may ask

def request(title: str = "visitor", **kw) -> launcher.RunRequest:
    fields = dict(title=title, dataset="decoy-digits", model="hitl_cnn", epochs=1, sampling="random",
                  queries_per_epoch=1, query_start_epoch=1, penalty_weight=1.0, saliency="saliency",
                  annotator="none")
    return launcher.RunRequest(**{**fields, **kw})


@pytest.fixture(scope="module")
def options():
    return launcher.trainer_options()["options"]


@pytest.mark.parametrize("typed, reason", [
    ("--runs-dir /tmp/elsewhere", "runs folder is the dashboard's"),
    ("-md /tmp/elsewhere", "runs folder is the dashboard's"),
    ("--runs-dir=/tmp/elsewhere", "runs folder is the dashboard's"),
    ("--title other", "run name comes from the Run name field"),
    ("-td=other", "run name comes from the Run name field"),
    ("--resume", "Resume button"),
    ("--runs /tmp/elsewhere", "not an option of the trainer"),  # argparse would take the abbreviation
    ("--tit other", "not an option of the trainer"),
    ("-md/tmp/elsewhere", "not an option of the trainer"),
    ("--lr 1e-3 stray", "'stray' in the trainer options is not a flag"),
    ("--batch-size", "needs a value"),
])
def test_the_options_field_refuses_what_the_form_decides(tmp_path, options, typed, reason):
    with pytest.raises(launcher.LaunchError, match=reason):
        launcher.check_extra_args(launcher.parse_extra_args(typed), options, [tmp_path])


def test_the_options_field_accepts_ordinary_trainer_flags(tmp_path, options):
    typed = "--batch-size 16 --lr=1e-3 -tf 0.5 --pretrained --oversample false --seed -3 --init-from " + \
        str(tmp_path / "other" / "best.pt")
    launcher.check_extra_args(launcher.parse_extra_args(typed), options, [tmp_path])


@pytest.mark.parametrize("typed", ["--data-dir /etc", "-dr=/etc/passwd", "--init-from ../../../../../../etc/passwd",
                                   "--init-from {runs}/../outside.pt", "-dr {runs}/link-out"])
def test_typed_paths_stay_inside_the_allowed_folders(tmp_path, options, typed):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "link-out").symlink_to("/etc")
    args = launcher.parse_extra_args(typed.format(runs=runs))
    with pytest.raises(launcher.LaunchError, match="outside the folders this dashboard may read"):
        launcher.check_extra_args(args, options, [runs])
    with pytest.raises(launcher.LaunchError, match="outside the folders"):
        launcher.start_run(runs, request(data_dir="/etc"), allowed_roots=[runs])
    assert list(runs.iterdir()) == [runs / "link-out"]  # nothing created for a refused request


def test_a_refused_request_names_the_path_not_its_contents(tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("s3cret-first-line\n")
    with pytest.raises(launcher.LaunchError) as refused:
        launcher.start_run(tmp_path / "runs", request(dataset="csv", extra_args=["-dr", str(secret)]),
                           allowed_roots=[tmp_path / "runs"])
    assert "s3cret" not in str(refused.value)


def test_a_data_file_that_is_not_a_table_is_named_not_quoted(tmp_path):
    """What the trainer says (and the Runs page shows) about a text file given as a CSV data set."""
    from trainer.data import DataError, DataRequest, build_dataset

    secret = tmp_path / "notes.csv"
    secret.write_text("s3cret-first-line\nmore\n")
    with pytest.raises(DataError) as refused:
        build_dataset("csv", DataRequest(str(secret), None, 0, 1.0, 1.0, {}))
    assert "notes.csv" in str(refused.value) and "s3cret" not in str(refused.value)


def test_sharing_the_dashboard_on_the_network_needs_a_token(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as refused:
        serve.main(["--host", "0.0.0.0", "--runs-dir", str(tmp_path)])
    assert refused.value.code == 2 and serve.TOKEN_ENV in capsys.readouterr().err and not calls
    monkeypatch.setenv(serve.TOKEN_ENV, "s3cret")
    serve.main(["--host", "0.0.0.0", "--runs-dir", str(tmp_path), "--allow-root", str(tmp_path / "data")])
    (argv, env), = calls
    assert env[serve.TOKEN_ENV] == "s3cret" and "s3cret" not in argv
    assert argv[argv.index("--allow-root") + 1] == str((tmp_path / "data").resolve())
    assert "visitors must enter the access token" in capsys.readouterr().out
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")


def test_the_page_asks_for_the_token_and_refuses_without_it(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv(serve.TOKEN_ENV, "s3cret")
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=30).run()
    assert not at.exception and [t.label for t in at.text_input] == ["Access token"]
    assert not any("Runs" == t.value for t in at.title)
    at.text_input[0].set_value("guess")
    at.button[0].click().run()
    assert "not the access token" in at.error[0].value and [t.label for t in at.text_input] == ["Access token"]
    at.text_input[0].set_value("s3cret")
    at.button[0].click().run()
    assert [t.value for t in at.title] == ["Runs"]
