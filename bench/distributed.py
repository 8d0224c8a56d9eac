"""Data-parallel training across processes through ``torch.distributed`` (launched by torchrun).

``torchrun --nproc-per-node N -m bench run ...`` (or ``bench run --nproc N``) starts N processes;
each trains on its own shard of every global batch (``data.batch_size`` images per rank) with
its own random draws and its own method state (e.g. a replay buffer), and after each backward
pass the gradients are averaged across ranks with one coalesced all-reduce per bucket, so every
rank takes the same optimiser step and the weights stay identical. Rank 0 alone writes the run
directory, the record and the checkpoints (which carry every rank's method state).

Why not the ``DistributedDataParallel`` wrapper: attacks and samplers run many extra forward
passes whose input-only gradients produce no parameter gradients, which DDP's reducer rejects
("expected to have finished reduction"); averaging after the backward is the same arithmetic
for any method without touching method code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

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


def init(device_pref: str) -> tuple[DistInfo, str]:
    """Join the process group if torchrun started us; returns the info and the device to use."""
    if not launched_by_torchrun():
        return SINGLE, device_pref
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device_pref in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    return DistInfo(rank, world, local), device


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
def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients, coalesced into buckets of about 64 MiB."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads + [None]:  # type: ignore[list-item]
        if g is not None:
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket and (g is None or size >= BUCKET_BYTES):
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat /= info.world
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


def reduce_logged(sums: dict[str, torch.Tensor], maxabs: dict[str, torch.Tensor], count: int, info: DistInfo):
    """Mean of the per-rank sums and max of the peaks, so every rank takes the same decision."""
    if not info.enabled or not sums:
        return sums, maxabs
    keys = sorted(sums)
    s = torch.stack([sums[k].float() for k in keys])
    m = torch.stack([maxabs[k].float() for k in keys])
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
def parameters_in_sync(module: torch.nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds the same weights (compares a float64 checksum)."""
    if not info.enabled:
        return True
    local = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    lo, hi = local.clone(), local.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo.item() == hi.item())


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
