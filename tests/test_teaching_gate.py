"""The teaching gate (trainer/teaching.py): the marks teach nothing, and training is what it would be
without them, while the images that carry what was marked show it does not go with the class; fully once
it does, for the rest of the run; a resume keeps where it opened."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from dashboard import run_reader
from trainer import protocol
from trainer.config import TrainConfig
from trainer.counterexamples import Counterexamples
from trainer.data import DataSplits
from trainer.data.base import TensorSplit
from trainer.feedback import FeedbackSet
from trainer.teaching import TELLS, Teaching, marks_tell_class
from trainer.train import Trainer, build_parts

from toys import toy_images


class Reads(nn.Module):
    """Class 1 when the region's mean is brighter than ``threshold`` (a scale to train, so an optimiser
    has something to hold): reads the 3×3 corner patch (the artefact) or the horizontal bar (the class)."""

    def __init__(self, rows: slice, cols: slice, threshold: float):
        super().__init__()
        self.rows, self.cols, self.threshold = rows, cols, threshold
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        s = self.scale * (x[:, :, self.rows, self.cols].mean((1, 2, 3)) - self.threshold)
        return torch.stack([-s, s], 1)


def patch_model() -> Reads:
    return Reads(slice(0, 3), slice(0, 3), 0.5)


def bar_model() -> Reads:
    return Reads(slice(5, 7), slice(2, 10), 0.7)


def toy_trainer(tmp_path, model: nn.Module, confounded: bool = True, annotated: int = 8, **cfg) -> Trainer:
    """A Trainer over the toy corner-patch set (confounded: the patch's colour is the class; else random),
    with the patch marked on its first ``annotated`` images."""
    g = torch.Generator().manual_seed(0)
    x, y, masks = toy_images(96, confounded, g, noise=0.05)
    train = TensorSplit("train", (x.clamp(0, 1) * 255).round().to(torch.uint8), y)
    data = DataSplits(train=train, val=train.subset(torch.arange(32), "val"), class_names=["v", "h"], in_chans=1,
                      image_size=12)
    config = TrainConfig(dataset="decoy-digits", epochs=2, batch_size=16, annotator="none", track_images=0,
                         device="cpu", runs_dir=str(tmp_path), title="toy", workers=0, feedback_method="both",
                         **cfg)
    parts = build_parts(replace(config, train_fraction=0.05, val_fraction=0.05), log=lambda *_: None)
    feedback = FeedbackSet(len(train), 12, 12)
    for i in range(annotated):
        feedback.add(i, masks[i])
    parts = replace(parts, data=data, model=model, feedback=feedback, penalty=type(parts.penalty)(model),
                    teaching=Teaching("both"),
                    counterexamples=Counterexamples(feedback, lambda i: train.batch(i), 0.5, "region"),
                    config=replace(parts.config, image_size=12))
    return Trainer(config, log=lambda *_: None, parts=parts)


def test_the_marks_tell_the_class_where_the_patch_goes_with_it_and_not_where_it_is_random(tmp_path):
    confounded = toy_trainer(tmp_path / "a", patch_model())
    random = toy_trainer(tmp_path / "b", patch_model(), confounded=False)
    # two classes of about equal share: every carrier of the class's patch has its class, half by chance
    assert marks_tell_class(confounded.feedback, confounded.data.train) == pytest.approx(0.5, abs=0.05)
    assert abs(marks_tell_class(random.feedback, random.data.train)) < 0.1
    lone = toy_trainer(tmp_path / "c", patch_model(), annotated=0)
    lone.data.train.images[0, :, 9:12, 9:12] = 255  # a white square on one image alone, marked
    mark = torch.zeros(12, 12, dtype=torch.bool)
    mark[9:12, 9:12] = True
    lone.feedback.add(0, mark)
    assert marks_tell_class(lone.feedback, lone.data.train) is None  # no other image carries it: cannot say


def test_with_every_image_marked_the_marks_are_judged_on_the_other_annotated_images(tmp_path):
    # nobody left unannotated: the annotated images tell instead, each mark's own image not counted
    confounded = toy_trainer(tmp_path / "a", patch_model(), annotated=96)
    random = toy_trainer(tmp_path / "b", patch_model(), confounded=False, annotated=96)
    assert marks_tell_class(confounded.feedback, confounded.data.train) == pytest.approx(0.5, abs=0.05)
    assert abs(marks_tell_class(random.feedback, random.data.train)) < 0.1
    assert random.check_gate(1) < TELLS and not random.full_teaching  # clean data: plain training
    # a corner of noise on every image: each marked corner is only its own image's, which says nothing
    unique = toy_trainer(tmp_path / "c", patch_model(), confounded=False, annotated=96)
    unique.data.train.images[:, :, :3, :3] = torch.randint(0, 256, (96, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    assert marks_tell_class(unique.feedback, unique.data.train) is None


def test_the_gate_opens_for_good_once_the_marks_tell_the_class(tmp_path):
    shut = toy_trainer(tmp_path / "shut", patch_model(), confounded=False)
    first = shut.check_gate(1)
    assert first < TELLS and not shut.full_teaching
    shut.data.train.images[:, :, :3, :3] = 0  # the images change under it; the marks do not: not measured again
    assert shut.check_gate(2) == first
    shut.feedback.add(8, shut.feedback.masks[0].clone())  # a new mark: measured again
    assert shut.check_gate(3) != first
    trainer = toy_trainer(tmp_path / "open", patch_model())
    assert not trainer.full_teaching
    assert trainer.check_gate(1) >= TELLS and trainer.state.full_teaching_from == 1
    assert math.isnan(trainer.check_gate(2)) and trainer.full_teaching  # open: no more measuring


def steps_seen(trainer: Trainer) -> list[int]:
    """The sizes of the batches ``trainer`` steps on from now (its own step, watched)."""
    sizes, step = [], trainer.train_step
    trainer.train_step = lambda x, y, idx: sizes.append(len(x)) or step(x, y, idx)
    return sizes


def test_while_the_gate_is_shut_the_epoch_is_plain_training_bit_for_bit(tmp_path):
    shut = toy_trainer(tmp_path / "shut", patch_model(), confounded=False)
    assert shut.check_gate(1) < TELLS  # the random patch says nothing of the class: shut
    plain = toy_trainer(tmp_path / "plain", patch_model(), confounded=False, annotated=0)
    sizes, plain_sizes = steps_seen(shut), steps_seen(plain)
    assert shut.train_one_epoch(1) == plain.train_one_epoch(1)  # loss, accuracy, no penalty
    assert sizes == plain_sizes and set(sizes) == {16}  # nothing appended, nothing oversampled
    assert torch.equal(shut.model.scale, plain.model.scale)
    opened = toy_trainer(tmp_path / "off", patch_model(), teaching_gate="off")  # gate off: full from the start
    sizes = steps_seen(opened)
    assert opened.full_teaching and opened.train_one_epoch(1)["penalty"] > 0
    assert set(sizes) == {16 + 2 + 9}  # 2 annotated images oversampled (1/8), half the 18 as counterexamples


def test_a_resumed_run_keeps_the_epoch_its_gate_opened(tmp_path):
    trainer = toy_trainer(tmp_path, patch_model())
    trainer.check_gate(2)
    trainer.state.epoch = 2
    trainer.save_checkpoint(best=True)
    again = toy_trainer(tmp_path, patch_model())  # the same parts, its state read back from the checkpoint
    assert not again.full_teaching
    again._load_checkpoint()
    assert again.state.full_teaching_from == 2 and again.full_teaching


def test_runs_saved_before_the_gate_existed_resume_without_it():
    assert TrainConfig.from_dict({"dataset": "decoy-digits"}).teaching_gate == "off"
    assert TrainConfig().teaching_gate == "marks"


@pytest.mark.parametrize("confounded", [True, False])
def test_a_run_records_the_gate_in_its_metrics_and_the_page_says_why(tmp_path, confounded):
    # 300 images: enough that other images carry each marked patch (colour and corner) to tell
    cfg = TrainConfig(dataset="decoy-digits", train_fraction=0.3, val_fraction=0.2, epochs=1, batch_size=64, seed=1,
                      annotator="oracle", queries_per_epoch=10, track_images=0, device="cpu", runs_dir=str(tmp_path),
                      title="run", dataset_options={} if confounded else {"confounded": False})
    Trainer(cfg, log=lambda *_: None).fit()
    run = protocol.RunDir(tmp_path / "run")
    row = protocol.read_metrics(run)[-1]
    sentence = run_reader.teaching(run)
    if confounded:  # the patch's colour is the class: the marks teach fully from the first epoch
        assert row["full_teaching"] == 1 and row["marks_tell"] >= TELLS
        assert sentence.startswith("Your marks teach fully from epoch 1: training images that carry what you marked")
    else:  # the patch is random: the marks wait, and the run trains as one without marks would, weight for weight
        assert row["full_teaching"] == 0 and abs(row["marks_tell"]) < TELLS and row["n_feedback"] > 0
        assert sentence.startswith("Your marks do not teach yet")
        Trainer(replace(cfg, annotator="none", title="plain"), log=lambda *_: None).fit()
        weights = [torch.load(protocol.RunDir(tmp_path / t).last_checkpoint, weights_only=False)["model"]
                   for t in ("run", "plain")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_sentence_follows_the_rows_and_is_silent_without_the_gate():
    light = {"epoch": 1, "n_feedback": 10.0, "full_teaching": 0.0, "marks_tell": 0.02}
    assert "(+2 points against chance)" in protocol.describe_teaching([light], "marks")
    opened = {**light, "epoch": 2, "full_teaching": 1.0, "marks_tell": math.nan}
    assert protocol.describe_teaching([light, opened], "marks") == (
        "Your marks teach fully from epoch 2: too few other images carry what you marked where you marked it to "
        "tell whether it goes with the class.")
    assert protocol.describe_teaching([light, opened], "off") is None
    carried = {**opened, "epoch": 3, "artefacts_found": 941.0}
    assert protocol.describe_teaching([light, opened, carried], "marks").endswith(
        "In its latest epoch the trainer also saw what you marked on 941 training images nobody marked, wherever it "
        "was on them, and covered it up there while training, so the model cannot lean on it there either.")
    weighed = {**carried, "epoch": 4, "marks_missed": 0.25}
    assert protocol.describe_teaching([light, opened, carried, weighed], "marks").endswith(
        "Looking for it by itself on the images you marked, without your mark, it found 75% of what you marked; "
        "for the rest it also penalises the model for looking there.")
    old = {"epoch": 1, "n_feedback": 10.0, "full_teaching": math.nan, "marks_tell": math.nan}
    assert protocol.describe_teaching([old], "marks") is None
