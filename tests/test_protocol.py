"""The run-directory protocol: what the trainer and the dashboard exchange through files."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from trainer import protocol


def make_manifest(run: protocol.RunDir, epoch: int = 1, size: int = 8) -> dict:
    queries = [{"query_id": f"q{i:03d}", "index": 10 + i, "label": i % 2, "pred": 0, "probs": [0.5, 0.5],
                "entropy": 0.69, "height": size, "width": size} for i in range(3)]
    protocol.write_manifest(run, epoch, {"class_names": ["a", "b"], "saliency": "deeplift", "queries": queries})
    return protocol.read_manifest(run, epoch)


def test_config_status_metrics_round_trip(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    protocol.write_config(run, {"title": "r", "epochs": 3})
    assert protocol.read_config(run) == {"format": protocol.FORMAT, "title": "r", "epochs": 3}
    protocol.write_status(run, protocol.WAITING, epoch=2, waiting_epoch=2)
    status = protocol.read_status(run)
    assert status["state"] == protocol.WAITING and status["epoch"] == 2 and status["pid"] == os.getpid()
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_acc": 0.5 + e / 10} for e in (1, 2)]
    protocol.write_metrics(run, rows)
    back = protocol.read_metrics(run)
    assert [r["epoch"] for r in back] == [1, 2]
    assert back[1]["train_loss"] == pytest.approx(0.5) and back[1]["val_acc"] == pytest.approx(0.7)


def test_a_dead_trainer_reads_as_stale(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    protocol.write_status(run, protocol.TRAINING, epoch=1, pid=2 ** 22 + 12345, host=os.uname().nodename)
    assert protocol.read_status(run)["state"] == protocol.STALE


@pytest.mark.parametrize("shape", [(8, 8), (5, 13)])
def test_mask_encoding_round_trips(shape):
    rng = np.random.default_rng(0)
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        encoded = json.loads(json.dumps(protocol.encode_mask(mask)))
        assert np.array_equal(protocol.decode_mask(encoded, *shape), mask)


def test_feedback_round_trip_and_first_submit_wins(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    manifest = make_manifest(run)
    forbidden = np.zeros((8, 8), bool)
    forbidden[1:4, 2:6] = True
    answers = [protocol.QueryFeedback("q000", 10, protocol.ACTION_MASK, forbidden=forbidden),
               protocol.QueryFeedback("q001", 11, protocol.ACTION_WRONG_LABEL),
               protocol.QueryFeedback("q002", 12, protocol.ACTION_SKIP)]
    assert protocol.pending_epoch(run) == 1
    assert protocol.submit_feedback(run, 1, "test", answers)
    assert protocol.pending_epoch(run) is None
    assert not protocol.submit_feedback(run, 1, "second tab", answers[:1])  # refused, nothing overwritten
    doc = protocol.read_json(run.feedback_file(1))
    assert doc["annotator"] == "test"
    parsed = protocol.parse_feedback(doc, manifest)
    assert [(a.query_id, a.index, a.action) for a in parsed] == [(a.query_id, a.index, a.action) for a in answers]
    assert np.array_equal(parsed[0].forbidden, forbidden)


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    protocol.atomic_write_json(path, {"state": "training"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        protocol.atomic_write_json(path, {"state": "finished"})
    assert protocol.read_json(path) == {"state": "training"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def _doc(**query):
    q = {"query_id": "q000", "index": 10, "action": "mask",
         "forbidden": {"height": 8, "width": 8, "boxes": [[0, 0, 4, 4]]}}
    q.update(query)
    return {"format": 1, "epoch": 1, "queries": [q]}


@pytest.mark.parametrize("doc, reason", [
    ([1, 2], "JSON object"),
    ({**_doc(), "epoch": 2}, "does not match the queue's epoch"),
    ({**_doc(), "format": 99}, "newer than this version"),
    (_doc(query_id="q999"), "unknown query_id"),
    (_doc(index=11), "does not match the queue"),
    (_doc(action="maybe"), "unknown action"),
    (_doc(forbidden={"height": 16, "width": 16, "boxes": [[0, 0, 4, 4]]}), "does not match the image size"),
    (_doc(forbidden={"height": 8, "width": 8, "rle": [3, 2]}), "covers 5 pixels"),
    (_doc(forbidden={"height": 8, "width": 8, "rle": [3, -2]}), "non-negative"),
    (_doc(forbidden={"height": 8, "width": 8, "boxes": [[0, 0, 40, 4]]}), "outside"),
    ({"format": 1, "epoch": 1, "queries": [_doc()["queries"][0]] * 2}, "answered twice"),
])
def test_bad_mask_files_are_refused_with_the_reason(tmp_path, doc, reason):
    manifest = make_manifest(protocol.RunDir(tmp_path / "r"))
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.parse_feedback(doc, manifest)


def test_confusion_tracking_and_launch_round_trip(tmp_path):
    run = protocol.RunDir(tmp_path / "r")
    assert protocol.read_confusion(run) is None and protocol.read_tracking(run) == []
    protocol.write_confusion(run, 2, ["a", "b"], [[3, 1], [0, 4]])
    assert protocol.read_confusion(run) == {"epoch": 2, "class_names": ["a", "b"], "matrix": [[3, 1], [0, 4]]}
    saliency = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    protocol.write_tracking(run, 1, {10: 0.5, 11: 0.25}, {10: saliency, 11: saliency})
    protocol.write_tracking(run, 2, {10: 0.125}, {10: saliency})
    protocol.write_tracking(run, 2, {10: 0.0625}, {10: -saliency})  # a resumed run writes epoch 2 again
    assert protocol.read_tracking(run) == [(1, 10, 0.5), (1, 11, 0.25), (2, 10, 0.0625)]
    back = protocol.read_saliency(run.tracking_map(2, 10), (8, 8))
    assert back.dtype == np.float32 and np.allclose(back, -saliency, atol=1e-3)
    assert protocol.read_saliency(run.tracking_map(2, 10), (4, 4)) is None
    with open(run.tracking, "a") as f:
        f.write("3,10")  # a half-written last line is skipped
    assert len(protocol.read_tracking(run)) == 3
    protocol.write_launch(run, 1234, ["python", "-m", "trainer"])
    launch = protocol.read_launch(run)
    assert launch["pid"] == 1234 and run.is_run() and not run.has_config()
    protocol.mark_stop_requested(run, launch)
    assert protocol.read_launch(run)["stop_requested_at"] >= launch["started_at"]


def test_query_entries_round_trip_and_name_what_is_missing(tmp_path):
    entry = protocol.QueryEntry("q000", 7, 1, 0, [0.25, 0.75], 0.56, 8, 8, already_annotated=True)
    assert protocol.QueryEntry.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    broken = entry.to_json()
    del broken["height"]
    with pytest.raises(protocol.ProtocolError, match="no height"):
        protocol.QueryEntry.from_json(broken)


def test_outside_a_relevant_region_counts_as_forbidden():
    forbidden = np.zeros((4, 4), bool)
    forbidden[0, 0] = True
    relevant = np.zeros((4, 4), bool)
    relevant[2:, 2:] = True
    answer = protocol.QueryFeedback("q", 1, protocol.ACTION_MASK, forbidden=forbidden, relevant=relevant)
    assert np.array_equal(answer.must_not_use(), ~relevant)
    assert np.array_equal(protocol.QueryFeedback("q", 1, protocol.ACTION_MASK, forbidden=forbidden).must_not_use(),
                          forbidden)
    assert protocol.QueryFeedback("q", 1, protocol.ACTION_SKIP, forbidden=forbidden).must_not_use() is None
    assert protocol.QueryFeedback("q", 1, protocol.ACTION_MASK, forbidden=np.zeros((4, 4), bool)).must_not_use() is None


def test_run_files_are_as_readable_as_the_umask_allows(tmp_path):
    """A trainer and a dashboard running as two users of one lab machine can share a run (umask 022: 0644)."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "status.json"
    protocol.atomic_write_json(path, {"state": "training"})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert protocol.submit_feedback(protocol.RunDir(tmp_path), 1, "test", [])
    assert protocol.RunDir(tmp_path).feedback_file(1).stat().st_mode & 0o777 == 0o666 & ~umask


def test_undefined_numbers_are_written_as_null_and_old_files_with_nan_still_read(tmp_path):
    """A run without ground-truth masks has no wrong-reason share, and a run stopped before its first epoch no
    best loss: the status stays strict JSON that every reader (the dashboard) reads; runs of earlier versions
    wrote NaN and still open."""
    run = protocol.RunDir(tmp_path)
    protocol.write_status(run, protocol.FINISHED, result={"test_wrong_reason": float("nan"), "best_val_loss": float("inf"),
                                                          "test_acc": 0.5})
    assert "NaN" not in run.status.read_text() and "Infinity" not in run.status.read_text()
    assert protocol.read_status(run)["result"] == {"test_wrong_reason": None, "best_val_loss": None, "test_acc": 0.5}
    run.status.write_text('{"format": 1, "state": "finished", "result": {"test_wrong_reason": NaN}}')
    assert math.isnan(protocol.read_status(run)["result"]["test_wrong_reason"])
