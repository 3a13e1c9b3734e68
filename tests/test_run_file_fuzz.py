"""Broken run files never take the dashboard down. Two real run folders, "healthy" and "victim", as the
trainer leaves them (tests/test_dashboard.py's builders); for each kind of run file a generated corpus of
broken variants (truncated, empty, binary, wrong JSON types for each field, format 0/-1/"x"/999, 1e400,
NaN, nested too deep, a folder in its place, a link to /dev/zero or to nothing) is put in place of the
victim's file, and every page that reads that kind renders through AppTest with the victim selected:
no exception, and the healthy run is still listed. The corpus is deterministic; per kind a fixed
sample of the field variants is rendered (FUZZ_ALL=1 renders them all)."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard import run_reader
from trainer import protocol

from test_dashboard import APP, H, W, OPTIONS, make_queue, make_run, rect, square

PAGES = ("runs", "metrics", "review", "learning", "evaluation")
EVALUATION = {"format": 1, "epoch": 2, "split": "test", "images": 8, "results": [
    {"explainer": "saliency", "fractions": [0.0, 0.5, 1.0], "masked_accuracy": [0.9, 0.5, 0.1],
     "deletion": [0.8, 0.4, 0.1], "deletion_auc": 0.4, "wrong_reason": 0.2}]}


def build_run(root: Path, name: str) -> protocol.RunDir:
    """A run waiting on its epoch-2 queue, with answers to epoch 1, tracking, an evaluation and a launch record."""
    run = make_run(root, name, protocol.WAITING, epochs_done=2, waiting_epoch=2)
    make_queue(run, 1)
    protocol.submit_feedback(run, 1, "human", [
        protocol.QueryFeedback("q000", 100, "mask", forbidden=square(0, 4, 0, 4)),
        protocol.QueryFeedback("q001", 101, "mask", relevant=square(0, 16, 0, 32))])
    make_queue(run, 2)
    protocol.atomic_write_text(run.tracking, "epoch,index,masked_share\n2,100,0.5\n2,101,0.25\n")
    for index in (100, 101):
        protocol.atomic_save_npy(run.tracking_map(2, index), np.full((H, W), 0.5, np.float16))
    protocol.write_evaluation(run, {k: v for k, v in EVALUATION.items() if k != "format"})
    protocol.atomic_write_json(run.launch, {"format": 1, "pid": 2 ** 22 + 7, "host": os.uname().nodename,
                                            "argv": ["python", "-m", "trainer"], "started_at": time.time() - 3600})
    return run


# --------------------------------------------------------------------------- the corpus

HUGE, DEEP = "__huge__", "__deep__"
BAD_VALUES = ["x", -1, HUGE, float("nan"), None, True, [], {}, 10 ** 30, DEEP, [["x"]], {"a": [1]}]


def json_bytes(doc) -> bytes:
    text = json.dumps(doc)
    return (text.replace(json.dumps(HUGE), "1e400")
            .replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000).encode())


def field_variants(doc, depth: int = 0):
    """(label, document) with one field (or one element, one level down) replaced by a wrong value."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc[:1])
    for key, value in items:
        for bad in BAD_VALUES:
            changed = dict(doc) if isinstance(doc, dict) else list(doc)
            changed[key] = bad
            yield f"{key}={bad!r}"[:40], changed
        if depth < 2 and isinstance(value, (dict, list)) and value:
            for label, inner in field_variants(value, depth + 1):
                changed = dict(doc) if isinstance(doc, dict) else list(doc)
                changed[key] = inner
                yield f"{key}.{label}", changed
    if isinstance(doc, dict) and depth == 0:
        for key in doc:
            yield f"no {key}", {k: v for k, v in doc.items() if k != key}


def json_variants(valid: bytes):
    doc = json.loads(valid)
    fields = list(field_variants(doc))
    fields += [(f"format {f!r}", {**doc, "format": f}) for f in (0, -1, "x", 999)]
    return [(label, json_bytes(d)) for label, d in fields]


