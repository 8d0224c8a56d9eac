"""`bench perf`: steady-state training throughput per method, split by phase, with FLOP counts.

For each method the real training step (``Trainer.train_step``, the code `bench run` executes,
under the precision flags `bench run` sets) is timed after a warm-up, in two variants:

- ``fast``: as `bench run` trains (channels_last, TF32 and cuDNN autotuning; on CUDA bf16 autocast
  and the fused optimiser; ``train.compile`` when set),
- ``plain``: the same with ``train.fast=false``: eager full fp32, NCHW, unfused optimiser (the
  baseline the fast path must beat),

plus, where a method declares one, a ``reference`` variant that mimics the published code's loop
(``Method.reference_loop_settings``).

How each number is taken, and why:

- **time per step**: the timed loop runs with no timing region active. A region synchronises the
  device at its edges (:mod:`bench.core.timing`), which on CUDA would stall the queue several times per
  step and time a slower loop than `bench run` runs.
- **phases** (sampler, attack, update, ...): a separate profiling pass of a few more steps with the
  regions active; its split, in proportion, is applied to the timed step (``phases`` sums to
  ``seconds_per_step``; ``profiled_seconds_per_step`` is that pass's own, synchronised, time).
- **FLOPs**: torch's FLOP formulas (``torch.utils.flop_counter``) on one step run eagerly
  (``torch.compiler.set_stance("force_eager")``): a compiled step runs fused kernels, and with CUDA
  graphs replays that dispatch no op at all, which a dispatch-mode counter cannot see.
  Forward-equivalents (FE) per labelled image = step FLOPs / (forward FLOPs per image x batch).
- **MFU** (model-FLOP utilisation) = achieved FLOP/s / the peak of the precision the step runs in:
  on CUDA a bf16 step (autocast) against the bf16 matmul peak, a TF32 step (the fast path without
  autocast) against the TF32 one and a full-fp32 step (the plain path) against the fp32 one, each
  measured with a large matmul when first needed; on the CPU every step against the fp32 matmul
  peak. ``--peak-tflops`` replaces them all with one given number.

Sampler, FID-feature and AutoAttack throughput come from :mod:`bench.tools.perf_eval`.
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
from bench.core.device import Precision, precision, resolve_device, training_precision
from bench.core.timing import measure_regions
from bench.data import load_run_data
from bench.models import build_model
from bench.run.resolve import resolve_config
from bench.tools.flops import FlopCount, forward_flops_per_image, sync
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
    phases: dict[str, float] = field(
        default_factory=dict
    )  # seconds per step by region (sums to seconds_per_step)
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


def peak_for(step_prec: str, device: torch.device) -> str:
    """Which measured peak a step of ``step_prec`` is divided by: its own on CUDA (bf16, TF32 and
    fp32 tensor-core rates differ several-fold); on the CPU the fp32 one (CPU autocast runs many
    ops in fp32 and has no separate bf16 peak worth quoting)."""
    return step_prec if device.type == "cuda" else "fp32"


def matmul_peak(device: torch.device, prec: str, seconds: float = 1.0) -> tuple[float, str]:
    """Dense matmul FLOP/s in ``prec`` (bf16, tf32 or fp32): 8192^3 on CUDA, 1024^3 on CPU."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    with precision(Precision(tf32=prec == "tf32")):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        sync(device)
        dt = time.perf_counter() - t0
    how = f"{'bf16' if prec == 'bf16' else 'fp32'} matmul {n}x{n}" + (
        " (TF32)" if prec == "tf32" else ""
    )
    return 2 * n**3 * reps / dt, how


