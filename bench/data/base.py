"""The dataset container, registry and seeded train/validation split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry

DATASETS: Registry = Registry("dataset", group="trilemma_bench.datasets", packages=("bench.data",))
register_dataset = DATASETS.register


@dataclass
class ImageData:
    """A labelled image dataset held as tensors: ``x_*`` uint8 (N, 3, H, W), ``y_*`` int64 (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    source: str = ""
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    # where what is derived from these images is cached (class-Gaussian fits); "" = none set
    cache_dir: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "train": int(self.x_train.shape[0]),
            "val": int(self.x_val.shape[0]) if self.x_val is not None else 0,
            "test": int(self.x_test.shape[0]),
            "image_shape": list(self.image_shape),
            **({"cache_dir": self.cache_dir} if self.cache_dir else {}),
            **self.info,
        }


def load_dataset(cfg) -> ImageData:
    """Load ``cfg.dataset`` (a DataConfig) through the registry."""
    factory = DATASETS.get(cfg.dataset)
    data = factory(cfg=cfg)
    _check(data)
    _check_size(data, int(getattr(cfg, "image_size", 0) or 0))
    return data


def _check_size(data: ImageData, size: int) -> None:
    """``data.image_size`` > 0 asks for size x size images: only folder:PATH datasets resize to it."""
    h, w = data.image_shape[1:]
    if size and (h, w) != (size, size):
        raise BenchError(
            f"data.image_size={size}, but dataset {data.name} has {h}x{w} images and only folder:PATH "
            "datasets are resized; --set data.image_size=0 (the dataset's own size)"
        )


def load_run_data(cfg) -> ImageData:
    """A run's data (``cfg`` a RunConfig): its dataset with the seeded validation split and subset
    applied; what is derived from it is cached under ``<data.data_dir>/cache``."""
    data = split_validation(
        load_dataset(cfg.data), cfg.data.val_size, cfg.seed, cfg.data.train_subset
    )
    data.cache_dir = str(Path(cfg.data.data_dir) / "cache")
    return data


def _check(data: ImageData) -> None:
    """Refuse, in one line, a dataset no classifier can be trained and tested on."""
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if not (
            isinstance(x, torch.Tensor)
            and x.dtype == torch.uint8
            and x.ndim == 4
            and x.shape[1] in (1, 3)
        ):
            raise BenchError(
                f"dataset {data.name}: {split} images must be uint8 (N, 3, H, W) (or 1 channel), got "
                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
            )
        if not (
            isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (x.shape[0],)
        ):
            raise BenchError(
                f"dataset {data.name}: {split} labels must be int64 (N,), one per image"
            )
        if x.shape[0] == 0:
            raise BenchError(f"dataset {data.name} has no {split} images; a run needs both splits")
    if data.x_train.shape[1:] != data.x_test.shape[1:]:
        raise BenchError(
            f"dataset {data.name}: train images are {tuple(data.x_train.shape[1:])} but test images "
            f"{tuple(data.x_test.shape[1:])}; both splits need one image size"
        )
    if len(data.classes) < 2:
        raise BenchError(
            f"dataset {data.name} has {len(data.classes)} class; a classifier needs at least 2 (every "
            "accuracy would be 100%)"
        )
    for split in ("train", "test"):  # a label out of range would fail at the first evaluation
        y = getattr(data, f"y_{split}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= len(data.classes):
            raise BenchError(
                f"dataset {data.name}: {split} labels must lie in [0, {len(data.classes) - 1}] (one "
                f"per class of {len(data.classes)}), got {low if low < 0 else high}"
            )
    counts = torch.bincount(data.y_train, minlength=len(data.classes))
    empty = [data.classes[i] for i in range(len(data.classes)) if counts[i] == 0]
    if empty:
        shown = ", ".join(map(repr, empty[:5])) + (
            f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        )
        raise BenchError(
            f"dataset {data.name}: class{'es' if len(empty) > 1 else ''} {shown} "
            f"{'have' if len(empty) > 1 else 'has'} no training images; drop them from 'classes' "
            "or add images"
        )


def split_validation(data: ImageData, val_size: int, seed: int, train_subset: int = 0) -> ImageData:
    """Hold ``val_size`` training images out for validation, chosen by ``seed``.

    ``train_subset`` > 0 keeps only that many of the remaining training images.
    """
    n = data.x_train.shape[0]
    if val_size < 0 or val_size >= n:
        raise BenchError(f"data.val_size={val_size} must lie in [0, {n - 1}] for {data.name}")
    g = torch.Generator().manual_seed(10_007 + seed)
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if train_subset > 0:
        train_idx = train_idx[:train_subset]
    train_idx = train_idx.sort().values  # keep the dataset's order; shuffling happens per epoch
    val_idx = val_idx.sort().values
    return dataclasses.replace(
        data,
        x_train=data.x_train[train_idx],
        y_train=data.y_train[train_idx],
        x_val=data.x_train[val_idx] if val_size > 0 else None,
        y_val=data.y_train[val_idx] if val_size > 0 else None,
        info=dict(data.info),
        cache_dir="",
    )
