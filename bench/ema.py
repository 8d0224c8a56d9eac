"""Model EMA (``train.ema_decay``): an exponential moving average of the weights, the model that
modern adversarial-training recipes evaluate (e.g. Gowal et al. 2020, Rebuffi et al. 2021).

After every optimiser step each parameter's average moves towards the new value,
``avg <- decay * avg + (1 - decay) * w``, as one fused ``_foreach_lerp_`` on the device (no host
synchronisation). Buffers (batch-norm running statistics) are copied, not averaged. The average
is a full ``state_dict`` of the model, so it loads wherever the model's weights load: it is
checkpointed as ``ema_model`` beside ``model``, validation and the end-of-run evaluation use it,
and ``bench eval`` / ``bench sample`` load it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from bench.errors import BenchError


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise BenchError(f"train.ema_decay must lie in (0, 1) (0 turns EMA off), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        self._avg_keys = [k for k in self.shadow if k in names and self.shadow[k].is_floating_point()]
        self._copy_keys = [k for k in self.shadow if k not in set(self._avg_keys)]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = model.state_dict()
        torch._foreach_lerp_([self.shadow[k] for k in self._avg_keys], [current[k].detach() for k in self._avg_keys],
                             1.0 - self.decay)
        for k in self._copy_keys:
            self.shadow[k].copy_(current[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise BenchError(f"the checkpoint's EMA weights lack {missing[0]}; use a checkpoint written by this run")
        with torch.no_grad():
            for k, v in self.shadow.items():
                v.copy_(state[k])

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The averaged weights in ``model`` for the block, its own weights back afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(own)
