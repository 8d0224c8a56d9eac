"""What the training loop sets up around itself: ``torch.compile``, deterministic algorithms,
the per-step seeds that make a resumed run replay the uninterrupted one, and Ctrl-C / SIGTERM
as a request to checkpoint and stop (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import types
from collections.abc import Iterator

import torch


def compile_model(model: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
    """``torch.compile`` the model's forward in place (its state-dict keys stay as they are).

    Calls through ``model(x)`` (training, attacks, the samplers' energies) run the compiled
    graph; ``reduce-overhead`` and ``max-autotune`` add CUDA graphs, which only some methods'
    steps suit (:func:`bench.core.config.check_compile`, checked before a run starts and again in
    the trainer with the actual device).
    """
    options = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    model.compile(**options)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``train.deterministic``: torch's deterministic algorithms for the block (an op that has none
    fails, naming itself) and no cuDNN autotuning; the previous settings are restored afterwards."""
    if not enabled:
        yield
        return
    was, autotune = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.benchmark = autotune


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """The global RNGs' seed at the start of a step: data order depends only on ``(seed, epoch)``
    and every draw of a step on ``(seed, step, rollbacks)``, so a resumed run replays exactly."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729 + 12_345) % (2**63 - 1)


@contextlib.contextmanager
def interrupt_requests() -> Iterator[types.SimpleNamespace]:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) inside the block sets ``.requested``,
    which the loop checks between steps: the run checkpoints and stops resumable. A second signal
    aborts at once."""
    flag = types.SimpleNamespace(requested=False)

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not in the main thread
            old[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, previous in old.items():
            if previous is None:  # installed from C: fall back to Python's default
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
