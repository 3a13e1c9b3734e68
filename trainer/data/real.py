"""Loaders for image files on disk: the study's data sets (APTOS 2019, ISIC 2017, NCI cervical images)
and a user's own (a folder per class, or a CSV of paths and labels).

Labels are joined to files by id or path, never by position (the original tool sorted both lists and
zipped them). Bad input is refused with one line naming the first offending files; rows and images are
never silently dropped. Splits are stratified and reproducible by seed, and images are opened only
for the part of the data a run actually uses. Layouts are described in ``datasets/README.md``.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch

from ..confine import is_inside
from .base import DataError, DataRequest, DataSplits
from .images import IMAGE_EXTENSIONS, FileSplit, ImageStore, describe
from .splits import stratified_fraction, stratified_split

DEFAULT_IMAGE_SIZE = 224
MIN_IMAGE_SIZE = 16

APTOS_GRADES = ["no_dr", "mild", "moderate", "severe", "proliferative_dr"]
ISIC_SPLITS = {"train": "Training", "val": "Validation", "test": "Test_v2"}
ISIC_TASKS = {"melanoma": ["other", "melanoma"], "3-class": ["nevus", "melanoma", "seborrheic_keratosis"]}
NCI_TABLES = ("covariate_data_training_NHS.xls", "covariate_data_training_NHS.csv")
NCI_CLASSES = ["negative", "positive"]  # WRST_HIST_AFTER == 0 / > 0
NCI_VIEW = re.compile(r"^(?P<id>.+?)(?:_C(?P<view>\d+))?$")  # "<IMAGE_ID>_C1" is the first cervigram
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
# A csv set's split names: train and val (or validation), and any other name for a held-out split
# evaluated when a run ends (test, test_consistent, test_site_b…): a short word, no path characters.
SPLIT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


@dataclass
class Listing:
    """Labelled files of one split, before any image is opened. ``labels`` index the class list."""

    paths: list[Path]
    labels: list[int]
    masks: list[Path | None] | None = None

    def take(self, idx: Iterable[int]) -> "Listing":
        idx = [int(i) for i in idx]
        return Listing([self.paths[i] for i in idx], [self.labels[i] for i in idx],
                       None if self.masks is None else [self.masks[i] for i in idx])

    def relabel(self, mapping: dict[int, int]) -> "Listing":
        return Listing(self.paths, [mapping[label] for label in self.labels], self.masks)


# --------------------------------------------------------------------------- shared checks

def _data_root(dataset: str, request: DataRequest) -> Path:
    if not request.data_dir:
        raise DataError(f"--data-dir is required for dataset {dataset}")
    root = Path(request.data_dir).expanduser()
    if not root.exists():
        raise DataError(f"{dataset}: data folder {root} does not exist")
    return root


def _read_table(dataset: str, path: Path, columns: Iterable[str]) -> pd.DataFrame:
    """A CSV or XLS table as strings (ids keep leading zeros, labels are validated here), with the
    required ``columns`` present and at least one row."""
    try:
        if path.suffix.lower() == ".xls":
            with warnings.catch_warnings():  # pandas 3 deprecates xlrd, still the only .xls reader installed
                warnings.filterwarnings("ignore", message=".*xlrd engine is deprecated")
                table = pd.read_excel(path, dtype=str, engine="xlrd")
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                                encoding="utf-8-sig")  # Excel writes a byte-order mark
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{dataset}: cannot read {path}: {str(e).splitlines()[0][:100]}") from e
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        # the header is quoted only when it is recognisably this table's: never a line of some other file
        found = (f"it has: {describe(list(table.columns), 8)}" if set(columns) & set(table.columns)
                 else "its first line has none of the expected columns")
        raise DataError(f"{dataset}: {path.name} lacks column(s) {', '.join(missing)} ({found})")
    if table.empty:
        raise DataError(f"{dataset}: {path.name} has no rows")
    return table.fillna("").apply(lambda col: col.str.strip())


def _check_ids(dataset: str, table_name: str, column: str, ids: list[str]) -> None:
    empty = [str(row + 2) for row, i in enumerate(ids) if not i]  # +2: header line, 1-based lines
    if empty:
        raise DataError(f"{dataset}: {table_name} has rows without {column} (lines {describe(empty)})")
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DataError(f"{dataset}: {table_name} lists {len(repeated)} {column}(s) more than once: {describe(repeated)}")


def _parse_labels(dataset: str, table_name: str, column: str, ids: list[str], values: list[str],
                  parse: Callable[[str], int | None]) -> list[int]:
    labels = [parse(v) for v in values]
    unknown = [f"{i}={v!r}" for i, v, label in zip(ids, values, labels) if label is None]
    if unknown:
        raise DataError(f"{dataset}: {len(unknown)} unknown {column} value(s) in {table_name}: {describe(unknown)}")
    return labels


def _integer(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _visible_files(folder: Path, extensions: Iterable[str], recursive: bool, skipped: list[Path],
                   report_all: bool = False) -> list[Path]:
    """Image files under ``folder``; hidden files and folders (our own ``.hitl-cache``) are left out
    quietly. An entry named like an image that is not a file (a dangling link) goes to ``skipped``,
    and with ``report_all`` so does every other visible entry that is not a folder (a text file, a
    format not read)."""
    extensions = tuple(extensions)
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for p in found:
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        image_name = p.suffix.lower() in extensions
        if image_name and p.is_file():
            files.append(p)
        elif (image_name or report_all) and not p.is_dir():
            skipped.append(p)
    return sorted(files)


def _skipped_note(dataset: str, root: Path, skipped: list[Path]) -> list[str]:
    """One warning line for files that are not used, so that none is dropped without a word."""
    if not skipped:
        return []
    names = [_rel(p, root) + (" (broken link)" if p.is_symlink() and not p.exists() else "")
             for p in sorted(skipped)]
    return [f"{dataset}: skipped {len(names)} file(s) that are not images it reads: {describe(names)}"]


def _check_distinct_files(dataset: str, named: Iterable[tuple[str, Path]]) -> None:
    """One file under two names (``img/a.png`` and ``./img/a.png``, a link and its target) would be one
    image with two labels, or in two splits: an error naming each spelling."""
    names_of: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, path in named:
        try:
            st = path.stat()
        except OSError:  # reported as unreadable when the images are checked
            continue
        names_of[(st.st_dev, st.st_ino)].append(name)
    twice = [" = ".join(names) for names in names_of.values() if len(names) > 1]
    if twice:
        raise DataError(f"{dataset}: {len(twice)} image file(s) listed more than once under different names: "
                        f"{describe(twice)}")


def _files_by_id(dataset: str, root: Path, files: list[Path], id_of: Callable[[Path], str | None]) -> dict[str, Path]:
    """Map ids to files; two files for one id is an error (which one is labelled?)."""
    by_id: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        key = id_of(f)
        if key is not None:
            by_id[key].append(f)
    clashes = [" / ".join(_rel(p, root) for p in ps) for ps in by_id.values() if len(ps) > 1]
    if clashes:
        raise DataError(f"{dataset}: {len(clashes)} id(s) match more than one image: {describe(clashes)}")
    return {key: ps[0] for key, ps in by_id.items()}


def _join(dataset: str, root: Path, table_name: str, ids: list[str], by_id: dict[str, Path], folder: Path) -> list[Path]:
    """The image of each id, in table order. Ids without images and images without rows are errors."""
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{dataset}: {len(missing)} id(s) in {table_name} have no image in {folder}: {describe(missing)}")
    listed = set(ids)
    unlabelled = sorted(_rel(p, root) for key, p in by_id.items() if key not in listed)
    if unlabelled:
        raise DataError(f"{dataset}: {len(unlabelled)} image(s) in {folder} have no row in {table_name}: "
                        f"{describe(unlabelled)}")
    return [by_id[i] for i in ids]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _need_folder(dataset: str, folder: Path, expected: str) -> Path:
    if not folder.is_dir():
        raise DataError(f"{dataset}: folder {folder} does not exist ({expected})")
    return folder


# --------------------------------------------------------------------------- splits and images

def _assemble(dataset: str, request: DataRequest, root: Path, classes: list[str], train: Listing,
              val: Listing | None, test: Listing | None, holdout: float, description: str,
              skipped: list[Path], more: dict[str, Listing] | None = None) -> DataSplits:
    """Class list from the data, a stratified validation holdout when there is no official one, the
    requested fractions, then the images of what was selected are checked (and large ones cached).
    ``skipped`` files and fractions rounded up become the data set's notes. ``more`` are further
    held-out splits by name (``test_consistent`` becomes the data set's own, the rest its
    ``evaluation`` splits); like ``test`` they are used whole."""
    more = dict(more or {})
    size = request.image_size or DEFAULT_IMAGE_SIZE
    if size < MIN_IMAGE_SIZE:
        raise DataError(f"{dataset}: --image-size must be at least {MIN_IMAGE_SIZE}, got {size}")
    present = sorted(set(train.labels))
    if len(present) < 2:
        found = ", ".join(classes[c] for c in present) or "none"
        raise DataError(f"{dataset}: training data needs images of at least two classes, found: {found}")
    held = [part for part in (val, test, *more.values()) if part]
    untrained = sorted({classes[c] for part in held for c in part.labels} - {classes[c] for c in present})
    if untrained:
        raise DataError(f"{dataset}: class(es) with validation or test images but no training images: {describe(untrained)}")
    _check_distinct_files(dataset, ((_rel(p, root), p) for part in (train, *held) for p in part.paths))
    mapping = {old: new for new, old in enumerate(present)}
    class_names = [classes[c] for c in present]
    train = train.relabel(mapping)
    val = val.relabel(mapping) if val else None
    test = test.relabel(mapping) if test else None
    more = {name: part.relabel(mapping) for name, part in more.items()}

    if val is None:
        holdout = float(request.options.get("val_holdout", holdout))
        if not 0 < holdout < 1:
            raise DataError(f"{dataset}: validation holdout must be in (0, 1), got {holdout}")
        keep, held = stratified_split(torch.tensor(train.labels), holdout, request.seed)
        if len(held) == 0:
            raise DataError(f"{dataset}: too few training images ({len(train.paths)}) to hold out a validation split")
        train, val = train.take(keep), train.take(held)
    notes = _skipped_note(dataset, root, skipped)
    train = train.take(stratified_fraction(torch.tensor(train.labels), request.train_fraction, request.seed, "train",
                                           notes))
    val = val.take(stratified_fraction(torch.tensor(val.labels), request.val_fraction, request.seed + 1, "validation",
                                       notes))

    store = ImageStore(root, size)

    def open_split(name: str, listing: Listing) -> FileSplit:
        files, sizes = store.prepare(f"{dataset} {name}", listing.paths)
        if listing.masks is not None:
            store.check_masks(f"{dataset} {name}", listing.masks, sizes)
        return FileSplit(name, files, torch.tensor(listing.labels), size, listing.paths, listing.masks)

    opened = {name: open_split(name, part) for name, part in more.items()}
    return DataSplits(train=open_split("train", train), val=open_split("val", val),
                      test=open_split("test", test) if test else None,
                      test_consistent=opened.pop("test_consistent", None), evaluation=opened,
                      class_names=class_names, in_chans=3, image_size=size, description=description,
                      notes=notes)


# --------------------------------------------------------------------------- APTOS 2019

def _aptos_files(dataset: str, root: Path) -> tuple[Path, Path]:
    """(train.csv, image folder) in the Kaggle layout, the original tool's ``train/`` layout, or a
    folder holding train.csv with the PNGs beside it."""
    for table in (root / "train.csv", root / "train" / "train.csv"):
        if table.is_file():
            images = table.parent / "train_images"
            return table, images if images.is_dir() else table.parent
    raise DataError(f"{dataset}: no train.csv in {root} or {root / 'train'} "
                    f"(expected Kaggle's train.csv with train_images/)")


def build_aptos(request: DataRequest) -> DataSplits:
    """APTOS 2019 Blindness Detection: diabetic-retinopathy grades 0-4 of fundus photographs.
    No labelled test split exists; validation is a stratified 20% of train.csv (as the original)."""
    dataset = "aptos2019"
    root = _data_root(dataset, request)
    table_path, folder = _aptos_files(dataset, root)
    table = _read_table(dataset, table_path, ["id_code", "diagnosis"])
    ids = list(table["id_code"])
    _check_ids(dataset, table_path.name, "id_code", ids)

    def grade(value: str) -> int | None:
        number = _integer(value)
        return number if number is not None and 0 <= number < len(APTOS_GRADES) else None

    labels = _parse_labels(dataset, table_path.name, "diagnosis", ids, list(table["diagnosis"]), grade)
    skipped: list[Path] = []
    by_id = _files_by_id(dataset, root, _visible_files(folder, IMAGE_EXTENSIONS, False, skipped), lambda p: p.stem)
    paths = _join(dataset, root, table_path.name, ids, by_id, folder)
    return _assemble(dataset, request, root, APTOS_GRADES, Listing(paths, labels), None, None, 0.2,
                     "APTOS 2019 fundus photographs, diabetic-retinopathy grade", skipped)


# --------------------------------------------------------------------------- ISIC 2017

def _isic_listing(dataset: str, root: Path, part: str, task: str, skipped: list[Path]) -> Listing:
    table_path = root / f"ISIC-2017_{part}_Part3_GroundTruth.csv"
    folder = _need_folder(dataset, root / f"ISIC-2017_{part}_Data", f"the images of {table_path.name}")
    table = _read_table(dataset, table_path, ["image_id", "melanoma", "seborrheic_keratosis"])
    ids = list(table["image_id"])
    _check_ids(dataset, table_path.name, "image_id", ids)

    def flag(value: str) -> int | None:
        number = _integer(value)
        return number if number in (0, 1) else None

    melanoma = _parse_labels(dataset, table_path.name, "melanoma", ids, list(table["melanoma"]), flag)
    keratosis = _parse_labels(dataset, table_path.name, "seborrheic_keratosis", ids,
                              list(table["seborrheic_keratosis"]), flag)
    both = [i for i, m, k in zip(ids, melanoma, keratosis) if m and k]
    if both:
        raise DataError(f"{dataset}: {len(both)} image(s) in {table_path.name} are marked both melanoma and "
                        f"seborrheic_keratosis: {describe(both)}")
    labels = melanoma if task == "melanoma" else [1 if m else 2 if k else 0 for m, k in zip(melanoma, keratosis)]
    # Only .jpg: the training archive also holds <image_id>_superpixels.png files, which are not images to label.
    by_id = _files_by_id(dataset, root, _visible_files(folder, (".jpg", ".jpeg"), False, skipped), lambda p: p.stem)
    return Listing(_join(dataset, root, table_path.name, ids, by_id, folder), labels)


def build_isic(request: DataRequest) -> DataSplits:
    """ISIC 2017 skin-lesion classification (Part 3). ``options["task"]``: ``melanoma`` (melanoma
    against the rest, as the original) or ``3-class`` (nevus, melanoma, seborrheic keratosis). The
    official validation and test splits are used when their files are present."""
    dataset = "isic2017"
    root = _data_root(dataset, request)
    task = request.options.get("task", "melanoma")
    if task not in ISIC_TASKS:
        raise DataError(f"{dataset}: unknown task {task!r}; choose one of: {', '.join(ISIC_TASKS)}")
    training = root / f"ISIC-2017_{ISIC_SPLITS['train']}_Part3_GroundTruth.csv"
    if not training.is_file():
        raise DataError(f"{dataset}: {training.name} not found in {root}")
    skipped: list[Path] = []
    parts = {name: _isic_listing(dataset, root, part, task, skipped) for name, part in ISIC_SPLITS.items()
             if name == "train" or (root / f"ISIC-2017_{part}_Part3_GroundTruth.csv").is_file()}
    return _assemble(dataset, request, root, ISIC_TASKS[task], parts["train"], parts.get("val"), parts.get("test"),
                     0.2, f"ISIC 2017 dermoscopy, task {task}", skipped)


# --------------------------------------------------------------------------- NCI cervical images

def _nci_id(path: Path) -> str | None:
    """``X.jpg`` and ``X_C1.jpg`` are the image of IMAGE_ID X; other views (``X_C2.jpg``…) are not
    used, as in the original, which read only ``*_C1.jpg``."""
    match = NCI_VIEW.match(path.stem)
    return match["id"] if match["view"] in (None, "1") else None


def _nci_positive(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return None if number != number else int(number > 0)  # NaN is unknown, not negative


def build_nci(request: DataRequest) -> DataSplits:
    """NCI cervical images (NHS cohort): label = WRST_HIST_AFTER > 0 from
    ``covariate_data_training_NHS.xls`` (or a CSV export of it); validation is a stratified 25%."""
    dataset = "nci"
    root = _data_root(dataset, request)
    table_path = next((root / name for name in NCI_TABLES if (root / name).is_file()), None)
    if table_path is None:
        raise DataError(f"{dataset}: neither {NCI_TABLES[0]} nor {NCI_TABLES[1]} found in {root}")
    table = _read_table(dataset, table_path, ["IMAGE_ID", "WRST_HIST_AFTER"])
    ids = [re.sub(r"\.0$", "", i) for i in table["IMAGE_ID"]]  # ids typed as numbers in the sheet
    _check_ids(dataset, table_path.name, "IMAGE_ID", ids)
    labels = _parse_labels(dataset, table_path.name, "WRST_HIST_AFTER", ids, list(table["WRST_HIST_AFTER"]),
                           _nci_positive)
    skipped: list[Path] = []
    by_id = _files_by_id(dataset, root, _visible_files(root, (".jpg", ".jpeg"), True, skipped), _nci_id)
    paths = _join(dataset, root, table_path.name, ids, by_id, root)
    return _assemble(dataset, request, root, NCI_CLASSES, Listing(paths, labels), None, None, 0.25,
                     "NCI cervical images (NHS), WRST_HIST_AFTER > 0", skipped)


# --------------------------------------------------------------------------- a folder per class

def _class_folders(dataset: str, root: Path, split_dir: Path, skipped: list[Path]) -> dict[str, list[Path]]:
    classes = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{dataset}: no class folders in {split_dir} (expected <class>/<image files>)")
    loose = _visible_files(split_dir, IMAGE_EXTENSIONS, False, skipped)
    if loose:
        raise DataError(f"{dataset}: {len(loose)} image(s) outside any class folder: "
                        f"{describe([_rel(p, root) for p in loose])}")
    files = {d.name: _visible_files(d, IMAGE_EXTENSIONS, True, skipped, report_all=True) for d in classes}
    empty = [_rel(split_dir / name, root) for name, fs in files.items() if not fs]
    if empty:
        raise DataError(f"{dataset}: {len(empty)} class folder(s) without images: {describe(empty)}")
    return files


def build_folder(request: DataRequest) -> DataSplits:
    """A user's images, one subfolder per class, either directly in the data folder or under
    ``train/`` with optional ``val/`` (or ``validation/``) and ``test/`` beside it."""
    dataset = "folder"
    root = _need_folder(dataset, _data_root(dataset, request), "a folder of class folders")
    split_dirs = {name: next((root / f for f in folders if (root / f).is_dir()), None)
                  for name, folders in SPLIT_FOLDERS.items()}
    skipped: list[Path] = []
    if split_dirs["train"] is None:
        parts = {"train": _class_folders(dataset, root, root, skipped)}
    else:
        known = {d.name for d in split_dirs.values() if d is not None}
        stray = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in known)
        if stray:
            raise DataError(f"{dataset}: folder(s) beside train/ that are not val/ or test/: {describe(stray)}")
        parts = {name: _class_folders(dataset, root, d, skipped) for name, d in split_dirs.items() if d is not None}
    classes = sorted({name for files in parts.values() for name in files})
    listings = {part: Listing([p for name in sorted(files) for p in files[name]],
                              [classes.index(name) for name in sorted(files) for _ in files[name]])
                for part, files in parts.items()}
    return _assemble(dataset, request, root, classes, listings["train"], listings.get("val"), listings.get("test"),
                     0.2, f"image folders in {root}", skipped)


# --------------------------------------------------------------------------- a CSV of paths and labels

def _class_order(labels: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when every label is an integer (so 10 comes after 9)."""
    names = set(labels)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


