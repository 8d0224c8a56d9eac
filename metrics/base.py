"""Metric registry and shared helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench.registry import Registry

def _builtin_metric_modules() -> tuple[str, ...]:
    """Every module of the ``metrics`` package is a built-in metric module (imported on first use)."""
    import pkgutil

    import metrics

    skip = {"base", "protocols"}
    return tuple(f"metrics.{m.name}" for m in pkgutil.iter_modules(metrics.__path__)
                 if m.name not in skip and not m.name.startswith("_"))


class _MetricRegistry(Registry):
    def _load(self) -> None:
        if not self._loaded:
            self._builtin_modules = _builtin_metric_modules()
        super()._load()


METRICS: Registry = _MetricRegistry("metric", group="trilemma_bench.metrics")
register_metric = METRICS.register


@dataclass
class EvalContext:
    device: torch.device
    batch_size: int = 256
    seed: int = 0
    out_dir: Path | None = None  # where a metric may write artifacts (figures)
    show_progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def test_subset(data, n_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` test images as float [0, 1] and their labels (fixed subset)."""
    n = min(n_examples, data.x_test.shape[0]) if n_examples > 0 else data.x_test.shape[0]
    return data.x_test[:n], data.y_test[:n]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        yield xb, y[i : i + batch_size].to(device, non_blocking=True)


def progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True)


MetricFn = Callable[..., dict[str, Any]]
