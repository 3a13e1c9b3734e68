"""The benchmark harness end to end on a tiny plan: every section writes rows with the keys the
results file promises, and the report renders them (README markers honoured, absent markers respected)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import report
from bench.__main__ import run_benchmarks
from bench.plans import PENALTY_IMPLS, Plan, StepSetting, TrainingSetting

TINY = Plan(
    preset="test",
    learning=(TrainingSetting("decoy-digits", epochs=2, train_fraction=0.05, queries_per_epoch=3),),
    methods=("plain", "hitl", "all_masks"), seeds=(0,), learning_impls=("exact",),
    efficiency=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05), efficiency_counts=(5,),
    steps=(StepSetting("hitl_cnn", 32, 10),), feedback_fractions=(0.0, 0.1, 1.0), step_impls=PENALTY_IMPLS,
    warmup_steps=1, timed_steps=1,
    cosine=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05), cosine_batches=1, cosine_batch_size=8,
    query_datasets=("decoy-digits",), query_methods=("gradcam",), queries=2, query_repeats=1,
    resume_rounds=1,
)


@pytest.fixture(scope="module")
def results():
    return run_benchmarks(TINY, torch.device("cpu"), log=lambda message: None)


def test_every_section_has_its_keys(results):
    json.dumps(results, allow_nan=False)  # strict JSON
    assert results["errors"] == []
    assert {"cpu_model", "torch", "device"} <= results["machine"].keys()
    assert [r["method"] for r in results["learning"]] == ["plain", "hitl", "all_masks"]
    for r in results["learning"]:
        assert {"dataset", "method", "seed", "test_acc", "min_val_loss", "wrong_reason", "n_annotated"} <= r.keys()
    full = next(r for r in results["learning"] if r["method"] == "all_masks")
    assert full["n_annotated"] == full["n_train"]
    assert [r["n_annotated"] for r in results["efficiency"]] == [5]
    cost = results["cost"]
    assert {(r["impl"], r["feedback_fraction"]) for r in cost} == \
        {("none", 0.0)} | {(i, f) for i in PENALTY_IMPLS for f in (0.1, 1.0)}
    for r in cost:
        assert {"model", "image_size", "device", "impl", "feedback_fraction", "plain_ms", "penalty_ms", "ratio",
                "plain_peak_mb", "penalty_peak_mb"} <= r.keys()
        assert r["ratio"] > 0 and r["penalty_peak_mb"] >= 0
    whole = {r["impl"]: r for r in cost if r["feedback_fraction"] == 1.0}
    assert whole["exact"]["penalty_peak_mb"] > whole["exact"]["plain_peak_mb"] > 0  # the extra graph is seen
    assert {r["impl"] for r in results["cosine"]} == {"jvp", "fd"}
    assert all(-1 <= r["cosine_mean"] <= 1 for r in results["cosine"])
    latency = {(r["what"], r["method"]) for r in results["latency"]}
    assert latency == {("query_queue", "gradcam"), ("submit_to_applied", None), ("submit_to_resume", None)}
    assert all(r["seconds"] > 0 for r in results["latency"])


def test_report_renders_and_respects_readme_markers(results, tmp_path):
    path = tmp_path / "cpu-test.json"
    path.write_text(json.dumps(results))
    markdown = report.render_all([path])
    for heading in ("Learning outcome", "Step cost", "Latency", "Targets", "Reference figures"):
        assert heading in markdown
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    assert not report.write_readme(markdown, readme) and readme.read_text() == "intro\n"
    readme.write_text(f"intro\n{report.START}\nSTALE TABLE\n{report.END}\nend\n")
    assert report.write_readme(markdown, readme)
    text = readme.read_text()
    assert "STALE TABLE" not in text and "Step cost" in text and text.endswith(f"{report.END}\nend\n")
