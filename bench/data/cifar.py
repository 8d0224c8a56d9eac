"""CIFAR-10 / CIFAR-100 through torchvision's loaders, from ``data_dir`` (downloaded if possible)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.data.base import ImageData, register_dataset

_ARCHIVES = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python"),
}


def _load(name: str, cfg) -> ImageData:
    import torchvision

    cls_name, archive, folder = _ARCHIVES[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(cfg.data_dir).expanduser()
    where = (
        f"{name} not found in {root}/: put {archive} (or its extracted {folder}/) there, "
        f"or point --data-dir at the folder that holds it"
    )

    def build(train: bool, download: bool):
        return cls(root=str(root), train=train, download=download)

    try:
        sets = [build(True, False), build(False, False)]
    except RuntimeError:
        if not cfg.download:
            raise BenchError(where)
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            root.mkdir(parents=True, exist_ok=True)
            sets = [build(True, True), build(False, True)]
        except Exception as exc:
            raise BenchError(f"{where} (download failed: {type(exc).__name__})")
        finally:
            socket.setdefaulttimeout(old)

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        return x, y

    (x_tr, y_tr), (x_te, y_te) = tensors(sets[0]), tensors(sets[1])
    return ImageData(
        name=name,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        classes=list(sets[0].classes),
        source=str(root / folder),
    )


@register_dataset("cifar10")
def cifar10(cfg) -> ImageData:
    return _load("cifar10", cfg)


@register_dataset("cifar100")
def cifar100(cfg) -> ImageData:
    return _load("cifar100", cfg)
