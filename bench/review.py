"""What a minute of review buys (issue 27): a scripted fast reviewer in a real browser prices each action,
and runs answered by the simulated reviewer with the same flags say what the actions bought.

1. **In the browser** (``review_in_browser``): a human-in-the-loop run on synthetic-lesions (``--annotator
   human --query-budget B --proposals P``) is reviewed through the dashboard, served as ``make serve``
   serves it, in Debian's chromium driven by Playwright, by a script acting as a fast reviewer who knows
   where the sticker is: on each queried image R and one rectangle over the sticker, → to the next;
   then Accept all on the proposal grid, and Send. Each action is timed from the reviewer's input to
   the page showing its outcome (the next image, the grid ticked, the answers sent), and each round from
   its queue appearing on the page to the page confirming the answers. The script never waits to look
   at anything, so these are the page's own times: a lower bound on a person's.
2. **Modelled review time**: the medians of those action times, times the counts of a run (images drawn
   on, rounds with proposals, rounds), plus ``GLANCE_SECONDS`` per proposal shown, an assumption (not a
   measurement) for a person checking each thumbnail before Accept all; both totals are reported.
3. **Runs** (``review_rows``): the same flags with ``--annotator oracle`` (it draws the ground-truth
   sticker on queried images and accepts a proposal whose mask has IoU >= 0.5 with it), per seed and
   sticker placement (corners, and anywhere: a random place in each image), beside plain training on
   the same data; decorrelated test accuracy, points over plain, and points per minute of review.
"""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainer import protocol
from trainer.config import TrainConfig
from trainer.counterexamples import bounding_box
from trainer.data import DataRequest, build_dataset

