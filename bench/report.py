"""``python -m bench.report [FILE.json ...]``: markdown tables from the results files (all of
``bench/results/`` by default), printed and written into ``docs/benchmarks.md`` between its markers
``<!-- bench:start -->`` and ``<!-- bench:end -->`` (the page's text around them is kept; a missing page
is created). Targets are reported as holding or failing, never asserted; published reference figures
are printed beside ours."""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from trainer.penalty import IMPL_ALIASES

from .harm import run_title as harm_title
from .plans import REFERENCE_VARIANT

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

REFERENCES = (
    "Exact double-backprop RRR penalty, H100, 224 px, batch 64: resnet18 8.8× a plain step with the whole "
    "batch annotated, 4.4× with 10%; efficientnet_b1 44× and 30×.",
    "Same penalty on a 2-core CPU: resnet18 2.8× with the whole batch annotated.",
    "Decoy-MNIST (Ross et al. 2017): plain training 51.6% test accuracy, 96.1% with masks on all images.",
)
COST_TARGETS = ((0.1, 1.3), (1.0, 3.0))   # (feedback fraction, largest penalty/plain ratio)
COSINE_TARGET = 0.95                      # parameter-gradient cosine of a penalty impl with exact
NOISE_ERRORS = 2.0                          # a difference under this many standard errors is noise
GAP_SHARE, GAIN_POINTS, WRONG_REASON_CUT, MAX_ANNOTATED = 0.8, 0.15, 5.0, 0.10
CLEAN_SHARE = 0.8          # masks on every image reach this share of clean training's test accuracy
STYLE_GAIN_SHARE = 0.7     # hitl_loose (loose boxes, 20% skipped) keeps this share of hitl's gain over plain
NO_HARM_POINTS = 0.01      # masks where the model has nothing to unlearn cost at most this much accuracy


def _mean(values: list) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.mean(values) if values else math.nan


