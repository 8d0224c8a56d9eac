"""The method plugin interface: the :class:`Method` base class and the ``METHODS`` registry.

The trainer's side of the contract (:class:`~bench.core.step.StepContext`, :class:`~bench.core.step.BatchSpec`)
lives in ``bench/core/step.py`` and is re-exported here, so a plugin needs only ``from methods import ...``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from bench.core.config import from_dict, to_dict
from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.core.step import BatchSpec, StepContext

__all__ = ["METHODS", "BatchSpec", "Method", "StepContext", "get_method", "register_method"]


METHODS: Registry = Registry("method", group="trilemma_bench.methods", packages=("methods",))


def register_method(name: str):
    """Class decorator: ``@register_method("my-method")``."""

    def add(cls):
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return add


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


class Method:
    """Base class for training methods.

    Subclasses set ``Config`` (a dataclass with the reference defaults) and implement
    ``training_step``. The trainer minimises ``sum(weights[k] * terms[k])`` over the terms
    named in :meth:`loss_weights`; every other returned value is logged only (detached).
    Every returned tensor lives on ``ctx.device`` (a logged-only value may be a Python float):
    with several ranks the logged values are stacked into one tensor for the all-reduce.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    run_defaults: ClassVar[dict[str, Any]] = {}
    # its variants of the presets (the built-ins': methods/<module>.yaml), sections as in a --config
    # file: {"smoke": {"method": {"steps": 2}}, "demo": {...}}; a subclass inherits them
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    extra_batches: ClassVar[int] = 0  # independent training batches per step besides the main one
    reference: ClassVar[str] = ""  # the paper / code it follows
    # --set items that make the step follow the published implementation's loop (slower, same
    # result); `bench perf` times that variant beside the fast path when a method declares one
    reference_loop_settings: ClassVar[tuple[str, ...]] = ()
    # True when the step suits train.compile's CUDA-graph modes (bench.core.config.check_compile): every
    # input-gradient backward (an attack's) runs before the forwards of the loss, which then run
    # together before its one backward. A sampler or attack run after a loss forward (the JEM
    # family, EB-JDAT) does not; unknown steps (plugins) are refused until they declare it.
    cuda_graph_safe: ClassVar[bool] = False

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @classmethod
    def make_config(cls, values: dict[str, Any]):
        if cls.Config is None:
            if values:
                raise BenchError(f"method {cls.name!r} takes no method.* settings")
            return {}
        return from_dict(cls.Config, values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Method:
        return cls(cls.make_config(values))

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.cfg) if self.cfg else {}

    def batch_specs(self) -> list[BatchSpec]:
        """One spec per batch of a step: the main labelled batch, then the ``extra_batches``
        independent ones (``ctx.extra_batches``). Default: all as the run's data settings say."""
        return [BatchSpec() for _ in range(1 + self.extra_batches)]

    # -- lifecycle -------------------------------------------------------------------
    def setup(self, model: nn.Module, data: Any, device: torch.device) -> None:
        """Called once before training (and before a checkpoint's state is loaded)."""

    def loss_weights(self) -> dict[str, float]:
        return {"ce": 1.0}

    def training_step(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Method state that must survive a resume (e.g. a replay buffer)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def reseed_for_rank(self, rank: int) -> None:
        """Data-parallel runs: called once on every rank but rank 0, after ``setup``, with the global
        RNG seeded for that rank. ``setup`` ran under the same seed on every rank, so any random
        state it drew (a replay buffer's first fill) is drawn again here, or the ranks start from
        copies of each other."""

    def on_checkpoint(self, run_dir, step: int) -> None:
        """Hook for artifacts written with each checkpoint (e.g. a grid of the replay buffer)."""

    def artifacts(self) -> dict[str, str]:
        """Files this method wrote under the run directory (name -> path relative to it); the
        runner merges them into the run record's ``artifacts`` at every record update."""
        return {}
