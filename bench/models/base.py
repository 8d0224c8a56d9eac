"""The classifier-as-energy-model interface shared by all architectures.

Inputs are images in [0, 1]; normalisation happens inside the model. The forward pass is split
as ``trunk(stem(x))`` where ``stem`` = normalisation + the first layer (``first_layer``), so
samplers such as PYLD can take gradients at the first layer's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from bench.core.registry import Registry

ARCHS: Registry = Registry("architecture", group="trilemma_bench.archs", packages=("bench.models",))
register_arch = ARCHS.register


class EnergyClassifier(nn.Module):
    """Base class. Subclasses define ``first_layer`` and ``trunk_features(h) -> dict of maps``."""

    def __init__(self, num_classes: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    # -- pieces ------------------------------------------------------------------------
    first_layer: nn.Module

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation and the first layer: the input of ``trunk``."""
        return self.first_layer(self.normalize(x))

    def trunk_features(self, h: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Intermediate maps from the first layer's output; must contain ``"logits"``."""
        raise NotImplementedError

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        return self.trunk_features(h)["logits"]

    # -- public API --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` in [0, 1]."""
        return self.trunk(self.stem(x))

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All intermediate maps (``stem``, per-stage maps, ``penultimate``, ``logits``)."""
        h = self.stem(x)
        out = self.trunk_features(h)
        return {"stem": h, **out}

    def energy(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E(x) = -logsumexp_y f(x)[y]; with labels, E(x, y) = -f(x)[y]. Shape (N,), float32."""
        return energy_from_logits(self(x), y)


def energy_from_logits(logits: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    logits = logits.float()
    if y is None:
        return -torch.logsumexp(logits, dim=1)
    return -logits.gather(1, y.view(-1, 1)).squeeze(1)


def to_sym(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> the symmetric [-1, 1] scale the JEM-family references work on: ``2x - 1``."""
    return x01 * 2.0 - 1.0


def from_sym(xs: torch.Tensor) -> torch.Tensor:
    """The symmetric [-1, 1] scale -> [0, 1] pixels: ``(x + 1) / 2`` (not clamped)."""
    return (xs + 1.0) / 2.0


MODES = ("eval", "train", "keep")


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Put ``model`` in ``mode`` for the block (eval | train; keep or None: as it is), then restore it."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"model mode {mode!r} is not one of {MODES}")
    if mode not in ("eval", "train"):  # as it is: touch nothing (a frozen submodule stays so)
        yield
        return
    was = model.training
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was)


def make_norm(kind: str, channels: int, momentum: float) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=momentum)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def make_act(kind: str) -> nn.Module:
    return nn.LeakyReLU(0.2) if kind == "leaky_relu" else nn.ReLU()


def build_model(model_cfg, num_classes: int) -> EnergyClassifier:
    """Build ``model_cfg.arch`` (a ModelConfig) for ``num_classes`` classes."""
    factory = ARCHS.get(model_cfg.arch)
    return factory(
        num_classes=num_classes,
        norm=model_cfg.norm,
        bn_momentum=model_cfg.bn_momentum,
        activation=model_cfg.activation,
        dropout=model_cfg.dropout,
        mean=tuple(model_cfg.mean),
        std=tuple(model_cfg.std),
    )


def residual_stages(block, cin: int, widths, counts, strides, *args) -> tuple[nn.ModuleList, int]:
    """Stage ``i``: ``counts[i]`` blocks ``block(cin, cout, stride, *args)`` of ``widths[i]`` channels
    in an ``nn.Sequential``, the first with stride ``strides[i]``; and the channels that come out."""
    stages = []
    for cout, n, stride in zip(widths, counts, strides):
        blocks = []
        for j in range(n):
            blocks.append(block(cin, cout, stride if j == 0 else 1, *args))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages), cin


class PreActNet(EnergyClassifier):
    """A pre-activation network (WRN, PreAct ResNet): ``stages``, then the final norm and activation,
    global average pooling (``penultimate``), dropout and the linear head."""

    def add_head(self, cin: int, norm: str, momentum: float, act: str, dropout: float = 0.0):
        self.bn = make_norm(norm, cin, momentum)
        self.act = make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin, self.num_classes)
        self.feature_dim = cin

    def trunk_features(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = {}
        for i, stage in enumerate(self.stages):
            h = stage(h)
            maps[f"stage{i + 1}"] = h
        maps["penultimate"] = nn.functional.adaptive_avg_pool2d(self.act(self.bn(h)), 1).flatten(1)
        maps["logits"] = self.head(self.dropout(maps["penultimate"]))
        return maps
