"""Datasets: a registry of loaders returning uint8 image tensors, plus device-resident batching."""

from bench.data.base import (
    DATASETS,
    ImageData,
    load_dataset,
    load_run_data,
    register_dataset,
    split_validation,
)
from bench.data.stream import BatchStream, augment_batch, to_float

__all__ = [
    "ImageData",
    "DATASETS",
    "register_dataset",
    "load_dataset",
    "load_run_data",
    "split_validation",
    "BatchStream",
    "augment_batch",
    "to_float",
]
