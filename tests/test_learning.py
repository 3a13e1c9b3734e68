"""How masks teach beyond the penalty: counterexamples, masks given up front (from a csv data set or
the generated sets), a run's masks exported as a csv data set and read back, and the simulated
annotator's human-like styles."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_real import make_csv, write_csv, write_image

from trainer import protocol
from trainer.annotator import OracleAnnotator
from trainer.cli import CLIError, parse_args
from trainer.config import TrainConfig
from trainer.counterexamples import Counterexamples, dilation_pixels, recurring_marks
from trainer.teaching import AUTO_PENALTY_WEIGHT, PENALTY_WEIGHT, Teaching
from trainer.data import DataError, DataRequest, build_dataset
from trainer.data.base import TensorSplit
from trainer.data.real import from_spreadsheet_cell, to_spreadsheet_cell
from trainer.batches import gather
from trainer.export import LABELS_FILE, export_run
from trainer.feedback import FeedbackSet
from trainer.train import Trainer

from toys import toy_images

TINY = dict(dataset="decoy-digits", train_fraction=0.1, val_fraction=0.2, epochs=1, batch_size=32, seed=1,
            annotator="none", track_images=0, device="cpu")


def train_toy(annotated: int, transfer: float = 0.0) -> tuple[float, float]:
    """A linear classifier trained on the confounded toy set, with counterexamples of the first
    ``annotated`` images; its decorrelated test accuracy and the share of its weight on the patch."""
    g = torch.Generator().manual_seed(0)
    x, y, masks = toy_images(64, True, g)
    x_test, y_test, _ = toy_images(400, False, g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    feedback = FeedbackSet(len(x), 12, 12)
    feedback.add_all(masks[:annotated])
    counterexamples = Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.5, fill="region", transfer=transfer)
    for _ in range(150):
        idx = torch.randint(len(x), (32,), generator=g)
        xb, yb, idx, _ = counterexamples.extend(x[idx], y[idx], idx, g)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    w = model[1].weight.detach().view(2, 12, 12)
    decisive = (w[1] - w[0]).abs()
    return acc, float(decisive[0:3, 0:3].sum() / decisive.sum())


def test_counterexamples_move_the_decision_off_the_marked_region():
    plain_acc, plain_share = train_toy(annotated=0)
    acc, share = train_toy(annotated=8)
    assert plain_acc < 0.65, "the toy's patch must be the shortcut plain training takes"
    assert acc > 0.75 and acc > plain_acc + 0.15
    assert share < plain_share / 2


def test_a_mark_that_recurs_at_one_place_reaches_images_nobody_marked():
    """Three marked images show the patch's place; carrying it to unannotated images makes the
    shortcut stop paying everywhere: three marks then teach what eight did not without it."""
    few_acc, _ = train_toy(annotated=3)
    acc, share = train_toy(annotated=3, transfer=0.5)
    eight_acc, _ = train_toy(annotated=8)
    assert acc > 0.9 and acc > few_acc + 0.15 and acc > eight_acc
    assert share < 0.05


def test_only_small_marks_that_recur_at_one_place_are_carried():
    corner = torch.zeros(12, 12, dtype=torch.bool)
    corner[0:3, 0:3] = True
    shifted = torch.zeros(12, 12, dtype=torch.bool)
    shifted[1:4, 0:3] = True                       # a rough mark of the same corner
    marks = [corner, corner, shifted]
    for i in range(3):                             # marks on the object: each somewhere else
        blob = torch.zeros(12, 12, dtype=torch.bool)
        blob[3 * i + 1:3 * i + 3, 8 - 3 * i:10 - 3 * i] = True
        marks.append(blob)
    big = torch.ones(12, 12, dtype=torch.bool)
    big[:2] = False
    marks += [big, big, big]                       # too large to be an artefact's place
    marks += [corner]                              # with a relevant region drawn
    masks = torch.stack(marks)
    relevant = torch.zeros_like(masks)
    relevant[-1, 5:8, 5:8] = True
    assert recurring_marks(masks, relevant).tolist() == [0, 1, 2]
    assert recurring_marks(masks[:2], relevant[:2]).tolist() == []   # two alike are not yet a place
    assert len(recurring_marks(masks[:0], relevant[:0])) == 0


def test_carried_marks_fill_only_unannotated_images_and_keep_every_label():
    g = torch.Generator().manual_seed(0)
    x, y, masks = toy_images(64, True, g)
    feedback = FeedbackSet(64, 12, 12)
    feedback.add_all(masks[:3])
    batch = torch.arange(3, 64)
    off = Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.5, fill="region")
    assert torch.equal(off.extend(x[batch], y[batch], batch, g)[0][:61], x[batch])
    on = Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.5, fill="region", transfer=0.5)
    xb, yb, idx, _ = on.extend(x[batch], y[batch], batch, g)
    changed = (xb[:61] != x[batch]).flatten(1).any(1)
    assert 15 <= int(changed.sum()) <= 45           # about half of them
    assert torch.equal(xb[:61][:, :, ~masks[0]], x[batch][:, :, ~masks[0]])  # only the carried place
    assert torch.equal(yb[:61], y[batch]) and torch.equal(idx[:61], batch)
    # a batch of annotated images only: the same batch, and the same random stream, as without carrying
    everyone = FeedbackSet(64, 12, 12)
    everyone.add_all(masks)
    same = [Counterexamples(everyone, lambda i: (x[i], y[i]), share=0.5, transfer=t).extend(
        x[batch], y[batch], batch, torch.Generator().manual_seed(1))[0] for t in (0.0, 0.5)]
    assert torch.equal(*same)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.5, transfer=1.5)
    assert parse_args(["--counterexample-transfer", "0"])[0].counterexample_transfer == 0
    with pytest.raises(CLIError, match="between 0 and 1, got nan"):
        parse_args(["--counterexample-transfer", "nan"])


def test_counterexamples_replace_only_the_marked_pixels_and_keep_the_label():
    g = torch.Generator().manual_seed(0)
    x, y, masks = toy_images(16, True, g)
    feedback = FeedbackSet(16, 12, 12)
    feedback.add_all(masks[:4])
    for fill in ("region", "paste", "mix"):
        ce = Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.5, fill=fill)
        xb, yb, idx, k = ce.extend(x[4:12], y[4:12], torch.arange(4, 12), g)
        assert k == 4 and len(xb) == 12 and set(idx[-k:].tolist()) <= {0, 1, 2, 3}
        originals = x[idx[-k:]]
        outside = ~masks[0]
        assert torch.equal(xb[-k:][:, :, outside], originals[:, :, outside])
        assert torch.equal(yb[-k:], y[idx[-k:]])
    # paste: the patch comes from another annotated image's patch (all black or white here)
    ce = Counterexamples(feedback, lambda i: (x[i], y[i]), share=1.0, fill="paste")
    xb, _, _, k = ce.extend(x[4:12], y[4:12], torch.arange(4, 12), g)
    patches = xb[-k:, 0, 0:3, 0:3]
    assert all(bool((p == 0).all() or (p == 1).all()) for p in patches)


def test_feedback_flag_picks_counterexamples_penalty_or_both(tmp_path):
    results = {}
    for method in ("counterexamples", "both"):
        cfg = TrainConfig(**TINY, runs_dir=str(tmp_path), title=method, feedback_method=method, prior_masks="20")
        trainer = Trainer(cfg, log=lambda *_: None)
        assert len(trainer.feedback) == 20
        trainer.check_gate(1)  # as the loop does before an epoch: the decoy patch goes with the class
        assert trainer.full_teaching
        results[method] = trainer.train_one_epoch(1)
    assert results["counterexamples"]["penalty"] == 0  # no penalty pass at all
    assert results["both"]["penalty"] > 0
    with pytest.raises(CLIError, match="--feedback"):
        parse_args(["--feedback", "bogus", "-md", str(tmp_path)])


def test_prior_masks_are_read_from_a_csv_data_set(tmp_path):
    make_csv(tmp_path / "data", n=12, masks=True)
    cfg = TrainConfig(**{**TINY, "dataset": "csv", "train_fraction": 1.0, "val_fraction": 1.0},
                      data_dir=str(tmp_path / "data"), image_size=32, runs_dir=str(tmp_path), title="csv",
                      prior_masks="all")
    trainer = Trainer(cfg, log=lambda *_: None)
    train = trainer.data.train
    expected = [i for i in range(len(train)) if train.gt_mask(i) is not None and train.gt_mask(i).any()]
    assert 0 < len(expected) < len(train)  # every third image of make_csv has no mask
    assert sorted(trainer.feedback.indices.tolist()) == expected
    rows, masks = trainer.feedback.lookup(torch.tensor(expected))
    assert masks[:, :, :16].all() and not masks[:, :, 16:].any()  # the left half, as drawn
    make_csv(tmp_path / "plain", n=12)
    with pytest.raises(DataError, match="no masks"):
        Trainer(TrainConfig(**{**TINY, "dataset": "csv"}, data_dir=str(tmp_path / "plain"), image_size=32,
                            runs_dir=str(tmp_path), title="nomasks", prior_masks="3"), log=lambda *_: None)


def test_export_then_import_gives_the_same_images_labels_and_masks(tmp_path):
    cfg = TrainConfig(**TINY, runs_dir=str(tmp_path / "runs"), title="source", prior_masks="7")
    source = Trainer(cfg, log=lambda *_: None)
    protocol.write_config(source.run, cfg.to_dict())
    source.save_checkpoint(best=False)
    out = tmp_path / "exported"
    counts = export_run(source.run, out)
    assert counts["masks"] == 7 and counts["train"] == len(source.data.train)
    with open(out / LABELS_FILE, newline="") as f:
        assert next(csv.reader(f)) == ["path", "label", "mask", "split"]

    back = build_dataset("csv", DataRequest(str(out), source.data.image_size, 0))
    assert len(back.train) == len(source.data.train) and len(back.val) == len(source.data.val)
    assert len(back.test) == len(source.data.test)
    for i in range(len(source.data.train)):
        image, label, _ = source.data.train[i]
        image_back, label_back, _ = back.train[i]
        assert back.class_names[label_back] == source.data.class_names[label]
        assert torch.allclose(image_back, image, atol=1 / 255)
        mask_back = back.train.gt_mask(i)
        if i < 7:
            assert torch.equal(mask_back, source.data.train.gt_mask(i))
        else:
            assert not mask_back.any()

    again = Trainer(TrainConfig(**{**TINY, "dataset": "csv", "train_fraction": 1.0, "val_fraction": 1.0},
                                data_dir=str(out), image_size=source.data.image_size, runs_dir=str(tmp_path / "runs"),
                                title="again", prior_masks="all"), log=lambda *_: None)
    assert torch.equal(again.feedback.masks, source.feedback.masks)
    with pytest.raises(DataError, match="not empty"):
        export_run(source.run, out)


FORMULA_LIKE = ["=cmd|' /C calc'!A0", "-1", "@SUM(A1)", "+plus", "'=quoted-already", "\tTab", "\rCR"]


def test_cells_that_look_like_formulas_round_trip_through_their_spreadsheet_form():
    for value in FORMULA_LIKE + ["plain", "", "a=b", "'plain", "''-2", "'", "=", "it's"]:
        cell = to_spreadsheet_cell(value)
        assert from_spreadsheet_cell(cell) == value
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))  # a spreadsheet shows it as text
    assert to_spreadsheet_cell("=1+1") == "'=1+1" and to_spreadsheet_cell("plain") == "plain"


def test_exported_labels_that_look_like_formulas_show_as_text_and_read_back_unchanged(tmp_path):
    labels = FORMULA_LIKE + ["plain"]
    rows = []
    for k in range(4 * len(labels)):
        label = k % len(labels)
        write_image(tmp_path / "src" / f"{k:02d}.png", label % 5)
        rows.append([f"{k:02d}.png", to_spreadsheet_cell(labels[label])])
    write_csv(tmp_path / "src" / "labels.csv", ["path", "label"], rows)
    cfg = TrainConfig(**{**TINY, "dataset": "csv", "train_fraction": 1.0, "val_fraction": 1.0},
                      data_dir=str(tmp_path / "src"), image_size=16, runs_dir=str(tmp_path / "runs"), title="source",
                      dataset_options={"val_holdout": 0.25})
    source = Trainer(cfg, log=lambda *_: None)
    assert sorted(source.data.class_names) == sorted(labels)  # a hand-quoted cell is read as a spreadsheet shows it
    protocol.write_config(source.run, cfg.to_dict())
    source.save_checkpoint(best=False)
    out = tmp_path / "exported"
    export_run(source.run, out)

    with open(out / LABELS_FILE, newline="") as f:
        written = {row["label"] for row in csv.DictReader(f)}
    assert written == {"plain"} | {"'" + label for label in FORMULA_LIKE}
    back = build_dataset("csv", DataRequest(str(out), 16, 0))
    assert back.class_names == source.data.class_names
    assert len(back.train) + len(back.val) == len(source.data.train) + len(source.data.val)


def test_oracle_styles_draw_like_people(tmp_path):
    size, masks = 64, torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:23, 40:53] = True
    split = TensorSplit("train", torch.zeros(1, 3, size, size, dtype=torch.uint8), torch.zeros(1), masks)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(OracleAnnotator(split, "box").draw(masks[0], g), masks[0])
    loose = [OracleAnnotator(split, "loose").draw(masks[0], g) for _ in range(50)]
    assert any(not torch.equal(m, masks[0]) for m in loose)
    assert np.mean([float((m & masks[0]).sum() / masks[0].sum()) for m in loose]) > 0.85
    partial = [OracleAnnotator(split, "partial").draw(masks[0], g) for _ in range(20)]
    kept = [float(m.sum() / masks[0].sum()) for m in partial]
    assert all(0.45 <= k <= 0.75 for k in kept) and all(not (m & ~masks[0]).any() for m in partial)
    with pytest.raises(DataError, match="style"):
        OracleAnnotator(split, "scribble")


def test_oracle_skips_about_the_share_asked(tmp_path):
    cfg = TrainConfig(**{**TINY, "annotator": "oracle", "epochs": 0}, runs_dir=str(tmp_path), title="skip",
                      oracle_skip=0.5, queries_per_epoch=40)
    trainer = Trainer(cfg, log=lambda *_: None)
    manifest = trainer.queries.build_queue(0)
    assert trainer.annotator(trainer.run, 0)
    answers = protocol.parse_feedback(protocol.read_json(trainer.run.feedback_file(0)), manifest)
    skipped = sum(a.action == protocol.ACTION_SKIP for a in answers)
    assert 10 <= skipped <= 30


def test_the_result_reports_how_much_the_shortcut_decides(tmp_path):
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 0}, runs_dir=str(tmp_path), title="gap"), log=lambda *_: None)
    result = trainer.fit()
    assert result["shortcut_gap"] == pytest.approx(result["test_consistent_acc"] - result["test_acc"])
    assert protocol.read_status(trainer.run)["result"]["shortcut_gap"] == pytest.approx(result["shortcut_gap"])


def test_counterexamples_can_fill_beyond_a_loose_mark():
    """A mark that cuts into the region leaves a strip of it; dilating the mark fills that strip too."""
    x = torch.zeros(4, 1, 12, 12)
    x[:, :, 0:3, 0:3] = 1.0                      # the region
    y = torch.tensor([0, 1, 0, 1])
    feedback = FeedbackSet(4, 12, 12)
    short = torch.zeros(4, 12, 12, dtype=torch.bool)
    short[:, 0:2, 0:3] = True                    # the mark misses the region's last row
    feedback.add_all(short)
    g = torch.Generator().manual_seed(0)
    donors = torch.full((4, 1, 12, 12), 0.5)
    tight = Counterexamples(feedback, lambda i: (x[i], y[i]), share=1.0, fill="region")
    loose = Counterexamples(feedback, lambda i: (x[i], y[i]), share=1.0, fill="region", dilate=1)
    assert (tight.extend(donors, y, torch.arange(4), g)[0][4:, :, 2, 0:3] == 1).all()
    assert (loose.extend(donors, y, torch.arange(4), g)[0][4:, :, 0:3, 0:3] == 0.5).all()


def test_an_annotated_image_in_a_batch_enters_as_a_counterexample_of_itself():
    """Shown unchanged, an annotated image would teach its shortcut again; the rest of the batch is untouched."""
    x = torch.full((32, 1, 12, 12), 0.5)
    x[:2, :, 0:3, 0:3] = 1.0                     # two annotated images with their region
    y = torch.zeros(32, dtype=torch.long)
    feedback = FeedbackSet(32, 12, 12)
    marks = torch.zeros(2, 12, 12, dtype=torch.bool)
    marks[:, 0:3, 0:3] = True
    for i in range(2):
        feedback.add(i, marks[i])
    ce = Counterexamples(feedback, lambda i: (x[i], y[i]), share=0.05, fill="region")
    xb, yb, idx, k = ce.extend(x, y, torch.arange(32), torch.Generator().manual_seed(0))
    assert len(xb) == 32 + k and torch.equal(idx[:32], torch.arange(32)) and torch.equal(yb[:32], y)
    assert (xb[:2, :, 0:3, 0:3] == 0.5).all()     # the marked pixels come from the other images
    assert torch.equal(xb[:2, :, 3:, :], x[:2, :, 3:, :]) and torch.equal(xb[2:32], x[2:])


def test_a_run_saved_before_feedback_methods_existed_keeps_the_penalty():
    saved = TrainConfig().to_dict()
    del saved["feedback_method"], saved["counterexample_transfer"], saved["counterexample_carry"]
    assert TrainConfig.from_dict(saved).feedback_method == "penalty"
    assert TrainConfig.from_dict(saved).counterexample_transfer == 0.0  # resumed as it was trained
    assert TrainConfig.from_dict(saved).counterexample_carry == "recurring"
    assert TrainConfig.from_dict(TrainConfig().to_dict()).feedback_method == TrainConfig().feedback_method == "auto"


def test_auto_feedback_is_saved_with_its_own_lambda(tmp_path):
    """auto is a method of its own, the same on every data set (no table of names): counterexamples, and the
    penalty weighed per mark at λ = AUTO_PENALTY_WEIGHT unless --lambda says otherwise, which the saved config
    says so a resume does the same; the other methods keep their λ of 10."""
    cfg = TrainConfig(dataset="synthetic-lesions", runs_dir=str(tmp_path), title="auto", epochs=1,
                      train_fraction=0.05, val_fraction=0.1, annotator="none", prior_masks="4", track_images=0)
    trainer = Trainer(cfg, log=lambda *_: None)
    assert (trainer.cfg.feedback_method, trainer.counterexamples is not None, trainer.teaching.penalty,
            trainer.teaching.weighs_marks, trainer.cfg.penalty_weight) == ("auto", True, True, True, AUTO_PENALTY_WEIGHT)
    assert cfg.penalty_weight is None  # the caller's config is left as it was
    trainer.fit()
    saved = protocol.read_config(trainer.run)
    assert (saved["feedback_method"], saved["penalty_weight"]) == ("auto", AUTO_PENALTY_WEIGHT)
    assert not Teaching("both").weighs_marks and Teaching("both").penalty and not Teaching("counterexamples").penalty
    assert Teaching("both").penalty_weight == Teaching("penalty").penalty_weight == PENALTY_WEIGHT == 10.0
    assert parse_args(["--lambda", "5"])[0].penalty_weight == 5.0  # auto at another λ, as asked
    assert parse_args(["--feedback", "both"])[0].penalty_weight is None


def test_auto_penalises_each_mark_by_the_share_the_finder_misses(tmp_path):
    """An annotated image whose mark the finder finds by itself adds no penalty (nor its cost: it is not
    penalised at all), one it misses entirely the whole penalty, and in between in proportion."""
    cfg = TrainConfig(**{**TINY, "prior_masks": "8", "teaching_gate": "off", "runs_dir": str(tmp_path), "title": "w"})
    trainer = Trainer(cfg, log=lambda *_: None)
    idx = trainer.feedback.indices[:8]
    x, y = gather(trainer.data.train, idx)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    calls = []
    trainer.penalty = _counting(trainer.penalty, calls)

    def penalty_with(missed: torch.Tensor) -> float:
        trainer.model.load_state_dict(start)
        torch.manual_seed(0)  # the same dropout each time
        trainer.missed = torch.ones(len(trainer.data.train))
        trainer.missed[idx] = missed
        return float(trainer.train_step(x, y, idx)[2].detach())

    whole = penalty_with(torch.ones(8))
    assert whole > 0 and calls[-1] == 8
    assert penalty_with(torch.full((8,), 0.5)) == pytest.approx(whole / 2, rel=1e-4)
    assert penalty_with(torch.zeros(8)) == 0.0 and len(calls) == 2  # nothing to penalise: no penalty pass
    assert 0 < penalty_with(torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])) < whole and calls[-1] == 4


def _counting(penalty, calls: list):
    """``penalty`` with the number of images of each call recorded."""
    class Counting:
        uses_relevance, has_probe = penalty.uses_relevance, penalty.has_probe

        def __call__(self, x, masks, y):
            calls.append(len(x))
            return penalty(x, masks, y)
    return Counting()


def test_auto_dilation_grows_with_the_image():
    assert [dilation_pixels("auto", s) for s in (16, 32, 64, 224)] == [1, 1, 2, 7]
    assert dilation_pixels(3, 224) == 3
    assert parse_args(["--feedback", "counterexamples", "--counterexample-dilate", "4"])[0].counterexample_dilate == 4
    assert parse_args(["--feedback", "both", "--counterexample-dilate", "auto"])[0].counterexample_dilate == "auto"
    assert parse_args(["--feedback", "both"])[0].counterexample_dilate == 0
    with pytest.raises(CLIError, match="expected auto or a number of pixels, got 'wide'"):
        parse_args(["--feedback", "both", "--counterexample-dilate", "wide"])


def test_counterexample_flags_without_counterexamples_are_refused(capsys):
    from trainer.cli import main as cli_main
    assert cli_main(["--feedback", "penalty", "--counterexample-share", "0.3", "--annotator", "none"]) == 2
    err = capsys.readouterr().err
    assert "--counterexample-share only apply with --feedback counterexamples or both" in err and err.count("\n") == 1


def test_feedback_indices_follow_every_change_of_the_set():
    """``indices`` is kept between changes (every batch asks for it): an added image or a loaded state shows."""
    feedback = FeedbackSet(10, 4, 4)
    mark = torch.ones(4, 4, dtype=torch.bool)
    feedback.add(7, mark)
    feedback.add(2, mark)
    assert feedback.indices.tolist() == [7, 2]
    feedback.add(7, mark)            # a second mark for the same image changes nothing here
    feedback.add(5, mark)
    assert feedback.indices.tolist() == [7, 2, 5]
    other = FeedbackSet(10, 4, 4)
    other.add(1, mark)
    assert other.indices.tolist() == [1]
    other.load_state_dict(feedback.state_dict())
    assert other.indices.tolist() == [7, 2, 5]


def test_queries_take_the_most_uncertain_image_of_each_class_in_turn():
    from trainer.sampling import high_entropy, high_entropy_by_class
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.5], [0.52, 0.48], [0.55, 0.45], [0.9, 0.1], [0.3, 0.7], [0.99, 0.01]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert high_entropy(probs, labels, 0.0, 3, g).tolist() == [0, 1, 2]  # all of class 0
    assert high_entropy_by_class(probs, labels, 0.0, 4, g).tolist() == [0, 4, 1, 3]
    assert high_entropy_by_class(probs, labels, 0.6, 4, g).tolist() == [0, 4, 1, 2]  # above the threshold only
    # one query a round: the class with fewer marks so far comes first, across rounds
    assert high_entropy_by_class(probs, labels, 0.0, 1, g, torch.tensor([3, 0])).tolist() == [4]
    assert high_entropy_by_class(probs, labels, 0.0, 3, g, torch.tensor([0, 1])).tolist() == [0, 1, 4]
    assert TrainConfig().sampling == "high_entropy_by_class"
