"""Loaders for the study's data sets and users' own files, on small fabricated copies of each layout."""
from __future__ import annotations

import re

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_real import (LARGE, SIZE, error_of, level, make_aptos, make_csv, make_folder, make_isic, make_nci,
                           request, truncate, write_csv, write_image)
from trainer.data import DATASETS, DataError, DataRequest, build_dataset
from trainer.data.images import FileSplit, describe

def assert_labels_match_pixels(split: FileSplit, class_of_level) -> None:
    """Every image's grey level is the one written for its own label (pairing by id, not position)."""
    for i in range(len(split)):
        image, label, index = split[i]
        assert index == i and image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
        assert class_of_level(round(float(image.mean()) * 255)) == label, split.sources[i]


def grade_of(value: int) -> int:
    return round((value - 30) / 40)


# --------------------------------------------------------------------------- registry and common rules

def test_registry_has_every_real_loader():
    assert {"aptos2019", "isic2017", "nci", "folder", "csv"} <= set(DATASETS)


@pytest.mark.parametrize("name", ["aptos2019", "isic2017", "nci", "folder", "csv"])
def test_data_dir_required_and_must_exist(name, tmp_path):
    with pytest.raises(DataError, match=f"--data-dir is required for dataset {name}"):
        build_dataset(name, DataRequest(data_dir=None, image_size=SIZE, seed=0))
    assert "does not exist" in error_of(name, tmp_path / "nowhere")


def test_describe_names_five_then_counts():
    assert describe(list("abc")) == "a, b, c"
    assert describe([f"f{i}" for i in range(8)]) == "f0, f1, f2, f3, f4 and 3 more"


# --------------------------------------------------------------------------- APTOS 2019

@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_aptos_joins_labels_by_id_in_both_layouts(tmp_path, layout):
    make_aptos(tmp_path, layout)
    data = build_dataset("aptos2019", request(tmp_path))
    assert data.class_names == ["no_dr", "mild", "moderate", "severe", "proliferative_dr"]
    assert data.in_chans == 3 and data.image_size == SIZE and data.test is None
    assert len(data.train) + len(data.val) == 25 and len(data.val) == 5  # 20% of each class
    assert set(data.val.labels.tolist()) == set(range(5))
    assert not data.train.in_memory
    assert_labels_match_pixels(data.train, grade_of)
    assert_labels_match_pixels(data.val, grade_of)


def test_splits_are_reproducible_by_seed_and_disjoint(tmp_path):
    make_aptos(tmp_path, n=60)
    a, b = (build_dataset("aptos2019", request(tmp_path, seed=3)) for _ in range(2))
    c = build_dataset("aptos2019", request(tmp_path, seed=4))
    assert a.train.sources == b.train.sources and a.val.sources == b.val.sources
    assert a.val.sources != c.val.sources
    assert not set(a.train.sources) & set(a.val.sources)


def test_fractions_are_stratified_with_one_image_per_class_at_least(tmp_path):
    make_aptos(tmp_path, n=60)
    data = build_dataset("aptos2019", request(tmp_path, train_fraction=0.01, val_fraction=0.5))
    assert sorted(data.train.labels.tolist()) == [0, 1, 2, 3, 4]
    assert len(data.val) == 5 and len(set(data.val.labels.tolist())) == 5
    assert "fraction" in error_of("aptos2019", tmp_path, train_fraction=0.0)


