"""Which torch device a run uses (``auto``: CUDA when present, ``cpu``, ``cuda`` or ``cuda:N``), and
the numeric precision flags that training and evaluation set explicitly on it.

Why explicit: PyTorch's defaults differ between its two kinds of fp32 kernel (cuDNN convolutions
may use TF32, cuBLAS matmuls may not) and between versions, so an "fp32" attack or FID feature
pass would silently run TF32 convolutions on an Ampere or newer GPU. Training sets its flags
from ``train.tf32`` and ``train.deterministic`` (:func:`training_precision`), evaluation from
``eval.tf32`` (:func:`evaluation_precision`), and both record the flags they ran under.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bench.core.errors import BenchError

# what deterministic cuBLAS needs (one 4 MiB workspace per handle); read when a handle's workspace
# is first made, so it must be in the environment before the first matmul on the GPU
CUBLAS_DETERMINISTIC = ":4096:8"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu or auto"
        )
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """The flags a block of work runs under. ``tf32``: TF32 for fp32 matmuls (cuBLAS) and convolutions
    (cuDNN), acting on CUDA GPUs of the Ampere generation and newer only; ``cudnn_benchmark``: cuDNN
    autotunes its convolution algorithms per input shape (fast for fixed shapes, not reproducible);
    ``deterministic``: torch's deterministic algorithms."""

    tf32: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False

    def as_dict(self) -> dict[str, Any]:
        """As :func:`current_precision` reads them back once they are set."""
        return {
            "tf32_matmul": self.tf32,
            "tf32_cudnn": self.tf32,
            "cudnn_benchmark": self.cudnn_benchmark,
            "deterministic": self.deterministic,
        }


def training_precision(train) -> Precision:
    """The flags of training under ``train`` (a TrainConfig). TF32 belongs to the fast path, like
    bf16 autocast: ``train.fast=false`` (the plain path, for debugging numerics) is full fp32.
    Autotuning is on with the fast path unless ``train.deterministic`` asks for reproducible kernels."""
    return Precision(
        tf32=train.fast and train.tf32,
        cudnn_benchmark=train.fast and not train.deterministic,
        deterministic=train.deterministic,
    )


def evaluation_precision(tf32: bool) -> Precision:
    """The flags of every evaluation: full fp32 unless ``eval.tf32``; no autotuning (AutoAttack's batches
    shrink as points fall, and each new shape would be tuned again; fixed algorithms also give the
    same numbers on every evaluation of the same weights)."""
    return Precision(tf32=tf32, cudnn_benchmark=False)


def current_precision() -> dict[str, Any]:
    """The flags as torch holds them now: what a result records as the precision it was computed under."""
    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }


@contextlib.contextmanager
def precision(flags: Precision) -> Iterator[dict[str, Any]]:
    """Run the block under ``flags`` (TF32 and cuDNN autotuning; deterministic algorithms are
    :func:`bench.train.trainer.deterministic_algorithms`' job) and yield them as torch holds them; the
    previous flags are put back afterwards."""
    saved = current_precision()
    _set_flags(flags.tf32, flags.tf32, flags.cudnn_benchmark)
    try:
        yield current_precision()
    finally:
        _set_flags(saved["tf32_matmul"], saved["tf32_cudnn"], saved["cudnn_benchmark"])


def _set_flags(tf32_matmul: bool, tf32_cudnn: bool, cudnn_benchmark: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
    torch.backends.cudnn.allow_tf32 = tf32_cudnn
    torch.backends.cudnn.benchmark = cudnn_benchmark


def prepare_determinism(enabled: bool) -> None:
    """Before anything runs on the device: put the cuBLAS workspace setting that deterministic matmuls
    need into the environment (a value the user set is kept). Setting it only when training starts
    is too late: the run's first forward pass (the architecture probe) has made the cuBLAS workspace."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
