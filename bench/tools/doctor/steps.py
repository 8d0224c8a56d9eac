"""One optimiser step from the seed's weights, how far two such steps may differ (the tolerances
of docs/methods.md, "The fast path"), and the per-method checks of `bench doctor` built on it: fast
vs plain path, compiled vs eager, host sync, peak memory, throughput (docs/scale.md). The tests of
the fast path, the compile modes and host sync run these same checks."""

from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import tempfile
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.core.config import RunConfig
from bench.core.device import precision, resolve_device, training_precision
from bench.core.timing import measure_regions
from bench.data import load_run_data
from bench.models import build_model
from bench.tools.doctor.checks import Check, verdict
from bench.train.trainer import Trainer
from methods import get_method

STEP = 5  # the global step taken (its seed and batch); the learning rate is step 0's
GIB = 2**30
MAX_MEMORY_FRACTION = 0.9  # of the device's memory: above it a real run has no room to fragment
# aten ops that read a device value back; the indexing ones only when an index is a bool mask
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive"}
SYNCING_OPS |= {"masked_select", "is_nonzero", "equal"}
MASK_INDEXING_OPS = {"index", "index_put", "index_put_"}


@dataclass(frozen=True)
class Tolerance:
    """``|loss - ref| <= loss_abs * max(1, |ref|) + loss_rel * |ref|``, update cosine > ``cos_min``,
    update norm ratio strictly inside ``norm_ratio``."""

    loss_abs: float = 0.0
    loss_rel: float = 0.0
    cos_min: float = 0.0
    norm_ratio: tuple[float, float] = (0.9, 1.1)

    def loss_bound(self, ref: float) -> float:
        return self.loss_abs * max(1.0, abs(ref)) + self.loss_rel * abs(ref)


TOLERANCES: dict[tuple[str, bool], Tolerance] = {  # (comparison, the step has an attack)
    ("layout", False): Tolerance(loss_abs=1e-5, cos_min=0.9999),
    ("layout", True): Tolerance(loss_abs=1e-2, cos_min=0.9),
    ("bf16", False): Tolerance(loss_rel=5e-3, cos_min=0.99),
    ("bf16", True): Tolerance(loss_rel=5e-3, cos_min=0.9),
}


def tolerance(comparison: str, attacked: bool) -> Tolerance:
    return TOLERANCES[(comparison, attacked)]


def path_tolerance(trainer: Trainer, attacked: bool) -> Tolerance:
    """The bf16 row when the trainer's matmuls run in reduced precision (bf16 autocast, or TF32,
    whose rounding is finer), else the layout row (channels_last, fused kernels: rounding order)."""
    tf32 = trainer.device.type == "cuda" and training_precision(trainer.cfg.train).tf32
    return tolerance("bf16" if trainer.use_amp or tf32 else "layout", attacked)


@dataclass
class StepResult:
    terms: dict[str, float]  # the loss and every term the method returned, read back
    update: torch.Tensor  # the parameter update, flattened, fp32, on the CPU
    attacked: bool  # the step entered the "attack" timing region
    logged: dict[str, torch.Tensor] = field(default_factory=dict)  # as train_step returned them


def build_trainer(cfg: RunConfig, run_dir: Any, data: Any = None) -> Trainer:
    """A trainer for ``cfg`` with the seed's initial weights, as `bench run` builds it."""
    device = resolve_device(cfg.device)
    data = data if data is not None else load_run_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes).to(device)
    method = get_method(cfg.method).from_dict(cfg.method_cfg)
    method.setup(model, data, device)
    return Trainer(cfg, model, method, data, device, run_dir, show_progress=False)


