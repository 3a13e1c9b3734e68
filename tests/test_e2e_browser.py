"""End to end in a real headless Chromium: a tiny human-in-the-loop run asking about 10 images, the
dashboard served by Streamlit, marks drawn with the mouse and the keyboard on the review canvas (fast,
as a hurried reviewer draws), a reload in the middle, one of the trainer's proposals corrected on the
canvas and all of them accepted, and the trainer finishing with exactly those marks. Screenshots of
every page go to test-artifacts/ (the review page's also at 1280×800 and 900×900, the ones in
docs/screenshots/; the open proposal and the proposals grid too)."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from bench.review import CANVAS, CHROMIUM, CHROMIUM_ARGS, free_port, listening, wait_for
from dashboard import answers, launcher, serve
from trainer import protocol

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SIDE = 32  # decoy-digits images are 32×32


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


def square(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[y0:y1, x0:x1] = True
    return mask


class Canvas:
    """The review canvas of one image, addressed in image pixels. While the page reruns, the previous
    image's canvas may still be in the page for a moment: everything here names its image."""

    def __init__(self, page, query_id: str):
        self.page = page
        self.element = page.locator(f'{CANVAS}[data-doc$="|{query_id}"]')

    def box(self) -> dict:
        return self.element.bounding_box()

    def tool(self, tool: str) -> None:
        """Pick a tool (grid, rect, brush, eraser) with the canvas's own toolbar."""
        self.page.locator(f'.mark-canvas:has({CANVAS}[data-doc="{self.element_doc()}"]) '
                          f'button[data-tool={tool}]').click()

    def element_doc(self) -> str:
        return self.element.get_attribute("data-doc")

    def at(self, x: float, y: float) -> tuple[float, float]:
        box = self.box()
        return box["x"] + x * box["width"] / SIDE, box["y"] + y * box["height"] / SIDE

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 4) -> None:
        mouse = self.page.mouse
        mouse.move(*self.at(*start))
        mouse.down()
        mouse.move(*self.at(*end), steps=steps)
        mouse.up()

    def click(self, x: float, y: float) -> None:
        self.page.mouse.click(*self.at(x, y))

    def pixel(self, x: int, y: int) -> list[int]:
        """The colour the canvas shows at the centre of image pixel (x, y)."""
        return self.element.evaluate(
            f"c => Array.from(c.getContext('2d').getImageData(Math.floor(c.width * {x + 0.5} / {SIDE}), "
            f"Math.floor(c.height * {y + 0.5} / {SIDE}), 1, 1).data.slice(0, 3))")


def draft_answer(run: protocol.RunDir, query_id: str) -> dict:
    return ((answers.read_draft(run, 1) or {}).get("answers") or {}).get(query_id) or {}


def showing(page, query_id: str) -> Canvas:
    canvas = Canvas(page, query_id)
    canvas.element.wait_for(timeout=20_000)
    return canvas


def marked_pixels(page, count: int) -> None:
    page.get_by_text(f"must not use: {count} pixels").wait_for(timeout=20_000)


