"""Architectures: every model maps [0, 1] images to logits and is also an energy model."""

from bench.models.base import ARCHS, EnergyClassifier, build_model, register_arch

__all__ = ["ARCHS", "EnergyClassifier", "build_model", "register_arch"]
