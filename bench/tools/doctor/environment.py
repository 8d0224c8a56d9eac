"""The machine's side of `bench doctor`: package versions, the device, the precision flags training
and evaluation run under, free memory, and a 1-rank process group reducing the logged values as
`bench run --nproc` does (docs/scale.md, "Checking a machine")."""

from __future__ import annotations

import datetime
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch
import torch.distributed as dist

from bench.core.device import current_precision, evaluation_precision, precision, training_precision
from bench.tools.doctor.checks import SKIPPED, Check, guarded, verdict
from bench.train import distributed as D

GIB = 2**30
# what a run needs besides torch: torchvision (models, transforms), torch-fidelity (FID/KID),
# pyautoattack (the autoattack metric); all are dependencies of the package
PACKAGES = ("torchvision", "torch-fidelity", "pyautoattack")
MIN_FREE_FRACTION = 0.1  # CUDA: less free than this means another process holds the device
FLAGS = {
    "tf32_matmul": "TF32 matmul",
    "tf32_cudnn": "TF32 cuDNN",
    "cudnn_benchmark": "cudnn.benchmark",
}


def versions() -> Check:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    missing = []
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if torch.version.cuda:
        found["torch_cuda"] = torch.version.cuda
    detail = ", ".join(f"{k} {v}" for k, v in found.items())
    if missing:
        detail = f"not installed: {', '.join(missing)} (pip install -e . installs them); {detail}"
    return verdict(not missing, "versions", detail, **found)


def device_check(device: torch.device) -> Check:
    if device.type != "cuda":
        cpu, threads = platform.processor() or platform.machine(), torch.get_num_threads()
        why = "no CUDA device" if not torch.cuda.is_available() else "--device cpu"
        detail = f"cpu ({cpu}, {threads} threads); {why}: the CUDA-only checks are skipped"
        return verdict(True, "device", detail, type="cpu", threads=threads)
    p = torch.cuda.get_device_properties(device)
    gib, count = round(p.total_memory / GIB, 1), torch.cuda.device_count()
    cudnn = torch.backends.cudnn.version()
    detail = f"{p.name} (sm {p.major}{p.minor}, {gib} GiB), {count} visible, cuDNN {cudnn}"
    bf16 = torch.cuda.is_bf16_supported()
    if not bf16:
        detail += ": no bf16, which the fast path's autocast uses; train with --set train.amp=off"
    values = {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}"}
    return verdict(bf16, "device", detail, **values, memory_gib=gib, count=count, cudnn=cudnn)


def precision_flags(train, eval_tf32: bool, device: torch.device) -> Check:
    """Training's and evaluation's flags, each set (bench.core.device.precision), read back and put
    back."""
    now = current_precision()
    wanted = {"training": training_precision(train), "evaluation": evaluation_precision(eval_tf32)}
    values: dict = {"now": now, "float32_matmul_precision": torch.get_float32_matmul_precision()}
    wrong = []
    for name, flags in wanted.items():
        with precision(flags) as held:
            values[name] = dict(held)
        # deterministic algorithms are the trainer's to set, not precision()'s
        expect = {k: v for k, v in flags.as_dict().items() if k != "deterministic"}
        if any(held[k] != v for k, v in expect.items()):
            wrong.append(f"{name} asked for {expect}, torch holds {held}")
    if current_precision() != now:
        wrong.append("the flags were not put back")
    shown = {
        name: ", ".join(f"{n} {'on' if values[name][k] else 'off'}" for k, n in FLAGS.items())
        for name in wanted
    }
    detail = f"training: {shown['training']}; evaluation: {shown['evaluation']}"
    if device.type != "cuda":
        detail += " (CUDA settings: no effect on this CPU)"
    return verdict(not wrong, "precision_flags", "; ".join(wrong) or detail, **values)


def free_memory(device: torch.device) -> Check:
    enough, source = True, " (/proc/meminfo)"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        enough, source = free >= MIN_FREE_FRACTION * total, ""
    elif not Path("/proc/meminfo").is_file():
        why = f"no /proc/meminfo on this system ({sys.platform})"
        return Check("free_memory", SKIPPED, why)
    else:
        lines = Path("/proc/meminfo").read_text().replace(":", "").splitlines()
        kb = {k: v for k, v, *_ in (line.split() for line in lines)}
        if "MemAvailable" not in kb or "MemTotal" not in kb:
            return Check("free_memory", SKIPPED, "/proc/meminfo has no MemAvailable")
        free, total = int(kb["MemAvailable"]) * 1024, int(kb["MemTotal"]) * 1024
    word = "free" if device.type == "cuda" else "available"
    detail = f"{free / GIB:.1f} GiB {word} of {total / GIB:.1f} GiB{source}"
    if not enough:
        detail += ": other processes hold the device (nvidia-smi shows which)"
    values = {"free_gib": round(free / GIB, 2), "total_gib": round(total / GIB, 2)}
    return verdict(enough, "free_memory", detail, **values)


class AllRanks(D.DistInfo):
    """Rank 0 with the collectives on even in a group of one (``DistInfo`` turns them off there),
    so the real all-reduces run and must give back exactly what went in."""

    @property
    def enabled(self) -> bool:
        return True


def reduce_check(method: str, logged: dict[str, torch.Tensor] | None) -> Check:
    """One step's logged values, summed and peaked as ``Trainer.fit`` does, through
    :func:`bench.train.distributed.reduce_logged` over the group."""
    if logged is None:
        return verdict(
            False, "process_group", "no logged values to reduce (see fast_vs_plain)", method
        )
    sums = {k: (v.mean() if v.ndim else v).clone().float() for k, v in logged.items()}
    peaks = {k: v.abs() for k, v in sums.items()}
    red_sums, red_peaks = D.reduce_logged(sums, peaks, 1, AllRanks(0, 1, 0))
    if set(red_sums) != set(sums) or set(red_peaks) != set(peaks):
        detail = f"reduced {sorted(red_sums)}, logged {sorted(sums)}"
        return verdict(False, "process_group", detail, method)
    off = [k for k in sums if not (red_sums[k].equal(sums[k]) and red_peaks[k].equal(peaks[k]))]
    bad = [k for k in sums if not bool(torch.isfinite(red_sums[k]))]
    if off or bad:
        detail = f"one rank's reduction changed {off} / gave non-finite {bad}"
        return verdict(False, "process_group", detail, method)
    detail = (
        f"{dist.get_backend()}, 1 rank: {len(sums)} logged values reduced (mean and max) unchanged: "
        f"{', '.join(sorted(sums))}"
    )
    return verdict(True, "process_group", detail, method, terms=sorted(sums))


def process_group_checks(logged: dict[str, dict | None], device: torch.device) -> list[Check]:
    """``logged``: each method's logged values (None where its step failed). The group lives in an
    in-process store: one rank needs no address or port."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        why = "a process group is already initialised in this process (started by torchrun?)"
        return [Check("process_group", SKIPPED, why, m) for m in logged]
    if not dist.is_available() or not dist.is_backend_available(backend):
        why = f"torch.distributed has no {backend} backend here; --nproc needs it"
        return [verdict(False, "process_group", why, m) for m in logged]
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    try:
        return [guarded("process_group", m, lambda: reduce_check(m, v)) for m, v in logged.items()]
    finally:
        dist.destroy_process_group()
