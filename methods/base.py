"""The method plugin interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from bench.config import from_dict, to_dict
from bench.registry import Registry


class _MethodRegistry(Registry):
    _builtin_loader = None

    def _load(self) -> None:
        if not self._loaded and self._builtin_loader is not None:
            self._builtin_loader()
        super()._load()


METHODS: _MethodRegistry = _MethodRegistry("method", group="trilemma_bench.methods")


def register_method(name: str):
    """Class decorator: ``@register_method("my-method")``."""

    def add(cls):
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return add


def get_method(name: str) -> type["Method"]:
    return METHODS.get(name)


@dataclass(frozen=True)
class BatchSpec:
    """How one of a step's batches is drawn and prepared; None keeps the run's ``data.*`` setting."""

    batch_size: int | None = None
    batch_size_setting: str = "data.batch_size"  # the config key that sets batch_size (for error messages)
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
    extra: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # independent batches
    data: Any = None  # the ImageData (train split) for methods that need dataset statistics
    steps_per_epoch: int = 0
    sam_pass: bool = False  # True while SAM recomputes the loss at the perturbed weights
    memo: dict[str, Any] = field(default_factory=dict)

    def reuse(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per step: sampled or adversarial inputs are computed on the first pass
        and returned as they are when the loss is recomputed (SAM's second pass), as the
        references do. Give each input its own name: on the first pass a repeated name is an error."""
        if self.sam_pass:
            if name not in self.memo:
                raise KeyError(f"ctx.reuse({name!r}): nothing was made under this name on the first pass")
            return self.memo[name]
        if name in self.memo:
            raise KeyError(f"ctx.reuse({name!r}) called twice in one step; give each input its own name")
        self.memo[name] = make()
        return self.memo[name]

    @property
    def epoch_progress(self) -> float:
        """Fractional epochs completed before this step (``step / steps_per_epoch``)."""
        return self.step / self.steps_per_epoch if self.steps_per_epoch else float(self.epoch)


class Method:
    """Base class for training methods.

    Subclasses set ``Config`` (a dataclass with the reference defaults) and implement
    ``training_step``. The trainer minimises ``sum(weights[k] * terms[k])`` over the terms
    named in :meth:`loss_weights`; every other returned value is logged only (detached).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    run_defaults: ClassVar[dict[str, Any]] = {}
    extra_batches: ClassVar[int] = 0  # independent training batches per step besides the main one
    reference: ClassVar[str] = ""  # the paper / code it follows
    # --set items that make the step follow the published implementation's loop (slower, same
    # result); `bench perf` times that variant beside the fast path when a method declares one
    reference_loop_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def make_config(cls, values: dict[str, Any]):
        if cls.Config is None:
            if values:
                from bench.errors import BenchError

                raise BenchError(f"method {cls.name!r} takes no method.* settings")
            return {}
        return from_dict(cls.Config, values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Method":
        return cls(cls.make_config(values))

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.cfg) if self.cfg else {}

    def batch_specs(self) -> list[BatchSpec]:
        """One spec per batch of a step: the main labelled batch, then the ``extra_batches``
        independent ones (``ctx.extra``). Default: all as the run's data settings say."""
        return [BatchSpec() for _ in range(1 + self.extra_batches)]

    # -- lifecycle -------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, device: torch.device) -> None:
        """Called once before training (and before a checkpoint's state is loaded)."""

    def loss_weights(self) -> dict[str, float]:
        return {"ce": 1.0}

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (e.g. a replay buffer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, run_dir, step: int) -> None:
        """Hook for artifacts written with each checkpoint (e.g. a grid of the replay buffer)."""

    def artifacts(self) -> dict[str, str]:
        """Files this method wrote under the run directory (name -> path relative to it); the
        runner merges them into the run record's ``artifacts`` at every record update."""
        return {}
