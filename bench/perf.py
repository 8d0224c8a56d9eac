"""`bench perf`: steady-state training throughput per method, split by phase, with FLOP counts.

For each method the real training step (``Trainer.train_step``, the code `bench run` executes)
is timed after a warm-up, in two variants:

- ``fast``: as `bench run` trains (channels_last; on CUDA bf16 autocast and the fused optimiser;
  ``train.compile`` when set),
- ``plain``: the same with ``train.fast=false``: eager fp32, NCHW, unfused optimiser (the
  baseline the fast path must beat),

plus, where a method declares one, a ``reference`` variant that mimics the published code's loop
(``Method.reference_loop_settings``). FLOPs are counted with torch's FLOP formulas
(``torch.utils.flop_counter``) on one step; forward-equivalents (FE) per labelled image = step FLOPs / (forward FLOPs per image x
batch); model-FLOP utilisation (MFU) = achieved FLOP/s / peak, the peak given or measured with
a large matmul (bf16 on CUDA, fp32 on CPU). Sampler, FID-feature and AutoAttack throughput
come from :mod:`bench.perf_eval`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.config import RunConfig, deep_merge, parse_set, to_dict, update_dataclass
from bench.resolve import resolve_config
from bench.models import build_model
from bench.data import load_run_data
from bench.device import resolve_device
from bench.flops import FlopCount, forward_flops_per_image, measure_peak_flops, sync
from bench.timing import measure_regions
from bench.trainer import Trainer
from methods import get_method

@dataclass
class StepTiming:
    method: str
    variant: str
    device: str
    arch: str
    batch_size: int
    steps: int
    seconds_per_step: float
    images_per_s: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step by region
    step_gflop: float = 0.0
    forward_gflop_per_image: float = 0.0
    fe_per_image: float = 0.0
    mfu: float | None = None


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


def time_method(cfg: RunConfig, variant: str, *, steps: int, warmup: int, peak: float | None,
                data=None, sampler_rows: list | None = None) -> StepTiming:
    """Time ``steps`` training steps; with ``sampler_rows``, also time the method's sampler alone."""
    device = resolve_device(cfg.device)
    data = data if data is not None else load_run_data(cfg)
    vcfg = variant_config(cfg, variant, cfg.method)
    torch.manual_seed(vcfg.seed)
    model = build_model(vcfg.model, data.num_classes).to(device)
    method = get_method(vcfg.method).from_dict(vcfg.method_cfg)
    method.setup(model, data, device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(vcfg, model, method, data, device, tmp, show_progress=False)
        model.train()
        for s in range(warmup):
            trainer.set_lr(s)
            trainer.train_step(s)
        with FlopCount() as fc:
            trainer.train_step(warmup)
        step_flops = fc.total
        sync(device)
        with measure_regions(device) as phases:
            t0 = time.perf_counter()
            for s in range(warmup + 1, warmup + 1 + steps):
                trainer.train_step(s)
            sync(device)
            dt = time.perf_counter() - t0
        if sampler_rows is not None:
            from bench.perf_eval import time_sampler

            row = time_sampler(trainer, model, method, reps=steps)
            if row is not None:
                sampler_rows.append({"method": cfg.method, "variant": variant, **row})
    fwd = forward_flops_per_image(model, tuple(data.image_shape), device)
    b = vcfg.data.batch_size
    per_step = dt / steps
    named = {k: v / steps for k, v in phases.items()}
    named["other"] = max(0.0, per_step - sum(named.values()))
    return StepTiming(
        method=cfg.method, variant=variant, device=str(device), arch=vcfg.model.arch, batch_size=b, steps=steps,
        seconds_per_step=per_step, images_per_s=b / per_step, phases=named, step_gflop=step_flops / 1e9,
        forward_gflop_per_image=fwd / 1e9, fe_per_image=step_flops / (fwd * b) if fwd else 0.0,
        mfu=(step_flops / per_step / peak) if peak else None,
    )


def run_perf(methods: list[str], preset: str, *, arch: str | None = None, device: str = "auto",
             steps: int = 10, warmup: int = 3, peak_tflops: float | None = None, variants=("fast", "plain"),
             overrides: tuple[str, ...] = (), fid_images: int = 64, aa_runs: tuple[str, ...] = (),
             aa_examples: int = 100, aa_version: str = "standard", out: str = "results") -> dict[str, Any]:
    """Training steps per method and variant, the samplers, FID features (``fid_images`` > 0) and
    AutoAttack on the trained runs ``aa_runs``."""
    from bench.perf_eval import time_autoattack, time_fid_features, time_guardrails

    dev = resolve_device(device)
    if peak_tflops:
        peak, peak_how = peak_tflops * 1e12, "given"
    else:
        peak, peak_how = measure_peak_flops(dev)
    results: list[StepTiming] = []
    samplers: list[dict[str, Any]] = []
    data_cache: dict[str, Any] = {}
    for m in methods:
        cfg = resolve_config(m, preset=preset, arch=arch, device=device, overrides=list(overrides))
        key = cfg.data.dataset + str(cfg.data.train_subset)
        if key not in data_cache:
            data_cache[key] = load_run_data(cfg)
        wanted = list(variants) + (["reference"] if get_method(m).reference_loop_settings else [])
        for v in wanted:
            results.append(time_method(cfg, v, steps=steps, warmup=warmup, peak=peak, data=data_cache[key],
                                       sampler_rows=samplers if v == "fast" else None))
    fid = time_fid_features(dev, n_images=fid_images) if fid_images > 0 else {"skipped": "not asked (--fid-images 0)"}
    attacks = [time_autoattack(r, out, dev, n_examples=aa_examples, version=aa_version) for r in aa_runs]
    guards = [time_guardrails(r, out, dev, n_examples=aa_examples) for r in aa_runs]
    return {
        "device": _device_name(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": preset,
        "peak_tflops": peak / 1e12,
        "peak_measured_by": peak_how,
        "date": time.strftime("%Y-%m-%d"),
        "results": [dataclasses.asdict(r) for r in results],
        "ratios": _ratios(results),
        "samplers": samplers,
        "fid_features": fid,
        "autoattack": attacks,
        "guardrails": guards,
    }


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
        rows.append({
            "method": r["method"], "variant": r["variant"], "arch": r["arch"], "batch": r["batch_size"],
            "img/s": round(r["images_per_s"], 1), "ms/step": round(1e3 * r["seconds_per_step"], 1),
            "sampler ms": round(1e3 * ph.get("sampler", 0.0), 1), "attack ms": round(1e3 * ph.get("attack", 0.0), 1),
            "update ms": round(1e3 * ph.get("update", 0.0), 1),
            **{f"{name.upper()} ms": round(1e3 * ph.get(name, 0.0), 1) for name in ("sam", "awp")
               if any(name in q["phases"] for q in report["results"])},
            "other ms": round(1e3 * ph.get("other", 0.0), 1),
            "FE/img": round(r["fe_per_image"], 1), "GFLOP/step": round(r["step_gflop"], 2),
            "MFU %": round(100 * r["mfu"], 1) if r["mfu"] is not None else None,
        })
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")
    lines = [f"device: {report['device']}, torch {report['torch']}, preset {report['preset']}, "
             f"peak {report['peak_tflops']:.3g} TFLOP/s ({report['peak_measured_by']}), {report['date']}", "", table, ""]
    for m, ratios in report["ratios"].items():
        parts = [f"{k.replace('fast_vs_', 'fast/')} {v:.2f}x" for k, v in ratios.items()]
        if parts:
            lines.append(f"{m}: " + ", ".join(parts))
    if report.get("samplers"):
        rows = [{"method": r["method"], "sampler": r["kind"], "steps": r["steps"], "batch": r["batch_size"],
                 "img/s": round(r["images_per_s"], 1), "ms/draw": round(r["ms_per_draw"], 1),
                 "FE/img": round(r["fe_per_image"], 1)} for r in report["samplers"]]
        lines += ["", "samplers (one draw of the training step's negative samples):", "",
                  pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")]
    fid = report.get("fid_features") or {}
    lines.append("")
    if "skipped" in fid:
        lines.append(f"FID features: skipped: {fid['skipped']}")
    elif fid:
        lines.append(f"FID features ({fid['extractor']}, {fid['precision']}, batch {fid['batch_size']}, "
                     f"{fid['n_images']} images): {fid['images_per_s']:.1f} images/s")
    if report.get("autoattack"):
        rows = [{"run": r["run"], "method": r["method"], "arch": r["arch"], "version": r["version"],
                 "n": r["n_examples"], "clean %": _pct(r["clean_accuracy"]), "robust %": _pct(r["robust_accuracy"]),
                 "img/s": round(r["images_per_s"], 2), "s": round(r["seconds"], 1)} for r in report["autoattack"]]
        lines += ["", "AutoAttack (the `autoattack` metric on trained runs' test images):", "",
                  pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")]
    else:
        lines.append("AutoAttack: not timed; pass --aa-run RUN (a robust and a non-robust run) to time it")
    if report.get("guardrails"):
        rows = [{"run": r["run"], "method": r["method"], "n": r["n_examples"], "attack": f"PGD-{r['steps']}",
                 "s without checks": round(r["seconds_bare"], 2), "s with checks": round(r["seconds_checked"], 2),
                 "overhead %": round(100 * r["overhead"], 1)} for r in report["guardrails"]]
        lines += ["", "guardrail checks (the `pgd` metric vs the same attack loop without its checks):", "",
                  pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")]
    return "\n".join(lines)


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)