def test_aptos_bad_inputs_are_named(tmp_path):
    grades = make_aptos(tmp_path)
    ids = sorted(grades)
    table = tmp_path / "train.csv"
    good = table.read_text()

    write_csv(table, ["id_code", "grade"], [[i, 0] for i in ids])
    assert re.search(r"train.csv lacks column\(s\) diagnosis \(it has: id_code, grade\)", error_of("aptos2019", tmp_path))

    write_csv(table, ["id_code", "diagnosis"], [[i, grades[i]] for i in ids] + [["ffff", 1]])
    assert "1 id(s) in train.csv have no image" in (msg := error_of("aptos2019", tmp_path)) and "ffff" in msg

    write_csv(table, ["id_code", "diagnosis"], [[i, grades[i]] for i in ids[2:]])
    msg = error_of("aptos2019", tmp_path)
    assert "2 image(s)" in msg and "have no row in train.csv" in msg and f"{ids[0]}.png" in msg

    write_csv(table, ["id_code", "diagnosis"], [[i, 7 if k == 0 else "x" if k == 1 else grades[i]] for k, i in enumerate(ids)])
    msg = error_of("aptos2019", tmp_path)
    assert "2 unknown diagnosis value(s)" in msg and f"{ids[0]}='7'" in msg and f"{ids[1]}='x'" in msg

    write_csv(table, ["id_code", "diagnosis"], [[i, grades[i]] for i in ids] + [[ids[0], 1]])
    assert "more than once" in error_of("aptos2019", tmp_path)

    table.write_text(good)
    (tmp_path / "train_images").rename(tmp_path / "images")
    assert "have no image in" in error_of("aptos2019", tmp_path)
    table.unlink()
    assert "no train.csv" in error_of("aptos2019", tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_are_named(tmp_path, suffix):
    make_folder(tmp_path)
    bad = write_image(tmp_path / "dog" / f"broken{suffix}", 1, (48, 40))
    truncate(bad)
    msg = error_of("folder", tmp_path)
    assert "1 unreadable or truncated image(s)" in msg and f"dog/broken{suffix}" in msg
    bad.write_bytes(b"")
    assert f"dog/broken{suffix}" in error_of("folder", tmp_path)


def test_large_images_are_resized_once_into_an_atomic_cache(tmp_path):
    make_aptos(tmp_path, size=LARGE)
    data = build_dataset("aptos2019", request(tmp_path))
    cache = tmp_path / ".hitl-cache" / str(SIZE)
    cached = sorted(cache.iterdir())
    assert len(cached) == 25 and all(p.suffix == ".png" for p in cached)  # no temporary files left
    for p in cached:
        with Image.open(p) as img:
            assert img.size == (SIZE, SIZE)
    assert all(f.parent == cache for f in data.train.files)
    assert_labels_match_pixels(data.train, grade_of)
    before = {p: p.stat().st_mtime_ns for p in cached}
    again = build_dataset("aptos2019", request(tmp_path))
    assert again.train.files == data.train.files and {p: p.stat().st_mtime_ns for p in cached} == before

    source = data.train.sources[0]
    write_image(source, 4, LARGE)  # an edited source is decoded again, never served stale
    edited = build_dataset("aptos2019", request(tmp_path))
    assert edited.train.files[0] != data.train.files[0]


def test_loads_in_dataloader_workers(tmp_path):
    make_aptos(tmp_path)
    data = build_dataset("aptos2019", request(tmp_path))
    images, labels, index = next(iter(DataLoader(data.train, batch_size=8, num_workers=2)))
    assert images.shape == (8, 3, SIZE, SIZE) and labels.tolist() == data.train.labels[:8].tolist()


def test_grey_rgba_and_16_bit_images_become_rgb(tmp_path):
    for k, mode in enumerate(["L", "RGBA", "I;16", "RGB"]):
        write_image(tmp_path / "a" / f"{k}.png", 0, mode=mode)
        write_image(tmp_path / "b" / f"{k}.png", 1, mode=mode)
    data = build_dataset("folder", request(tmp_path, options={"val_holdout": 0.5}))
    for split in (data.train, data.val):
        assert_labels_match_pixels(split, grade_of)


# --------------------------------------------------------------------------- ISIC 2017

def test_isic_official_splits_and_tasks(tmp_path):
    truth = make_isic(tmp_path)
    data = build_dataset("isic2017", request(tmp_path))
    assert data.class_names == ["other", "melanoma"]
    assert (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)
    melanoma_level = {level(0): 0, level(1): 1, level(2): 0}
    for split in (data.train, data.val, data.test):
        assert_labels_match_pixels(split, melanoma_level.__getitem__)
    assert {p.stem for p in data.test.sources} == set(truth["Test_v2"])

    three = build_dataset("isic2017", request(tmp_path, options={"task": "3-class"}))
    assert three.class_names == ["nevus", "melanoma", "seborrheic_keratosis"]
    assert_labels_match_pixels(three.train, grade_of)
    assert "unknown task 'x'" in error_of("isic2017", tmp_path, options={"task": "x"})


def test_isic_without_official_validation_holds_out_from_training(tmp_path):
    make_isic(tmp_path, parts=("Training",))
    data = build_dataset("isic2017", request(tmp_path))
    assert data.test is None and len(data.train) + len(data.val) == 12 and len(data.val) >= 2


def test_isic_bad_inputs_are_named(tmp_path):
    truth = make_isic(tmp_path, parts=("Training", "Validation"))
    first = sorted(truth["Validation"])[0]
    (tmp_path / "ISIC-2017_Validation_Data" / f"{first}.jpg").unlink()
    assert f"have no image in" in (msg := error_of("isic2017", tmp_path)) and first in msg

    table = tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv"
    rows = [[i, 1.0, 1.0 if k == 0 else 0.0] for k, i in enumerate(sorted(truth["Training"]))]
    write_csv(table, ["image_id", "melanoma", "seborrheic_keratosis"], rows)
    assert "marked both melanoma and seborrheic_keratosis" in error_of("isic2017", tmp_path)
    write_csv(table, ["image_id", "melanoma"], [r[:2] for r in rows])
    assert "lacks column(s) seborrheic_keratosis" in error_of("isic2017", tmp_path)
    write_csv(table, ["image_id", "melanoma", "seborrheic_keratosis"], [[i, 0.5, 0.0] for i, *_ in rows])
    assert "unknown melanoma value(s)" in error_of("isic2017", tmp_path)
    table.unlink()
    assert "ISIC-2017_Training_Part3_GroundTruth.csv not found" in error_of("isic2017", tmp_path)


def test_isic_missing_image_folder(tmp_path):
    make_isic(tmp_path, parts=("Training",))
    (tmp_path / "ISIC-2017_Training_Data").rename(tmp_path / "elsewhere")
    assert re.search(r"folder .*ISIC-2017_Training_Data does not exist", error_of("isic2017", tmp_path))


# --------------------------------------------------------------------------- NCI

@pytest.mark.parametrize("table,naming", [("csv", "c1"), ("csv", "exact"), ("xls", "c1")])
def test_nci_reads_the_covariate_table(tmp_path, table, naming):
    if table == "xls":
        pytest.importorskip("xlwt", reason="writing the .xls fixture needs xlwt")
    truth = make_nci(tmp_path, table, naming=naming)
    data = build_dataset("nci", request(tmp_path))
    assert data.class_names == ["negative", "positive"]
    assert len(data.val) == 4 and len(data.train) == 12  # 25% held out
    for split in (data.train, data.val):
        assert_labels_match_pixels(split, grade_of)
        assert all(truth[p.stem.removesuffix("_C1")] == int(label) for p, label in zip(split.sources, split.labels))


def test_nci_bad_inputs_are_named(tmp_path):
    truth = make_nci(tmp_path)
    table = tmp_path / "covariate_data_training_NHS.csv"
    ids = sorted(truth)
    write_csv(table, ["IMAGE_ID", "WRST_HIST_AFTER"], [[i, 1] for i in ids] + [["99999", 0]])
    assert "99999" in (msg := error_of("nci", tmp_path)) and "have no image" in msg
    write_csv(table, ["IMAGE_ID", "WRST_HIST_AFTER"], [[i, "" if k == 0 else 1] for k, i in enumerate(ids)])
    assert f"unknown WRST_HIST_AFTER value(s) in covariate_data_training_NHS.csv: {ids[0]}=''" in error_of("nci", tmp_path)
    write_csv(table, ["IMAGE_ID", "WRST_HIST_AFTER"], [[i, 1] for i in ids])
    write_image(tmp_path / "NHS" / f"{ids[0]}.jpg", 0)
    assert "match more than one image" in error_of("nci", tmp_path)
    table.unlink()
    assert "covariate_data_training_NHS.xls" in error_of("nci", tmp_path)


# --------------------------------------------------------------------------- a folder per class

def test_folder_per_class_with_and_without_split_folders(tmp_path):
    make_folder(tmp_path / "flat")
    flat = build_dataset("folder", request(tmp_path / "flat"))
    assert flat.class_names == ["cat", "dog", "fox"] and flat.test is None
    assert len(flat.train) + len(flat.val) == 15 and len(flat.val) == 3
    assert_labels_match_pixels(flat.train, grade_of)

    make_folder(tmp_path / "split", per_class=3, splits=("train", "val", "test"))
    split = build_dataset("folder", request(tmp_path / "split"))
    assert (len(split.train), len(split.val), len(split.test)) == (9, 9, 9)
    assert_labels_match_pixels(split.test, grade_of)


def test_folder_bad_inputs_are_named(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "stray.png", 0)
    assert "1 image(s) outside any class folder: stray.png" in error_of("folder", tmp_path)
    (tmp_path / "stray.png").unlink()
    (tmp_path / "empty").mkdir()
    assert "class folder(s) without images: empty" in error_of("folder", tmp_path)

    make_folder(tmp_path / "s", splits=("train", "val"))
    write_image(tmp_path / "s" / "val" / "wolf" / "w.png", 2)
    assert "no training images: wolf" in error_of("folder", tmp_path / "s")


# --------------------------------------------------------------------------- a CSV of paths and labels

def test_csv_with_masks_and_splits(tmp_path):
    table = make_csv(tmp_path, masks=True, split=True)
    for given in (tmp_path, table):
        data = build_dataset("csv", request(given))
        assert data.class_names == ["benign", "malignant"]
        assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 3)
    assert data.train.has_gt_masks
    masks = [data.train.gt_mask(i) for i in range(len(data.train))]
    assert all(m.dtype == torch.bool and m.shape == (SIZE, SIZE) for m in masks)
    marked = [m for m in masks if m.any()]
    assert len(marked) == 4  # the other two rows have an empty mask cell: nothing marked
    for m in marked:
        assert m[:, : SIZE // 2].all() and not m[:, SIZE // 2:].any()


def test_csv_without_split_column_holds_out_validation(tmp_path):
    make_csv(tmp_path)
    data = build_dataset("csv", request(tmp_path))
    assert len(data.train) == 10 and len(data.val) == 2 and not data.train.has_gt_masks  # 20% of 6 per class
    assert data.train.gt_mask(0) is None


def test_numeric_csv_labels_sort_as_numbers(tmp_path):
    rows = [[f"{k}.png", label] for k, label in enumerate([2, 10, 2, 10, 9, 9])]
    for (name, label) in rows:
        write_image(tmp_path / name, 0)
    write_csv(tmp_path / "labels.csv", ["path", "label"], rows)
    data = build_dataset("csv", request(tmp_path, options={"val_holdout": 0.5}))
    assert data.class_names == ["2", "9", "10"]


@pytest.mark.parametrize("column, written, row", [
    ("path", "../../../../../../../../etc/passwd", 4),
    ("path", "{outside}", 4),              # an absolute path to a real image outside the folder
    ("path", "img/link-out.png", 4),       # a link inside the folder that leads out of it
    ("path", "../data-other/im.png", 4),   # a sibling folder whose name starts like the data folder's
    ("mask", "/etc/passwd", 1),
    ("mask", "img/../../outside.png", 2),
])
def test_csv_rows_that_lead_outside_the_data_folder_are_refused_before_opening_anything(tmp_path, monkeypatch,
                                                                                         column, written, row):
    data = tmp_path / "data"
    table = make_csv(data, masks=True, split=True)
    outside = write_image(tmp_path / "outside.png", 0)
    write_image(tmp_path / "data-other" / "im.png", 0)
    (data / "img" / "link-out.png").symlink_to(outside)
    original = [f"img/im{row - 1:02d}.png", f"img/im{row - 1:02d}_mask.png"][column == "mask"]
    lines = table.read_text().splitlines(keepends=True)
    lines[row] = lines[row].replace(original, written.format(outside=outside))
    table.write_text("".join(lines))
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("an image was opened"))
    message = error_of("csv", data)
    assert f"labels.csv row {row} (line {row + 1}), column {column}:" in message
    assert "leads outside the data folder" in message and not opened


