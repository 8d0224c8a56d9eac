"""The per-method training-step checks of `bench doctor`: the fast path against the plain one, a
compiled step against an eager one, no host synchronisation inside a step, the peak memory of a
step at the paper's settings, and the throughput."""

from __future__ import annotations

import dataclasses
import gc

import torch

from bench.core.config import RunConfig
from bench.core.device import precision, resolve_device, training_precision
from bench.core.errors import BenchError
from bench.tools.doctor.checks import Check, failed, passed, skipped
from bench.tools.doctor.one_step import (
    StepResult,
    Tolerance,
    compare,
    path_tolerance,
    step_from_seed,
)
from bench.train.trainer import Trainer

GIB = 2**30
# of the device's memory: above this a real run has no room for fragmentation
MAX_MEMORY_FRACTION = 0.9


def fast_vs_plain(method: str, plain: StepResult, fast: StepResult, fast_trainer: Trainer) -> Check:
    tol = path_tolerance(fast_trainer, plain.attacked)
    path = (
        ", ".join(
            p
            for p, on in (
                ("channels_last", fast_trainer.channels_last),
                ("bf16", fast_trainer.use_amp),
            )
            if on
        )
        or "no layout or precision change"
    )
    verdict = compare(plain, fast, tol)
    kind = "attack" if plain.attacked else "no attack"
    detail = f"{verdict.detail} [{path}; {kind}]"
    values = {
        **verdict.values,
        "attacked": plain.attacked,
        "use_amp": fast_trainer.use_amp,
        "channels_last": fast_trainer.channels_last,
    }
    return (passed if verdict.passed else failed)("fast_vs_plain", detail, method, **values)


def compiled_vs_eager(
    method: str,
    mode: str,
    compiled_cfg: RunConfig | BenchError,
    eager: StepResult,
    tol: Tolerance,
    data,
) -> Check:
    """``compiled_cfg``: the method's config with ``train.compile=mode``, or the one-line refusal
    resolving it gave (a CUDA-graph mode the method's step does not suit): a skip, by design.
    ``eager``: the same step on the same path uncompiled; ``tol``: that path's tolerance (compiled
    kernels fuse ops and change the rounding order, as a layout change does; under bf16 they also
    skip intermediate roundings)."""
    name = f"compile_vs_eager[{mode}]"
    if isinstance(compiled_cfg, BenchError):
        return skipped(name, f"refused by design: {compiled_cfg}", method)
    compiled = step_from_seed(compiled_cfg, data)
    verdict = compare(eager, compiled, tol)
    return (passed if verdict.passed else failed)(name, verdict.detail, method, **verdict.values)


def host_sync(method: str, trainer: Trainer, step: int) -> Check:
    """A training step under ``torch.cuda.set_sync_debug_mode("error")``: any op that waits for the
    GPU (``.item()``, ``nonzero``, a device-to-host copy) raises. ``trainer`` has taken a step already
    (the first step may read statistics back)."""
    device = trainer.device
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize(device)
    try:
        with precision(training_precision(trainer.cfg.train)):
            torch.cuda.set_sync_debug_mode("error")
            try:
                trainer.train_step(step)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        return failed("host_sync", f"the step waits for the GPU: {first}", method)
    torch.cuda.synchronize(device)
    return passed(
        "host_sync",
        "one training step under torch.cuda.set_sync_debug_mode('error'): no op waited for the GPU",
        method,
    )


def peak_memory(method: str, cfg: RunConfig, data) -> Check:
    """One training step at ``cfg`` (the paper settings) from an empty allocator: its peak against the
    device's memory. Includes what the run keeps on the device (data, replay buffer, optimiser state)."""
    device = resolve_device(cfg.device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _, total = torch.cuda.mem_get_info(device)
    try:
        step_from_seed(cfg, data)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        reserved = torch.cuda.max_memory_reserved(device)
    except torch.OutOfMemoryError:
        return failed(
            "peak_memory",
            f"out of memory in one step at {_setting(cfg)}; lower data.batch_size or "
            "train on several GPUs (--nproc)",
            method,
        )
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    values = {
        "peak_gib": round(peak / GIB, 2),
        "reserved_gib": round(reserved / GIB, 2),
        "device_gib": round(total / GIB, 2),
        "arch": cfg.model.arch,
        "batch_size": cfg.data.batch_size,
    }
    detail = (
        f"{_setting(cfg)}: peak {peak / GIB:.1f} GiB allocated ({reserved / GIB:.1f} GiB reserved) of "
        f"{total / GIB:.1f} GiB ({100 * reserved / total:.0f}%)"
    )
    if reserved > MAX_MEMORY_FRACTION * total:
        return failed(
            "peak_memory",
            f"{detail}: above {MAX_MEMORY_FRACTION:.0%}; lower data.batch_size or use --nproc",
            method,
            **values,
        )
    return passed("peak_memory", detail, method, **values)


def _setting(cfg: RunConfig) -> str:
    return f"{cfg.model.arch}, batch {cfg.data.batch_size}, {'fast path' if cfg.train.fast else 'plain path'}"


def throughput(method: str, cfg: RunConfig, data, peaks, steps: int) -> Check:
    from bench.tools.perf import time_method

    row = time_method(cfg, "fast", steps=steps, warmup=1, peaks=peaks, data=data, profile_steps=1)
    mfu = (
        f"MFU {100 * row.mfu:.2f}% of the {row.peak} peak ({row.peak_tflops:.3g} TFLOP/s)"
        if row.mfu is not None
        else "no MFU"
    )
    detail = (
        f"{row.images_per_s:.1f} img/s, {1e3 * row.seconds_per_step:.1f} ms/step ({row.arch}, batch "
        f"{row.batch_size}, {row.precision}), {row.fe_per_image:.1f} FE/img, {mfu}"
    )
    values = {k: v for k, v in dataclasses.asdict(row).items() if k not in ("method", "variant")}
    if not row.images_per_s > 0:
        return failed("throughput", detail, method, **values)
    return passed("throughput", detail, method, **values)
