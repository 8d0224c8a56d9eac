"""`bench perf`: each method's real training step (``Trainer.train_step``, under the flags `bench
run` sets) timed after a warm-up in the variants fast, plain and reference, split into phases by a
separate profiling pass, with FLOPs counted on an eager step and MFU against the peak of the step's
precision. docs/scale.md ("bench perf") says how and why each number is taken; sampler, FID-feature
and AutoAttack throughput come from bench/tools/perf_eval.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.core.config import RunConfig, deep_merge, parse_set, to_dict, update_dataclass
from bench.core.device import precision, resolve_device, training_precision
from bench.core.timing import measure_regions
from bench.data import load_run_data
from bench.models import build_model
from bench.run.resolve import resolve_config
from bench.tools.flops import FlopCount, Peaks, forward_flops_per_image, sync
from bench.train.trainer import Trainer
from methods import get_method

PROFILE_STEPS = 3  # steps of the profiling pass that splits the time into phases (at most --steps)


@dataclass
class StepTiming:
    method: str
    variant: str
    device: str
    arch: str
    batch_size: int
    steps: int
    seconds_per_step: float  # the timed loop (no region active)
    images_per_s: float
    # seconds per step by region (sums to seconds_per_step)
    phases: dict[str, float] = field(default_factory=dict)
    # the profiling pass's own time per step (synchronised per region)
    profiled_seconds_per_step: float = 0.0
    step_gflop: float = 0.0
    forward_gflop_per_image: float = 0.0
    fe_per_image: float = 0.0
    precision: str = "fp32"  # what the step's matmuls and convolutions run in: bf16, tf32 or fp32
    peak: str | None = None  # the peak MFU divides by: a precision's measured peak, or "given"
    peak_tflops: float | None = None
    mfu: float | None = None


def step_precision(use_amp: bool, train, device: torch.device) -> str:
    """The precision of a training step's matmuls and convolutions: ``bf16`` under autocast, else
    ``tf32`` where the step's flags turn TF32 on (CUDA only: the flags do nothing on a CPU), else ``fp32``."""
    if use_amp:
        return "bf16"
    if device.type == "cuda" and training_precision(train).tf32:
        return "tf32"
    return "fp32"


def variant_config(cfg: RunConfig, variant: str, method: str) -> RunConfig:
    if variant == "fast":
        return cfg
    if variant == "plain":
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fast=False))
    if variant == "reference":
        method_cls = get_method(method)
        if not method_cls.reference_loop_settings:
            raise ValueError(f"no reference variant for {method}")
        values: dict[str, Any] = {}
        for item in method_cls.reference_loop_settings:
            values = deep_merge(values, parse_set(item))
        ref = update_dataclass(variant_config(cfg, "plain", method), values)
        return dataclasses.replace(ref, method_cfg=to_dict(method_cls.make_config(ref.method_cfg)))
    raise ValueError(variant)


