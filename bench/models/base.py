"""The classifier-as-energy-model interface shared by all architectures.

Inputs are images in [0, 1]; normalisation happens inside the model. The forward pass is split
as ``trunk(stem(x))`` where ``stem`` = normalisation + the first layer (``first_layer``), so
samplers such as PYLD can take gradients at the first layer's output.
"""

from __future__ import annotations

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


def preact_trunk_features(
    stages,
    norm: nn.Module,
    act: nn.Module,
    head: nn.Module,
    h: torch.Tensor,
    dropout: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The feature maps of a pre-activation network (WRN, PreAct ResNet): each stage's output, then
    the final norm and activation, global average pooling (``penultimate``) and the linear head."""
    maps = {}
    for i, stage in enumerate(stages):
        h = stage(h)
        maps[f"stage{i + 1}"] = h
    pooled = torch.nn.functional.adaptive_avg_pool2d(act(norm(h)), 1).flatten(1)
    maps["penultimate"] = pooled
    maps["logits"] = head(dropout(pooled) if dropout is not None else pooled)
    return maps
