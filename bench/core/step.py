"""What the shared trainer hands a method's training step, and what it asks of a method.

This is the trainer's side of the method contract: :class:`StepContext` (what a step sees besides
the model and its batch), :class:`BatchSpec` (how each of a step's batches is drawn) and
:class:`TrainingMethod` (the calls the trainer makes). The plugin base class that implements it,
with its registry, is ``methods.base.Method``; the trainer never imports the plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class BatchSpec:
    """How one of a step's batches is drawn and prepared; None keeps the run's ``data.*`` setting."""

    batch_size: int | None = None
    # the config key that sets batch_size (for error messages)
    batch_size_setting: str = "data.batch_size"
    augment: bool | None = None  # random crop + flip
    noise_std: float | None = None  # Gaussian noise, pixel units


@dataclass
class StepContext:
    """What a training step sees besides the model and the batch."""

    step: int  # global optimiser step (0-based)
    epoch: int
    device: torch.device
    num_classes: int
    autocast: Any  # a context-manager factory: ``with ctx.autocast(): ...`` (bf16 on CUDA)
    # the independent batches the method's BatchSpec asks for (``extra_batches``), in order
    extra_batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    data: Any = None  # the ImageData (train split) for methods that need dataset statistics
    steps_per_epoch: int = 0
    second_pass: bool = False  # True while SAM or AWP recomputes the loss at the perturbed weights
    memo: dict[str, Any] = field(default_factory=dict)

    def reuse(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per step: sampled or adversarial inputs are computed on the first pass
        and returned as they are when the loss is recomputed (SAM's or AWP's second pass), as the
        references do. Give each input its own name: on the first pass a repeated name is an error."""
        if self.second_pass:
            if name not in self.memo:
                raise KeyError(
                    f"ctx.reuse({name!r}): nothing was made under this name on the first pass"
                )
            return self.memo[name]
        if name in self.memo:
            raise KeyError(
                f"ctx.reuse({name!r}) called twice in one step; give each input its own name"
            )
        self.memo[name] = make()
        return self.memo[name]

    @property
    def epoch_progress(self) -> float:
        """Fractional epochs completed before this step (``step / steps_per_epoch``)."""
        return self.step / self.steps_per_epoch if self.steps_per_epoch else float(self.epoch)


class TrainingMethod(Protocol):
    """The calls the trainer makes on a method (``methods.base.Method`` implements all of them)."""

    name: str
    cfg: Any

    def batch_specs(self) -> list[BatchSpec]: ...

    def setup(self, model: torch.nn.Module, data: Any, device: torch.device) -> None: ...

    def loss_weights(self) -> dict[str, float]: ...

    def training_step(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def on_checkpoint(self, run_dir: Any, step: int) -> None: ...

    def artifacts(self) -> dict[str, str]: ...
