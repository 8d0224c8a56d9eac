"""Training-method plugins.

A method is a class with a typed config dataclass (``Config``, reference defaults), optional
reference run settings (``run_defaults``: optimiser, schedule, data, model), and one
``training_step`` returning named tensors. Register with ``@register_method("name")`` or, from
another package, through the entry-point group ``trilemma_bench.methods``.
"""

from __future__ import annotations

import importlib
import pkgutil

from methods.base import METHODS, Method, StepContext, get_method, register_method

__all__ = ["METHODS", "Method", "StepContext", "get_method", "register_method"]


def _import_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


METHODS._builtin_loader = _import_builtin  # called on first lookup
