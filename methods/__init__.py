"""Training-method plugins.

A method is a class with a typed config dataclass (``Config``, reference defaults), optional
reference run settings (``run_defaults``: optimiser, schedule, data, model), and one
``training_step`` returning named tensors. Register with ``@register_method("name")`` or, from
another package, through the entry-point group ``trilemma_bench.methods``. The registry imports
every public module of this package on its first lookup (the method modules register themselves;
``base`` holds the interface); ``methods/_energy.py`` holds what the energy-model family (JEM,
JEM++, EB-JDAT) shares.
"""

from __future__ import annotations

from methods.base import METHODS, BatchSpec, Method, StepContext, get_method, register_method

__all__ = ["METHODS", "BatchSpec", "Method", "StepContext", "get_method", "register_method"]
