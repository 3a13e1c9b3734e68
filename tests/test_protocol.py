"""The run-directory protocol: what the trainer and the dashboard exchange through files."""
from __future__ import annotations

import json
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

    monkeypatch.setattr(protocol.os, "replace", broken_replace)
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
