"""Model EMA (``train.ema_decay``), an exponential moving average of the weights, as the trainer's
hook; what it averages, where it is saved and which steps use it: docs/methods.md, "Model EMA".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bench.core.errors import BenchError
from bench.train.hooks import Hook


class ModelEMA(Hook):
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise BenchError(f"train.ema_decay must lie in (0, 1) (0 turns EMA off), got {decay}")
        self.decay = float(decay)
        live = model.state_dict()  # views of the model's own tensors, updated in place
        self.shadow = {k: v.detach().clone() for k, v in live.items()}
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        avg = [k for k in self.shadow if k in names and self.shadow[k].is_floating_point()]
        self._avg = ([self.shadow[k] for k in avg], [live[k] for k in avg])
        self._copy = [(self.shadow[k], live[k]) for k in self.shadow if k not in set(avg)]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards ``model``, the model it was created from (its tensors
        are held, so no state_dict is built on the training step's path)."""
        torch._foreach_lerp_(self._avg[0], self._avg[1], 1.0 - self.decay)
        for avg, now in self._copy:
            avg.copy_(now)

    def after_update(self, tr) -> None:
        self.update(tr.model)  # after AWP's restore: the average of the weights the step left

    def save_into(self, payload: dict) -> None:
        payload["ema_model"] = self.state_dict()

    def load_from(self, tr, ckpt: dict, path) -> None:
        if "ema_model" not in ckpt:
            raise BenchError(
                f"checkpoint {path} holds no EMA weights but this run keeps them (train.ema_decay="
                f"{self.decay}); use a checkpoint written by this run"
            )
        self.load_state_dict(ckpt["ema_model"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise BenchError(
                f"the checkpoint's EMA weights lack {missing[0]}; use a checkpoint written by this run"
            )
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
