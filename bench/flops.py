"""Counting FLOPs and the device's peak, for `bench perf`'s forward-equivalents and MFU.

:class:`FlopCount` totals the aten ops run inside a block by torch's own formulas;
:func:`measure_peak_flops` times a large matmul; :func:`sync` waits for the device.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the aten ops run inside the block, by torch's own formulas
    (``torch.utils.flop_counter.flop_registry``: matmuls and convolutions, forward and backward).

    Unlike ``FlopCounterMode`` it tracks no modules, so it also works around
    ``torch.autograd.grad`` with respect to inputs (attack and sampler steps).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def measure_peak_flops(device: torch.device, seconds: float = 1.0) -> tuple[float, str]:
    """Dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    sync(device)
    dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt, f"{str(dtype).replace('torch.', '')} matmul {n}x{n}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    x = torch.rand(2, *shape, device=device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCount() as fc:
        model(x)
    model.train(was)
    return fc.total / 2
