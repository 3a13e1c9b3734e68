"""``hitl-export RUN DIR``: a run's data and the masks it was given, as a csv data set.

``DIR/labels.csv`` has the columns ``path,label,mask,split`` that ``--dataset csv`` reads: every
training, validation and test image as the trainer saw it (PNG at the run's image size), and for each
annotated training image its mask (PNG, white = must not rely on), the union of every answer the run
applied (its last checkpoint's feedback set). Images a person flagged as mislabelled are left out.
``hitl-train --dataset csv --data-dir DIR --prior-masks all`` then trains with those masks from the
start. Images and masks are written first and ``labels.csv`` last, so a half-finished export is no
data set. A cell that a spreadsheet would take for a formula (a label starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) is written after a single quote, so that it shows as text; the csv
reader takes the quote off (``trainer/data/real.py``, ``from_spreadsheet_cell``)."""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import protocol
from .config import TrainConfig
from .data import DataError, build_run_dataset
from .data.real import to_spreadsheet_cell

LABELS_FILE = "labels.csv"


def mask_png(mask: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255, "L").save(buf, format="PNG")
    return buf.getvalue()


def load_feedback(run: protocol.RunDir) -> dict:
    """The feedback set (position, masks, excluded) from the run's last checkpoint."""
    path = run.last_checkpoint
    if not path.exists():
        raise DataError(f"{run.path} has no checkpoint ({protocol.LAST_CHECKPOINT}): nothing to export yet")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["feedback"]
    except Exception as e:
        raise DataError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None


def export_run(run: protocol.RunDir, out: Path) -> dict:
    """Write the csv data set; returns counts per split and of masks."""
    from .data.images import png_bytes

    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; export into a new folder")
    cfg = TrainConfig.from_dict(protocol.read_config(run))
    feedback = load_feedback(run)
    data = build_run_dataset(cfg)
    position, masks, excluded = feedback["position"], feedback["masks"], feedback["excluded"]
    rows, counts = [], {"masks": 0}
    for part, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        if split is None:
            continue
        counts[part] = 0
        for i in range(len(split)):
            if part == "train" and bool(excluded[i]):
                continue
            image, label, _ = split[i]
            path = f"{part}/{i:05d}.png"
            protocol.atomic_write_bytes(out / path, png_bytes(image))
            mask = ""
            if part == "train" and int(position[i]) >= 0:
                mask = f"masks/{i:05d}.png"
                protocol.atomic_write_bytes(out / mask, mask_png(masks[int(position[i])]))
                counts["masks"] += 1
            rows.append({"path": path, "label": data.class_names[label], "mask": mask, "split": part})
            counts[part] += 1
    columns = ["path", "label", "mask", "split"]
    text = io.StringIO()
    plain = csv.writer(text, lineterminator="\n")
    quoted = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_ALL)  # with "\n" lines, csv leaves a "\r" bare
    plain.writerow(columns)
    for row in rows:
        cells = [to_spreadsheet_cell(row[c]) for c in columns]
        (quoted if any("\r" in c for c in cells) else plain).writerow(cells)
    protocol.atomic_write_text(out / LABELS_FILE, text.getvalue())
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hitl-export", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run directory, or a run name under --runs-dir")
    p.add_argument("out", help="folder to write the csv data set into (new or empty)")
    p.add_argument("-md", "--runs-dir", default="checkpoints")
    args = p.parse_args(argv)
    try:
        counts = export_run(protocol.run_from_argument(args.run, args.runs_dir), Path(args.out))
    except (DataError, protocol.ProtocolError) as e:
        print(f"hitl-export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {counts.get('train', 0)} training images ({counts['masks']} with masks), "
          f"{counts.get('val', 0)} validation and {counts.get('test', 0)} test images to {args.out}/{LABELS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
