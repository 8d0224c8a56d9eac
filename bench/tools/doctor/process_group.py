"""A 1-rank process group (gloo on the CPU, NCCL on CUDA), initialised in this process, reducing
each method's logged values through :func:`bench.train.distributed.reduce_logged` as `bench run --nproc`
does at every log step.

:class:`bench.train.distributed.DistInfo` turns every collective off for one rank (``enabled`` is
``world > 1``), so the check uses :class:`AllRanks`, which keeps them on: the real all-reduces run
over the real group, and with one rank they must give back exactly what went in.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Iterator

import torch
import torch.distributed as dist

from bench.tools.doctor.checks import Check, failed, passed, skipped
from bench.train import distributed as D

CHECK = "process_group"


class AllRanks(D.DistInfo):
    """Rank 0 of a group of any size, collectives on even when the group has one rank."""

    @property
    def enabled(self) -> bool:
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_rank_group(device: torch.device) -> Iterator[str]:
    """Initialise a 1-rank group on a free local port for the block; yields the backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=120)
        )
        try:
            yield backend
        finally:
            dist.destroy_process_group()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def accumulate(
    logged: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The sums and peaks of one step's logged values, as ``Trainer.fit`` accumulates them."""
    sums, maxabs = {}, {}
    for k, v in logged.items():
        v = v.mean() if v.ndim else v
        sums[k], maxabs[k] = v.clone(), v.abs()
    return sums, maxabs


def reduce_check(method: str, logged: dict[str, torch.Tensor]) -> Check:
    sums, maxabs = accumulate(logged)
    red_sums, red_max = D.reduce_logged(sums, maxabs, 1, AllRanks(0, 1, 0))
    if set(red_sums) != set(sums) or set(red_max) != set(maxabs):
        return failed(CHECK, f"reduced {sorted(red_sums)}, logged {sorted(sums)}", method)
    off = [
        k
        for k in sums
        if not (
            torch.equal(red_sums[k], sums[k].float()) and torch.equal(red_max[k], maxabs[k].float())
        )
    ]
    bad = [k for k in sums if not bool(torch.isfinite(red_sums[k]))]
    if off or bad:
        return failed(CHECK, f"one rank's reduction changed {off} / gave non-finite {bad}", method)
    return passed(
        CHECK,
        f"{dist.get_backend()}, 1 rank: {len(sums)} logged values reduced (mean and max) unchanged: "
        f"{', '.join(sorted(sums))}",
        method,
        terms=sorted(sums),
    )


def process_group_checks(
    logged_by_method: dict[str, dict[str, torch.Tensor]], device: torch.device
) -> list[Check]:
    if dist.is_initialized():
        return [
            skipped(
                CHECK,
                "a process group is already initialised in this process (started by torchrun?)",
                m,
            )
            for m in logged_by_method
        ]
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or not dist.is_backend_available(backend):
        return [
            failed(CHECK, f"torch.distributed has no {backend} backend here; --nproc needs it", m)
            for m in logged_by_method
        ]
    out = []
    with one_rank_group(device):
        for method, logged in logged_by_method.items():
            try:
                out.append(reduce_check(method, logged))
            except Exception as exc:
                out.append(
                    failed(
                        CHECK, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", method
                    )
                )
    return out