# A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection): written with
# a leading single quote, which a spreadsheet shows as text and ``from_spreadsheet_cell`` takes off.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def to_spreadsheet_cell(value: str) -> str:
    """``value`` as a spreadsheet shows it as text: a quote before a formula start (also before one
    already quoted, so that reading it back gives exactly ``value``)."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_STARTS) else value


def from_spreadsheet_cell(cell: str) -> str:
    """The inverse of ``to_spreadsheet_cell``: what a csv data set's reader sees in a cell."""
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS) else cell


def _check_inside(dataset: str, table_path: Path, root: Path, table: pd.DataFrame, columns: list[str]) -> None:
    """Every file a row names must lie in the CSV's folder, after links: ``../../etc/passwd``, an
    absolute path or a link that leads out is refused, naming the first such row, before anything is
    opened (a data set may come from someone else, or be chosen on a dashboard page)."""
    for n, row in enumerate(table[columns].itertuples(index=False), start=2):  # line 1 is the header
        for column, value in zip(columns, row):
            if value and not is_inside(root / value, [root]):
                shown = value if len(value) <= 80 else value[:80] + "..."
                raise DataError(f"{dataset}: {table_path.name} row {n - 1} (line {n}), column {column}: {shown!r} leads outside "
                                f"the data folder {root} (paths are relative to the CSV's folder and stay in it)")


