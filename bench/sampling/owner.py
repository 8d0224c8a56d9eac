"""``SamplerOwner``: the base of every method that owns a :class:`ContrastiveSampler` (the JEM
family, EB-JDAT). It holds ``self.sampler`` (built in the subclass's ``setup``) and gives the
method its checkpointed state (the replay buffer) and, with each checkpoint, a PNG grid of
buffer entries spread over the whole buffer (``method.grid_size`` of them; 0 = none), recorded
as the run's ``buffer_grid`` artifact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bench.sampling.images import save_grid
from bench.sampling.langevin import from_sym
from bench.sampling.sampler import ContrastiveSampler
from methods.base import Method


class SamplerOwner(Method):
    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.sampler: ContrastiveSampler | None = None
        self._artifacts: dict[str, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("sampler")
        if self.sampler is not None and saved is not None:
            self.sampler.load_state_dict(saved)

    def on_checkpoint(self, run_dir, step: int) -> None:
        if self.cfg.grid_size <= 0 or self.sampler is None or self.sampler.buffer is None:
            return
        buf = self.sampler.buffer
        n = min(self.cfg.grid_size, buf.size)
        idx = torch.linspace(0, buf.size - 1, n).round().long().to(buf.x.device)  # all class blocks
        rel = Path("samples") / f"buffer-step-{step:08d}.png"
        save_grid(from_sym(buf.x[idx]).clamp(0, 1), Path(run_dir) / rel, nrow=max(1, round(math.sqrt(n))))
        self._artifacts["buffer_grid"] = str(rel)

    def artifacts(self) -> dict[str, str]:
        return dict(self._artifacts)