def _pm(values: list, scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def learning_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by (data set, method, impl, feedback method); files from before --feedback have none."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["method"], r["impl"], r.get("feedback"))].append(r)
    return groups


def _gaps(group: list[dict]) -> list[float]:
    """Label-consistent minus decorrelated test accuracy per run: how much the shortcut decides."""
    return [r["test_consistent_acc"] - r["test_acc"] for r in group
            if r.get("test_consistent_acc") is not None and not math.isnan(r["test_consistent_acc"])]


def render_learning(results: dict, section: str = "learning", title: str = "Learning outcome") -> list[str]:
    rows = results.get(section) or []
    if not rows:
        return []
    note = results.get("notes", {}).get(section)
    out = [f"#### {title}", "", (note + ". " if note else "") +
           "Mean ± sd over seeds; test = the decorrelated test split, consistent = the same images with the "
           "train-time confounder; gap = consistent − test (points): how much the shortcut decides; "
           "wrong-reason = share of input-gradient attribution on the confounder; feedback = how the masks "
           "taught (--feedback).", ""]
    body = []
    for (dataset, method, impl, feedback), group in learning_groups(rows).items():
        body.append([dataset, method, feedback or "–", impl or "–", len(group), group[0]["epochs"],
                     f"{_mean([r['n_annotated'] for r in group]):.0f} / {group[0]['n_train']}",
                     _pm([r["test_acc"] for r in group], 100), _pm([r["test_consistent_acc"] for r in group], 100),
                     _pm(_gaps(group), 100), _pm([r["min_val_loss"] for r in group], 1, 3),
                     _pm([r["wrong_reason"] for r in group], 1, 3)])
    out += _table(["data set", "method", "feedback", "impl", "seeds", "epochs", "annotated / train", "test acc %",
                   "consistent acc %", "gap", "min val loss", "wrong-reason"], body)
    for s in results.get("skipped", []):
        if s.get("section", "learning") == section:
            out.append(f"\n*{s['dataset']} {s['method']} skipped:* {s['reason']}")
    return out + _provenance(results, section, [r.get("title") or f"{r['dataset']}-{r['method']}" for r in rows],
                             rows) + [""]


def _provenance(results: dict, section: str, titles: list[str], rows: list[dict]) -> list[str]:
    """Which code measured which rows, where ``--match`` reran some after a change, and the runs missing."""
    versions = defaultdict(list)
    for title, r in zip(titles, rows):
        versions[r.get("git") or "unrecorded"].append(title)
    out = []
    if len(versions) > 1:
        out.append("\n*Measured at more than one version (git):* " + "; ".join(
            f"{version}: {len(named)} runs ({_runs_named(named)})" for version, named in versions.items()) + ".")
    not_run = (results.get("not_run") or {}).get(section)
    if not_run:
        out.append(f"\n*Not finished when the file was written (the benchmark was stopped or is still running):* "
                   f"{', '.join(not_run)}.")
    return out


def _runs_named(titles: list[str]) -> str:
    """Run titles without their seeds, each once: 'd-hitl-both, d-plain'."""
    return ", ".join(dict.fromkeys(t.rsplit("-s", 1)[0] for t in titles))


def render_feedback(results: dict) -> list[str]:
    return render_learning(results, "feedback", "What each feedback method teaches")


def render_efficiency(results: dict) -> list[str]:
    rows = results.get("efficiency") or []
    if not rows:
        return []
    out = ["#### Annotation efficiency", "", f"{results.get('notes', {}).get('efficiency', '')}; "
           f"{rows[0]['dataset']}, seed {rows[0]['seed']}, {rows[0]['epochs']} epochs.", ""]
    body = [[r["n_annotated"], f"{100 * r['n_annotated'] / r['n_train']:.1f}%", f"{100 * r['test_acc']:.1f}",
             f"{r['wrong_reason']:.3f}", f"{r['min_val_loss']:.3f}"] for r in rows]
    return out + _table(["annotated", "of train", "test acc %", "wrong-reason", "min val loss"], body) + [""]


def _variant(row: dict) -> str:
    """The cost row's penalty variant (files written before variants had only the rrr impl)."""
    return row.get("variant") or ("none" if row["impl"] == "none" else f"rrr/{row['impl']}")


def render_cost(results: dict) -> list[str]:
    rows = results.get("cost") or []
    if not rows:
        return []
    out = ["#### Step cost", "", f"{results.get('notes', {}).get('cost', '')}. Peak memory: "
           f"{results.get('notes', {}).get('peak_memory', '')}.", ""]
    body = []
    for r in rows:
        body.append([r["model"], r["image_size"], r["batch_size"], r["device"] + (" amp" if r["amp"] else ""),
                     _variant(r), f"{r['feedback_fraction']:.0%} ({r['n_annotated']})", f"{r['plain_ms']:.0f}",
                     f"{r['penalty_ms']:.0f}", f"**{r['ratio']:.2f}×**",
                     f"{r['plain_peak_mb']:.0f} → {r['penalty_peak_mb']:.0f}"])
    return out + _table(["model", "px", "batch", "device", "penalty", "annotated", "plain ms", "step ms", "ratio",
                         "peak MB plain → step"], body) + [""]


def render_cosine(results: dict) -> list[str]:
    rows = results.get("cosine") or []
    if not rows:
        return []
    body = [[r["model"], r["dataset"], r["image_size"], r["impl"], f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}",
             f"{r['norm_ratio_mean']:.3f}" if "norm_ratio_mean" in r else "–", f"{len(r['cosines'])} × {r['batch_size']}"]
            for r in rows]
    return ["#### Penalty gradient against exact", "", results.get("notes", {}).get("cosine", "") + ".", ""] + \
        _table(["model", "data set", "px", "impl", "cosine (mean)", "cosine (min)", "norm ratio", "batches"], body) + [""]


def penalty_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["method"], r["variant"])].append(r)
    return groups


