"""`bench doctor`: every check, in order, on this machine (:func:`run_doctor`), and its options
(:class:`DoctorOptions`).

Order: the environment (versions, device, precision flags, free memory), the evaluation's
precision and mode, then per method the fast path against the plain one, no host sync inside a
step and the throughput; the 1-rank process group over every method's logged values; the peak
memory at the paper settings; and last, the slowest, each compile mode against eager. On a CPU
the CUDA-only checks are rows marked ``skipped`` with the reason.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.config import CHOICES, RunConfig
from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.run.resolve import resolve_config
from bench.tools.doctor import environment, steps
from bench.tools.doctor.checks import Check, cuda_only, failed, guarded, summary
from bench.tools.doctor.evaluation import CHECK as EVAL_CHECK
from bench.tools.doctor.evaluation import evaluation_check
from bench.tools.doctor.one_step import (
    STEP,
    build_trainer,
    path_tolerance,
    step_from_seed,
    take_step,
)
from bench.tools.doctor.process_group import process_group_checks

COMPILE_MODES = tuple(m for m in CHOICES["train.compile"] if m != "off")


@dataclass
class DoctorOptions:
    methods: tuple[str, ...] = ()  # empty: every registered method
    # the step checks' settings: smoke-sized models, so a CPU run takes a minute or two
    preset: str = "smoke"
    # the peak-memory check's: the references' settings (WRN-28-10 and up)
    memory_preset: str = "paper"
    device: str = "auto"
    compile_modes: tuple[str, ...] = COMPILE_MODES
    overrides: tuple[str, ...] = ()  # --set items for every config (e.g. data.data_dir=...)
    steps: int = 3  # timed steps of each throughput line
    eval_examples: int = 16  # test images of the evaluation check

    def validate(self) -> None:
        from methods import METHODS

        if self.steps < 1 or self.eval_examples < 1:
            raise BenchError("--steps and the evaluation's examples must be >= 1")
        for mode in self.compile_modes:
            if mode not in COMPILE_MODES:
                raise BenchError(
                    f"unknown --compile-mode {mode!r}; choose from {', '.join(COMPILE_MODES)}"
                )
        for m in self.methods:
            METHODS.get(m)  # an unknown name fails here, listing the valid ones
        resolve_device(self.device)


def _eager(cfg: RunConfig) -> RunConfig:
    """``cfg`` with compile off: the fast path the compiled steps are compared with."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile="off"))


def _plain(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fast=False, compile="off"))


class _DataCache:
    """Each dataset (with its split and subset) loaded once for all the checks."""

    def __init__(self) -> None:
        self.loaded: dict[tuple, Any] = {}

    def get(self, cfg: RunConfig):
        from bench.data import load_run_data

        d = cfg.data
        key = (d.dataset, d.data_dir, d.train_subset, d.val_size, d.image_size, cfg.seed)
        if key not in self.loaded:
            self.loaded[key] = load_run_data(cfg)
        return self.loaded[key]