class Peaks:
    """The device's peak FLOP/s per precision: each measured once, when a step first needs it
    (:func:`peak_for`), or one given number for all."""

    def __init__(
        self, device: torch.device, given_tflops: float | None = None, seconds: float = 1.0
    ):
        self.device, self.given, self.seconds = device, given_tflops, seconds
        self.measured: dict[str, tuple[float, str]] = {}

    def get(self, step_prec: str) -> tuple[str, float]:
        """The peak's name and its FLOP/s for a step of ``step_prec``."""
        if self.given:
            return "given", self.given * 1e12
        name = peak_for(step_prec, self.device)
        if name not in self.measured:
            self.measured[name] = matmul_peak(self.device, name, self.seconds)
        return name, self.measured[name][0]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        if self.given:
            return {"given": {"tflops": self.given, "measured_by": "given (--peak-tflops)"}}
        return {
            k: {"tflops": v / 1e12, "measured_by": how} for k, (v, how) in self.measured.items()
        }


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
    """FLOPs of ``fn(*args)`` with every compiled module run eagerly (see the module docstring). Whether
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
        for s in range(
            first, first + steps
        ):  # no region active: nothing waits for the device inside
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
    with torch.compiler.set_stance(
        "force_eager"
    ):  # counted eagerly, and no recompile for its shape
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
    data_cache: dict[str, Any] = {}
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
        if key not in data_cache:
            data_cache[key] = load_run_data(cfg)
        wanted = list(variants) + (["reference"] if get_method(m).reference_loop_settings else [])
        for v in wanted:
            results.append(
                time_method(
                    cfg,
                    v,
                    steps=steps,
                    warmup=warmup,
                    peaks=peaks,
                    data=data_cache[key],
                    sampler_rows=samplers if v == "fast" else None,
                )
            )
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
    out: dict[str, dict[str, float]] = {}
    by = {(r.method, r.variant): r for r in results}
    for (m, v), r in by.items():
        if v != "fast":
            continue
        entry = {}
        for other in ("plain", "reference"):
            if (m, other) in by:
                entry[f"fast_vs_{other}"] = by[(m, other)].seconds_per_step / r.seconds_per_step
        out[m] = entry
    return out


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(report: dict[str, Any]) -> str:
    import pandas as pd

    rows = []
    for r in report["results"]:
        ph = r["phases"]
        rows.append(
            {
                "method": r["method"],
                "variant": r["variant"],
                "arch": r["arch"],
                "batch": r["batch_size"],
                "img/s": round(r["images_per_s"], 1),
                "ms/step": round(1e3 * r["seconds_per_step"], 1),
                "sampler ms": round(1e3 * ph.get("sampler", 0.0), 1),
                "attack ms": round(1e3 * ph.get("attack", 0.0), 1),
                "update ms": round(1e3 * ph.get("update", 0.0), 1),
                **{
                    f"{name.upper()} ms": round(1e3 * ph.get(name, 0.0), 1)
                    for name in ("sam", "awp")
                    if any(name in q["phases"] for q in report["results"])
                },
                "other ms": round(1e3 * ph.get("other", 0.0), 1),
                "FE/img": round(r["fe_per_image"], 1),
                "GFLOP/step": round(r["step_gflop"], 2),
                "precision": r["precision"],
                "MFU %": round(100 * r["mfu"], 1) if r["mfu"] is not None else None,
                "of peak": r["peak"],
            }
        )
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")
    peaks = ", ".join(
        f"{name} {p['tflops']:.3g} TFLOP/s ({p['measured_by']})"
        for name, p in report["peaks"].items()
    )
    lines = [
        f"device: {report['device']}, torch {report['torch']}, preset {report['preset']}, {report['date']}",
        f"peaks: {peaks or 'none measured'}; each row's MFU is against the peak named in 'of peak'",
        "ms/step: the timed loop, no phase synchronised; phase columns: that time split as a separate "
        "profiling pass measured it",
        "",
        table,
        "",
    ]
    for m, ratios in report["ratios"].items():
        parts = [f"{k.replace('fast_vs_', 'fast/')} {v:.2f}x" for k, v in ratios.items()]
        if parts:
            lines.append(f"{m}: " + ", ".join(parts))
    if report.get("samplers"):
        rows = [
            {
                "method": r["method"],
                "sampler": r["kind"],
                "steps": r["steps"],
                "batch": r["batch_size"],
                "img/s": round(r["images_per_s"], 1),
                "ms/draw": round(r["ms_per_draw"], 1),
                "FE/img": round(r["fe_per_image"], 1),
            }
            for r in report["samplers"]
        ]
        lines += [
            "",
            "samplers (one draw of the training step's negative samples):",
            "",
            pd.DataFrame(rows).to_markdown(index=False, floatfmt="g"),
        ]
    fid = report.get("fid_features") or {}
    lines.append("")
    if "skipped" in fid:
        lines.append(f"FID features: skipped: {fid['skipped']}")
    elif fid:
        lines.append(
            f"FID features ({fid['extractor']}, {fid['precision']}, batch {fid['batch_size']}, "
            f"{fid['n_images']} images): {fid['images_per_s']:.1f} images/s"
        )
    if report.get("autoattack"):
        rows = [
            {
                "run": r["run"],
                "method": r["method"],
                "arch": r["arch"],
                "version": r["version"],
                "n": r["n_examples"],
                "clean %": _pct(r["clean_accuracy"]),
                "robust %": _pct(r["robust_accuracy"]),
                "img/s": round(r["images_per_s"], 2),
                "s": round(r["seconds"], 1),
            }
            for r in report["autoattack"]
        ]
        lines += [
            "",
            "AutoAttack (the `autoattack` metric on trained runs' test images):",
            "",
            pd.DataFrame(rows).to_markdown(index=False, floatfmt="g"),
        ]
    else:
        lines.append(
            "AutoAttack: not timed; pass --aa-run RUN (a robust and a non-robust run) to time it"
        )
    if report.get("guardrails"):
        rows = [
            {
                "run": r["run"],
                "method": r["method"],
                "n": r["n_examples"],
                "attack": f"PGD-{r['steps']}",
                "s without checks": round(r["seconds_bare"], 2),
                "s with checks": round(r["seconds_checked"], 2),
                "overhead %": round(100 * r["overhead"], 1),
            }
            for r in report["guardrails"]
        ]
        lines += [
            "",
            "guardrail checks (the `pgd` metric vs the same attack loop without its checks):",
            "",
            pd.DataFrame(rows).to_markdown(index=False, floatfmt="g"),
        ]
    return "\n".join(lines)


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)