def build_csv(request: DataRequest) -> DataSplits:
    """A CSV with columns ``path,label`` (paths relative to the CSV's folder), optional ``mask`` (a
    relevance-mask image: nonzero = pixels the model must not rely on) and optional ``split``
    (train, val, or any other name, e.g. test, test_consistent, test_site_b: a held-out split evaluated
    and reported by name when a run ends). ``--data-dir`` is the CSV itself or a folder holding ``labels.csv``."""
    dataset = "csv"
    given = _data_root(dataset, request)
    table_path = given / "labels.csv" if given.is_dir() else given
    if not table_path.is_file():
        raise DataError(f"{dataset}: {table_path} not found (give the CSV file or a folder with labels.csv)")
    root = table_path.parent
    table = _read_table(dataset, table_path, ["path", "label"]).map(from_spreadsheet_cell)  # as exported
    names = list(table["path"])
    _check_ids(dataset, table_path.name, "path", names)
    blank = [p for p, label in zip(names, table["label"]) if not label]
    if blank:
        raise DataError(f"{dataset}: {len(blank)} row(s) of {table_path.name} have no label: {describe(blank)}")

    file_columns = ["path"] + (["mask"] if "mask" in table.columns else [])
    _check_inside(dataset, table_path, root, table, file_columns)  # before any listed file is looked at

    def located(column: str) -> list[Path | None]:
        paths = [(root / value if value else None) for value in table[column]]
        absent = [v for v, p in zip(table[column], paths) if p is not None and not p.is_file()]
        if absent:
            raise DataError(f"{dataset}: {len(absent)} file(s) in the {column} column of {table_path.name} "
                            f"do not exist: {describe(absent)}")
        return paths

    paths = located("path")
    _check_distinct_files(dataset, zip(names, paths))
    masks = located("mask") if "mask" in table.columns else None
    classes = _class_order(table["label"])
    labels = [classes.index(label) for label in table["label"]]
    if "split" in table.columns:
        splits = ["val" if s.lower() == "validation" else s.lower() for s in table["split"]]
        bad = [f"{p}={s!r}" for p, s, name in zip(names, table["split"], splits) if not SPLIT_NAME.fullmatch(name)]
        if bad:
            raise DataError(f"{dataset}: {len(bad)} split value(s) in {table_path.name} are not split names (train, "
                            f"val, or a held-out split such as test or test_site_b: up to 40 letters, digits, _ "
                            f"and -, no spaces or path characters): {describe(bad)}")
    else:
        splits = ["train"] * len(paths)
    everything = Listing(paths, labels, masks)
    parts = {name: everything.take(i for i, s in enumerate(splits) if s == name) for name in dict.fromkeys(splits)}
    if "train" not in parts:
        raise DataError(f"{dataset}: {table_path.name} has no rows with split=train")
    train, val, test = parts.pop("train"), parts.pop("val", None), parts.pop("test", None)
    return _assemble(dataset, request, root, classes, train, val, test, 0.2, f"images listed in {table_path}", [],
                     more=dict(sorted(parts.items())))


REAL_BUILDERS = {"aptos2019": build_aptos, "isic2017": build_isic, "nci": build_nci,
                 "folder": build_folder, "csv": build_csv}