def run_doctor(
    opts: DoctorOptions,
    progress: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the checks; returns the report (``checks``: one dict per check). ``progress`` gets a line
    per finished check; ``on_update`` the report so far after each check (``complete: false``), so a
    run cut short still leaves what it found."""
    from bench.tools.perf import Peaks, _device_name
    from methods import METHODS

    opts.validate()
    dev = resolve_device(opts.device)
    cuda = dev.type == "cuda"
    names = list(opts.methods) or METHODS.names()
    # every config first: a bad --set, preset or data setting fails in one line before any check runs
    configs = {
        m: resolve_config(m, preset=opts.preset, device=opts.device, overrides=list(opts.overrides))
        for m in names
    }
    memory_configs = (
        {
            m: resolve_config(
                m, preset=opts.memory_preset, device=opts.device, overrides=list(opts.overrides)
            )
            for m in names
        }
        if cuda
        else {}
    )
    per_method = 5 + (len(opts.compile_modes) if cuda else 1)
    expected = 5 + per_method * len(names)
    checks: list[Check] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def report(complete: bool) -> dict[str, Any]:
        return {
            "device": _device_name(dev),
            "torch": torch.__version__,
            "started": started,
            "preset": opts.preset,
            "memory_preset": opts.memory_preset,
            "methods": names,
            "compile_modes": list(opts.compile_modes) if cuda else [],
            "complete": complete,
            "summary": summary(checks),
            "checks": [dataclasses.asdict(c) for c in checks],
        }

    def add(check: Check) -> None:
        checks.append(check)
        if progress is not None:
            progress(
                f"[{len(checks)}/{expected}] {check.label}: {check.status} ({check.seconds:.1f} s)"
            )
        if on_update is not None:
            on_update(report(False))

    data = _DataCache()
    first = configs[names[0]]
    add(guarded("versions", None, environment.versions))
    add(guarded("device", None, lambda: environment.device_check(dev)))
    add(
        guarded(
            "precision_flags",
            None,
            lambda: environment.precision_flags(first.train, first.eval.tf32, dev),
        )
    )
    add(guarded("free_memory", None, lambda: environment.free_memory(dev)))
    add(
        guarded(
            EVAL_CHECK,
            None,
            lambda: evaluation_check(_eager(first), data.get(first), opts.eval_examples),
        )
    )

    peaks = Peaks(dev, seconds=0.5)
    logged: dict[str, dict[str, torch.Tensor]] = {}
    eager_steps: dict[str, tuple] = {}  # method -> (its fast eager step, that path's tolerance)
    with tempfile.TemporaryDirectory() as work:
        for m in names:
            cfg = _eager(configs[m])
            state: dict[str, Any] = {}

            def fast_vs_plain() -> Check:
                plain = step_from_seed(_plain(cfg), data.get(cfg))
                trainer = build_trainer(cfg, Path(work) / m, data.get(cfg))
                state["trainer"], state["fast"] = trainer, take_step(trainer)
                return steps.fast_vs_plain(m, plain, state["fast"], trainer)

            add(guarded("fast_vs_plain", m, fast_vs_plain))
            trainer = state.get("trainer")
            if "fast" in state:
                fast = state["fast"]
                logged[m] = fast.logged
                eager_steps[m] = (fast, path_tolerance(trainer, fast.attacked))
            if not cuda:
                add(
                    cuda_only(
                        "host_sync",
                        m,
                        "torch.cuda.set_sync_debug_mode; tests/test_host_sync.py pins the CPU side",
                    )
                )
            elif trainer is None:
                add(failed("host_sync", "no fast-path step to check (see fast_vs_plain)", m))
            else:
                add(guarded("host_sync", m, lambda: steps.host_sync(m, trainer, STEP + 1)))
            state.clear()
            trainer = None  # the step's trainer (model, optimiser, data on the device) is not needed further
            add(
                guarded(
                    "throughput",
                    m,
                    lambda: steps.throughput(
                        m, configs[m], data.get(configs[m]), peaks, opts.steps
                    ),
                )
            )

    for check in process_group_checks(logged, dev):
        add(check)
    for m in names:
        if m not in logged:
            add(failed("process_group", "no logged values to reduce (see fast_vs_plain)", m))

    for m in names:
        if cuda:
            add(
                guarded(
                    "peak_memory",
                    m,
                    lambda: steps.peak_memory(m, memory_configs[m], data.get(memory_configs[m])),
                )
            )
        else:
            add(cuda_only("peak_memory", m, "torch.cuda.max_memory_allocated"))

    for m in names:
        if not cuda:
            add(
                cuda_only(
                    "compile_vs_eager",
                    m,
                    f"modes {', '.join(opts.compile_modes) or 'none'}: inductor "
                    "compiles for minutes on a CPU, and CUDA graphs need a GPU",
                )
            )
            continue
        for mode in opts.compile_modes:
            name = f"compile_vs_eager[{mode}]"
            if m not in eager_steps:
                add(failed(name, "no eager step to compare with (see fast_vs_plain)", m))
                continue
            try:
                compiled_cfg: Any = resolve_config(
                    m,
                    preset=opts.preset,
                    device=opts.device,
                    overrides=[*opts.overrides, f"train.compile={mode}"],
                )
            except BenchError as exc:  # a CUDA-graph mode this method's step does not suit
                compiled_cfg = exc
            eager, tol = eager_steps[m]
            add(
                guarded(
                    name,
                    m,
                    lambda: steps.compiled_vs_eager(
                        m, mode, compiled_cfg, eager, tol, data.get(configs[m])
                    ),
                )
            )
    return report(True)
