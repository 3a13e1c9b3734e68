"""Small fabricated copies of the real data sets' layouts, with their real file and column names.

Every image is a flat grey whose level encodes its label (``level(label)``), so a test can check
from the pixels alone that each image carries its own label (joined by id, not by position).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import DataError, DataRequest, build_dataset

SIZE = 32  # the target size the tests ask for
SMALL = (40, 30)  # below 2× a 32-px target: read directly
LARGE = (100, 80)  # above 2× a 32-px target: resized once and cached


def request(data_dir, **kw) -> DataRequest:
    return DataRequest(data_dir=str(data_dir), image_size=kw.pop("image_size", SIZE), seed=kw.pop("seed", 0), **kw)


def error_of(name: str, data_dir, **kw) -> str:
    """The one-line DataError that building ``name`` from ``data_dir`` raises."""
    with pytest.raises(DataError) as caught:
        build_dataset(name, request(data_dir, **kw))
    message = str(caught.value)
    assert "\n" not in message
    return message


def level(label: int) -> int:
    """Grey level (0-255) of an image of class ``label``."""
    return 30 + 40 * label


def write_image(path: Path, label: int, size: tuple[int, int] = SMALL, mode: str = "RGB") -> Path:
    """A flat image of the label's grey level in ``mode`` (RGB, L, RGBA, I;16), format by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    value = level(label)
    if mode == "I;16":
        img = Image.fromarray(np.full((h, w), value * 257, dtype=np.uint16))
    elif mode == "RGBA":
        img = Image.new("RGBA", size, (value, value, value, 90))
    else:
        img = Image.new(mode, size, value if mode == "L" else (value, value, value))
    img.save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file short, as an interrupted download or copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_data_stream(path: Path) -> Path:
    """Damage the compressed pixels in the middle of a PNG's first IDAT chunk, keeping the file's size,
    its end marker and its modification time: only a full decode can tell."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    middle = start + length // 3
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    times = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_xls(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A real Excel 97 (.xls) workbook, as NCI distributes its covariates (needs xlwt)."""
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("covariates")
    for c, name in enumerate(header):
        sheet.write(0, c, name)
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.save(str(path))
    return path


def labels_cycle(n: int, classes: int) -> list[int]:
    """Labels for n ids, every class present, in an order unrelated to the ids' sorted order."""
    return [(i * 7 + 1) % classes for i in range(n)]


def make_aptos(root: Path, layout: str = "kaggle", n: int = 25, size: tuple[int, int] = SMALL) -> dict[str, int]:
    """APTOS 2019: ``train.csv`` (id_code,diagnosis) and PNGs, in Kaggle's layout (``train_images/``)
    or the original tool's (``train/train.csv`` with the PNGs beside it). Rows are written in
    reverse id order so that pairing by sorted position would mislabel them."""
    ids = [f"{i:03x}c{i * 7919 % 1000:03d}" for i in range(n)]
    grades = dict(zip(ids, labels_cycle(n, 5)))
    table, images = ((root / "train.csv", root / "train_images") if layout == "kaggle"
                     else (root / "train" / "train.csv", root / "train"))
    for i, g in grades.items():
        write_image(images / f"{i}.png", g, size)
    write_csv(table, ["id_code", "diagnosis"], [[i, grades[i]] for i in sorted(ids, reverse=True)])
    return grades


ISIC_PARTS = ("Training", "Validation", "Test_v2")