def within(box: dict, width: int, height: int) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the end-to-end test drives Debian's chromium; `make browser` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_review_keeps_every_mark_and_the_trainer_uses_them(tmp_path, chromium):
    ARTIFACTS.mkdir(exist_ok=True)
    runs_dir = tmp_path / "runs"
    run = launcher.start_run(runs_dir, launcher.RunRequest(
        title="e2e", dataset="decoy-digits", model="hitl_cnn", epochs=2, sampling="high_entropy",
        queries_per_epoch=10, query_start_epoch=1, penalty_weight=10, saliency="saliency", annotator="human",
        proposals=4,  # from three prior marks: the first round has proposals to confirm
        extra_args=["--train-fraction", "0.25", "--val-fraction", "0.25", "--device", "cpu", "--prior-masks", "3"]))
    port = free_port()
    server_log = open(ARTIFACTS / "streamlit.log", "w")
    server = subprocess.Popen(serve.streamlit_command("127.0.0.1", port, runs_dir), stdout=server_log,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    requests: list[str] = []
    try:
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        page.on("request", lambda r: requests.append(r.url))
        console_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and console_errors.append(f"{page.url}: {m.text} {m.location}"))
        page.on("pageerror", lambda e: console_errors.append(f"{page.url}: {e}"))
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.type), d.accept()))
        wait_for(lambda: listening(port), 60, "the dashboard to listen")
        # opened before the first queue exists: the page's watcher shows it when it arrives
        page.goto(f"{base}/review?run=e2e")
        page.locator(CANVAS).first.wait_for(timeout=120_000)
        manifest = protocol.read_manifest(run, 1)
        ids = [q["query_id"] for q in manifest["queries"]]
        assert len(ids) == 10 and (manifest["queries"][0]["height"], manifest["queries"][0]["width"]) == (SIDE, SIDE)
        print_first_render(chromium, f"{base}/review?run=e2e")

        # 6: at 1280×800 the image and its tools are visible without scrolling
        canvas = showing(page, ids[0])
        for element in (canvas.element, page.get_by_role("button", name="Squares", exact=True),
                        page.get_by_role("button", name="Undo Z", exact=True), page.get_by_role("button", name="Next", exact=True)):
            assert within(element.bounding_box(), 1280, 800), element
        assert canvas.box()["height"] >= 300

        # image 1: a rectangle (R), then a click into the top-right corner, where the old library's
        # toolbar used to catch clicks
        page.keyboard.press("r")
        canvas.drag((4.3, 5.3), (12.3, 9.3))
        marked_pixels(page, 32)
        # 3: holding O shows the image as it is, without saliency or marks, pixel for pixel
        image = np.asarray(Image.open(protocol.query_image_path(run, 1, ids[0])).convert("RGB"))
        page.keyboard.down("o")
        time.sleep(0.3)
        assert canvas.pixel(8, 6) == image[6, 8].tolist()
        page.keyboard.up("o")
        time.sleep(0.3)
        assert canvas.pixel(8, 6) != image[6, 8].tolist()  # the mark is back on top
        page.keyboard.press("g")
        canvas.click(31.5, 0.5)
        marked_pixels(page, 48)

        # image 2 (→): five brush strokes 0.1 s apart
        page.keyboard.press("ArrowRight")
        canvas = showing(page, ids[1])
        canvas.tool("brush")  # the toolbar works as well as the keys
        stroke_rows = [2.5, 8.5, 14.5, 20.5, 26.5]
        for y in stroke_rows:
            canvas.drag((3.5, y), (12.5, y))
            time.sleep(0.1)
        wait_for(lambda: len(draft_answer(run, ids[1]).get("ops", [])) == 5, 20, "five strokes in the draft")

        # image 3: four grid clicks 0.2 s apart
        page.keyboard.press("ArrowRight")
        canvas = showing(page, ids[2])
        canvas.tool("grid")
        for x, y in ((6, 6), (26, 6), (6, 26), (26, 26)):
            canvas.click(x, y)
            time.sleep(0.2)
        wait_for(lambda: len(draft_answer(run, ids[2]).get("ops", [])) == 4, 20, "four clicks in the draft")

        # image 4: S skips it and opens the next unanswered one, where W flags the label
        page.keyboard.press("ArrowRight")
        showing(page, ids[3])
        page.keyboard.press("s")
        wait_for(lambda: draft_answer(run, ids[3]).get("action") == "skip", 20, "the skip in the draft")
        showing(page, ids[4])
        page.keyboard.press("w")
        wait_for(lambda: draft_answer(run, ids[4]).get("action") == "wrong_label", 20, "the flag in the draft")

        # image 6 opened by itself: a rectangle, then a reload; the page asks first, the draft keeps it
        canvas = showing(page, ids[5])
        page.keyboard.press("r")
        canvas.drag((20.3, 20.3), (24.3, 24.3))
        wait_for(lambda: draft_answer(run, ids[5]).get("ops"), 20, "image 6's rectangle in the draft")
        page.reload()
        canvas = showing(page, ids[0])
        assert dialogs == ["beforeunload"]
        marked_pixels(page, 48)  # image 1 again, its marks restored from the draft
        assert not run.feedback_file(1).exists()

        # 6: at 900 px wide everything is reachable: the image's bottom-right square and the send button
        page.set_viewport_size({"width": 900, "height": 900})
        time.sleep(1.5)
        page.screenshot(path=str(ARTIFACTS / "review-900x900.png"))
        canvas.element.scroll_into_view_if_needed()
        box = canvas.box()
        assert box["x"] + box["width"] <= 900 and box["width"] >= 250
        page.keyboard.press("g")
        canvas.click(31, 31)
        marked_pixels(page, 64)
        send = page.get_by_role("button", name="Send answers for epoch 1")
        send.scroll_into_view_if_needed()
        assert within(send.bounding_box(), 900, 900)

        last_page = page.locator("[class*=st-key-page-1] button").last
        last_page.scroll_into_view_if_needed()
        assert within(last_page.bounding_box(), 900, 900)

        page.set_viewport_size({"width": 1280, "height": 800})
        page.evaluate("document.querySelector('[data-testid=stMain]').scrollTo(0, 0)")
        time.sleep(1.5)
        page.screenshot(path=str(ARTIFACTS / "review-1280x800.png"))
        snapshot(page, "review")

        # after a click on the picker the arrows still change the image (not the picker's focus ring)
        page.locator("[class*=st-key-page-1] button").nth(6).click()
        showing(page, ids[6])
        page.keyboard.press("ArrowRight")
        showing(page, ids[7])
        page.keyboard.press("ArrowLeft")
        canvas = showing(page, ids[6])
        fast_marked = fast_hands(page, run, ids)

        # the keys: ? lists them, Escape closes the list; redo brings back what undo took; [ ] brush size
        page.keyboard.press("?")
        page.locator(".keyhelp").wait_for(state="visible", timeout=5_000)
        page.keyboard.press("Escape")
        page.locator(".keyhelp").wait_for(state="hidden", timeout=5_000)
        before = len(draft_answer(run, ids[6])["ops"])
        page.keyboard.press("z")
        wait_for(lambda: len(draft_answer(run, ids[6])["ops"]) == before - 1, 20, "the undo in the draft")
        page.keyboard.press("Control+Shift+Z")
        wait_for(lambda: len(draft_answer(run, ids[6])["ops"]) == before, 20, "the redo in the draft")
        size = page.locator("output.brush-size")
        start = int(size.text_content())
        page.keyboard.press("]")
        assert int(size.text_content()) == start + 1
        page.keyboard.press("[")
        assert int(size.text_content()) == start

        corrected = correct_a_proposal(page, run, ids)

        page.keyboard.press("Control+Enter")
        page.get_by_text("Answers for epoch 1 sent").wait_for(timeout=20_000)
        everything = protocol.load_feedback(run, 1, manifest)
        sent = [a for a in everything if a.source == "drawn"]
        # images 7 to 10 carry a mark where a fast rectangle landed on them (under load, → may not have
        # shown image 10 yet when the mouse went down: that rectangle is image 9's, and 10 goes as skipped)
        assert [a.action for a in sent] == ["mask"] * 3 + ["skip", "wrong_label", "mask"] + [
            "mask" if qid in fast_marked else "skip" for qid in ids[6:]]
        proposed = {a.query_id: a for a in everything if a.source == "proposed"}
        assert sorted(proposed) == ["p000", "p001", "p002", "p003"]
        assert all(a.action == "mask" for a in proposed.values())  # Accept all
        assert np.array_equal(proposed["p000"].forbidden, corrected)
        for pid in ("p001", "p002", "p003"):  # unopened: as the trainer proposed them
            assert np.array_equal(proposed[pid].forbidden, protocol.read_proposal_mask(run, 1, pid))
        assert np.array_equal(sent[0].forbidden, square(5, 9, 4, 12) | square(0, 4, 28, 32) | square(28, 32, 28, 32))
        strokes = sent[1].forbidden
        for y in stroke_rows:  # every stroke arrived, each where it was drawn
            assert strokes[int(y), 4:12].all(), f"the stroke along row {int(y)} is missing"
        assert np.array_equal(strokes.any(axis=1), np.isin(np.arange(SIDE), [r + d for r in (2, 8, 14, 20, 26)
                                                                             for d in (-1, 0, 1)]))
        assert np.array_equal(sent[2].forbidden, square(4, 8, 4, 8) | square(4, 8, 24, 28) | square(24, 28, 4, 8)
                              | square(24, 28, 24, 28))
        assert np.array_equal(sent[5].forbidden, square(20, 24, 20, 24))
        assert not answers.draft_file(run, 1).exists()

        wait_for(lambda: protocol.read_status(run)["state"] == protocol.FINISHED, 180, "the trainer to finish")
        metrics = protocol.read_metrics(run)
        assert metrics[0]["n_feedback"] == 3  # the prior marks of images 0, 1 and 2
        marked = {0, 1, 2} | {a.index for a in everything if a.action == "mask"}
        assert metrics[-1]["n_feedback"] == len(marked)
        assert not run.rejected_root.exists()

        open_page(page, f"{base}/?run=e2e", "Finished. Best epoch")
        snapshot(page, "runs")
        open_page(page, f"{base}/metrics?run=e2e", "Confusion matrix of e2e")
        snapshot(page, "metrics")
        open_page(page, f"{base}/learning?run=e2e", "Marked images")
        # the first row's image: one marked here, or one of the prior marks, which has no picture in the run folder
        shown = page.get_by_role("heading", name=re.compile(r"^Image \d+$")).or_(
            page.get_by_text(re.compile(r"^Image \d+ has no (marks|picture) in this run.s folder"))).first
        shown.wait_for(timeout=60_000)
        index = int(re.search(r"[Ii]mage (\d+)", shown.text_content()).group(1))
        assert index in marked and (shown.text_content().startswith("Image") or index in (0, 1, 2)), index
        snapshot(page, "learning")
        assert not page.locator("[data-testid=stException]").count()
        open_page(page, f"{base}/evaluation?run=e2e", "Evaluation")
        open_page(page, f"{base}/review?run=e2e", "Earlier answers")

        # 27: no page load, direct (typed or bookmarked) or not, logs an error in the browser's console
        assert not console_errors, "errors in the browser's console:\n" + "\n".join(console_errors[:10])

        # 11: nothing on any page came from anywhere but this machine
        outside = {u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
                   and urlparse(u).hostname not in ("127.0.0.1", "localhost")}
        assert not outside, f"the page fetched from the internet: {sorted(outside)[:5]}"
    finally:
        server.terminate()
        server.wait(timeout=20)
        server_log.close()
        if launcher.live_pid(run) is not None:
            launcher.stop_run(run)


