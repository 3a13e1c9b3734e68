"""The training loop over the run directory: queue, mask file, penalty, checkpoints, resume, CLI."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import protocol
from trainer.annotator import OracleAnnotator
from trainer.cli import CLIError, main as cli_main, parse_args
from trainer.config import TrainConfig
from trainer.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(dataset="decoy-digits", train_fraction=0.2, val_fraction=0.3, epochs=2, queries_per_epoch=4,
             batch_size=32, seed=3, query_start_epoch=1)
SMALL_FLAGS = ["-ds", "decoy-digits", "-tf", "0.2", "-vf", "0.3", "-E", "3", "-qu", "4", "--batch-size", "32",
               "--seed", "3", "-se", "1"]


def small_config(tmp_path, title, **kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, "runs_dir": str(tmp_path), "title": title, **kw})


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_first_round_asks_for_the_marks_the_finder_needs_then_as_many_as_asked(tmp_path):
    """``-qu 1``: the first round asks MIN_MARKED images (with fewer the trainer cannot look for the marked
    artefact on unmarked images until rounds later, when a small set's model has learned it), then one a
    round; ``--query-budget`` still bounds the run, the first round included."""
    from trainer.proposals import MIN_MARKED

    def asked(title, **kw):
        trainer = Trainer(small_config(tmp_path, title, annotator="oracle", epochs=3, queries_per_epoch=1, **kw),
                          log=lambda *a: None)
        trainer.fit()
        return [len(protocol.read_manifest(trainer.run, e)["queries"]) for e in protocol.queue_epochs(trainer.run)]

    assert asked("one") == [MIN_MARKED, 1]
    assert asked("budget", query_budget=2) == [2]


def test_oracle_run_leaves_a_complete_run_directory(tmp_path):
    result = Trainer(small_config(tmp_path, "oracle", annotator="oracle"), log=lambda *a: None).fit()
    run = protocol.RunDir(tmp_path / "oracle")
    assert protocol.read_status(run)["state"] == protocol.FINISHED
    rows = protocol.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for column in ("train_loss", "val_loss", "val_acc", "val_precision", "val_recall", "val_f1", "penalty", "seconds"):
        assert np.isfinite(rows[-1][column]), column
    assert rows[0]["penalty"] == 0 and rows[1]["penalty"] > 0  # no penalty before the first feedback
    manifest = protocol.read_manifest(run, 1)
    assert len(manifest["queries"]) == 4
    q = manifest["queries"][0]
    assert {"query_id", "index", "true_label", "predicted_label", "probabilities", "entropy"} <= set(q)
    assert protocol.query_image_path(run, 1, q["query_id"]).exists()
    assert np.load(protocol.query_saliency_path(run, 1, q["query_id"])).shape == (32, 32)
    assert protocol.read_json(run.feedback_file(1))["annotator"] == "oracle"
    assert run.last_checkpoint.exists() and run.best_checkpoint.exists()
    assert len(list(run.plots.glob("*.png"))) == 2
    assert result["n_feedback"] == 4 and 0 <= result["test_acc"] <= 1


def test_bad_mask_file_is_rejected_and_the_trainer_keeps_waiting(tmp_path):
    cfg = small_config(tmp_path, "human", annotator="human")
    trainer = Trainer(cfg, log=lambda *a: None)
    run = trainer.run
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("result", trainer.fit()), daemon=True)
    thread.start()
    wait_for(lambda: protocol.read_status(run).get("waiting_epoch") == 1, what="the first queue")
    protocol.atomic_write_json(run.feedback_file(1), {"format": 1, "epoch": 1, "queries": [{"query_id": "nope"}]})
    wait_for(lambda: "feedback_error" in protocol.read_status(run), what="the rejection")
    status = protocol.read_status(run)
    assert status["state"] == protocol.WAITING and "unknown query_id" in status["feedback_error"]
    assert len(list(run.rejected_root.glob("*.json"))) == 1 and not run.feedback_file(1).exists()
    assert OracleAnnotator(trainer.data.train)(run, 1)
    thread.join(120)
    assert done["result"]["n_feedback"] == 4
    assert protocol.read_status(run)["state"] == protocol.FINISHED


def test_query_start_epoch_zero_asks_before_training(tmp_path):
    """-se 0: one queue before the first epoch, so its marks already shape epoch 1."""
    trainer = Trainer(small_config(tmp_path, "early", annotator="human", query_start_epoch=0), log=lambda *a: None)
    run = trainer.run
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("result", trainer.fit()), daemon=True)
    thread.start()
    wait_for(lambda: run.status.exists() and protocol.read_status(run).get("waiting_epoch") == 0,
             what="the queue before training")
    assert not run.metrics.exists()
    assert OracleAnnotator(trainer.data.train)(run, 0)
    wait_for(lambda: protocol.read_status(run).get("waiting_epoch") == 1, what="the epoch-1 queue")
    assert OracleAnnotator(trainer.data.train)(run, 1)
    thread.join(120)
    first = protocol.read_metrics(run)[0]
    assert first["epoch"] == 1 and first["n_feedback"] == 4 and first["penalty"] > 0
    assert protocol.queue_epochs(run) == [0, 1] and done["result"]["n_feedback"] >= 4


def _train(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / protocol.LAST_CHECKPOINT, weights_only=True)["model"]


def test_kill_while_waiting_and_resume_gives_the_uninterrupted_result(tmp_path):
    """kill -9 while waiting for feedback (here on the queue before training, the earliest point),
    answer with the oracle command, --resume: the final weights equal those of a run never interrupted."""
    reference = _train([*SMALL_FLAGS, "-se", "0", "-md", str(tmp_path), "-td", "reference", "--annotator", "oracle"])
    victim = _train([*SMALL_FLAGS, "-se", "0", "-md", str(tmp_path), "-td", "victim", "--annotator", "human"])
    run = protocol.RunDir(tmp_path / "victim")
    wait_for(lambda: run.status.exists() and protocol.read_status(run).get("waiting_epoch") == 0, what="the queue")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert protocol.read_status(run)["state"] == protocol.STALE
    answered = subprocess.run([sys.executable, "-m", "trainer.annotator", str(run.path), "--once"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert answered.returncode == 0, answered.stderr
    resumed = _train(["--resume", "-md", str(tmp_path), "-td", "victim", "--annotator", "oracle"])
    assert resumed.wait(300) == 0, resumed.stderr.read()
    assert reference.wait(300) == 0, reference.stderr.read()
    a, b = _weights(tmp_path / "reference"), _weights(tmp_path / "victim")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert protocol.read_metrics(run)[-1]["epoch"] == 3


def test_kill_mid_training_resumes_from_the_last_complete_epoch(tmp_path):
    victim = _train([*SMALL_FLAGS, "-md", str(tmp_path), "-td", "victim", "--annotator", "oracle", "-E", "4"])
    run = protocol.RunDir(tmp_path / "victim")
    wait_for(lambda: run.metrics.exists() and len(protocol.read_metrics(run)) >= 2, what="two epochs")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(protocol.read_metrics(run))
    resumed = _train(["--resume", "-md", str(tmp_path), "-td", "victim"])
    assert resumed.wait(300) == 0, resumed.stderr.read()
    rows = protocol.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and done >= 2
    assert protocol.read_status(run)["state"] == protocol.FINISHED


def test_original_short_flags_are_aliases(tmp_path):
    cfg, resume = parse_args(["-dr", "/data", "-md", str(tmp_path), "-E", "5", "-tf", "0.5", "-vf", "0.25",
                              "-td", "study", "-sp", "low_entropy", "-et", "0.3", "-qu", "7", "-ov", "False",
                              "-se", "2", "-ds", "decoy-digits", "--lambda", "3"])
    assert not resume
    assert (cfg.data_dir, cfg.runs_dir, cfg.epochs, cfg.train_fraction, cfg.val_fraction, cfg.title) == \
        ("/data", str(tmp_path), 5, 0.5, 0.25, "study")
    assert (cfg.sampling, cfg.entropy_threshold, cfg.queries_per_epoch, cfg.oversample) == ("low_entropy", 0.3, 7, False)
    assert (cfg.query_start_epoch, cfg.dataset, cfg.penalty_weight) == (2, "decoy-digits", 3.0)
    assert parse_args(["-ov", "true", "-md", str(tmp_path)])[0].oversample is True


@pytest.mark.parametrize("argv, message", [
    (["-E", "zero"], "expected a int"),
    (["-tf", "1.5"], "must be in (0, 1]"),
    (["-ov", "perhaps"], "expected true or false"),
    (["--sampling", "loudest"], "invalid choice"),
    (["--resume", "-td", "missing"], "no run at"),
])
def test_bad_flags_get_one_line_errors(tmp_path, capsys, argv, message):
    with pytest.raises(CLIError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        parse_args([*argv, "-md", str(tmp_path)])
    assert cli_main([*argv, "-md", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hitl-train: error:") and "\n" not in err


def test_offline_pretrained_fails_clearly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainer", "--model", "resnet18", "--pretrained", "-md", str(tmp_path),
                           "-td", "p", "-E", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = done.stderr.strip()
    assert done.returncode == 2 and err.startswith("hitl-train: error:") and "pretrained" in err
    assert "\n" not in err


@pytest.mark.parametrize("dataset, epochs", [("decoy-digits", 8), ("synthetic-lesions", 4)])
def test_confounder_fools_plain_training(tmp_path, dataset, epochs):
    """On the decorrelated test split plain training scores at least 20 points lower than on the
    label-consistent one: the shortcut is real."""
    cfg = TrainConfig(dataset=dataset, runs_dir=str(tmp_path), title=dataset, annotator="none", epochs=epochs)
    result = Trainer(cfg, log=lambda *a: None).fit()
    assert result["test_consistent_acc"] - result["test_acc"] >= 0.20, result


def test_after_each_epoch_batch_norm_reads_the_statistics_of_the_training_images_under_the_final_weights(tmp_path):
    """The running averages trail weights that move fast (a model that answers 86% right read 55% in
    eval mode); after an epoch each batch-norm layer holds its input's mean and variance over the
    training images under the weights the epoch ended with, whatever it held before."""
    from trainer.modes import norm_layers

    trainer = Trainer(small_config(tmp_path, "norms", annotator="none"), log=lambda *a: None)
    norms = norm_layers(trainer.model)
    assert norms
    trainer.train_and_validate(1)
    inputs: dict = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, []).append(args[0].detach()))
             for m in norms]
    train = trainer.data.train
    x, _ = train.batch(torch.arange(len(train)))
    trainer.model.eval()
    with torch.no_grad():
        trainer.model(x)
    for h in hooks:
        h.remove()
    for m in norms:
        seen = inputs[m][0].transpose(0, 1).flatten(1)  # channels × (images · pixels)
        assert torch.allclose(m.running_mean, seen.mean(1), atol=2e-3, rtol=0.01)  # averaged over batches
        assert torch.allclose(m.running_var, seen.var(1), atol=2e-3, rtol=0.05)
    assert all(m.momentum == 0.1 for m in norms)  # training goes on with its running averages
