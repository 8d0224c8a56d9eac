"""Data-parallel training across processes through ``torch.distributed`` (launched by torchrun,
or ``bench run --nproc N``): gradients averaged after the backward, rank 0's buffers broadcast
after the step, logged values reduced; docs/scale.md, "Several GPUs", says how and why not DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bench.core.errors import BenchError

BUCKET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def uses_cuda(device_pref: str, cuda_available: bool) -> bool:
    """Whether a run with ``device_pref`` (auto, cpu, cuda, cuda:N) trains on CUDA."""
    return cuda_available if device_pref == "auto" else device_pref.startswith("cuda")


def check_processes_fit(nproc: int, device_pref: str, visible_gpus: int) -> None:
    """One line when ``nproc`` processes on this machine cannot each have a GPU of their own
    (``cuda:LOCAL_RANK``: NCCL refuses two ranks on one GPU); CPU processes (gloo) have no limit."""
    if nproc <= 1 or not uses_cuda(device_pref, visible_gpus > 0):
        return
    if device_pref.startswith("cuda:"):
        raise BenchError(
            f"--device {device_pref} names one GPU but {nproc} processes each need their own; use "
            "--device cuda (process r trains on cuda:r) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if nproc > visible_gpus:
        raise BenchError(
            f"--nproc {nproc} needs one GPU per process but {visible_gpus} "
            f"{'is' if visible_gpus == 1 else 'are'} visible; use --nproc {visible_gpus}"
            if visible_gpus
            else f"--nproc {nproc} with --device {device_pref} needs one GPU per process but no CUDA device "
            "is available; use --device cpu"
        )


def init(device_pref: str) -> tuple[DistInfo, str]:
    """Join the process group if torchrun started us; returns the info and the device to use.
    CUDA trains over NCCL on ``cuda:LOCAL_RANK``, made the current device first (collectives and
    object transfers use it); the CPU over gloo. CUDA never falls back to gloo."""
    if not launched_by_torchrun():
        return SINGLE, device_pref
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_pref.startswith("cuda") and not visible:
        raise BenchError(
            f"--device {device_pref} was asked for but no CUDA device is available; use --device cpu "
            "or auto"
        )
    # this machine's processes: torchrun sets LOCAL_WORLD_SIZE (a sweep's SLURM launch sets LOCAL_RANK only)
    check_processes_fit(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), device_pref, visible)
    if not uses_cuda(device_pref, visible > 0):
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        return DistInfo(rank, world, local), "cpu"
    if local >= visible:
        raise BenchError(
            f"process {rank} has local rank {local} but {visible} GPU(s) are visible; start at most "
            f"{visible} processes per machine, one per GPU"
        )
    if not dist.is_nccl_available():
        raise BenchError(
            "this PyTorch build has no NCCL, which multi-GPU training needs; install a CUDA build of "
            "PyTorch with NCCL, or train on the CPU with --device cpu (gloo)"
        )
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl", device_id=device)
    return DistInfo(rank, world, local), str(device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (None elsewhere)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module, info: DistInfo) -> None:
    if info.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (batch-norm statistics, counters) on every rank, one broadcast per dtype:
    each rank's forwards update its own, so the replicas would drift apart (as DDP, rank 0 wins)."""
    if not info.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in module.buffers():
        groups.setdefault((b.dtype, b.device), []).append(b)
    for group in groups.values():
        _coalesced(group, lambda flat: dist.broadcast(flat, src=0))


def _coalesced(tensors: list[torch.Tensor], collective) -> None:
    """One ``collective`` (in place) on the tensors flattened together; the result copied back."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    collective(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients, coalesced into buckets of about 64 MiB."""
    if not info.enabled:
        return

    def mean(flat: torch.Tensor) -> None:
        dist.all_reduce(flat)
        flat /= info.world

    bucket: list[torch.Tensor] = []
    size = 0
    for g in [p.grad for p in params if p.grad is not None] + [None]:
        if g is not None:
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket and (g is None or size >= BUCKET_BYTES):
            _coalesced(bucket, mean)
            bucket, size = [], 0


def stack_logged(values: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    """The logged values ``keys`` as one float32 vector for a collective; every value must be on one device."""
    devices = {str(values[k].device) for k in keys}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {values[k].device}" for k in keys)
        raise BenchError(
            f"logged values live on different devices ({where}); a method must create every tensor "
            "it returns on ctx.device (or return a Python float)"
        )
    return torch.stack([values[k].float().reshape(()) for k in keys])


def reduce_logged(
    sums: dict[str, torch.Tensor], maxabs: dict[str, torch.Tensor], count: int, info: DistInfo
):
    """Mean of the per-rank sums and max of the peaks, so every rank takes the same decision."""
    if not info.enabled or not sums:
        return sums, maxabs
    keys = sorted(sums)
    s = stack_logged(sums, keys)
    m = stack_logged(maxabs, keys)
    dist.all_reduce(s)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    s /= info.world
    return dict(zip(keys, s)), dict(zip(keys, m))


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def model_in_sync(module: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds the same weights and buffers (batch-norm statistics included).

    Compares float64 checksums per tensor (sum and sum of squares) elementwise across ranks."""
    if not info.enabled:
        return True
    tensors = [t.detach().double() for t in list(module.parameters()) + list(module.buffers())]
    if not tensors:
        return True
    local = torch.stack([torch.stack([t.sum(), t.pow(2).sum()]) for t in tensors]).reshape(-1)
    lo, hi = local.clone(), local.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