def count_flops_eagerly(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs of ``fn(*args)`` with every compiled module run eagerly (docs/scale.md says why). Whether
    dynamo runs a compiled graph under a dispatch mode depends on the call (a warm graph may run, a
    recompile falls back to eager), so the stance is forced rather than left to chance."""
    with torch.compiler.set_stance("force_eager"), FlopCount() as fc:
        fn(*args)
    return fc.total


def time_method(
    cfg: RunConfig,
    variant: str,
    *,
    steps: int,
    warmup: int,
    peaks: Peaks | None,
    data=None,
    sampler_rows: list | None = None,
    profile_steps: int = PROFILE_STEPS,
) -> StepTiming:
    """Time ``steps`` training steps; with ``sampler_rows``, also time the method's sampler alone."""
    device = resolve_device(cfg.device)
    data = data if data is not None else load_run_data(cfg)
    vcfg = variant_config(cfg, variant, cfg.method)
    torch.manual_seed(vcfg.seed)
    model = build_model(vcfg.model, data.num_classes).to(device)
    method = get_method(vcfg.method).from_dict(vcfg.method_cfg)
    method.setup(model, data, device)
    profile_steps = max(1, min(profile_steps, steps))
    # the flags `bench run` trains under (Trainer.fit sets them; train_step alone does not)
    with tempfile.TemporaryDirectory() as tmp, precision(training_precision(vcfg.train)):
        trainer = Trainer(vcfg, model, method, data, device, tmp, show_progress=False)
        model.train()
        for s in range(warmup):
            trainer.set_lr(s)
            trainer.train_step(s)
        step_flops = count_flops_eagerly(trainer.train_step, warmup)
        first = warmup + 1
        sync(device)
        t0 = time.perf_counter()
        for s in range(first, first + steps):  # no region active: nothing waits for the device
            trainer.train_step(s)
        sync(device)
        dt = time.perf_counter() - t0
        first += steps
        with measure_regions(device) as regions:  # the profiling pass: each region synchronised
            t0 = time.perf_counter()
            for s in range(first, first + profile_steps):
                trainer.train_step(s)
            sync(device)
            dt_profiled = time.perf_counter() - t0
        if sampler_rows is not None:
            from bench.tools.perf_eval import time_sampler

            row = time_sampler(trainer, model, method, reps=steps)
            if row is not None:
                sampler_rows.append({"method": cfg.method, "variant": variant, **row})
        step_prec = step_precision(trainer.use_amp, vcfg.train, device)
    # counted eagerly, and no recompile for its shape
    with torch.compiler.set_stance("force_eager"):
        fwd = forward_flops_per_image(model, tuple(data.image_shape), device)
    b = vcfg.data.batch_size
    per_step = dt / steps
    peak_name, peak = peaks.get(step_prec) if peaks is not None else (None, None)
    return StepTiming(
        method=cfg.method,
        variant=variant,
        device=str(device),
        arch=vcfg.model.arch,
        batch_size=b,
        steps=steps,
        seconds_per_step=per_step,
        images_per_s=b / per_step,
        phases=split_phases(dict(regions), dt_profiled / profile_steps, profile_steps, per_step),
        profiled_seconds_per_step=dt_profiled / profile_steps,
        step_gflop=step_flops / 1e9,
        forward_gflop_per_image=fwd / 1e9,
        fe_per_image=step_flops / (fwd * b) if fwd else 0.0,
        precision=step_prec,
        peak=peak_name,
        peak_tflops=peak / 1e12 if peak else None,
        mfu=(step_flops / per_step / peak) if peak else None,
    )


def split_phases(
    regions: dict[str, float], profiled_per_step: float, profile_steps: int, per_step: float
) -> dict[str, float]:
    """Seconds per timed step by phase: the profiling pass's region totals (over ``profile_steps``)
    plus ``other`` (the rest of its step), scaled so that they sum to the timed ``per_step``."""
    named = {k: v / profile_steps for k, v in regions.items()}
    named["other"] = max(0.0, profiled_per_step - sum(named.values()))
    total = sum(named.values())
    if total <= 0:
        return {"other": per_step}
    return {k: v * per_step / total for k, v in named.items()}


def run_perf(
    methods: list[str],
    preset: str,
    *,
    arch: str | None = None,
    device: str = "auto",
    steps: int = 10,
    warmup: int = 3,
    peak_tflops: float | None = None,
    variants=("fast", "plain"),
    overrides: tuple[str, ...] = (),
    fid_images: int = 64,
    aa_runs: tuple[str, ...] = (),
    aa_examples: int = 100,
    aa_version: str = "standard",
    out: str = "results",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Training steps per method and variant, the samplers, FID features (``fid_images`` > 0) and
    AutoAttack on the trained runs ``aa_runs``. ``on_progress`` receives the report so far
    (``complete: false``) after each method, so a run cut short (a time limit) keeps what it measured."""
    from bench.tools.perf_eval import time_autoattack, time_fid_features, time_guardrails

    dev = resolve_device(device)
    peaks = Peaks(dev, peak_tflops)
    results: list[StepTiming] = []
    samplers: list[dict[str, Any]] = []
    datasets: dict[str, Any] = {}  # loaded once per (dataset, train_subset)
    base = {
        "device": _device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": preset,
        "date": time.strftime("%Y-%m-%d"),
    }

    def report(**rest: Any) -> dict[str, Any]:
        return {
            **base,
            "peaks": peaks.as_dict(),
            "results": [dataclasses.asdict(r) for r in results],
            "ratios": _ratios(results),
            "samplers": samplers,
            **rest,
        }

    for m in methods:
        cfg = resolve_config(m, preset=preset, arch=arch, device=device, overrides=list(overrides))
        key = cfg.data.dataset + str(cfg.data.train_subset)
        if key not in datasets:
            datasets[key] = load_run_data(cfg)
        wanted = list(variants) + (["reference"] if get_method(m).reference_loop_settings else [])
        for v in wanted:
            rows = samplers if v == "fast" else None
            timing = time_method(
                cfg,
                v,
                steps=steps,
                warmup=warmup,
                peaks=peaks,
                data=datasets[key],
                sampler_rows=rows,
            )
            results.append(timing)
        if on_progress is not None:
            on_progress(report(complete=False))
    fid = (
        time_fid_features(dev, n_images=fid_images)
        if fid_images > 0
        else {"skipped": "not asked (--fid-images 0)"}
    )
    attacks = [
        time_autoattack(r, out, dev, n_examples=aa_examples, version=aa_version) for r in aa_runs
    ]
    guards = [time_guardrails(r, out, dev, n_examples=aa_examples) for r in aa_runs]
    return report(complete=True, fid_features=fid, autoattack=attacks, guardrails=guards)


def _ratios(results: list[StepTiming]) -> dict[str, dict[str, float]]:
    """Each method's fast step against its plain and reference ones (how many times faster)."""
    by = {(r.method, r.variant): r.seconds_per_step for r in results}
    return {
        m: {f"fast_vs_{o}": by[(m, o)] / t for o in ("plain", "reference") if (m, o) in by}
        for (m, v), t in by.items()
        if v == "fast"
    }


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
