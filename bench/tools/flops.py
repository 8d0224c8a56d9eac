"""Counting FLOPs for `bench perf`'s forward-equivalents and MFU, and waiting for the device.

:class:`FlopCount` totals the aten ops run inside a block by torch's own formulas;
:func:`sync` waits for the device (``bench.tools.perf.matmul_peak`` times the peak a step is compared with).
"""

from __future__ import annotations

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
