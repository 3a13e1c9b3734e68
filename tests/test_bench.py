"""The benchmark harness end to end on a tiny plan: every section writes rows with the keys the
results file promises, and the report renders them into docs/benchmarks.md (its markers honoured, the page's
own text kept, a page without markers left alone)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import report
from bench.__main__ import run_benchmarks
from bench.plans import PENALTY_VARIANTS, Plan, StepSetting, TrainingSetting

TINY_DIGITS = TrainingSetting("decoy-digits", epochs=2, train_fraction=0.05, queries_per_epoch=3)
TINY = Plan(
    preset="test",
    learning=(TINY_DIGITS,), methods=("plain", "hitl", "all_masks"), seeds=(0,),
    efficiency=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05), efficiency_counts=(5,),
    steps=(StepSetting("hitl_cnn", 32, 10),), feedback_fractions=(0.0, 0.1, 1.0), step_variants=PENALTY_VARIANTS,
    warmup_steps=1, timed_steps=1, timed_seconds=0.0,
    cosine=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05), cosine_models=("hitl_cnn",),
    cosine_batches=1, cosine_batch_size=8,
    query_datasets=("decoy-digits",), query_methods=("gradcam",), queries=2, query_repeats=1,
    resume_rounds=1,
    penalty_setting=TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05, queries_per_epoch=3, seeds=(0, 1)),
    penalty_methods=("hitl",), penalty_variants=("rrr/exact", "counterfactual"),
    feedback_settings=(TrainingSetting("decoy-digits", epochs=1, train_fraction=0.05, queries_per_epoch=3),),
    feedback_runs=("plain", "hitl"), feedback_methods=("penalty", "counterexamples"),
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved() -> list[dict]:
    """Every results file the run wrote, in order."""
    return []


@pytest.fixture(scope="module")
def results(saved):
    return run_benchmarks(TINY, torch.device("cpu"), ("learning", "cost", "latency", "penalties", "feedback"),
                          log=lambda message: None, save=lambda r: saved.append(json.loads(json.dumps(r))), jobs=2)


def test_every_section_has_its_keys(results):
    json.dumps(results, allow_nan=False)  # strict JSON
    assert results["errors"] == []
    assert {"cpu_model", "torch", "device"} <= results["machine"].keys()
    assert [r["method"] for r in results["learning"]] == ["plain", "hitl", "all_masks"]
    for r in results["learning"]:
        assert {"dataset", "method", "seed", "test_acc", "min_val_loss", "wrong_reason", "n_annotated"} <= r.keys()
    assert [r["impl"] for r in results["learning"]] == [None, "exact", "exact"]  # auto, on CPU
    full = next(r for r in results["learning"] if r["method"] == "all_masks")
    assert full["n_annotated"] == full["n_train"]
    assert [r["n_annotated"] for r in results["efficiency"]] == [5]
    cost = results["cost"]
    assert {(r["variant"], r["feedback_fraction"]) for r in cost} == \
        {("none", 0.0)} | {(v, f) for v in PENALTY_VARIANTS for f in (0.1, 1.0)}
    for r in cost:
        assert {"model", "image_size", "device", "variant", "feedback_fraction", "plain_ms", "penalty_ms", "ratio",
                "plain_peak_mb", "penalty_peak_mb"} <= r.keys()
        assert r["ratio"] > 0 and r["penalty_peak_mb"] >= 0
    whole = {r["variant"]: r for r in cost if r["feedback_fraction"] == 1.0}
    assert whole["rrr/exact"]["penalty_peak_mb"] > whole["rrr/exact"]["plain_peak_mb"] > 0  # the extra graph is seen
    assert whole["counterfactual"]["penalty_peak_mb"] < whole["rrr/exact"]["penalty_peak_mb"]  # first order only
    assert [(r["model"], r["impl"]) for r in results["cosine"]] == [("hitl_cnn", "linearised")]
    assert results["cosine"][0]["cosine_mean"] >= 0.95
    penalties = results["penalties"]
    assert [(r["variant"], r["seed"]) for r in penalties] == \
        [("rrr/exact", 0), ("rrr/exact", 1), ("counterfactual", 0), ("counterfactual", 1)]
    assert all(r["n_annotated"] > 0 and 0 <= r["test_acc"] <= 1 for r in penalties)
    feedback = results["feedback"]  # trained two at a time, in processes of their own
    assert [(r["method"], r["feedback"], r["impl"]) for r in feedback] == \
        [("plain", None, None), ("hitl", "penalty", "exact"), ("hitl", "counterexamples", None)]
    assert all(r["n_annotated"] > 0 for r in feedback[1:])
    assert results["jobs"] == {"learning": 2, "penalties": 2, "feedback": 2}
    latency = {(r["what"], r["method"]) for r in results["latency"]}
    assert latency == {("query_queue", "gradcam"), ("submit_to_applied", None), ("submit_to_resume", None)}
    assert all(r["seconds"] > 0 for r in results["latency"])


def test_report_renders_every_section(results, tmp_path):
    path = tmp_path / "cpu-test.json"
    path.write_text(json.dumps(results))
    markdown = report.render_all([path])
    for heading in ("Learning outcome", "Step cost", "What each penalty teaches", "What each feedback method teaches",
                    "Latency", "Targets", "Reference figures"):
        assert heading in markdown
    assert "counterfactual teaches as rrr/exact does (decoy-digits, hitl): test accuracy" in markdown
    assert "linearised parameter-gradient cosine with exact ≥ 0.95 on every batch: **holds**" in markdown


def test_report_writes_docs_benchmarks_between_its_markers(tmp_path):
    assert report.PAGE == ROOT / "docs" / "benchmarks.md"
    markdown = "### `cpu.json`\n\n| a |\n|---|\n| 1 |\n"
    page = tmp_path / "docs" / "benchmarks.md"
    assert report.write_page(markdown, page)  # missing: created with a title and the markers
    assert page.read_text() == f"# Benchmarks\n\n{report.START}\n{markdown}{report.END}\n"
    page.write_text("intro\n")
    assert not report.write_page(markdown, page) and page.read_text() == "intro\n"
    page.write_text(f"intro\n{report.START}\nSTALE TABLE\n{report.END}\nend\n")
    assert report.write_page(markdown, page)
    text = page.read_text()
    assert text == f"intro\n{report.START}\n{markdown}{report.END}\nend\n"


def test_docs_benchmarks_holds_the_report_of_the_results_files():
    """The tables on docs/benchmarks.md are what ``python -m bench.report`` renders from bench/results/."""
    text = report.PAGE.read_text()
    start, end = text.find(report.START), text.find(report.END)
    assert 0 <= start < end, "docs/benchmarks.md lost its bench markers"
    rendered = report.render_all(sorted(report.RESULTS_DIR.glob("*.json")))
    assert text[start + len(report.START) + 1:end] == rendered, \
        "docs/benchmarks.md is stale: run `python -m bench.report`"
    assert report.START not in (ROOT / "README.md").read_text()  # the README holds no generated tables


def test_a_stopped_section_keeps_the_runs_it_finished(results, saved, tmp_path):
    """The file on disk is rewritten after every training run: a benchmark stopped hours into a section
    keeps its finished rows and names the rest, and the report says they are missing."""
    titles = {"decoy-digits-plain-s0", "decoy-digits-hitl-penalty-s0", "decoy-digits-hitl-counterexamples-s0"}
    during = [s for s in saved if s.get("feedback") and s["not_run"].get("feedback")]
    assert [len(s["feedback"]) for s in during] == [1, 2]
    for snapshot in during:
        finished = {f"{r['dataset']}-{r['method']}{'-' + r['feedback'] if r['feedback'] else ''}-s{r['seed']}"
                    for r in snapshot["feedback"]}
        left = set(snapshot["not_run"]["feedback"])
        assert finished | left == titles and not finished & left
        assert snapshot["penalties"] == results["penalties"]  # the sections before it are kept
    assert saved[-1]["not_run"] == results["not_run"] == {}  # all finished: nothing listed as missing
    path = tmp_path / "cpu-test.json"
    path.write_text(json.dumps(during[0]))
    markdown = report.render_all([path])
    assert "Not finished when the file was written" in markdown
    assert all(t in markdown for t in during[0]["not_run"]["feedback"])


def test_a_matched_rerun_replaces_only_its_rows_and_says_when_each_was_measured():
    """``--match`` reruns a few runs (a changed default): the file keeps the other rows, each marked
    with the version it was measured at, and what was not run before stays listed until it is."""
    from bench.__main__ import merge

    def row(method, feedback, seed, acc, **extra):
        return {"dataset": "d", "method": method, "feedback": feedback, "seed": seed, "test_acc": acc, **extra}

    old = {"machine": {"git": "old1"}, "seconds": {}, "skipped": [], "errors": [],
           "feedback": [row("plain", None, 0, 0.5), row("hitl", "penalty", 0, 0.7), row("hitl", "both", 0, 0.8)],
           "not_run": {"feedback": ["d-all_masks-both-s0", "d-all_masks-penalty-s0"]}}
    new = {"machine": {"git": "new2"}, "seconds": {"feedback": 1.0}, "skipped": [], "errors": [],
           "feedback": [row("hitl", "both", 0, 0.9, title="d-hitl-both-s0", git="new2"),
                        row("all_masks", "both", 0, 0.95, title="d-all_masks-both-s0", git="new2")],
           "not_run": {"feedback": ["d-clean_masks-both-s0"]}}
    merged = merge(old, new, ("feedback",), ("-both-",))
    assert [(r["title"], r["test_acc"], r["git"]) for r in merged["feedback"]] == [
        ("d-plain-s0", 0.5, "old1"), ("d-hitl-penalty-s0", 0.7, "old1"), ("d-hitl-both-s0", 0.9, "new2"),
        ("d-all_masks-both-s0", 0.95, "new2")]
    assert merged["not_run"]["feedback"] == ["d-all_masks-penalty-s0", "d-clean_masks-both-s0"]
    assert merge(old, new, ("feedback",))["feedback"] == new["feedback"]  # without --match: the new section
    harm_row = {"setting": "decoy-digits clean", "size": 300, "method": "hitl", "seed": 1, "test_acc": 0.6,
                "test_consistent_acc": float("nan")}  # a set without a decorrelated split
    old_harm = {**old, "harm": [{**harm_row, "seed": 0}, harm_row]}  # rows from before harm rows had titles
    new_harm = {**new, "harm": [{**harm_row, "test_acc": 0.7, "title": "harm-decoy-digits-clean-300-hitl-s1"}],
                "not_run": {}}
    harm_merged = merge(old_harm, new_harm, ("harm",), ("-300-",))
    assert [r["test_acc"] for r in harm_merged["harm"]] == [0.6, 0.7]
    json.dumps(harm_merged, allow_nan=False)  # the file is written as strict JSON: the kept rows' NaN as null
    shape_row = {"variant": "text on 80%", "method": "hitl", "seed": 2, "test_acc": 0.6}  # from before titles
    old_shapes = {**old, "shapes": [{**shape_row, "method": "plain"}, shape_row]}
    new_shapes = {**new, "shapes": [{**shape_row, "test_acc": 0.9, "title": "lesions-text-on-80pc-hitl-s2"}],
                  "not_run": {}}
    shapes_merged = merge(old_shapes, new_shapes, ("shapes",), ("-hitl-",))
    assert [(r["method"], r["test_acc"]) for r in shapes_merged["shapes"]] == [("plain", 0.6), ("hitl", 0.9)]
    for r in merged["feedback"]:
        r.update(impl=None, epochs=1, n_annotated=1, n_train=2, test_consistent_acc=1.0, min_val_loss=0.1,
                 wrong_reason=0.1)
    markdown = "\n".join(report.render_feedback(merged))
    assert "Measured at more than one version (git):* old1: 2 runs (d-plain, d-hitl-penalty); new2: 2 runs" in markdown


def test_report_renders_the_loading_rows_and_checks_the_default_against_the_fastest():
    rows = [{"setting": s, "workers": w, "n_train": 8, "image_size": 28, "epochs": 2, "device": "cpu", "rounds": 1,
             "start_s": 1.0, "epoch_s": e, "run_s": r, "same_metrics": True}
            for s, w, e, r in (("default", None, 1.0, 10.0), ("--workers 0", 0, 1.0, 9.5), ("--workers 2", 2, 3.0, 20.0))]
    lines = report.render_loading({"loading": rows})
    assert "| `default` | 1.0 | 1.00 | **10.0** | yes |" in lines
    assert report.loading_targets(rows)[0].endswith("(10.0 s against 9.5 s): holds")
    rows[0]["run_s"] = 11.0
    assert report.loading_targets(rows)[0].endswith("FAILS")


def test_review_rows_are_priced_by_the_browser_times_and_checked_against_the_target():
    from bench import review

    browser = {"seed": 0, "epochs": 6, "budget": 10, "proposals": 50, "rounds": [], "draw_seconds": 0.5,
               "accept_seconds": 0.2, "send_seconds": 1.0, "review_seconds": 12.0, "drawn": 10, "accepted": 90,
               "drawn_iou": 1.0, "test_acc": 0.8, "state": "finished"}
    common = {"epochs": 6, "budget": 10, "proposals": 50, "test_consistent_acc": 1.0, "reliance_flip_rate": 0.1,
              "seconds": 1.0}
    rows = [{**common, "sticker": "corners", "seed": 0, "method": "plain", "drawn": 0, "accepted": 0, "shown": 0,
             "rounds": 0, "rounds_with_proposals": 0, "test_acc": 0.5},
            {**common, "sticker": "corners", "seed": 0, "method": "reviewed", "drawn": 10, "accepted": 90, "shown": 100,
             "rounds": 6, "rounds_with_proposals": 5, "test_acc": 0.8}]
    (row,) = review.priced(rows, browser)
    # 10 drawn × 0.5 + 5 grids × 0.2 + 6 sends × 1.0 = 12 s on the page; + 100 proposals × the glance
    assert row["page_seconds"] == 12.0 and row["review_seconds"] == round(12.0 + 100 * review.GLANCE_SECONDS, 1)
    assert row["points"] == 30.0 and row["points_per_minute"] == round(30.0 / (row["review_seconds"] / 60), 1)
    results = {"review": {"browser": browser, "runs": rows, "priced": [row]}, "notes": {"review": review.HOW}}
    assert any("| corners | 0 | 10 | 90 of 100 |" in line for line in report.render_review(results))
    assert report.review_targets(results["review"])[0].endswith("(+30.0): holds")
    row["drawn"] = 11
    assert report.review_targets(results["review"])[0].endswith("FAILS")


def test_shapes_rows_render_plain_against_hitl_per_variant():
    rows = [{"variant": "ruler", "seed": s, "method": m, "epochs": 6, "test_acc": acc, "n_annotated": n,
             "reliance_flip_rate": flip}
            for s, m, acc, n, flip in ((0, "plain", 0.5, 0, None), (0, "hitl", 0.8, 60, 0.1),
                                       (1, "plain", 0.48, 0, None), (1, "hitl", 0.7, 58, 0.2))]
    lines = report.render_shapes({"shapes": rows})
    assert "| ruler | 2 | 50.0 / 48.0 | 80.0 / 70.0 | **+30.0** / **+22.0** | 60 / 58 | 15.0 ± 7.1 |" in lines
    assert report.shapes_targets(rows)[0].endswith("(worst seed: ruler +22.0): holds")
    rows.append({**rows[1], "method": "hitl_both", "test_acc": 0.6})  # one seed with --feedback both: a column
    assert "| ruler | 2 | 50.0 / 48.0 | 80.0 / 70.0 | **+30.0** / **+22.0** | 60 / 58 | 15.0 ± 7.1 | 60.0 |" in \
        report.render_shapes({"shapes": rows})
    rows[3]["test_acc"] = 0.6  # one seed gains 12 points: the shape is not unlearned on every seed
    assert report.shapes_targets(rows)[0].endswith("(worst seed: ruler +12.0): FAILS")


def test_harm_rows_render_the_cost_where_nothing_is_to_unlearn_and_the_gain_on_small_confounded_sets():
    def row(setting, confounded, size, method, seed, acc, n=0):
        return {"setting": setting, "confounded": confounded, "size": size, "method": method, "seed": seed,
                "test_acc": acc, "n_annotated": n, "n_train": size}
    rows = [row("digits", False, 300, "plain", 0, 0.98), row("digits", False, 300, "hitl", 0, 0.975, 24),
            row("digits", False, 300, "hitl_ungated", 0, 0.94, 24),
            row("lesions", True, 300, "plain", 0, 0.5), row("lesions", True, 300, "hitl", 0, 0.7, 20),
            row("lesions", True, 300, "plain", 1, 0.5), row("lesions", True, 300, "hitl", 1, 0.6, 20)]
    lines = report.render_harm({"harm": rows})
    assert "| digits | 300 | 1 | 98.0 | 97.5 (**-0.5**) | 94.0 (**-4.0**) | 8.0% |" in lines
    targets = report.harm_targets(rows)
    assert targets[0].startswith("- no harm") and targets[0].endswith("holds")
    assert targets[1] == ("- lesions at 300 images: hitl ≥ +15 points over plain on every seed (+20.0, +10.0): FAILS")
    rows[1]["test_acc"] = 0.96
    assert report.harm_targets(rows)[0].endswith("FAILS")


def test_the_version_a_row_was_measured_at_is_dirty_for_code_changes_not_for_the_results_files(tmp_path, monkeypatch):
    """A ``--match`` run after another finds the results file changed: its rows still name the commit."""
    import subprocess
    from bench import machine

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "bench" / "results" / "cpu-harm.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(machine, "REPO", tmp_path)
    commit = machine.git_version()
    assert commit and not commit.endswith("-dirty") and commit != "unknown"
    (tmp_path / "bench" / "results" / "cpu-harm.json").write_text('{"harm": []}\n')
    assert machine.git_version() == commit
    (tmp_path / "code.py").write_text("a = 2\n")
    assert machine.git_version() == commit + "-dirty"


def test_a_failing_row_stops_the_queued_runs_instead_of_training_them_all(tmp_path):
    """A long section whose save fails (a full disk, a bad row) stops after the runs in flight: before, the
    pool trained every queued run first and the rows were lost anyway."""
    from trainer.config import TrainConfig
    from bench.learning import train_all

    configs = [TrainConfig(dataset="decoy-digits", train_fraction=0.05, val_fraction=0.05, epochs=1, annotator="none",
                           seed=i, device="cpu", track_images=0, runs_dir=str(tmp_path), title=f"r{i}")
               for i in range(8)]

    def broken(i, row):
        raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        train_all(configs, 2, lambda *a: None, broken)
    assert len(list(tmp_path.iterdir())) < len(configs)