def take_step(trainer: Trainer, step: int = STEP) -> StepResult:
    """One optimiser step in train mode under the precision flags `bench run` trains with."""
    trainer.model.train()
    trainer.set_lr(0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with (
        precision(training_precision(trainer.cfg.train)),
        measure_regions(trainer.device) as regions,
    ):
        logged = trainer.train_step(step)
    moved = [(p.detach() - q).flatten().float() for p, q in zip(trainer.model.parameters(), before)]
    terms = {k: float(v.float().mean()) for k, v in logged.items()}
    return StepResult(terms, torch.cat(moved).cpu(), "attack" in regions, logged)


def step_from_seed(cfg: RunConfig, data: Any = None) -> StepResult:
    with tempfile.TemporaryDirectory() as tmp:
        return take_step(build_trainer(cfg, tmp, data))


def compare(ref: StepResult, other: StepResult, tol: Tolerance, check: str = "compare") -> Check:
    """Whether ``other`` trains like ``ref`` within ``tol``: the same terms and attack, the loss,
    the update's direction (cosine) and size (norm ratio)."""
    if ref.terms.keys() != other.terms.keys() or ref.attacked != other.attacked:
        detail = f"the steps return different terms: {sorted(ref.terms)} vs {sorted(other.terms)}"
        return verdict(False, check, f"{detail} (attack: {ref.attacked} vs {other.attacked})")
    loss, loss_other = ref.terms["loss"], other.terms["loss"]
    ref_norm = float(ref.update.norm())
    cos = float(torch.nn.functional.cosine_similarity(ref.update, other.update, dim=0))
    ratio = float(other.update.norm()) / ref_norm if ref_norm > 0 else math.nan
    diff, bound = abs(loss_other - loss), tol.loss_bound(loss)
    ok = {  # NaN fails each comparison
        "loss": diff <= bound,
        "cosine": cos > tol.cos_min,
        "norm ratio": tol.norm_ratio[0] < ratio < tol.norm_ratio[1],
    }
    detail = (
        f"loss {loss:.6g} vs {loss_other:.6g} (|diff| {diff:.2g}, bound {bound:.2g}); update cosine "
        f"{cos:.6f} (> {tol.cos_min}); norm ratio {ratio:.4f}"
    )
    bad = [k for k, good in ok.items() if not good]
    if bad:
        detail = f"outside the tolerance ({', '.join(bad)}): {detail}"
    values = {"loss": loss, "loss_other": loss_other, "loss_diff": diff, "loss_bound": bound}
    values |= {"cosine": cos, "cosine_min": tol.cos_min, "norm_ratio": ratio}
    return verdict(not bad, check, detail, **values, norm_ratio_bounds=list(tol.norm_ratio))


def with_train(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


class FastStep:
    """Step 5 on ``cfg``'s path with compile off, from the seed's weights, and the checks that
    compare the plain and the compiled step with it or run more steps on its trainer."""

    def __init__(self, cfg: RunConfig, data: Any = None):
        self.cfg, self.method = with_train(cfg, compile="off"), cfg.method
        self.data = data if data is not None else load_run_data(cfg)
        run_dir = tempfile.mkdtemp(prefix="bench-doctor-")  # the trainer writes nothing there
        weakref.finalize(self, shutil.rmtree, run_dir, True)
        self.trainer = build_trainer(self.cfg, run_dir, self.data)
        self.step = take_step(self.trainer)
        self.tolerance = path_tolerance(self.trainer, self.step.attacked)

    def against_plain(self) -> Check:
        """The plain path (eager fp32, NCHW) from the same weights, within this path's tolerance."""
        plain = step_from_seed(with_train(self.cfg, fast=False), self.data)
        check = compare(plain, self.step, self.tolerance, "fast_vs_plain")
        t = self.trainer
        path = [p for p, on in (("channels_last", t.channels_last), ("bf16", t.use_amp)) if on]
        kind = "attack" if plain.attacked else "no attack"
        check.detail += f" [{', '.join(path) or 'no layout or precision change'}; {kind}]"
        check.method = self.method
        check.values |= {"attacked": plain.attacked, "use_amp": t.use_amp}
        check.values["channels_last"] = t.channels_last
        return check

    def against_compiled(self, mode: str, compiled_cfg: RunConfig) -> Check:
        """``compiled_cfg``: this config with ``train.compile=mode``. Compiled kernels fuse ops and
        change the rounding order as a layout change does: within this path's tolerance."""
        compiled = step_from_seed(compiled_cfg, self.data)
        check = compare(self.step, compiled, self.tolerance, f"compile_vs_eager[{mode}]")
        check.method = self.method
        return check

    def host_sync(self, steps: tuple[int, ...] = (STEP + 1,)) -> Check:
        """More steps on this trainer (its first may read statistics back): every op that reads a
        device value back is recorded (:class:`HostSyncRecorder`); on CUDA
        ``torch.cuda.set_sync_debug_mode("error")`` also stops at copies that dispatch no op."""
        trainer, cuda = self.trainer, self.trainer.device.type == "cuda"
        previous = torch.cuda.get_sync_debug_mode() if cuda else 0
        with precision(training_precision(trainer.cfg.train)), HostSyncRecorder() as rec:
            try:
                if cuda:
                    torch.cuda.synchronize(trainer.device)
                    torch.cuda.set_sync_debug_mode("error")
                for step in steps:
                    trainer.train_step(step)
            except RuntimeError as exc:  # set_sync_debug_mode's error; on a CPU a real one
                if not cuda:
                    raise
                rec.hits.append(" ".join(str(exc).split())[:300])
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode(previous)
        if rec.hits:
            return verdict(
                False, "host_sync", f"the step waits for the GPU: {rec.hits[0]}", self.method
            )
        debug_mode = "torch.cuda.set_sync_debug_mode('error') and " if cuda else ""
        detail = f"{len(steps)} training step(s) under {debug_mode}a recorder of syncing ops"
        detail += ": no op waited for the GPU"
        return verdict(True, "host_sync", detail, self.method)


class HostSyncRecorder(TorchDispatchMode):
    """Records every aten op that reads a device value back (``.item()``, ``bool(t)``, ``nonzero``,
    boolean-mask indexing ...) with the frame that issued it, also on a CPU (where it costs nothing
    but marks the code path CUDA takes). ``.cpu()`` and ``.tolist()`` dispatch no op on a CPU tensor.
    The unfused optimiser's step counter (a CPU scalar inside ``torch.optim``) is left out."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        indices = args[1] if name in MASK_INDEXING_OPS and len(args) > 1 else None
        masked = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
        if name in SYNCING_OPS or masked:
            stack = traceback.format_stack()[:-1]  # without this frame
            if not any("torch/optim/" in line for line in stack):
                ours = [line.strip() for line in stack if "site-packages" not in line]
                self.hits.append(f"{name} at {ours[-1] if ours else '?'}")
        return func(*args, **(kwargs or {}))


def peak_memory(method: str, cfg: RunConfig, data: Any) -> Check:
    """One step at ``cfg`` (the paper settings) from an empty allocator, with what the run keeps on
    the device (data, replay buffer, optimiser state): its peak against the device's memory."""
    device = resolve_device(cfg.device)
    path = "fast path" if cfg.train.fast else "plain path"
    setting = f"{cfg.model.arch}, batch {cfg.data.batch_size}, {path}"
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    total = torch.cuda.mem_get_info(device)[1]
    try:
        step_from_seed(cfg, data)
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        why = f"out of memory in one step at {setting}; lower data.batch_size or train on several"
        return verdict(False, "peak_memory", f"{why} GPUs (--nproc)", method)
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(device) - base
    reserved = torch.cuda.max_memory_reserved(device)
    detail = (
        f"{setting}: peak {peak / GIB:.1f} GiB allocated ({reserved / GIB:.1f} GiB reserved) of "
        f"{total / GIB:.1f} GiB ({100 * reserved / total:.0f}%)"
    )
    ok = reserved <= MAX_MEMORY_FRACTION * total
    if not ok:
        detail += f": above {MAX_MEMORY_FRACTION:.0%}; lower data.batch_size or use --nproc"
    gib = {"peak_gib": peak, "reserved_gib": reserved, "device_gib": total}
    values = {k: round(v / GIB, 2) for k, v in gib.items()}
    values |= {"arch": cfg.model.arch, "batch_size": cfg.data.batch_size}
    return verdict(ok, "peak_memory", detail, method, **values)


def throughput(method: str, cfg: RunConfig, data: Any, peaks: Any, steps: int) -> Check:
    from bench.tools.perf import time_method

    row = time_method(cfg, "fast", steps=steps, warmup=1, peaks=peaks, data=data, profile_steps=1)
    mfu = "no MFU"
    if row.mfu is not None:
        mfu = f"MFU {100 * row.mfu:.2f}% of the {row.peak} peak ({row.peak_tflops:.3g} TFLOP/s)"
    detail = (
        f"{row.images_per_s:.1f} img/s, {1e3 * row.seconds_per_step:.1f} ms/step ({row.arch}, batch "
        f"{row.batch_size}, {row.precision}), {row.fe_per_image:.1f} FE/img, {mfu}"
    )
    values = {k: v for k, v in dataclasses.asdict(row).items() if k not in ("method", "variant")}
    return verdict(row.images_per_s > 0, "throughput", detail, method, **values)
