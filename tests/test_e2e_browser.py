"""End to end in a real headless Chromium: a tiny human-in-the-loop run, the dashboard served by
Streamlit, a rectangle drawn with the mouse on the review canvas, and the trainer finishing with that
rectangle as its mask. Screenshots of every page go to test-artifacts/."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard import launcher, serve
from trainer import protocol

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ZOOM = 14  # a 32-px image is shown at 448 px


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def snapshot(page, name: str) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so grow the window to fit."""
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll("
                           "'[data-testid=stMain], [data-testid=stMainBlockContainer]')).map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(max(height, 900), 3000)})
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def open_page(page, url: str, ready_text: str) -> None:
    page.goto(url)
    page.get_by_text(ready_text).first.wait_for(timeout=60_000)
    time.sleep(1.5)  # charts and images finish drawing


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the end-to-end test drives Debian's chromium; `make browser` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_mark_a_region_in_the_browser_and_the_trainer_uses_it(tmp_path, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    runs_dir = tmp_path / "runs"
    run = launcher.start_run(runs_dir, launcher.RunRequest(
        title="e2e", dataset="decoy-digits", model="hitl_cnn", epochs=2, sampling="high_entropy",
        queries_per_epoch=2, query_start_epoch=1, penalty_weight=10, saliency="saliency", annotator="human",
        extra_args=["--train-fraction", "0.25", "--val-fraction", "0.25", "--device", "cpu"]))
    port = free_port()
    server_log = open(ARTIFACTS / "streamlit.log", "w")
    server = subprocess.Popen(serve.streamlit_command("127.0.0.1", port, runs_dir), stdout=server_log,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        wait_for(lambda: _reachable(port), 60, "the dashboard to listen")
        # opened before the first queue exists: the page's watcher shows it when it arrives
        page.goto(f"{base}/review?run=e2e")
        canvas = page.locator("canvas.upper-canvas").first
        canvas.wait_for(timeout=120_000)
        manifest = protocol.read_manifest(run, 1)
        assert (manifest["queries"][0]["height"], manifest["queries"][0]["width"]) == (32, 32)

        page.get_by_text("Rectangle").first.click()
        page.get_by_text("Drag a rectangle.").wait_for()
        box = page.locator("canvas.upper-canvas").first.bounding_box()
        # image pixels x 4..11, y 5..8: corners a few canvas pixels inside pixel borders
        page.mouse.move(box["x"] + 4 * ZOOM + 4, box["y"] + 5 * ZOOM + 4)
        page.mouse.down()
        page.mouse.move(box["x"] + 8 * ZOOM, box["y"] + 7 * ZOOM, steps=5)
        page.mouse.move(box["x"] + 12 * ZOOM + 4, box["y"] + 9 * ZOOM + 4, steps=5)
        page.mouse.up()
        page.get_by_text("must not use: 32 pixels").wait_for(timeout=20_000)
        time.sleep(1)
        snapshot(page, "review")

        page.get_by_role("button", name="Send answers for epoch 1").click()
        page.get_by_text("Answers for epoch 1 sent").wait_for(timeout=20_000)
        sent = protocol.parse_feedback(protocol.read_json(run.feedback_file(1)), manifest)
        expected = np.zeros((32, 32), bool)
        expected[5:9, 4:12] = True
        assert [a.action for a in sent] == ["mask", "skip"]
        assert np.array_equal(sent[0].forbidden, expected)

        wait_for(lambda: protocol.read_status(run)["state"] == protocol.FINISHED, 120, "the trainer to finish")
        assert protocol.read_metrics(run)[-1]["n_feedback"] == 1
        assert not run.rejected_root.exists()

        open_page(page, f"{base}/?run=e2e", "Finished. Best epoch")
        snapshot(page, "runs")
        open_page(page, f"{base}/metrics?run=e2e", "Confusion matrix of e2e")
        snapshot(page, "metrics")
        open_page(page, f"{base}/learning?run=e2e", f"Image {sent[0].index}")
        snapshot(page, "learning")
        assert not page.locator("[data-testid=stException]").count()
    finally:
        server.terminate()
        server.wait(timeout=20)
        server_log.close()
        if launcher.live_pid(run) is not None:
            launcher.stop_run(run)


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