def render_penalties(results: dict) -> list[str]:
    rows = results.get("penalties") or []
    if not rows:
        return []
    body = []
    for (dataset, method, variant), group in penalty_groups(rows).items():
        body.append([dataset, method, variant, len(group), group[0]["epochs"],
                     f"{_mean([r['n_annotated'] for r in group]):.0f} / {group[0]['n_train']}",
                     _pm([r["test_acc"] for r in group], 100), _pm([r["test_consistent_acc"] for r in group], 100),
                     _pm([r["wrong_reason"] for r in group], 1, 3), f"{_mean([r['seconds'] for r in group]):.0f}"])
    return ["#### What each penalty teaches", "", results.get("notes", {}).get("penalties", "") + ".", ""] + \
        _table(["data set", "method", "penalty", "seeds", "epochs", "annotated / train", "test acc %",
                "consistent acc %", "wrong-reason", "seconds"], body) + [""]


def render_latency(results: dict) -> list[str]:
    rows = results.get("latency") or []
    if not rows:
        return []
    body = [[r["what"], r["method"] or "–", r.get("dataset", "–"), r["device"], f"{r['seconds']:.2f}"] for r in rows]
    return ["#### Latency", "", results.get("notes", {}).get("latency", "") + ".", ""] + \
        _table(["what", "saliency", "data set", "device", "seconds"], body) + [""]


def cost_targets(rows: list[dict]) -> list[str]:
    lines = []
    for fraction, limit in COST_TARGETS:
        by_variant: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if r["feedback_fraction"] == fraction:
                by_variant[_variant(r)].append(r)
        for variant, group in by_variant.items():
            failing = [r for r in group if r["ratio"] > limit]
            verdict = "**holds**" if not failing else f"**fails** for {len(failing)} of {len(group)}"
            worst = max(group, key=lambda r: r["ratio"])
            lines.append(f"- penalty step ≤ {limit:g}× plain at {fraction:.0%}, {variant}: {verdict} "
                         f"(worst {worst['ratio']:.2f}×, "
                         f"{worst['model']} {worst['image_size']} px)")
    return lines