def byte_variants(valid: bytes):
    """What any file can turn into."""
    rng = random.Random(len(valid))
    return [("truncated", valid[: len(valid) // 2]), ("empty", b""), ("0xff", b"\xff" + valid[1:]),
            ("binary", bytes(rng.randrange(256) for _ in range(300))), ("nul", valid[:5] + b"\x00" + valid[5:]),
            ("null", b"null"), ("list", b"[]"), ("text", b'"text"'), ("1e400", b"1e400"), ("NaN", b"NaN"),
            ("deep", b"[" * 100_000 + b"]" * 100_000), ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)]


def csv_variants(valid: bytes):
    header, *lines = valid.decode().splitlines()
    first = lines[0].split(",")
    out = []
    for i in range(len(first)):
        for bad in ("x", "1e400", "nan", "-inf", "-1", "9" * 5000, "", "1.5", '"a,b"'):
            row = list(first)
            row[i] = bad
            out.append((f"cell {i}={bad[:8]}", "\n".join([header, ",".join(row), *lines[1:]]).encode()))
    out += [("header only", header.encode()), ("extra cells", (valid.decode() + "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n").encode()),
            ("short row", (valid.decode() + "3\n").encode()), ("no header", "\n".join(lines).encode()),
            ("huge field", (header + "\n" + "1" * 200_000 + "\n").encode()),
            ("quote", (header + '\n"1,\n').encode()), ("crlf", valid.replace(b"\n", b"\r\n"))]
    return out


def npy_variants(valid: bytes):
    def npy(arr) -> bytes:
        import io
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        return buf.getvalue()

    crafted = valid.replace(b"(32, 32)", b"(99999999, 99999999)")
    return [("wrong shape", npy(np.ones((4, 4), np.float16))), ("3-d", npy(np.ones((H, W, 3), np.float32))),
            ("object", npy(np.array([{"a": 1}] * (H * W), dtype=object).reshape(H, W))),
            ("strings", npy(np.full((H, W), "x"))), ("nan", npy(np.full((H, W), np.nan, np.float32))),
            ("inf", npy(np.full((H, W), np.inf, np.float64))), ("huge header shape", crafted),
            ("complex", npy(np.ones((H, W), np.complex64))), ("bool", npy(np.ones((H, W), bool)))]


# kind: (path in the run folder, generator of (label, bytes), pages that read it)
KINDS = {
    "status": ("status.json", json_variants, PAGES),
    "config": ("config.json", json_variants, ("runs", "review", "metrics")),
    "launch": ("launch.json", json_variants, ("runs", "review")),
    "metrics": ("metrics.csv", csv_variants, ("runs", "metrics", "learning")),
    "confusion": ("confusion.json", json_variants, ("runs", "metrics")),
    "evaluation": ("evaluation.json", json_variants, ("runs", "evaluation")),
    "manifest": ("queue/epoch_002/manifest.json", json_variants, ("runs", "review", "learning")),
    "answered manifest": ("queue/epoch_001/manifest.json", json_variants, ("review", "learning")),
    "mask file": ("feedback/epoch_001.json", json_variants, ("review", "learning")),
    "tracking": ("tracking.csv", csv_variants, ("learning",)),
    "tracking map": ("tracking/epoch_002/100.npy", npy_variants, ("learning",)),
}
FIELD_SAMPLE = int(os.environ.get("FUZZ_SAMPLE", "6"))


def corpus(kind: str, valid: bytes) -> list[tuple[str, bytes | str]]:
    """Every kind gets the byte variants and the three things in place of a file; of its own variants
    (fields, cells) a fixed sample, the format numbers always included."""
    _, generate, _ = KINDS[kind]
    own = generate(valid)
    if not os.environ.get("FUZZ_ALL"):
        always = [v for v in own if v[0].startswith("format ")]
        rest = [v for v in own if not v[0].startswith("format ")]
        own = always + random.Random(kind).sample(rest, min(FIELD_SAMPLE, len(rest)))
    return byte_variants(valid) + own + [("folder", "folder"), ("link to /dev/zero", "/dev/zero"),
                                         ("dangling link", "missing")]


def put(path: Path, variant: bytes | str) -> None:
    """Whatever is at ``path`` replaced by the variant: bytes, a folder, or a link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant == "folder":
        (path / "inside").mkdir(parents=True)
    elif variant == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif variant == "missing":
        path.symlink_to(path.parent / "no-such-file")
    else:
        path.write_bytes(variant)


# --------------------------------------------------------------------------- the pages

@pytest.fixture
def dashboard(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard import launcher
    from dashboard.views import canvas

    monkeypatch.setenv("HITL_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(launcher, "trainer_options", lambda: OPTIONS)
    monkeypatch.setattr(canvas, "draw_marks", lambda data, key, on_marks, on_command:
                        {"docs": {data["doc"]: {"ops": [rect(4, 8, 20, 16)], "revision": 1}}})
    build_run(tmp_path, "healthy")
    victim = build_run(tmp_path, "victim")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["run"] = "victim"
    at.run()
    return at, victim


def render(at, pages: tuple[str, ...], what: str) -> None:
    for page in pages:
        at.switch_page(f"views/{page}.py")
        at.query_params["run"] = "victim"
        at.run()
        assert not at.exception, f"{what}, {page} page: {at.exception}"
        assert "healthy" in at.selectbox(key="run").options, f"{what}, {page} page: the healthy run is gone"
        if page == "runs":
            table = at.dataframe[0].value
            assert "healthy" in table.Run.tolist(), f"{what}: the healthy run left the runs table"
            assert dict(zip(table.Run, table.State))["healthy"] != "unreadable"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_page_survives_a_broken_run_file(dashboard, kind):
    at, victim = dashboard
    relative, _, pages = KINDS[kind]
    path = victim.path / relative
    valid = path.read_bytes()
    started = time.monotonic()
    variants = corpus(kind, valid)
    for label, variant in variants:
        put(path, variant)
        render(at, pages, f"{kind} {label}")
    put(path, valid)
    render(at, pages, f"{kind} restored")
    print(f"\n{kind}: {len(variants)} variants on {len(pages)} pages in {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------- the one line

@pytest.mark.parametrize("relative, content, reason", [
    ("status.json", b'{"format": 0, "state": "training"}', "format 0 is not a format number"),
    ("config.json", b'{"format": 0}', "format 0 is not a format number"),
    ("status.json", b'{"format": 1, "state": "training", "epoch": "x"}', "epoch is text, not a whole number"),
    ("metrics.csv", b"epoch,val_loss\n1,\xff\n", "not UTF-8 text"),
    ("confusion.json", b'{"format": 1, "epoch": 1, "matrix": [[1, 2], [3]]}', "matrix is not square"),
    ("evaluation.json", b'{"format": 1, "results": [{"explainer": "x"}]}', "result #0: no fractions"),
    ("launch.json", b'{"format": 1, "pid": "x"}', "pid is text"),
    ("status.json", "folder", "is a folder"),
    ("metrics.csv", "/dev/zero", "is a device"),
])
def test_an_unreadable_file_marks_its_run_with_one_line(tmp_path, relative, content, reason):
    healthy, victim = build_run(tmp_path, "healthy"), build_run(tmp_path, "victim")
    put(victim.path / relative, content)
    by_name = {s.name: s for s in run_reader.list_summaries(tmp_path)}
    line = by_name["victim"].unreadable
    assert line.startswith(f"unreadable: {relative}: ") and reason in line and "\n" not in line, line
    assert by_name["victim"].state_label == "unreadable"
    assert by_name["healthy"].unreadable is None and by_name["healthy"].state == protocol.WAITING
    if relative == "status.json":
        assert by_name["victim"].state == run_reader.UNREADABLE


def test_page_readers_name_the_file_they_cannot_read(tmp_path):
    run = build_run(tmp_path, "victim")
    put(run.queue_dir(2) / protocol.MANIFEST_FILE, json_bytes({"format": 1, "epoch": 2, "queries": [
        {"query_id": "../../etc/passwd", "index": 1, "height": 32, "width": 32}]}))
    assert "unreadable: queue/epoch_002/manifest.json: query #0: query_id" in run_reader.load_queue(run, 2).error
    put(run.feedback_file(1), b"\xff")
    assert "unreadable: feedback/epoch_001.json: not UTF-8 text (byte 0xff at offset 0)" in run_reader.answer_problems(run)
    put(run.tracking, "/dev/zero")
    problems: list[str] = []
    assert run_reader.read_tracking(run, problems).empty and problems == ["unreadable: tracking.csv: is a device, not a file"]
    header = b"{'descr': '<f2', 'fortran_order': False, 'shape': (99999999, 99999999), }"
    put(run.tracking_map(2, 100), b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little") + header + b"\n")
    assert run_reader.tracked_saliency(run, 2, 100, (H, W)) is None
