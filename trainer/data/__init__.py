"""Data sets by name: the generated confounded sets and loaders for the study's and users' data."""
from __future__ import annotations

from .base import DataError, DataRequest, DataSplits, Split, TensorSplit
from .synthetic import SYNTHETIC_BUILDERS

DATASETS = dict(SYNTHETIC_BUILDERS)
try:  # loaders for files on disk (APTOS 2019, ISIC 2017, NCI, folder, csv)
    from .real import REAL_BUILDERS
    DATASETS.update(REAL_BUILDERS)
except ImportError:  # pragma: no cover - only while real.py is being written
    pass


def build_dataset(name: str, request: DataRequest) -> DataSplits:
    try:
        builder = DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}") from None
    return builder(request)


__all__ = ["DATASETS", "DataError", "DataRequest", "DataSplits", "Split", "TensorSplit", "build_dataset"]
