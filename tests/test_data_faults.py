"""Data sets under faults an adversary would try (damaged, misnamed, duplicated and skipped files, tiny
fractions), and a seeded run that must not depend on whether the data set's cache already existed."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import trainer.data.synthetic as synthetic
from fixtures_real import (LARGE, SIZE, SMALL, corrupt_data_stream, error_of, level, make_aptos, make_folder, request,
                           write_csv, write_image)
from trainer import protocol
from trainer.cli import main as cli_main
from trainer.config import TrainConfig
from trainer.data import DataError, DataRequest, build_dataset
from trainer.train import Trainer


def test_same_seed_gives_the_same_initial_weights_with_or_without_the_data_cache(tmp_path, monkeypatch):
    """Trainer order: manual_seed, build the data set, create the model. Building (and caching) the
    data must not draw from the global generator, or the first run of a seed differs from the rest."""
    monkeypatch.setattr(synthetic, "DATA_ROOT", tmp_path / "datasets")

    def initial_weights(title: str) -> dict:
        cfg = TrainConfig(dataset="decoy-digits", image_size=16, seed=5, device="cpu",
                          runs_dir=str(tmp_path / "runs"), title=title)
        return Trainer(cfg, log=lambda *a: None).model.state_dict()

    fresh = initial_weights("fresh-cache")
    assert len(list((tmp_path / "datasets" / "decoy-digits").glob("*.pt"))) == 1
    cached = initial_weights("existing-cache")
    assert fresh.keys() == cached.keys()
    for name in fresh:
        assert torch.equal(fresh[name], cached[name]), name

    torch.manual_seed(5)
    expected = torch.get_rng_state()
    build_dataset("decoy-digits", DataRequest(None, 16, seed=6))  # a seed whose cache does not exist yet
    assert torch.equal(torch.get_rng_state(), expected)


# --------------------------------------------------------------------------- damaged images

def test_png_with_a_corrupt_data_stream_is_named_at_start_up_in_one_line(tmp_path, capsys):
    """An intact end marker used to pass the start-up check and fail in the first batch with a worker's
    traceback; every image is now decoded in full when the data set is built."""
    make_folder(tmp_path / "data")
    bad = corrupt_data_stream(write_image(tmp_path / "data" / "dog" / "bad.png", 1))
    assert bad.read_bytes().endswith(b"IEND\xaeB`\x82")
    msg = error_of("folder", tmp_path / "data")
    assert "1 unreadable or truncated image(s): dog/bad.png" in msg

    code = cli_main(["-ds", "folder", "-dr", str(tmp_path / "data"), "-md", str(tmp_path / "runs"), "-td", "bad",
                     "--image-size", str(SIZE), "-E", "1", "--annotator", "none", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "dog/bad.png" in err and "Traceback" not in err


def test_image_damaged_after_its_first_decode_is_named_in_one_line_when_read(tmp_path, capsys):
    """Sources that decoded in full once are remembered (decoded.txt), so a later start opens only their
    headers; damage that keeps size and time still stops the run at first use with one line naming
    the file, from a DataLoader worker too, and the run is marked failed."""
    make_folder(tmp_path / "data", per_class=4)
    first = build_dataset("folder", request(tmp_path / "data"))
    assert len((tmp_path / "data" / ".hitl-cache" / str(SIZE) / "decoded.txt").read_text().split()) == 12
    source = first.train.sources[0]
    corrupt_data_stream(source)
    again = build_dataset("folder", request(tmp_path / "data"))
    with pytest.raises(DataError) as caught:
        next(iter(DataLoader(again.train, batch_size=4, num_workers=1)))
    assert str(caught.value).startswith(f"cannot read image {source}: ") and "\n" not in str(caught.value)

    code = cli_main(["-ds", "folder", "-dr", str(tmp_path / "data"), "-md", str(tmp_path / "runs"), "-td", "damaged",
                     "--image-size", str(SIZE), "-E", "1", "--annotator", "none", "--device", "cpu",
                     "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"hitl-train: error: {caught.value}\n"
    status = protocol.read_status(protocol.RunDir(tmp_path / "runs" / "damaged"))
    assert status["state"] == protocol.FAILED and source.name in status["error"]


def test_large_image_with_a_name_that_is_not_utf8_is_read(tmp_path):
    """Names are bytes on Linux; a Latin-1 name used to be called unreadable (its cache key was encoded
    as UTF-8)."""
    make_folder(tmp_path, per_class=4)
    large = write_image(tmp_path / "dog" / os.fsdecode(b"chien-\xe9t\xe9.png"), 1, LARGE)
    small = write_image(tmp_path / "fox" / os.fsdecode(b"renard-\xe9t\xe9.png"), 2)
    data = build_dataset("folder", request(tmp_path, options={"val_holdout": 0.25}))
    for split in (data.train, data.val):
        for i, source in enumerate(split.sources):
            if source in (large, small):
                image, label, _ = split[i]
                assert label == (1 if source == large else 2)
                assert round(float(image.mean()) * 255) == level(label)
    assert {large, small} <= set(data.train.sources) | set(data.val.sources)


# --------------------------------------------------------------------------- listed twice, skipped, rounded

def test_same_file_under_two_spellings_is_an_error_naming_both(tmp_path):
    write_image(tmp_path / "img" / "a.png", 0)
    for k in range(4):
        write_image(tmp_path / "img" / f"{k}.png", k % 2)
    write_csv(tmp_path / "labels.csv", ["path", "label"],
              [["img/a.png", 0], ["./img/a.png", 1]] + [[f"img/{k}.png", k % 2] for k in range(4)])
    msg = error_of("csv", tmp_path)
    assert "1 image file(s) listed more than once under different names: img/a.png = ./img/a.png" in msg

    make_folder(tmp_path / "folders")
    (tmp_path / "folders" / "dog" / "also-a-cat.png").symlink_to(tmp_path / "folders" / "cat" / "cat0.png")
    msg = error_of("folder", tmp_path / "folders")
    assert "listed more than once under different names: cat/cat0.png = dog/also-a-cat.png" in msg


def test_gif_and_jfif_are_read_and_skipped_files_are_reported(tmp_path):
    make_folder(tmp_path, per_class=3)  # also writes cat/notes.txt
    frames = [Image.new("RGB", SMALL, (level(1),) * 3), Image.new("RGB", SMALL, (250, 250, 250))]
    frames[0].save(tmp_path / "dog" / "moving.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", SMALL, (level(2),) * 3).save(tmp_path / "fox" / "photo.jfif", format="JPEG")
    (tmp_path / "fox" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    data = build_dataset("folder", request(tmp_path, options={"val_holdout": 0.25}))
    everything = {s.name: (split, i) for split in (data.train, data.val) for i, s in enumerate(split.sources)}
    assert len(everything) == 11
    for name, label in (("moving.gif", 1), ("photo.jfif", 2)):
        split, i = everything[name]
        image, got, _ = split[i]
        assert got == label and abs(round(float(image.mean()) * 255) - level(label)) <= 2  # the first frame
    assert data.notes == ["folder: skipped 2 file(s) that are not images it reads: cat/notes.txt, "
                          "fox/gone.png (broken link)"]


def test_train_fraction_that_rounds_to_nothing_says_how_many_images_it_uses(tmp_path):
    make_aptos(tmp_path, n=40)
    data = build_dataset("aptos2019", request(tmp_path, train_fraction=0.001))
    assert len(data.train) == 5
    assert data.notes == ["train fraction 0.001 of 30 images rounds to no image in 5 of 5 classes; "
                          "using 5 images (at least one of each class)"]
    assert build_dataset("aptos2019", request(tmp_path, train_fraction=0.5)).notes == []

    lines: list[str] = []
    cfg = TrainConfig(dataset="decoy-digits", image_size=16, train_fraction=0.001, device="cpu",
                      runs_dir=str(tmp_path / "runs"), title="tiny")
    assert len(Trainer(cfg, log=lines.append).data.train) == 10
    assert lines == ["warning: train fraction 0.001 of 1000 images rounds to no image in 10 of 10 classes; "
                     "using 10 images (at least one of each class)"]
