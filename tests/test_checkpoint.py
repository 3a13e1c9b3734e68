"""Checkpoints after a kill at any point: best and last agree, stray temp files go, resume works."""
import os

import pytest
import torch

from trainer import checkpoint, protocol
from trainer.cli import parse_args
from trainer.train import Trainer


def state(epoch, best_epoch):
    return {"model": {"w": torch.full((2,), float(epoch))},
            "state": {"epoch": epoch, "best_epoch": best_epoch, "answered": [], "applied": []}}


def saved_epoch(path):
    return checkpoint.read(path)["state"]["epoch"]


@pytest.fixture
def run(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    run.path.mkdir()
    return run


def test_best_is_a_link_not_a_second_write(run):
    checkpoint.save(run, state(1, 1), best=True)
    assert os.path.samefile(run.last_checkpoint, run.best_checkpoint)
    checkpoint.save(run, state(2, 1), best=False)
    assert saved_epoch(run.best_checkpoint) == 1 and saved_epoch(run.last_checkpoint) == 2


def test_kill_between_the_rename_and_the_link_is_mended(run, monkeypatch):
    checkpoint.save(run, state(1, 1), best=True)

    def killed(*args):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(checkpoint, "_link_over", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(run, state(2, 2), best=True)
    monkeypatch.undo()
    assert saved_epoch(run.best_checkpoint) == 1  # the file on disk is behind ...
    assert saved_epoch(checkpoint.best_path(run)) == 2  # ... but readers get the best epoch
    assert checkpoint.recover(run)
    assert saved_epoch(run.best_checkpoint) == 2 and not checkpoint.recover(run)


def test_kill_inside_the_link_leaves_nothing_that_resume_does_not_clean(run, monkeypatch):
    checkpoint.save(run, state(1, 1), best=True)
    (run.path / ".last.pt.abc123.tmp").write_bytes(b"x" * 1000)  # a write cut off by kill -9
    real_replace = os.replace

    def killed_after_link(src, dst):
        if str(dst).endswith(protocol.BEST_CHECKPOINT):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed_after_link)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(run, state(2, 2), best=True)
    monkeypatch.undo()
    assert {p.name for p in run.path.glob(".*tmp")} == {".last.pt.abc123.tmp", ".best.pt.link.tmp"}
    checkpoint.recover(run)
    assert not list(run.path.glob(".*tmp"))
    assert saved_epoch(run.best_checkpoint) == 2


def test_query_phase_save_after_the_best_epoch_is_not_mistaken_for_the_kill_window(run):
    checkpoint.save(run, state(3, 3), best=True)
    after_feedback = state(3, 3)
    after_feedback["model"]["w"] += 1
    checkpoint.save(run, after_feedback, best=False)
    assert not checkpoint.recover(run)
    assert torch.equal(checkpoint.read(run.best_checkpoint)["model"]["w"], torch.full((2,), 3.0))


def test_old_checkpoints_are_upgraded_and_newer_ones_refused(run, tmp_path):
    old = {"format": 1, "model": {}, "state": {"epoch": 1, "best_epoch": 1, "answered": []}}
    torch.save(old, tmp_path / "old.pt")
    assert checkpoint.read(tmp_path / "old.pt")["state"]["applied"] == []
    torch.save({**old, "format": checkpoint.FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(checkpoint.CheckpointError, match="newer version"):
        checkpoint.read(tmp_path / "new.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt"):
        checkpoint.read(tmp_path / "junk.pt")


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path):
    flags = ["-ds", "decoy-digits", "-tf", "0.1", "-vf", "0.2", "-E", "1", "--annotator", "none",
             "--batch-size", "32", "-md", str(tmp_path), "-td", "early"]
    cfg, _ = parse_args(flags)
    run = protocol.RunDir(tmp_path / "early")
    protocol.write_config(run, cfg.to_dict())  # what a run killed while building its data set leaves
    protocol.write_status(run, protocol.STOPPED, epoch=0)
    cfg, resume = parse_args(["--resume", "-md", str(tmp_path), "-td", "early"])
    assert resume
    result = Trainer(cfg, resume=True, log=lambda *a: None).fit()
    assert result["best_epoch"] == 1 and run.best_checkpoint.exists()
