"""Named timing regions for `bench perf`: free when no measurement is active.

Code wraps its phases in ``with region("attack"):`` (also ``"sampler"``, ``"update"``).
Outside :func:`measure_regions` a region is a no-op; inside, it synchronises the device at
its edges and adds the wall time to its name (nested regions count toward the innermost only
through the outer region's total, so keep regions disjoint).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_active: dict[str, float] | None = None
_device: torch.device | None = None


def _sync() -> None:
    if _device is not None and _device.type == "cuda":
        torch.cuda.synchronize(_device)


@contextmanager
def region(name: str) -> Iterator[None]:
    if _active is None:
        yield
        return
    _sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        _active[name] += time.perf_counter() - t0


@contextmanager
def measure_regions(device: torch.device) -> Iterator[dict[str, float]]:
    """Collect the seconds spent in each region while the block runs."""
    global _active, _device
    prev = (_active, _device)
    _active, _device = defaultdict(float), device
    try:
        yield _active
    finally:
        _active, _device = prev