from .learning import train_all

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CANVAS = "canvas[aria-label]"
GLANCE_SECONDS = 0.25  # assumed per proposal thumbnail a person looks at before Accept all (not measured)
STICKERS = {"corners": {}, "anywhere": {"sticker": "anywhere"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    """``condition()``'s first true value, asked every ``poll`` seconds; TimeoutError after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def review_in_browser(seed: int, epochs: int, budget: int, proposals: int, log: Callable[[str], None],
                      runs_dir: Path) -> dict:
    """One human-in-the-loop run reviewed by the scripted reviewer: its rounds, the action times, and
    the run's result."""
    from playwright.sync_api import sync_playwright

    from dashboard import launcher, serve

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make browser` installs it")
    title = f"review-s{seed}"
    run = launcher.start_run(runs_dir, launcher.RunRequest(
        title=title, dataset="synthetic-lesions", model="hitl_cnn", epochs=epochs, sampling="high_entropy",
        queries_per_epoch=10, query_start_epoch=0, penalty_weight=None, saliency="deeplift", annotator="human",
        proposals=proposals, extra_args=["--query-budget", str(budget), "--seed", str(seed), "--device", "cpu",
                                         "--track-images", "0"]))
    truth = build_dataset("synthetic-lesions", DataRequest(None, 64, seed)).train.masks.numpy()
    port = free_port()
    server = subprocess.Popen(serve.streamlit_command("127.0.0.1", port, runs_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rounds, draws, accepts, sends = [], [], [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            wait_for(lambda: listening(port), 60, "the dashboard")
            page.goto(f"http://127.0.0.1:{port}/review?run={title}")
            done = set()
            while True:
                (epoch,) = wait_for(lambda: _next_round(run, done), 900, "the next round or the end", poll=0.1)
                if epoch is None:  # the run finished
                    break
                manifest = protocol.read_manifest(run, epoch)
                found = protocol.read_proposals(run, epoch)
                offered = len(found["entries"]) if found else 0
                queries = manifest["queries"]
                when = f"Epoch {epoch}" if epoch else "Before training"
                page.get_by_text(when, exact=False).first.wait_for(timeout=120_000)
                if queries:
                    _canvas(page, epoch, queries[0]["query_id"]).wait_for(timeout=120_000)
                else:
                    page.get_by_role("button", name="Accept all").wait_for(timeout=120_000)
                started = time.perf_counter()
                for i, q in enumerate(queries):
                    t0 = time.perf_counter()
                    canvas = _canvas(page, epoch, q["query_id"])
                    target = truth[q["index"]]
                    if target.any():
                        y0, y1, x0, x1 = bounding_box(torch.from_numpy(target))
                        page.keyboard.press("r")
                        _drag(page, canvas.bounding_box(), q["height"], q["width"], (x0 + 0.3, y0 + 0.3),
                              (x1 + 0.3, y1 + 0.3))
                    if i + 1 < len(queries):
                        page.keyboard.press("ArrowRight")
                        _canvas(page, epoch, queries[i + 1]["query_id"]).wait_for(timeout=60_000)
                    draws.append(time.perf_counter() - t0)
                if offered:
                    t0 = time.perf_counter()
                    button = page.get_by_role("button", name="Accept all")
                    button.scroll_into_view_if_needed()
                    button.click()
                    wait_for(lambda: page.get_by_text(f"{offered} accepted").count(), 60, "the grid ticked", poll=0.02)
                    accepts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                send = page.get_by_role("button", name=f"Send answers for epoch {epoch}")
                send.scroll_into_view_if_needed()
                send.click()
                page.get_by_text(f"Answers for epoch {epoch} sent").wait_for(timeout=60_000)
                sends.append(time.perf_counter() - t0)
                rounds.append({"epoch": epoch, "queries": len(queries), "proposals": offered,
                               "seconds": round(time.perf_counter() - started, 2)})
                done.add(epoch)
                log(f"browser round {epoch}: {len(queries)} drawn, {offered} proposals, "
                    f"{rounds[-1]['seconds']:.1f} s")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        if launcher.live_pid(run) is not None:
            launcher.stop_run(run)
    result = protocol.read_status(run).get("result") or {}
    drawn, accepted = _mark_counts(run)
    drawn_iou = [_iou(a.forbidden, truth[a.index]) for e in protocol.queue_epochs(run)
                 for a in protocol.load_feedback(run, e, protocol.read_manifest(run, e)) or ()
                 if a.source != protocol.SOURCE_PROPOSED and a.forbidden is not None]
    return {"seed": seed, "epochs": epochs, "budget": budget, "proposals": proposals, "rounds": rounds,
            "draw_seconds": _median(draws), "accept_seconds": _median(accepts), "send_seconds": _median(sends),
            "review_seconds": round(sum(r["seconds"] for r in rounds), 1), "drawn": drawn, "accepted": accepted,
            "drawn_iou": round(float(np.mean(drawn_iou)), 3) if drawn_iou else None,
            "test_acc": result.get("test_acc"), "state": protocol.read_status(run)["state"]}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _next_round(run: protocol.RunDir, done: set) -> tuple[int | None] | None:
    """(epoch,) of a queue waiting for answers that this script has not answered, (None,) once the run
    has finished, None meanwhile."""
    epoch = protocol.pending_epoch(run)
    if epoch is not None and epoch not in done:
        return (epoch,)
    status = protocol.read_status(run)
    if status["state"] in (protocol.FAILED, protocol.STOPPED):
        raise RuntimeError(f"the run ended {status['state']}: {status.get('error')}")
    return (None,) if status["state"] == protocol.FINISHED else None


def _canvas(page, epoch: int, query_id: str):
    return page.locator(f'{CANVAS}[data-doc$="|{epoch}|{query_id}"]')


def _drag(page, box: dict, height: int, width: int, start: tuple[float, float], end: tuple[float, float]) -> None:
    at = lambda x, y: (box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height)  # noqa: E731
    page.mouse.move(*at(*start))
    page.mouse.down()
    page.mouse.move(*at(*end), steps=4)
    page.mouse.up()


def _mark_counts(run: protocol.RunDir) -> tuple[int, int]:
    """Drawn marks (answers to queries that mark something) and accepted proposals of a run."""
    drawn = accepted = 0
    for epoch in protocol.queue_epochs(run):
        manifest = protocol.read_manifest(run, epoch)
        for a in protocol.load_feedback(run, epoch, manifest) or () if protocol.feedback_sent(run, epoch) else ():
            if a.must_not_use() is None:
                continue
            if a.source == protocol.SOURCE_PROPOSED:
                accepted += 1
            else:
                drawn += 1
    return drawn, accepted


def review_rows(seeds: tuple[int, ...], stickers: tuple[str, ...], epochs: int, budget: int, proposals: int,
                runs_dir: Path, log: Callable[[str], None], jobs: int = 1) -> list[dict]:
    """Plain and reviewed (simulated reviewer) runs per sticker placement and seed, with their counts."""
    planned = []
    for sticker in stickers:
        for seed in seeds:
            for method in ("plain", "reviewed"):
                cfg = TrainConfig(dataset="synthetic-lesions", epochs=epochs, seed=seed, device="cpu", track_images=0,
                                  runs_dir=str(runs_dir), title=f"lesions-{sticker}-{method}-s{seed}",
                                  dataset_options=dict(STICKERS[sticker]),
                                  annotator="oracle" if method == "reviewed" else "none")
                if method == "reviewed":
                    cfg.query_budget, cfg.proposals_per_epoch = budget, proposals
                planned.append((sticker, seed, method, cfg))
    rows = []
    for (sticker, seed, method, cfg), row in zip(planned, train_all([p[-1] for p in planned], jobs, log)):
        run = protocol.RunDir(Path(cfg.runs_dir) / cfg.title)
        drawn, accepted = _mark_counts(run)
        shown = sum(len((protocol.read_proposals(run, e) or {"entries": ()})["entries"]) for e in protocol.queue_epochs(run))
        rounds = [e for e in protocol.queue_epochs(run) if protocol.feedback_sent(run, e)]
        rows.append({"sticker": sticker, "seed": seed, "method": method, "epochs": epochs, "budget": budget,
                     "proposals": proposals, "drawn": drawn, "accepted": accepted, "shown": shown,
                     "rounds": len(rounds),
                     "rounds_with_proposals": sum(1 for e in rounds if protocol.read_proposals(run, e)),
                     "test_acc": row["test_acc"], "test_consistent_acc": row["test_consistent_acc"],
                     "reliance_flip_rate": row["reliance_flip_rate"], "seconds": row["seconds"]})
    return rows


def priced(rows: list[dict], browser: dict) -> list[dict]:
    """Each reviewed row with its modelled review seconds (page times only, and with a glance per
    proposal shown), its points over the plain run of the same sticker and seed, and points per minute."""
    plain = {(r["sticker"], r["seed"]): r["test_acc"] for r in rows if r["method"] == "plain"}
    out = []
    for r in rows:
        if r["method"] != "reviewed":
            continue
        page = (r["drawn"] * (browser["draw_seconds"] or 0) + r["rounds_with_proposals"] * (browser["accept_seconds"] or 0)
                + r["rounds"] * (browser["send_seconds"] or 0))
        person = page + GLANCE_SECONDS * r["shown"]
        gain = 100 * (r["test_acc"] - plain[(r["sticker"], r["seed"])])
        out.append({**r, "plain_acc": plain[(r["sticker"], r["seed"])], "points": round(gain, 1),
                    "page_seconds": round(page, 1), "review_seconds": round(person, 1),
                    "points_per_minute": round(gain / (person / 60), 1) if person else None})
    return out


HOW = ("a scripted reviewer in chromium reviews one human-in-the-loop run (first seed, corners): R and one "
       "rectangle on the sticker per queried image, →, Accept all, Send; action medians price the simulated "
       f"reviewer's runs (same flags, --annotator oracle); review_seconds adds {GLANCE_SECONDS} s per proposal "
       "shown (assumed, not measured); points = decorrelated test accuracy over plain, same seed and data")


def run_review(seeds, stickers, epochs: int, budget: int, proposals: int, runs_dir: Path,
               log: Callable[[str], None] = print, jobs: int = 1) -> dict:
    """The browser measurement (first seed, corners), then the runs it prices."""
    browser = review_in_browser(seeds[0], epochs, budget, proposals, log, runs_dir / "browser")
    rows = review_rows(tuple(seeds), tuple(stickers), epochs, budget, proposals, runs_dir / "review", log, jobs)
    return {"browser": browser, "runs": rows, "priced": priced(rows, browser), "glance_seconds": GLANCE_SECONDS}
