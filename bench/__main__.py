"""``python -m bench [--quick] [--device cpu|cuda] [--only SECTION] [--jobs N]``: run the benchmarks and
write ``bench/results/<name>.json`` (``cpu``, ``cpu-quick``, ``cuda``, …; one file per machine and
preset). With ``--only``, the other sections of an existing file are kept. The ``penalties`` section
(what each penalty variant teaches), the ``feedback`` section (what each --feedback method teaches,
issue 15's targets), ``distributed``, ``loading`` (a small-image csv set read by default, with
--workers 0 and with --workers 2) and ``review`` (what a minute of review buys: a scripted reviewer in
chromium, then the runs it prices; bench/review.py) and ``shapes`` (other shapes of shortcut: a ruler, a
text label, two artefacts; bench/shapes.py) and ``harm`` (feedback where there is nothing to unlearn, on
small sets; bench/harm.py) run only when asked for: each would double the default run's
time. ``--jobs N`` trains N runs at a time in the training sections (timed sections stay serial). ``--match
TEXT`` reruns only the learning, feedback, harm or shapes runs whose title contains TEXT, keeping the
file's other rows (each row says which git version measured it)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from trainer.protocol.atomic import atomic_write_text
from trainer.distributed import pick_device

from . import cost, distributed, harm, latency, learning, loading, review, shapes
from .machine import machine_info
from .plans import Plan, make_plan
from .report import render_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SECTIONS = ("learning", "cost", "latency", "penalties", "feedback", "distributed", "loading", "review", "shapes",
            "harm")
DEFAULT_SECTIONS = ("learning", "cost", "latency")
TRAINING_SECTIONS = ("learning", "penalties", "feedback", "review", "shapes", "harm")  # whole training runs: --jobs applies
OWN_FILE_SECTIONS = ("feedback", "review", "shapes", "harm")  # measured on a schedule of their own: <device>-<section>.json by default
MATCH_SECTIONS = ("learning", "feedback", "harm", "shapes")  # --match: some runs again, the file's other rows kept
NOTES = {
    "efficiency": learning.EFFICIENCY_HOW,
    "cost": "median Trainer.train_step time with masks on a fraction of the batch over the median plain step, "
            "interleaved; random images, corner masks",
    "peak_memory": "peak tensor memory allocated during one step above what was allocated before it "
                   "(CPU: profiler allocation events, not RSS; CUDA: torch.cuda.max_memory_allocated)",
    "cosine": "parameter-gradient cosine (and norm ratio) of rrr/linearised against rrr/exact, each model trained "
              "briefly (plain), train mode",
    "penalties": "the mask methods once per penalty variant, same seeds; a difference is within noise when it "
                 "is under twice its standard error",
    "feedback": "the mask methods once per --feedback method, same seeds; hitl_loose: boxes off by up to two "
                "margins with 20% of queries skipped, counterexamples filling them grown by 1/32 of the side; "
                "clean_masks: masks on every image of a training set whose confounder does not go with the label",
    "distributed": "images per second of the second epoch (training and validation) of a plain decoy-digits run, "
                   "batch 64, in one process and through torchrun; on CPU the processes share the cores",
    "loading": "a csv set of 28 px PNGs, hitl_cnn, batch 64, no annotator, one seed: Trainer built (start), mean "
               "epoch seconds (training and validation), whole run; settings interleaved, medians of the rounds",
    "review": review.HOW,
    "shapes": shapes.HOW,
    "harm": harm.HOW,
    "latency": "query_queue: Trainer.build_queue (epoch end to queue ready); submit_to_*: mask file written "
               "to feedback applied / next epoch started",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_section(section: str, plan: Plan, device: torch.device, runs_dir: Path, log: Callable[[str], None],
                jobs: int = 1, progress: Callable[[dict], None] = lambda part: None, match: tuple[str, ...] = ()
                ) -> dict:
    """The section's results; a training section also hands ``progress`` its rows after every run, with
    the runs not finished under ``not_run``. ``match``: only the learning and feedback runs whose title
    contains one of these strings (the efficiency rows are then not run); the harm and shapes runs likewise."""
    def rows_so_far(rows: list, left: list) -> None:
        progress({section: rows, "not_run": {section: left}})

    if section == "learning":
        rows, skipped = learning.run_learning(plan, device, runs_dir, log, jobs, rows_so_far, match)
        if match:
            return {"learning": rows, "skipped": skipped}
        return {"learning": rows, "skipped": skipped,
                "efficiency": learning.run_efficiency(plan, device, runs_dir, log, jobs)}
    if section == "feedback":
        rows, skipped = learning.run_feedback(plan, device, runs_dir, log, jobs, rows_so_far, match)
        return {"feedback": rows, "skipped": skipped}
    if section == "cost":
        return {"cost": cost.run_cost(plan, device, runs_dir, log),
                "cosine": cost.run_cosine(plan, device, runs_dir, log)}
    if section == "penalties":
        return {"penalties": learning.run_penalties(plan, device, runs_dir, log, jobs)}
    if section == "distributed":
        return {"distributed": distributed.run_distributed(device, runs_dir, log)}
    if section == "loading":
        return {"loading": loading.run_loading(plan, device, runs_dir, log)}
    if section == "shapes":
        return {"shapes": shapes.run_shapes(plan.shapes_seeds, plan.shapes_variants, plan.shapes_epochs, runs_dir,
                                            log, jobs, rows_so_far, match)}
    if section == "harm":
        return {"harm": harm.run_harm(plan.harm_seeds, runs_dir, log, jobs, sizes=plan.harm_sizes,
                                      progress=rows_so_far, match=match)}
    if section == "review":
        return {"review": review.run_review(plan.review_seeds, plan.review_stickers, plan.review_epochs,
                                            plan.review_budget, plan.review_proposals, runs_dir, log, jobs)}
    return {"latency": latency.run_query_latency(plan, device, runs_dir, log)
            + latency.run_resume_latency(plan, device, runs_dir, log)}


def run_benchmarks(plan: Plan, device: torch.device, sections: tuple[str, ...] = DEFAULT_SECTIONS,
                   log: Callable[[str], None] = log, save: Callable[[dict], None] = lambda results: None,
                   jobs: int = 1, match: tuple[str, ...] = ()) -> dict:
    """Run the chosen sections in fresh run directories under a temporary folder; the results dict.

    A failing section is logged and recorded under ``errors`` and the others still run; ``save``
    receives the results after every section and every finished training run (the runs still to come
    under ``not_run``), so a long run that fails or is stopped late keeps what it measured."""
    results: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(device),
                     "plan": plan.to_dict(), "notes": NOTES, "seconds": {}, "skipped": [], "errors": [],
                     "not_run": {}, "jobs": {section: jobs for section in sections if section in TRAINING_SECTIONS}}
    partial: dict = {}

    def progress(part: dict) -> None:
        partial.clear()
        partial.update(part, not_run={**results["not_run"], **part["not_run"]})
        save(finite({**results, **partial}))

    with tempfile.TemporaryDirectory(prefix="hitl-bench-") as tmp:
        for section in sections:
            t0 = time.perf_counter()
            partial.clear()
            try:
                part = run_section(section, plan, device, Path(tmp), log,
                                   jobs if section in TRAINING_SECTIONS else 1, progress, match)
            except Exception as e:
                log(f"{section} failed:\n{traceback.format_exc()}")
                results.update(partial)  # the runs it finished
                results["errors"].append({"section": section, "error": f"{type(e).__name__}: {e}"})
            else:
                results["skipped"] += part.pop("skipped", [])
                results.update(part)
                results["seconds"][section] = round(time.perf_counter() - t0, 1)
                log(f"{section} done in {results['seconds'][section]:.0f} s")
            results["machine"]["load_average_end"] = list(os.getloadavg())
            save(finite(results))
    return finite(results)


def finite(value):
    """NaN (a metric a data set cannot give) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def merge_rows(old: dict, new: dict, section: str) -> tuple[list, list]:
    """A section's rows after a ``--match`` run: the earlier file's, each replaced by the new row of the
    same title, new titles after them; and the titles still not run. A kept row without a ``git``
    version gets the earlier file's."""
    fresh = {r["title"]: r for r in new.get(section, [])}
    rows = []
    for r in old.get(section, []):
        title = r.get("title") or (  # a row from before rows had titles
            harm.run_title(r["setting"], r["size"], r["method"], r["seed"]) if section == "harm" else
            shapes.run_title(r["variant"], r["method"], r["seed"]) if section == "shapes" else
            learning.run_title(r["dataset"], r["method"], r.get("feedback") if section == "feedback" else None,
                               r["seed"]))
        rows.append(fresh.pop(title, None) or {"title": title, **r, "git": r.get("git", old["machine"].get("git"))})
    rows += fresh.values()
    done = {r["title"] for r in rows}
    not_run = [t for t in old.get("not_run", {}).get(section, []) if t not in done]
    return rows, not_run + [t for t in new.get("not_run", {}).get(section, []) if t not in not_run]


