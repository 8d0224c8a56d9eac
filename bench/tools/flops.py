"""FLOPs and peak FLOP/s for `bench perf`'s forward-equivalents and MFU: :class:`FlopCount` totals
the aten ops run inside a block by torch's own formulas, :class:`Peaks` measures the matmul peak a
step is compared with (bench/tools/perf.py's docstring says why each is taken as it is).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from bench.core.device import Precision, precision


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops_per_image(
    model: torch.nn.Module, shape: tuple[int, ...], device: torch.device
) -> float:
    x = torch.rand(2, *shape, device=device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCount() as fc:
        model(x)
    model.train(was)
    return fc.total / 2


def peak_for(step_prec: str, device: torch.device) -> str:
    """Which measured peak a step of ``step_prec`` is divided by: its own on CUDA (bf16, TF32 and
    fp32 tensor-core rates differ several-fold); on the CPU the fp32 one (CPU autocast runs many
    ops in fp32 and has no separate bf16 peak worth quoting)."""
    return step_prec if device.type == "cuda" else "fp32"


def matmul_peak(device: torch.device, prec: str, seconds: float = 1.0) -> tuple[float, str]:
    """Dense matmul FLOP/s in ``prec`` (bf16, tf32 or fp32): 8192^3 on CUDA, 1024^3 on CPU."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    with precision(Precision(tf32=prec == "tf32")):
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
    how = f"{'bf16' if prec == 'bf16' else 'fp32'} matmul {n}x{n}" + (
        " (TF32)" if prec == "tf32" else ""
    )
    return 2 * n**3 * reps / dt, how


class Peaks:
    """The device's peak FLOP/s per precision: each measured once, when a step first needs it
    (:func:`peak_for`), or one given number for all."""

    def __init__(
        self, device: torch.device, given_tflops: float | None = None, seconds: float = 1.0
    ):
        self.device, self.given, self.seconds = device, given_tflops, seconds
        self.measured: dict[str, tuple[float, str]] = {}

    def get(self, step_prec: str) -> tuple[str, float]:
        """The peak's name and its FLOP/s for a step of ``step_prec``."""
        if self.given:
            return "given", self.given * 1e12
        name = peak_for(step_prec, self.device)
        if name not in self.measured:
            self.measured[name] = matmul_peak(self.device, name, self.seconds)
        return name, self.measured[name][0]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        if self.given:
            return {"given": {"tflops": self.given, "measured_by": "given (--peak-tflops)"}}
        return {
            k: {"tflops": v / 1e12, "measured_by": how} for k, (v, how) in self.measured.items()
        }
