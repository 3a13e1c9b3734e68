"""Data sets by name: the generated confounded sets and loaders for the study's and users' data."""
from __future__ import annotations

from .base import DataError, DataRequest, DataSplits, Split, TensorSplit
from .synthetic import SYNTHETIC_BUILDERS

from .real import REAL_BUILDERS

DATASETS = {**SYNTHETIC_BUILDERS, **REAL_BUILDERS}  # loaders for files on disk: APTOS 2019, ISIC 2017, NCI, folder, csv


def build_dataset(name: str, request: DataRequest) -> DataSplits:
    try:
        builder = DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}") from None
    return builder(request)


def build_run_dataset(cfg) -> DataSplits:
    """The data set a run's config (a TrainConfig) names, built as its trainer built it."""
    return build_dataset(cfg.dataset, DataRequest(cfg.data_dir, cfg.image_size, cfg.seed, cfg.train_fraction,
                                                  cfg.val_fraction, cfg.dataset_options))


__all__ = ["DATASETS", "DataError", "DataRequest", "DataSplits", "Split", "TensorSplit", "build_dataset", "build_run_dataset"]
