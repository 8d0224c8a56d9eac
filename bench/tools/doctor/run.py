"""Every `bench doctor` check, in order, on this machine (:func:`run_doctor`), and its options
(:class:`DoctorOptions`). The order and what each check does: docs/scale.md, "Checking a machine";
on a CPU the CUDA-only checks are rows marked ``skipped`` with the reason."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.core.config import CHOICES, RunConfig
from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.run.resolve import resolve_config
from bench.tools.doctor import environment, steps
from bench.tools.doctor.checks import SKIPPED, Check, NotRun, guarded, summary
from bench.tools.doctor.evaluation import CHECK as EVAL_CHECK
from bench.tools.doctor.evaluation import evaluation_check

COMPILE_MODES = tuple(m for m in CHOICES["train.compile"] if m != "off")


@dataclass
class DoctorOptions:
    methods: tuple[str, ...] = ()  # empty: every registered method
    preset: str = "smoke"  # the step checks' settings: small models, a minute or two on a CPU
    memory_preset: str = "paper"  # the peak-memory check's: the references' (WRN-28-10 and up)
    device: str = "auto"
    compile_modes: tuple[str, ...] = COMPILE_MODES
    overrides: tuple[str, ...] = ()  # --set items for every config (e.g. data.data_dir=...)
    steps: int = 3  # timed steps of each throughput line
    eval_examples: int = 16  # test images of the evaluation check

    def config(self, method: str, *extra: str, preset: str | None = None) -> RunConfig:
        return resolve_config(
            method,
            preset=preset or self.preset,
            device=self.device,
            overrides=[*self.overrides, *extra],
        )


def run_doctor(
    opts: DoctorOptions,
    progress: Callable[[str], None] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the checks; returns the report (``checks``: one dict per check). ``progress`` gets a line
    per finished check; ``on_update`` the report so far after each (``complete: false``), so a run
    cut short still leaves what it found."""
    from bench.data import load_run_data
    from bench.tools.perf import Peaks, _device_name
    from methods import METHODS

    if opts.steps < 1 or opts.eval_examples < 1:
        raise BenchError("--steps and the evaluation's examples must be >= 1")
    if unknown := sorted(set(opts.compile_modes) - set(COMPILE_MODES)):
        choices = ", ".join(COMPILE_MODES)
        raise BenchError(f"unknown --compile-mode {', '.join(unknown)}; choose from {choices}")
    dev = resolve_device(opts.device)
    cuda = dev.type == "cuda"
    names = list(opts.methods) or METHODS.names()
    # every config first: an unknown method, a bad --set or preset fails in one line before any check
    configs = {m: opts.config(m) for m in names}
    memory_configs = {m: opts.config(m, preset=opts.memory_preset) for m in names if cuda}
    modes = opts.compile_modes if cuda else ("",)  # on a CPU one skipped row per method
    expected = 5 + (5 + len(modes)) * len(names)
    checks: list[Check] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    loaded: dict[tuple, Any] = {}  # each dataset (split, subset, size) once for all the checks

    def data(cfg: RunConfig):
        d = cfg.data
        key = (d.dataset, d.data_dir, d.train_subset, d.val_size, d.image_size, cfg.seed)
        if key not in loaded:
            loaded[key] = load_run_data(cfg)
        return loaded[key]

    def report(complete: bool) -> dict[str, Any]:
        return {
            "device": _device_name(dev),
            "methods": names,
            "preset": opts.preset,
            "started": started,
            "complete": complete,
            "summary": summary(checks),
            "checks": [dataclasses.asdict(c) for c in checks],
        }

    def add(name: str, method: str | None, fn: Callable[[], Check], cuda_why: str = "") -> None:
        """Run one check; one that needs CUDA (``cuda_why``: what for) is a skipped row on a CPU."""
        if cuda_why and not cuda:
            check = Check(name, SKIPPED, f"CUDA only ({cuda_why}); no CUDA device here", method)
        else:
            check = guarded(name, method, fn)
        checks.append(check)
        if progress is not None:
            progress(
                f"[{len(checks)}/{expected}] {check.label}: {check.status} ({check.seconds:.1f} s)"
            )
        if on_update is not None:
            on_update(report(False))

    first = configs[names[0]]
    add("versions", None, environment.versions)
    add("device", None, lambda: environment.device_check(dev))
    add(
        "precision_flags",
        None,
        lambda: environment.precision_flags(first.train, first.eval.tf32, dev),
    )
    add("free_memory", None, lambda: environment.free_memory(dev))
    add(EVAL_CHECK, None, lambda: evaluation_check(first, data(first), opts.eval_examples))

    peaks = Peaks(dev, seconds=0.5)
    fast: dict[str, steps.FastStep] = {}  # each method's fast step; host_sync and compile reuse it

    def fast_step(m: str) -> steps.FastStep:
        if m not in fast:
            raise NotRun("no fast-path step to check (see fast_vs_plain)")
        return fast[m]

    for m in names:
        cfg = configs[m]

        def fast_vs_plain() -> Check:
            fast[m] = steps.FastStep(cfg, data(cfg))
            return fast[m].against_plain()

        add("fast_vs_plain", m, fast_vs_plain)
        why = "torch.cuda.set_sync_debug_mode; tests/test_host_sync.py pins the CPU side"
        add("host_sync", m, lambda: fast_step(m).host_sync(), why)
        if m in fast:  # its trainer (model, optimiser, data on the device) is not needed further
            fast[m].trainer = None
        add("throughput", m, lambda: steps.throughput(m, cfg, data(cfg), peaks, opts.steps))
    logged = {m: fast[m].step.logged if m in fast else None for m in names}
    for check in environment.process_group_checks(logged, dev):
        add(check.check, check.method, lambda: check)

    for m in names:
        cfg = memory_configs.get(m)
        why = "torch.cuda.max_memory_allocated"
        add("peak_memory", m, lambda: steps.peak_memory(m, cfg, data(cfg)), why)
    why = (
        f"modes {', '.join(opts.compile_modes) or 'none'}: inductor compiles for minutes on a CPU, "
        "and CUDA graphs need a GPU"
    )
    for m in names:
        for mode in modes:
            name = f"compile_vs_eager[{mode}]" if cuda else "compile_vs_eager"

            def compiled() -> Check:
                try:
                    compiled_cfg = opts.config(m, f"train.compile={mode}")
                except BenchError as exc:  # a CUDA-graph mode this method's step does not suit
                    return Check(name, SKIPPED, f"refused by design: {exc}", m)
                return fast_step(m).against_compiled(mode, compiled_cfg)

            add(name, m, compiled, why)
    return report(True)
