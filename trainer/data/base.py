"""What every data set hands the trainer: splits of images in [0, 1] at the model's size, labels,
and, where known, per-image ground-truth masks of the confounder (for the simulated annotator and
the wrong-reason metric)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad input data; the message names the problem and the first offending files, in one line.

    A DataError raised in a DataLoader worker (an image damaged after start-up) comes back to the
    trainer as ``DataError("Caught DataError in DataLoader worker …" + both tracebacks)``; of that
    only the original message, the last line, is kept."""

    def __init__(self, message: str = ""):
        if message.startswith(f"Caught {type(self).__name__} ") and "\n" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message)


class Split(Dataset):
    """A split: ``split[i] -> (image float32 C×H×W in [0, 1], label int, i)``.

    ``labels`` is a LongTensor of all labels (sampling and stratification need them without decoding
    images). ``gt_mask(i)`` is a bool H×W tensor of the pixels that must not matter, or None.
    ``in_memory`` splits can be indexed with a tensor of indices for a whole batch at once.
    """

    name: str = "split"
    labels: torch.Tensor
    in_memory: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def gt_mask(self, i: int) -> torch.Tensor | None:
        return None

    @property
    def has_gt_masks(self) -> bool:
        return False


class TensorSplit(Split):
    """A split held in memory as uint8 images (N×C×H×W) and optional bool masks (N×H×W)."""

    in_memory = True

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor,
                 masks: torch.Tensor | None = None):
        assert images.dtype == torch.uint8 and images.ndim == 4, "images must be uint8 N×C×H×W"
        self.name = name
        self.images = images
        self.labels = labels.long()
        self.masks = masks

    def __getitem__(self, i):
        return self.images[i].float().div_(255), int(self.labels[i]), i

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx].float().div_(255), self.labels[idx]

    def gt_mask(self, i: int) -> torch.Tensor | None:
        return None if self.masks is None else self.masks[i]

    @property
    def has_gt_masks(self) -> bool:
        return self.masks is not None

    def subset(self, idx: torch.Tensor, name: str | None = None) -> "TensorSplit":
        return TensorSplit(name or self.name, self.images[idx], self.labels[idx],
                           None if self.masks is None else self.masks[idx])


@dataclass
class DataSplits:
    """The splits of one data set. ``test`` is the decorrelated split for confounded sets;
    ``test_consistent`` keeps the train-time correlation, as a reference (the generated sets have one;
    a csv set may), so that the two give the shortcut gap. ``evaluation`` holds further held-out splits
    by name (a csv set's ``test_site_b``): like ``test`` they are never trained or validated on, only
    evaluated and reported by name when a run ends."""

    train: Split
    val: Split
    class_names: list[str]
    in_chans: int
    image_size: int
    test: Split | None = None
    test_consistent: Split | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)  # warnings the trainer prints at start, one line each
    evaluation: dict[str, Split] = field(default_factory=dict)  # further held-out splits, by name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def held_out(self) -> dict[str, Split]:
        """Every split evaluated when a run ends, by name: ``test``, ``test_consistent``, then the others."""
        named = {"test": self.test, "test_consistent": self.test_consistent, **self.evaluation}
        return {name: split for name, split in named.items() if split is not None}


@dataclass
class DataRequest:
    """What the CLI asks of a data set builder."""

    data_dir: str | None
    image_size: int
    seed: int
    train_fraction: float = 1.0
    val_fraction: float = 1.0
    options: dict = field(default_factory=dict)


DatasetBuilder = Callable[[DataRequest], DataSplits]