def test_csv_paths_that_stay_inside_the_data_folder_are_read(tmp_path):
    table = make_csv(tmp_path, masks=True, split=True)
    (tmp_path / "img" / "alias.png").symlink_to(tmp_path / "img" / "im03.png")
    table.write_text(table.read_text().replace("img/im03.png", "img/alias.png")
                     .replace("img/im04.png", "./img/../img/im04.png")
                     .replace("img/im05.png", str(tmp_path / "img" / "im05.png")))
    data = build_dataset("csv", request(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 3)


def test_csv_bad_inputs_are_named(tmp_path):
    table = make_csv(tmp_path, masks=True, split=True)
    good = table.read_text()
    assert "labels.csv" in error_of("csv", tmp_path / "img") and "not found" in error_of("csv", tmp_path / "img")

    table.write_text(good.replace("img/im03.png", "img/missing.png"))
    assert "1 file(s) in the path column of labels.csv do not exist: img/missing.png" in error_of("csv", tmp_path)
    table.write_text(good.replace("img/im00_mask.png", "img/nomask.png"))
    assert "mask column" in error_of("csv", tmp_path)
    table.write_text(good.replace(",val", ",../val", 1))
    assert "are not split names" in error_of("csv", tmp_path)
    table.write_text(good.replace("path,label", "file,label"))
    assert "lacks column(s) path" in error_of("csv", tmp_path)
    table.write_text(good.replace("benign", "", 1))
    assert "have no label" in error_of("csv", tmp_path)

    table.write_text(good)
    Image.new("L", (10, 10)).save(tmp_path / "img" / "im00_mask.png")
    assert "not the size of their image: img/im00_mask.png (10×10, image 40×30)" in error_of("csv", tmp_path)


def test_image_damaged_after_building_is_named_when_read(tmp_path):
    make_folder(tmp_path)
    data = build_dataset("folder", request(tmp_path))
    truncate(data.train.sources[0], keep=0.3)
    with pytest.raises(DataError, match=f"cannot read image .*{data.train.sources[0].name}"):
        data.train[0]


def test_cache_falls_back_to_the_repository_when_the_data_folder_is_read_only(tmp_path, monkeypatch):
    import trainer.data.images as images

    make_aptos(tmp_path / "data", n=10, size=LARGE)
    (tmp_path / "data" / ".hitl-cache").write_text("a file where the cache folder would go")
    monkeypatch.setattr(images, "FALLBACK_CACHE_ROOT", tmp_path / "fallback")
    data = build_dataset("aptos2019", request(tmp_path / "data"))
    assert all(tmp_path / "fallback" in f.parents for f in data.train.files)
    assert_labels_match_pixels(data.train, grade_of)


def test_nci_image_without_a_row_is_named(tmp_path):
    make_nci(tmp_path)
    write_image(tmp_path / "NHS" / "77777_C1.jpg", 0)
    assert "1 image(s) in" in (msg := error_of("nci", tmp_path)) and "NHS/77777_C1.jpg" in msg
