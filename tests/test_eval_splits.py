"""Held-out splits of a csv data set beyond train/val, reported by name when a run ends, and the way
file-backed splits become batches (in memory when they fit, persistent workers otherwise), which must
not change a run's results."""
from __future__ import annotations

import pytest
import torch

from fixtures_real import SIZE, error_of, request, write_csv, write_image
from trainer import protocol
from trainer.config import TrainConfig
from trainer.data import build_dataset
from trainer.train import Trainer

SPLITS = {"train": 12, "val": 4, "test": 4, "test_site_b": 6, "test_consistent": 4}


def make_split_csv(root, splits: dict[str, int] = SPLITS, n_classes: int = 2):
    """``labels.csv`` with ``n`` flat grey images per split, the classes alternating."""
    rows = []
    for split, n in splits.items():
        for k in range(n):
            label = k % n_classes
            write_image(root / "img" / f"{split}-{k:02d}.png", label, (28, 28))
            rows.append([f"img/{split}-{k:02d}.png", f"c{label}", split])
    return write_csv(root / "labels.csv", ["path", "label", "split"], rows)


def csv_config(tmp_path, title: str, data, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(dataset="csv", data_dir=str(data), image_size=SIZE, epochs=1, batch_size=8, seed=2,
                                 annotator="none", device="cpu", runs_dir=str(tmp_path / "runs"), title=title), **kw})


def test_every_split_other_than_train_and_val_is_evaluated_and_reported_by_name(tmp_path):
    make_split_csv(tmp_path / "data")
    data = build_dataset("csv", request(tmp_path / "data"))
    assert (len(data.train), len(data.val), len(data.test), len(data.test_consistent)) == (12, 4, 4, 4)
    assert list(data.evaluation) == ["test_site_b"] and len(data.evaluation["test_site_b"]) == 6
    assert list(data.held_out()) == ["test", "test_consistent", "test_site_b"]

    lines = []
    result = Trainer(csv_config(tmp_path, "splits", tmp_path / "data"), log=lines.append).fit()
    assert {name: m["n"] for name, m in result["splits"].items()} == {"test": 4, "test_consistent": 4, "test_site_b": 6}
    assert all(0 <= m["acc"] <= 1 for m in result["splits"].values())
    assert result["test_acc"] == result["splits"]["test"]["acc"]
    assert result["shortcut_gap"] == pytest.approx(result["splits"]["test_consistent"]["acc"] - result["test_acc"])
    status = protocol.read_status(protocol.RunDir(tmp_path / "runs" / "splits"))
    assert status["result"]["splits"] == result["splits"]
    held = [line for line in lines if line.startswith("held out: ")]
    assert len(held) == 1 and "test_site_b acc" in held[0] and "(6 images)" in held[0] and "shortcut gap" in held[0]


def test_a_held_out_split_without_test_is_still_reported(tmp_path):
    make_split_csv(tmp_path / "data", {"train": 10, "site_b": 4})
    result = Trainer(csv_config(tmp_path, "site", tmp_path / "data"), log=lambda *a: None).fit()
    assert list(result["splits"]) == ["site_b"] and "test_acc" not in result and "shortcut_gap" not in result


@pytest.mark.parametrize("value", ["", "../test", "a/b", "site b", "x" * 41, "tést"])
def test_a_bad_split_name_is_refused_in_one_line(tmp_path, value):
    table = make_split_csv(tmp_path, {"train": 6, "test": 2})
    text = table.read_text().splitlines()
    text[-1] = text[-1].rsplit(",", 1)[0] + "," + value
    table.write_text("\n".join(text) + "\n")
    message = error_of("csv", tmp_path)
    assert message.startswith("csv: 1 split value(s) in labels.csv are not split names") and "img/test-01.png=" in message


def test_validation_is_an_alias_of_val_and_names_ignore_case(tmp_path):
    make_split_csv(tmp_path, {"train": 6, "validation": 2, "TEST": 2})
    data = build_dataset("csv", request(tmp_path))
    assert (len(data.train), len(data.val), len(data.test), data.evaluation) == (6, 2, 2, {})


def test_a_class_only_in_a_held_out_split_is_an_error(tmp_path):
    table = make_split_csv(tmp_path, {"train": 6, "site_b": 2})
    table.write_text(table.read_text().replace("img/site_b-01.png,c1", "img/site_b-01.png,c9"))
    assert "class(es) with validation or test images but no training images: c9" in error_of("csv", tmp_path)


# --------------------------------------------------------------------------- batches from files

def run_metrics(tmp_path, title: str, data, **kw) -> tuple[list[dict], dict, dict]:
    """Metrics rows (without timings), result and final weights of a 2-epoch run."""
    trainer = Trainer(csv_config(tmp_path, title, data, epochs=2, **kw), log=lambda *a: None)
    result = trainer.fit()
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in protocol.read_metrics(trainer.run)]
    result.pop("run_dir")
    return rows, result, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_default_in_memory_and_worker_runs_give_the_same_results(tmp_path, monkeypatch):
    """By default a small file-backed set is decoded into memory once; --workers 0 decodes in the
    training process and --workers 1 in one persistent worker, every epoch; a set over the memory
    budget goes to persistent workers by default. All four runs are the same run."""
    import trainer.batches as batches

    make_split_csv(tmp_path / "data", {"train": 24, "val": 8, "test": 8})
    default = Trainer(csv_config(tmp_path, "probe", tmp_path / "data"), log=lambda *a: None)
    assert default.data.train.in_memory and default.data.val.in_memory and default.data.test.in_memory
    assert not Trainer(csv_config(tmp_path, "probe0", tmp_path / "data", workers=0),
                       log=lambda *a: None).data.train.in_memory

    reference = run_metrics(tmp_path, "default", tmp_path / "data")
    for title, kw in (("w0", dict(workers=0)), ("w1", dict(workers=1))):
        rows, result, weights = run_metrics(tmp_path, title, tmp_path / "data", **kw)
        assert rows == reference[0] and result == reference[1], title
        assert all(torch.equal(weights[k], reference[2][k]) for k in weights), title
    monkeypatch.setattr(batches, "IN_MEMORY_BUDGET", 0)
    monkeypatch.setattr(batches, "default_workers", lambda: 1)
    rows, result, weights = run_metrics(tmp_path, "over-budget", tmp_path / "data")
    assert rows == reference[0] and result == reference[1]


def test_in_memory_split_gives_the_file_split_s_tensors_and_masks(tmp_path):
    from fixtures_real import make_csv
    from trainer.batches import keep_in_memory

    make_csv(tmp_path, masks=True, split=True)
    files = build_dataset("csv", request(tmp_path))
    data, line = keep_in_memory(files)
    assert line.startswith("data: train, val, test decoded into memory once (12 images")
    for name in ("train", "val", "test"):
        a, b = getattr(files, name), getattr(data, name)
        assert b.in_memory and b.has_gt_masks
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0]) and a[i][1:] == b[i][1:]
            assert torch.equal(a.gt_mask(i), b.gt_mask(i))
    small, line = keep_in_memory(files, budget=files.train.decoded_bytes)  # train fits, the rest does not
    assert small.train.in_memory and not small.val.in_memory and line.startswith("data: train decoded")