def make_isic(root: Path, parts: tuple[str, ...] = ISIC_PARTS, n: int = 12) -> dict[str, dict[str, int]]:
    """ISIC 2017 Part 3: per part a ground-truth CSV (image_id,melanoma,seborrheic_keratosis, as
    0.0/1.0) and a folder of ``<image_id>.jpg``; the training folder also holds a superpixels PNG and
    a metadata CSV, as the real archive does. Returns the 3-class label (0 nevus, 1 melanoma, 2 SK)."""
    out = {}
    start = 0
    for part in parts:
        folder = root / f"ISIC-2017_{part}_Data"
        labels = {f"ISIC_{start + k:07d}": c for k, c in enumerate(labels_cycle(n, 3))}
        start += n
        rows = []
        for image_id, c in labels.items():
            write_image(folder / f"{image_id}.jpg", c)
            rows.append([image_id, float(c == 1), float(c == 2)])
        write_csv(root / f"ISIC-2017_{part}_Part3_GroundTruth.csv", ["image_id", "melanoma", "seborrheic_keratosis"],
                  rows[::-1])
        if part == "Training":
            write_image(folder / f"{next(iter(labels))}_superpixels.png", 0)
            write_csv(folder / "ISIC-2017_Training_Data_metadata.csv", ["image_id", "age_approximate"],
                      [[i, 50] for i in labels])
        out[part] = labels
    return out


def make_nci(root: Path, table: str = "csv", n: int = 16, naming: str = "c1") -> dict[str, int]:
    """NCI (NHS): ``<IMAGE_ID>_C1.jpg`` images (``naming="exact"``: ``<IMAGE_ID>.jpg``) in a subfolder,
    a second view ``_C2`` that is not used, and ``covariate_data_training_NHS.{csv,xls}`` with IMAGE_ID and
    WRST_HIST_AFTER (0 = negative, 1-3 = positive histology). Returns the binary label per id."""
    ids = [str(10000 + 37 * i) for i in range(n)]
    worst = {i: [0, 2, 0, 1, 3][k % 5] for k, i in enumerate(ids)}
    for i, w in worst.items():
        stem = f"{i}_C1" if naming == "c1" else i
        write_image(root / "NHS" / f"{stem}.jpg", int(w > 0))
        if naming == "c1":
            write_image(root / "NHS" / f"{i}_C2.jpg", 1 - int(w > 0))
    header = ["IMAGE_ID", "AGE", "WRST_HIST_AFTER"]
    rows = [[int(i), 40, w] for i, w in reversed(worst.items())]  # ids typed as numbers, as in the sheet
    if table == "xls":
        write_xls(root / "covariate_data_training_NHS.xls", header, rows)
    else:
        write_csv(root / "covariate_data_training_NHS.csv", header, rows)
    return {i: int(w > 0) for i, w in worst.items()}


def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 5,
                splits: tuple[str, ...] = ()) -> Path:
    """One subfolder per class (directly, or under each of ``splits``), plus a stray non-image file."""
    for split in splits or ("",):
        for c, name in enumerate(classes):
            for k in range(per_class):
                write_image(root / split / name / f"{name}{k}.png", c)
    (root / (splits[0] if splits else "") / classes[0] / "notes.txt").write_text("not an image")
    return root


def make_csv(root: Path, n: int = 12, masks: bool = False, split: bool = False) -> Path:
    """``labels.csv`` with path,label (and optionally mask, split); images in ``img/``; the mask of
    each image marks its left half (or nothing for every third image: an empty mask cell)."""
    header = ["path", "label"] + (["mask"] if masks else []) + (["split"] if split else [])
    names = ["benign", "malignant"]
    rows = []
    for k in range(n):
        label = k % 2
        write_image(root / "img" / f"im{k:02d}.png", label, SMALL)
        row: list[object] = [f"img/im{k:02d}.png", names[label]]
        if masks:
            if k % 3 == 2:
                row.append("")
            else:
                mask = np.zeros(SMALL[::-1], dtype=np.uint8)
                mask[:, : SMALL[0] // 2] = 255
                Image.fromarray(mask).save(root / "img" / f"im{k:02d}_mask.png")
                row.append(f"img/im{k:02d}_mask.png")
        if split:
            row.append(["train", "train", "val", "test"][k % 4])
        rows.append(row)
    return write_csv(root / "labels.csv", header, rows)