def merge(old: dict, new: dict, sections: tuple[str, ...], match: tuple[str, ...] = ()) -> dict:
    """An earlier file's sections that were not run again are kept, with their own timings; with
    ``match``, the training sections' rows that were not run again too. NaN as null, as ``finite``."""
    merged = dict(old)
    merged.update({k: v for k, v in new.items() if k not in ("seconds", "skipped")})
    merged["seconds"] = {**old.get("seconds", {}), **new["seconds"]}
    merged["jobs"] = {**old.get("jobs", {}), **new.get("jobs", {})}
    merged["skipped"] = [s for s in old.get("skipped", []) if s["section"] not in sections] + new["skipped"]
    merged["errors"] = [e for e in old.get("errors", []) if e["section"] not in sections] + new["errors"]
    merged["not_run"] = {**{k: v for k, v in old.get("not_run", {}).items() if k not in sections},
                         **new.get("not_run", {})}
    for section in sections if match else ():
        if section in MATCH_SECTIONS:
            merged[section], merged["not_run"][section] = merge_rows(old, new, section)
    return finite(merged)  # an earlier file's NaN (written by hand, or before finite) as null: strict JSON


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the small preset (about 3 minutes on 2 cores)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--name", help="results file name (default: the device, with -quick for --quick)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--match", action="append", default=[], metavar="TEXT",
                   help="with --only learning, feedback or harm: run only the runs whose title contains TEXT "
                        "(repeatable); the file's other rows are kept, each with the git version it was measured at")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="training runs at a time in the learning, penalties and feedback sections (default 1)")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        p.error(str(e))
    sections = tuple(s for s in SECTIONS if s in args.only) if args.only else DEFAULT_SECTIONS
    name = args.name or "-".join([device.type] + (["quick"] if args.quick else [])
                                 + [s for s in sections if s in OWN_FILE_SECTIONS])
    path = args.results_dir / f"{name}.json"
    plan = make_plan(args.quick, device)
    log(f"{plan.preset} benchmark on {device.type}: {', '.join(sections)} -> {path}")
    if args.match and not set(sections) <= set(MATCH_SECTIONS):
        p.error("--match needs --only learning, feedback, harm or shapes")
    earlier = json.loads(path.read_text()) if args.only and path.exists() else None
    match = tuple(args.match)

    def save(results: dict) -> None:
        if earlier is not None:
            results = merge(earlier, results, sections, match)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=1, allow_nan=False) + "\n")  # read while it runs
        log(f"wrote {path}")

    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    results = run_benchmarks(plan, device, sections, save=save, jobs=args.jobs, match=match)
    print(render_file(path, json.loads(path.read_text())) if path.exists() else "nothing measured")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