def cosine_targets(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    worst = min(rows, key=lambda r: r["cosine_min"])
    verdict = "**holds**" if worst["cosine_min"] >= COSINE_TARGET else "**fails**"
    return [f"- {worst['impl']} parameter-gradient cosine with exact ≥ {COSINE_TARGET:g} on every batch: {verdict} "
            f"(lowest {worst['cosine_min']:.4f}, {worst['model']})"]


def learning_targets(rows: list[dict]) -> list[str]:
    groups = learning_groups(rows)
    lines = []

    def acc_of(dataset: str, method: str, impl=None, feedback=None) -> float | None:
        group = groups.get((dataset, method, impl, feedback))
        return _mean([r["test_acc"] for r in group]) if group else None

    for (dataset, method, impl, feedback), hitl in groups.items():
        if method != "hitl":
            continue
        plain, full = groups.get((dataset, "plain", None, None)), groups.get((dataset, "all_masks", impl, feedback))
        if not plain or not full:
            continue
        acc = {name: _mean([r["test_acc"] for r in g]) for name, g in (("plain", plain), ("hitl", hitl), ("all", full))}
        wrong = {name: _mean([r["wrong_reason"] for r in g]) for name, g in (("plain", plain), ("hitl", hitl))}
        share = _mean([r["n_annotated"] / r["n_train"] for r in hitl])
        gap = acc["all"] - acc["plain"]
        recovered = (acc["hitl"] - acc["plain"]) / gap if gap > 0 else math.nan
        cut = wrong["plain"] / wrong["hitl"] if wrong["hitl"] > 0 else math.inf
        where = f"{dataset}, {f'feedback {feedback}, ' if feedback else ''}impl {impl}"
        if gap > 0:
            verdict = "**holds**" if recovered >= GAP_SHARE and share <= MAX_ANNOTATED else "**fails**"
            detail = f"{recovered:.0%} of the {100 * gap:.1f}-point gap"
        else:
            verdict, detail = "**fails**", f"all_masks does not beat plain ({100 * acc['all']:.1f}% vs {100 * acc['plain']:.1f}%)"
        lines.append(f"- hitl with ≤{MAX_ANNOTATED:.0%} annotated recovers ≥{GAP_SHARE:.0%} of the plain→all_masks "
                     f"gap ({where}): {verdict} ({detail}, {share:.1%} annotated)")
        gain = acc["hitl"] - acc["plain"]
        lines.append(f"- hitl ≥ +{100 * GAIN_POINTS:.0f} points over plain ({where}): "
                     f"{'**holds**' if gain >= GAIN_POINTS else '**fails**'} ({100 * gain:+.1f} points: "
                     f"{100 * acc['plain']:.1f}% → {100 * acc['hitl']:.1f}%)")
        lines.append(f"- wrong-reason share cut ≥{WRONG_REASON_CUT:g}× vs plain ({where}): "
                     f"{'**holds**' if cut >= WRONG_REASON_CUT else '**fails**'} ({wrong['plain']:.3f} → "
                     f"{wrong['hitl']:.3f}, {cut:.1f}×)")
        clean = acc_of(dataset, "clean")
        if clean:
            ratio = acc["all"] / clean
            lines.append(f"- all_masks reaches ≥{CLEAN_SHARE:.0%} of clean training's test accuracy ({where}): "
                         f"{'**holds**' if ratio >= CLEAN_SHARE else '**fails**'} ({100 * acc['all']:.1f}% vs "
                         f"{100 * clean:.1f}%, {ratio:.0%})")
        loose = acc_of(dataset, "hitl_loose", impl, feedback)
        if loose is not None and gain > 0:
            kept = (loose - acc["plain"]) / gain
            lines.append(f"- hitl_loose (loose boxes, 20% skipped) keeps ≥{STYLE_GAIN_SHARE:.0%} of hitl's gain "
                         f"({where}): {'**holds**' if kept >= STYLE_GAIN_SHARE else '**fails**'} ({kept:.0%}: "
                         f"{100 * loose:.1f}% against {100 * acc['hitl']:.1f}%)")
        clean_masks = acc_of(dataset, "clean_masks", impl, feedback)
        if clean and clean_masks is not None:
            cost = clean - clean_masks
            lines.append(f"- masks where nothing needs unlearning cost ≤{100 * NO_HARM_POINTS:.0f} point ({where}): "
                         f"{'**holds**' if cost <= NO_HARM_POINTS else '**fails**'} (clean {100 * clean:.1f}%, "
                         f"clean_masks {100 * clean_masks:.1f}%, {100 * -cost:+.1f} points)")
    return lines


def _difference(values: list[float], reference: list[float], scale: float, unit: str) -> str:
    """'within noise' or 'better/worse by …', by the difference of means against its standard error."""
    delta = _mean(values) - _mean(reference)
    if len(values) < 2 or len(reference) < 2:
        return f"{scale * delta:+.{1 if scale > 1 else 3}f}{unit} (one seed: noise unknown)"
    error = math.sqrt(statistics.variance(values) / len(values) + statistics.variance(reference) / len(reference))
    noise = "within noise" if abs(delta) <= NOISE_ERRORS * error else "beyond noise"
    return f"{scale * delta:+.{1 if scale > 1 else 3}f}{unit}, {noise} (±{scale * NOISE_ERRORS * error:.{1 if scale > 1 else 3}f})"


def penalty_targets(rows: list[dict]) -> list[str]:
    """Each variant against the exact penalty: test accuracy and wrong-reason share."""
    groups, lines = penalty_groups(rows), []
    for (dataset, method, variant), group in groups.items():
        reference = groups.get((dataset, method, REFERENCE_VARIANT))
        if variant == REFERENCE_VARIANT or not reference:
            continue
        acc = _difference([r["test_acc"] for r in group], [r["test_acc"] for r in reference], 100, " points")
        wrong = _difference([r["wrong_reason"] for r in group], [r["wrong_reason"] for r in reference], 1, "")
        lines.append(f"- {variant} teaches as {REFERENCE_VARIANT} does ({dataset}, {method}): test accuracy {acc}; "
                     f"wrong-reason share {wrong}")
    return lines


def render_distributed(results: dict) -> list[str]:
    rows = results.get("distributed") or []
    if not rows:
        return []
    body = [[r["launcher"], r["processes"], r["device"], r["threads_per_process"], f"{r['epoch_seconds']:.1f}",
             f"**{r['samples_per_s']:.0f}**"] for r in rows]
    return ["#### Several processes", "", results.get("notes", {}).get("distributed", "") + ".", ""] + \
        _table(["launcher", "processes", "device", "threads each", "epoch s", "images/s"], body) + [""]


def render_loading(results: dict) -> list[str]:
    rows = results.get("loading") or []
    if not rows:
        return []
    first = rows[0]
    body = [[f"`{r['setting']}`", f"{r['start_s']:.1f}", f"{r['epoch_s']:.2f}", f"**{r['run_s']:.1f}**",
             "yes" if r["same_metrics"] else "**no**"] for r in rows]
    return ["#### Reading a small-image data set from disk", "",
            f"{first['n_train']} training images of {first['image_size']} px, {first['epochs']} epochs, "
            f"{first['device']}, median of {first['rounds']} round(s); "
            + results.get("notes", {}).get("loading", "") + ".", ""] + \
        _table(["setting", "start s", "epoch s", "run s", "same metrics as default"], body) + [""]


def loading_targets(rows: list[dict]) -> list[str]:
    """The default reading within 10% of the fastest setting's whole run, and every setting's metrics the same."""
    if not rows:
        return []
    best = min(r["run_s"] for r in rows)
    default = next(r for r in rows if r["setting"] == "default")
    ok = default["run_s"] <= 1.1 * best
    same = all(r["same_metrics"] for r in rows)
    return [f"- default reading within 10% of the fastest ({default['run_s']:.1f} s against {best:.1f} s): "
            f"{'holds' if ok else 'FAILS'}",
            f"- the same metrics with every setting: {'holds' if same else 'FAILS'}"]


REVIEW_POINTS, REVIEW_DRAWN, REVIEW_SECONDS = 15.0, 10, 180.0  # issue 27: +15 points, <= 10 drawn, <= 3 min


def render_review(results: dict) -> list[str]:
    review = results.get("review")
    if not review:
        return []
    b = review["browser"]
    rounds = ", ".join(f"{r['queries']} drawn + {r['proposals']} proposed: {r['seconds']:.1f} s" for r in b["rounds"])
    out = ["#### What a minute of review buys", "", results.get("notes", {}).get("review", "") + ".", "",
           f"In the browser (seed {b['seed']}, {b['epochs']} epochs, --query-budget {b['budget']}, --proposals "
           f"{b['proposals']}): per drawn image {b['draw_seconds']} s, Accept all {b['accept_seconds']} s, Send "
           f"{b['send_seconds']} s (medians); rounds {rounds}; {b['review_seconds']} s of review in all, "
           f"{b['drawn']} drawn (mean IoU with the sticker {b.get('drawn_iou')}), {b['accepted']} accepted; the run "
           f"ended {b['state']} at {100 * (b['test_acc'] or 0):.1f}% decorrelated test accuracy.", ""]
    body = [[r["sticker"], r["seed"], r["drawn"], f"{r['accepted']} of {r['shown']}", r["rounds"],
             f"{r['page_seconds']:.0f}", f"**{r['review_seconds']:.0f}**", f"{100 * r['plain_acc']:.1f}",
             f"{100 * r['test_acc']:.1f}", f"**{r['points']:+.1f}**", r["points_per_minute"]]
            for r in review["priced"]]
    out += _table(["sticker", "seed", "drawn", "proposals accepted", "rounds", "page s", "review s", "plain %",
                   "reviewed %", "points", "points / min"], body) + [""]
    return out


def review_targets(review: dict | None) -> list[str]:
    """Issue 27: on synthetic-lesions (corners) every seed +15 points over plain with <= 10 drawn marks and
    <= 3 minutes of review."""
    rows = [r for r in (review or {}).get("priced", []) if r["sticker"] == "corners"]
    if not rows:
        return []
    ok = all(r["points"] >= REVIEW_POINTS and r["drawn"] <= REVIEW_DRAWN and r["review_seconds"] <= REVIEW_SECONDS
             for r in rows)
    points = ", ".join(f"{r['points']:+.1f}" for r in rows)
    return [f"- review, synthetic-lesions: +{REVIEW_POINTS:.0f} points over plain with ≤ {REVIEW_DRAWN} drawn marks and "
            f"≤ {REVIEW_SECONDS / 60:.0f} minutes of review on every seed ({points}): {'holds' if ok else 'FAILS'}"]


def _shape_runs(rows: list[dict]) -> dict[str, dict]:
    """The shapes rows by variant, each keyed by (method, seed)."""
    by = defaultdict(dict)
    for r in rows:
        by[r["variant"]][(r["method"], r["seed"])] = r
    return by


def _shape_points(runs: dict) -> list[float]:
    """hitl's decorrelated test accuracy over plain's, in points, per seed that has both."""
    seeds = sorted({seed for _, seed in runs})
    return [100 * (runs[("hitl", s)]["test_acc"] - runs[("plain", s)]["test_acc"]) for s in seeds
            if ("hitl", s) in runs and ("plain", s) in runs]


def render_shapes(results: dict) -> list[str]:
    rows = results.get("shapes") or []
    if not rows:
        return []
    both = any(r["method"] == "hitl_both" for r in rows)  # files written before it have none
    body = []
    for variant, runs in _shape_runs(rows).items():
        seeds = sorted({seed for _, seed in runs})
        acc = {m: [runs[(m, s)]["test_acc"] for s in seeds if (m, s) in runs] for m in ("plain", "hitl", "hitl_both")}
        points = _shape_points(runs)
        flips = {m: [runs[(m, s)].get("reliance_flip_rate") for s in seeds if (m, s) in runs] for m in ("plain", "hitl")}
        annotated = [runs[("hitl", s)]["n_annotated"] for s in seeds if ("hitl", s) in runs]
        body.append([variant, len(seeds), " / ".join(f"{100 * a:.1f}" for a in acc["plain"]),
                     " / ".join(f"{100 * a:.1f}" for a in acc["hitl"]),
                     " / ".join(f"**{p:+.1f}**" for p in points), " / ".join(str(a) for a in annotated),
                     _pm(flips["hitl"], 100)] + ([" / ".join(f"{100 * a:.1f}" for a in acc["hitl_both"]) or "–"]
                                                 if both else []))
    return ["#### Other shapes of shortcut", "", results.get("notes", {}).get("shapes", "") + f"; {rows[0]['epochs']} "
            "epochs; reliance = % of answers that swapping the marked artefacts changes (hitl's marks).", ""] + \
        _table(["variant", "seeds", "plain %", "hitl %", "points", "annotated", "hitl reliance %"]
               + (["hitl_both %"] if both else []), body) + [""]


def shapes_targets(rows: list[dict]) -> list[str]:
    """Issue 25: on every other shape of shortcut hitl gains at least GAIN_POINTS over plain on every seed."""
    points = {variant: ps for variant, runs in _shape_runs(rows).items() if (ps := _shape_points(runs))}
    if not points:
        return []
    ok = all(p >= 100 * GAIN_POINTS for ps in points.values() for p in ps)
    worst = ", ".join(f"{variant} {min(ps):+.1f}" for variant, ps in points.items())
    return [f"- other shapes of shortcut: hitl ≥ +{100 * GAIN_POINTS:.0f} points over plain on every seed of every "
            f"variant (worst seed: {worst}): {'holds' if ok else 'FAILS'}"]


def _harm_cells(runs: dict, method: str, seeds: list[int]) -> list[float]:
    return [runs[(method, s)]["test_acc"] for s in seeds if (method, s) in runs]


def harm_table(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """Rows by (setting, size): the seeds, each method's test accuracies and the points each method is
    over plain, per seed (the same seeds only)."""
    by: dict = defaultdict(dict)
    for r in rows:
        by[(r["setting"], r["size"])][(r["method"], r["seed"])] = r
    table = {}
    for key, runs in by.items():
        seeds = sorted({seed for _, seed in runs})
        methods = sorted({m for m, _ in runs}, key=("plain", "hitl", "hitl_ungated").index)
        points = {m: [100 * (runs[(m, s)]["test_acc"] - runs[("plain", s)]["test_acc"]) for s in seeds
                      if (m, s) in runs and ("plain", s) in runs] for m in methods if m != "plain"}
        annotated = [runs[("hitl", s)]["n_annotated"] / runs[("hitl", s)]["n_train"] for s in seeds if ("hitl", s) in runs]
        table[key] = {"confounded": next(iter(runs.values()))["confounded"], "seeds": seeds,
                      "acc": {m: _harm_cells(runs, m, seeds) for m in methods}, "points": points,
                      "annotated": _mean(annotated)}
    return table


def render_harm(results: dict) -> list[str]:
    rows = results.get("harm") or []
    if not rows:
        return []
    body = []
    for (setting, size), t in harm_table(rows).items():
        def cell(method: str) -> str:
            if method not in t["acc"]:
                return "–"
            acc = " / ".join(f"{100 * a:.1f}" for a in t["acc"][method])
            return acc if method == "plain" else f"{acc} (**{_mean(t['points'][method]):+.1f}**)"
        body.append([setting, size, len(t["seeds"]), cell("plain"), cell("hitl"), cell("hitl_ungated"),
                     f"{100 * t['annotated']:.1f}%"])
    titles = [r.get("title") or harm_title(r["setting"], r["size"], r["method"], r["seed"]) for r in rows]
    return ["#### Feedback where there is nothing to unlearn, and small sets", "",
            results.get("notes", {}).get("harm", "") + "; test accuracy % per seed (mean points over plain).", ""] + \
        _table(["set", "training images", "seeds", "plain %", "hitl %", "hitl_ungated %", "annotated"], body) + \
        _provenance(results, "harm", titles, rows) + [""]


def harm_targets(rows: list[dict]) -> list[str]:
    """Issue 25: feedback costs at most NO_HARM_POINTS where the marked artefact says nothing of the class, at
    every size; on the confounded sets hitl gains at least GAIN_POINTS on every seed."""
    if not rows:
        return []
    table = harm_table(rows)
    clean = {k: t for k, t in table.items() if not t["confounded"]}
    out = []
    if clean:
        costs = ", ".join(f"{setting} {size}: {_mean(t['points']['hitl']):+.1f}" for (setting, size), t in clean.items())
        ok = all(_mean(t["points"]["hitl"]) >= -100 * NO_HARM_POINTS for t in clean.values())
        out.append(f"- no harm: hitl within {100 * NO_HARM_POINTS:.0f} point of plain (mean of seeds) where the marked "
                   f"artefact says nothing of the class ({costs}): {'holds' if ok else 'FAILS'}")
    for (setting, size), t in table.items():
        if t["confounded"]:
            points = t["points"]["hitl"]
            ok = all(p >= 100 * GAIN_POINTS for p in points)
            out.append(f"- {setting} at {size} images: hitl ≥ +{100 * GAIN_POINTS:.0f} points over plain on every "
                       f"seed ({', '.join(f'{p:+.1f}' for p in points)}): {'holds' if ok else 'FAILS'}")
    return out


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def with_current_names(results: dict) -> dict:
    """Files written before the linearised implementation was named for what it is call it ``fd``
    (impl ``fd``, variant ``rrr/fd``)."""
    def current(name: str) -> str:
        penalty, slash, impl = name.rpartition("/")
        return penalty + slash + IMPL_ALIASES.get(impl, impl)

    results = dict(results)
    for section in ("learning", "feedback", "cost", "cosine", "penalties"):
        results[section] = [{**r, **{k: current(r[k]) for k in ("impl", "variant") if isinstance(r.get(k), str)}}
                            for r in results.get(section) or []]
    notes = results.get("notes", {})
    if "cosine" in notes:
        results["notes"] = {**notes, "cosine": notes["cosine"].replace("rrr/fd", "rrr/linearised")}
    return results


def render_file(path: Path, results: dict) -> str:
    results = with_current_names(results)
    m = results["machine"]
    plan = results.get("plan", {})
    out = [f"### `{path.name}`: {m['cpu_model']}, {m['cpu_cores']} cores, {m['device']}"
           f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}",
           "", f"torch {m['torch']}, timm {m['timm']}, git {m['git']}, {results['created']}, preset "
           f"{plan.get('preset', '?')}; load average {_load(m['load_average'])} at the start, "
           f"{_load(m.get('load_average_end', []))} at the end "
           f"(a shared machine slows every timing; ratios compare interleaved steps); section seconds "
           f"{results.get('seconds', {})}"
           + (f"; training runs at a time {results['jobs']} (their seconds are shared-core times)"
              if any(n > 1 for n in results.get("jobs", {}).values()) else "") + ".", ""]
    for render in (render_learning, render_efficiency, render_feedback, render_cost, render_cosine, render_penalties,
                   render_latency, render_distributed, render_loading, render_review, render_shapes,
                   render_harm):
        out += render(results)
    for e in results.get("errors", []):
        out.append(f"*{e['section']} failed:* {e['error']}\n")
    targets = (cost_targets(results.get("cost") or []) + cosine_targets(results.get("cosine") or [])
               + learning_targets(results.get("learning") or []) + learning_targets(results.get("feedback") or [])
               + penalty_targets(results.get("penalties") or []) + loading_targets(results.get("loading") or [])
               + review_targets(results.get("review")) + shapes_targets(results.get("shapes") or [])
               + harm_targets(results.get("harm") or []))
    if targets:
        out += ["#### Targets", ""] + targets + [""]
    return "\n".join(out)


def render_all(paths: list[Path]) -> str:
    parts = [render_file(p, json.loads(p.read_text())) for p in paths]
    refs = ["#### Reference figures (published, not measured here)", ""] + [f"- {r}" for r in REFERENCES]
    return "\n".join(parts + refs) + "\n"


def write_page(markdown: str, page: Path = PAGE) -> bool:
    """Replace what lies between the page's markers, keeping the text around them; a missing page is
    created with a title and the markers. False (and the page untouched) when it exists without them."""
    if not page.exists():
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"# Benchmarks\n\n{START}\n{markdown}{END}\n")
        return True
    text = page.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return False
    page.write_text(text[:start + len(START)] + "\n" + markdown + text[end:])
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="results files (default: bench/results/*.json)")
    p.add_argument("--print-only", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    paths = args.files or sorted(RESULTS_DIR.glob("*.json"))
    if not paths:
        print("no results files; run `python -m bench` first", file=sys.stderr)
        return 1
    markdown = render_all(paths)
    print(markdown)
    if not args.print_only:
        wrote = write_page(markdown)
        name = PAGE.relative_to(PAGE.parents[1])
        print(f"{name} {'updated' if wrote else 'has no bench markers; left alone'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