def correct_a_proposal(page, run: protocol.RunDir, ids: list[str]) -> np.ndarray:
    """Issue 27: the grid of the trainer's proposals; Reject all, then Edit opens proposal p000 on the
    canvas with its proposed mask as marks; one eraser stroke across it and a rectangle it missed;
    back to the questions (p000 is now ticked), Accept all. Returns the corrected mask the draft holds."""
    grid = page.locator(".st-key-proposals")
    grid.scroll_into_view_if_needed()
    page.get_by_text("more images that seem to carry what you marked").wait_for(timeout=20_000)
    tick = lambda pid: page.locator(f".st-key-proposal-e2e-1-{pid} input[type=checkbox]")  # noqa: E731
    page.get_by_role("button", name="Reject all").click()
    wait_for(lambda: not tick("p000").is_checked(), 20, "Reject all")
    proposed = protocol.read_proposal_mask(run, 1, "p000")
    page.locator(".st-key-proposal-edit-1-p000 button").first.click()  # (a second copy holds its width)
    canvas = showing(page, "proposal:p000")
    page.get_by_text("Proposal #").first.wait_for(timeout=20_000)
    assert within(canvas.box(), page.viewport_size["width"], page.viewport_size["height"])  # scrolled up to it
    rows, cols = np.nonzero(proposed)
    row, col = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    image = protocol.read_proposal_image(run, 1, "p000")
    assert canvas.pixel(col, row) != image[row, col].tolist()  # the proposed mark is on the canvas
    time.sleep(0.3)
    page.screenshot(path=str(ARTIFACTS / "review-proposal.png"))
    canvas.tool("eraser")
    side = proposed.shape[1]  # across the mark, from within the canvas (a mark can reach its edge)
    canvas.drag((max(cols.min() - 0.5, 0.2), row + 0.5), (min(cols.max() + 1.5, side - 0.2), row + 0.5))
    canvas.tool("rect")
    added = next((a, a + 4) for a in (14, 2, 26) if not proposed[a:a + 4, a:a + 4].any())
    canvas.drag((added[0] + 0.3, added[0] + 0.3), (added[1] + 0.3, added[1] + 0.3))
    drafted = lambda: len(draft_answer(run, "proposal:p000").get("ops", [])) == 3  # noqa: E731
    wait_for(drafted, 20, "the corrected proposal in the draft")
    page.get_by_role("button", name="Back to the questions").click()
    showing(page, ids[6])
    assert tick("p000").is_checked() and not tick("p001").is_checked()  # corrected: accepted
    grid.get_by_text("corrected").wait_for(timeout=20_000)
    page.get_by_role("button", name="Accept all").click()
    wait_for(lambda: all(tick(p).is_checked() for p in ("p001", "p002", "p003")), 20, "Accept all")
    grid.scroll_into_view_if_needed()
    grid.screenshot(path=str(ARTIFACTS / "proposals-grid.png"))
    draft = draft_answer(run, "proposal:p000")
    entry = next(e for e in protocol.read_proposals(run, 1)["entries"] if e.proposal_id == "p000")
    corrected = answers.Answer.from_draft(entry, draft).marks.forbidden
    assert not corrected[row, cols.min():cols.max() + 1].any()  # erased
    assert corrected[added[0]:added[1], added[0]:added[1]].all()  # added
    assert (corrected & ~proposed).sum() == 16 and (proposed & ~corrected).any()
    return corrected


