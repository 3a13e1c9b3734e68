"""Reliance: swapping the marked artefacts in held-out images and counting the answers that change
(trainer/reliance.py), in the run's result, its metrics rows and the dashboard's readers."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from trainer import protocol, reliance
from trainer.config import TrainConfig
from trainer.data.base import TensorSplit
from trainer.feedback import FeedbackSet
from trainer.train import Trainer

from dashboard import run_reader

from toys import toy_images


def corner_set(n: int, confounded: bool, g: torch.Generator) -> tuple[TensorSplit, torch.Tensor]:
    """The toy images with little noise, as a split, and the patch's masks."""
    x, y, masks = toy_images(n, confounded, g, noise=0.05)
    return TensorSplit("toy", (x.clamp(0, 1) * 255).round().to(torch.uint8), y), masks


class Reads(nn.Module):
    """A hand-built classifier: class 1 when the region's mean is brighter than ``threshold``."""

    def __init__(self, rows: slice, cols: slice, threshold: float):
        super().__init__()
        self.rows, self.cols, self.threshold = rows, cols, threshold

    def forward(self, x):
        s = 20 * (x[:, :, self.rows, self.cols].mean((1, 2, 3)) - self.threshold)
        return torch.stack([-s, s], 1)


PATCH_MODEL = Reads(slice(0, 3), slice(0, 3), 0.5)    # the artefact alone decides
BAR_MODEL = Reads(slice(5, 7), slice(2, 10), 0.7)     # the horizontal bar: ignores the artefact


def toy_feedback(train: TensorSplit, masks: torch.Tensor, annotated: int = 8) -> FeedbackSet:
    feedback = FeedbackSet(len(train), 12, 12)
    for i in range(annotated):
        feedback.add(i, masks[i])
    return feedback


@pytest.mark.parametrize("model, flips", [(PATCH_MODEL, 1.0), (BAR_MODEL, 0.0)])
def test_a_model_that_decides_by_the_artefact_follows_it_and_one_that_ignores_it_does_not(model, flips):
    g = torch.Generator().manual_seed(0)
    train, masks = corner_set(64, True, g)
    test, _ = corner_set(200, True, g)  # as in people's data: held-out images carry their class's artefact
    feedback = toy_feedback(train, masks)
    result = reliance.measure(model, test, feedback, train, torch.device("cpu"))
    assert result["source"] == "recurring" and result["n_artefacts"] == 8
    assert result["n_images"] == 200 and result["n_pasted"] == 200 and result["n_removed"] == 200
    assert result["test_acc"] > 0.95
    assert result["flip_rate"] == pytest.approx(flips, abs=0.05)
    if flips:
        assert result["swapped_test_acc"] < 0.05 and result["toward_rate"] > 0.95
    else:
        assert result["swapped_test_acc"] == pytest.approx(result["test_acc"], abs=0.05)
    sentence = protocol.describe_reliance(result)
    assert ("model relies on it" if flips else "hardly relies on it") in sentence


def test_on_a_decorrelated_split_the_shortcut_model_moves_toward_the_pasted_class():
    g = torch.Generator().manual_seed(1)
    train, masks = corner_set(64, True, g)
    test, _ = corner_set(200, False, g)
    feedback = toy_feedback(train, masks)
    follows = reliance.measure(PATCH_MODEL, test, feedback, train, torch.device("cpu"))
    ignores = reliance.measure(BAR_MODEL, test, feedback, train, torch.device("cpu"))
    assert follows["toward_rate"] > 0.95
    # half the images showed the other class's patch already: they only lose it (every image carries a
    # patch at the one place, so the fill is the place's median, a black patch: right for class 0 alone)
    assert 0.3 < follows["flip_rate"] < 0.7 and follows["swapped_test_acc"] < 0.35
    assert ignores["flip_rate"] < 0.05


def test_without_recurring_marks_every_small_mark_stands_in_and_without_marks_there_is_a_reason():
    g = torch.Generator().manual_seed(2)
    train, masks = corner_set(64, True, g)
    test, _ = corner_set(50, True, g)
    two = reliance.measure(PATCH_MODEL, test, toy_feedback(train, masks, annotated=2), train, torch.device("cpu"))
    assert two["source"] == "marks" and two["n_artefacts"] == 2
    none = reliance.measure(PATCH_MODEL, test, FeedbackSet(len(train), 12, 12), train, torch.device("cpu"))
    assert none["flip_rate"] is None and none["n_images"] == 0 and none["reason"]
    assert "not measured" in protocol.describe_reliance(none)


def test_the_same_images_are_measured_every_time():
    g = torch.Generator().manual_seed(3)
    train, masks = corner_set(64, True, g)
    test, _ = corner_set(300, False, g)
    feedback = toy_feedback(train, masks)
    assert reliance.measure(PATCH_MODEL, test, feedback, train, torch.device("cpu")) == \
        reliance.measure(PATCH_MODEL, test, feedback, train, torch.device("cpu"))
    assert torch.equal(reliance.held_out(test), reliance.held_out(test)) and len(reliance.held_out(test)) == 256


def test_a_run_with_oracle_marks_reports_its_reliance_in_the_result_and_each_epoch(tmp_path):
    cfg = TrainConfig(dataset="decoy-digits", train_fraction=0.1, val_fraction=0.2, epochs=1, batch_size=32, seed=1,
                      annotator="oracle", track_images=0, device="cpu", runs_dir=str(tmp_path), title="marks")
    result = Trainer(cfg, log=lambda *_: None).fit()
    r = result["reliance"]
    assert r["n_images"] > 0 and r["n_artefacts"] > 0 and r["split"] == "test"
    for key in ("flip_rate", "swapped_test_acc", "test_acc", "toward_rate"):
        assert 0 <= r[key] <= 1
    run = protocol.RunDir(tmp_path / "marks")
    rows = protocol.read_metrics(run)
    assert 0 <= rows[-1]["reliance_flip"] <= 1
    table = run_reader.test_results([run])
    assert table.reliance_flip_rate.tolist() == pytest.approx([r["flip_rate"]])
    assert protocol.describe_reliance(run_reader.reliance(run)).startswith("Swapping the marked artefact in")
    # a plain run of the same data set, measured with this run's marks
    plain = replace(cfg, annotator="none", title="plain")
    assert Trainer(plain, log=lambda *_: None).fit()["reliance"]["flip_rate"] is None
    assert math.isnan(protocol.read_metrics(protocol.RunDir(tmp_path / "plain"))[-1]["reliance_flip"])
    measured = reliance.measure_run(str(tmp_path / "plain"), str(tmp_path / "marks"))
    assert measured["marks_from"] == "marks" and 0 <= measured["flip_rate"] <= 1


def test_metrics_rows_of_runs_before_reliance_read_as_nan(tmp_path):
    run = protocol.RunDir(tmp_path / "old")
    old = [c for c in protocol.METRIC_COLUMNS if c != "reliance_flip"]
    protocol.atomic_write_text(run.metrics, ",".join(old) + "\n" + ",".join("1" for _ in old) + "\n")
    rows = protocol.read_metrics(run)
    assert rows[0]["epoch"] == 1 and math.isnan(rows[0]["reliance_flip"])
