"""``hitl-evaluate`` (trainer/evaluate.py): removal order, curves that fall monotonically for a model
that uses only one region, a faithful map beating its reverse, the command on a run directory with its
one-line errors, and the dashboard's Evaluation page over the result."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer import protocol
from trainer.config import TrainConfig
from trainer.evaluate import area_under, evaluate_explainer, main, removal_curves, removal_order
from trainer.model import create_classifier

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


class PatchModel(nn.Module):
    """Class 1 when the top-left 8×8 patch is bright, class 0 when dark; the rest of the image is ignored."""

    def forward(self, x):
        s = 8 * (x[:, :, :8, :8].mean(dim=(1, 2, 3)) - 0.5)
        return torch.stack([-s, s], 1)


def patch_images(n: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 2
    x[:, :, :8, :8] = torch.where(y.bool(), 0.9, 0.1).view(-1, 1, 1, 1)
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    masks[:, :8, :8] = True
    return x, y, masks


def test_removal_order_ranks_by_magnitude():
    maps = torch.tensor([[[0.1, -3.0], [2.0, 0.0]]])
    assert removal_order(maps).tolist() == [[[2, 0], [1, 3]]]


def test_curves_fall_monotonically_for_a_model_that_uses_only_the_patch():
    model = PatchModel()
    x, y, masks = patch_images()
    fractions = [i / 32 for i in range(33)]  # 32 pixels a step: the 64-pixel patch goes in two
    result = evaluate_explainer(model, "saliency", x, y, masks, fractions, fill=0.5, seed=0)
    accuracy, deletion = result["masked_accuracy"], result["deletion"]
    assert accuracy[0] == 1.0 and accuracy[-1] == 0.5  # an erased patch leaves a coin toss
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:]))
    assert all(a >= b - 1e-6 for a, b in zip(deletion, deletion[1:]))
    assert deletion[1] < deletion[0] and deletion[2] == pytest.approx(0.5)
    assert result["wrong_reason"] == pytest.approx(1.0)  # all of the gradient sits in the patch
    patch_last = (~masks).float()  # a map that points everywhere but at the patch
    _, reverse = removal_curves(model, x, y, model(x).argmax(1), patch_last, fractions, 0.5, seed=0)
    assert result["deletion_auc"] < area_under(fractions, reverse)


def write_run(root: Path, name: str, head: str = "pool") -> protocol.RunDir:
    """A run directory with the config and a checkpoint as the trainer leaves them (untrained weights)."""
    run = protocol.RunDir(root / name)
    protocol.write_config(run, TrainConfig(runs_dir=str(root), title=name, head=head).to_dict())
    torch.manual_seed(0)
    model = create_classifier("hitl_cnn", 10, 3, head=head)
    buf = io.BytesIO()
    torch.save({"format": 1, "model": model.state_dict(), "state": {"epoch": 3}}, buf)
    protocol.atomic_write_bytes(run.best_checkpoint, buf.getvalue())
    return run


def test_command_writes_the_evaluation_into_the_run(tmp_path, capsys):
    run = write_run(tmp_path, "attentive", head="attention")
    rc = main([run.name, "--runs-dir", str(tmp_path), "--images", "12", "--steps", "2",
               "--explainers", "saliency,attention", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    doc = protocol.read_evaluation(run)
    assert (doc["epoch"], doc["split"], doc["images"], doc["checkpoint"]) == (3, "test", 12, "best")
    assert [r["explainer"] for r in doc["results"]] == ["saliency", "attention"]
    for r in doc["results"]:
        assert r["fractions"] == [0.0, 0.5, 1.0] and len(r["masked_accuracy"]) == len(r["deletion"]) == 3
        assert 0 <= r["wrong_reason"] <= 1  # decoy digits know their confounder
    json.loads(run.evaluation.read_text())  # strict JSON: no NaN
    assert not list(run.path.glob(".*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["missing"], "not a run directory"),
    (["plain", "--explainers", "attention"], "needs a run trained with --head attention"),
    (["plain", "--explainers", "shap"], "unknown explainer 'shap'"),
    (["plain", "--checkpoint", "last"], "has no last.pt"),
    (["plain", "--fill", "grey"], "expected 'random' or a number"),
])
def test_command_errors_are_one_line(tmp_path, capsys, args, message):
    write_run(tmp_path, "plain")
    assert main([*args, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_malformed_flag_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--images", "many"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--images: invalid int value" in err and err.count("\n") == 1


def evaluation_doc(run: str, slope: float) -> dict:
    fractions = [0.0, 0.5, 1.0]
    return {"run": run, "checkpoint": "best", "epoch": 4, "split": "test", "images": 64, "results": [
        {"explainer": e, "fractions": fractions, "masked_accuracy": [0.9, 0.9 - slope, 0.1],
         "deletion": [0.8, 0.8 - slope, 0.1], "deletion_auc": 0.5 - slope / 2,
         "wrong_reason": None if e == "gradcam" else 0.2}
        for e in ("saliency", "gradcam")]}


def test_evaluation_page_overlays_runs_and_says_how_to_evaluate(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for name, slope in (("first", 0.5), ("second", 0.2)):
        run = protocol.RunDir(tmp_path / name)
        protocol.write_config(run, {"title": name, "dataset": "decoy-digits"})
        protocol.write_evaluation(run, evaluation_doc(name, slope))
    protocol.write_config(protocol.RunDir(tmp_path / "fresh"), {"title": "fresh"})
    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))

    at = AppTest.from_file(str(APP), default_timeout=30).run()
    at.switch_page("views/evaluation.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="run").set_value("first").run()
    at.multiselect[0].set_value(["second", "fresh"]).run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    figure = json.loads(charts[0].proto.spec)
    assert {t["legendgroup"].split(",")[0] for t in figure["data"]} == {"first", "second"}
    assert "Not evaluated yet: fresh" in "\n".join(i.value for i in at.info)
    table = at.dataframe[0].value
    assert len(table) == 4 and set(table.run) == {"first", "second"}


def test_broken_evaluation_files_are_skipped(tmp_path):
    from dashboard import run_reader

    good, broken = protocol.RunDir(tmp_path / "good"), protocol.RunDir(tmp_path / "broken")
    protocol.write_evaluation(good, evaluation_doc("good", 0.3))
    protocol.atomic_write_text(broken.evaluation, "{not json")
    curves, summary = run_reader.evaluation_frames([good, broken, protocol.RunDir(tmp_path / "none")])
    assert set(curves.run) == {"good"} and len(curves) == 6
    assert summary.half_removed.tolist() == pytest.approx([0.6, 0.6])