def fast_hands(page, run: protocol.RunDir, ids: list[str]) -> set[str]:
    """Issue 27: a rectangle drawn 0.05 s after pressing → (or ←), six times over images 7 to 10. Each
    lands on the image that was on the screen when the mouse went down (the page may still show the
    previous image for a moment), and only there; one drawn while zoomed in lands in image pixels.
    The images that got a rectangle."""
    page.evaluate("""window.__downs = [];
        window.addEventListener('pointerdown', e => {
          const c = e.composedPath()[0];
          if (c.tagName === 'CANVAS') window.__downs.push(c.dataset.doc.split('|').pop());
        }, true)""")
    page.keyboard.press("r")
    canvas = page.locator(CANVAS).first

    def wait_for_the_canvas_to_settle() -> None:
        """Until the page stops moving the canvas (at most 2 s): on a loaded machine the page still lays
        out after the tool key, and a person aims at where the canvas is, so the test does too."""
        box = canvas.bounding_box()
        for _ in range(40):
            time.sleep(0.05)
            again = canvas.bounding_box()
            if again == box:
                return
            box = again

    def rect(k: int, zoomed: bool = False) -> None:
        # rectangle k covers rows 2k+1..2k+2, columns 1..3 (zoomed: 14..18 at the same rows)
        box = canvas.bounding_box()
        x0, x1 = (14.3, 18.3) if zoomed else (1.3, 3.3)
        at = lambda x, y: (box["x"] + x * box["width"] / SIDE, box["y"] + y * box["height"] / SIDE)
        page.mouse.move(*at(x0, 2 * k + 1.3))
        page.mouse.down()
        page.mouse.move(*at(x1, 2 * k + 3.3), steps=2)
        page.mouse.up()

    wait_for_the_canvas_to_settle()
    rect(0)
    keys = ["ArrowRight"] * 3 + ["ArrowLeft"] * 3
    for k, key in enumerate(keys, start=1):
        page.keyboard.press(key)
        time.sleep(0.05)
        rect(k)
        time.sleep(0.6)  # a reviewer's pace between images; the race is the 0.05 s above
    showing(page, ids[6])
    page.keyboard.press("+")  # zoomed in 1.5× about the centre: image pixels 5..27 on the screen
    time.sleep(0.3)
    rect(8, zoomed=True)
    page.keyboard.press("0")
    downs = page.evaluate("window.__downs")
    assert len(downs) == 8 and downs[-1] == ids[6], downs
    positions = [(2 * k + 1, 1) for k in range(7)] + [(17, 14)]  # (top row, left column) of each rectangle
    expected = dict(zip(positions, downs))

    def drafted() -> dict:  # where each rectangle on images 7 to 10 is: (top row, left column) -> images
        found: dict = {}
        for qid in ids[6:]:
            for op in draft_answer(run, qid).get("ops", []):
                if op.get("kind") == "rect":
                    where = (round(min(op["y0"], op["y1"]) - 0.3), round(min(op["x0"], op["x1"]) - 0.3))
                    found.setdefault(where, []).append(qid)
        return found

    wait_for(lambda: len(drafted()) >= len(expected), 20, "every fast mark in a draft")
    found = drafted()
    for where, doc in expected.items():
        assert found.get(where) == [doc], f"the mark at {where}, drawn on {doc}, is in {found.get(where)}"
    for (y, x), doc in expected.items():  # and each mark covers the pixels it was drawn over
        marks = answers.Answer.from_draft(_query(run, doc), draft_answer(run, doc)).marks.forbidden
        assert marks[y:y + 2, x:x + 2].all(), (y, x, doc)
    return set(expected.values())


def _query(run: protocol.RunDir, query_id: str):
    from dashboard import run_reader

    return next(q for q in run_reader.load_queue(run, 1).queries if q.query_id == query_id)


def print_first_render(chromium, url: str) -> None:
    """Issue 16's target is at most 2 s on this machine for 10 queries; measured and printed, not asserted
    (a shared CI machine's timing would make the test flaky)."""
    fresh = chromium.new_page(viewport={"width": 1280, "height": 800})
    start = time.perf_counter()
    fresh.goto(url)
    fresh.get_by_text("Run", exact=True).first.wait_for(timeout=60_000)
    app_shown = time.perf_counter() - start
    fresh.get_by_text("Keys:").first.wait_for(timeout=60_000)
    fresh.get_by_text("Class probabilities").first.wait_for(timeout=60_000)
    print(f"\nfirst render of the Review page with 10 queries in a fresh tab: {time.perf_counter() - start:.2f} s "
          f"(Streamlit's own page frame after {app_shown:.2f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")
    fresh.close()
