"""The machine's side of `bench doctor`: package versions, the device, the precision flags training
and evaluation run under, and free memory."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from bench.core.device import current_precision, evaluation_precision, precision, training_precision
from bench.tools.doctor.checks import Check, failed, passed, skipped

GIB = 2**30
# what a run needs besides torch: torchvision (models, transforms), torch-fidelity (FID/KID),
# pyautoattack (the autoattack metric); all are dependencies of the package
PACKAGES = ("torchvision", "torch-fidelity", "pyautoattack")
MIN_FREE_FRACTION = 0.1  # CUDA: less free than this means another process holds the device


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
        return failed(
            "versions",
            f"not installed: {', '.join(missing)} (pip install -e . installs them); {detail}",
            **found,
        )
    return passed("versions", detail, **found)


def device_check(device: torch.device) -> Check:
    if device.type != "cuda":
        cpu = platform.processor() or platform.machine()
        why = "no CUDA device" if not torch.cuda.is_available() else "--device cpu"
        return passed(
            "device",
            f"cpu ({cpu}, {torch.get_num_threads()} threads); {why}: the CUDA-only checks are "
            "skipped",
            type="cpu",
            threads=torch.get_num_threads(),
        )
    props = torch.cuda.get_device_properties(device)
    values = {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / GIB, 1),
        "count": torch.cuda.device_count(),
        "cudnn": torch.backends.cudnn.version(),
    }
    detail = (
        f"{props.name} (sm {props.major}{props.minor}, {values['memory_gib']} GiB), {values['count']} visible, "
        f"cuDNN {values['cudnn']}"
    )
    if not torch.cuda.is_bf16_supported():
        return failed(
            "device",
            f"{detail}: no bf16, which the fast path's autocast uses; train with --set "
            "train.amp=off",
            **values,
        )
    return passed("device", detail, **values)


def precision_flags(train, eval_tf32: bool, device: torch.device) -> Check:
    """The flags as torch holds them now, and whether training's and evaluation's own settings take:
    each is set (bench.core.device.precision), read back and put back."""
    now = current_precision()
    wanted = {"training": training_precision(train), "evaluation": evaluation_precision(eval_tf32)}
    values: dict = {"now": now, "float32_matmul_precision": torch.get_float32_matmul_precision()}
    wrong = []
    for name, flags in wanted.items():
        with precision(flags) as held:
            values[name] = dict(held)
        expect = {
            k: v for k, v in flags.as_dict().items() if k != "deterministic"
        }  # set by the trainer, not here
        if any(held[k] != v for k, v in expect.items()):
            wrong.append(f"{name} asked for {expect}, torch holds {held}")
    if current_precision() != now:
        wrong.append("the flags were not put back")

    def show(d: dict) -> str:
        return (
            f"TF32 matmul {'on' if d['tf32_matmul'] else 'off'}, TF32 cuDNN {'on' if d['tf32_cudnn'] else 'off'}, "
            f"cudnn.benchmark {'on' if d['cudnn_benchmark'] else 'off'}"
        )

    detail = f"training: {show(values['training'])}; evaluation: {show(values['evaluation'])}"
    if device.type != "cuda":
        detail += " (CUDA settings: no effect on this CPU)"
    if wrong:
        return failed("precision_flags", "; ".join(wrong), **values)
    return passed("precision_flags", detail, **values)


def free_memory(device: torch.device) -> Check:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        detail = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB"
        values = {"free_gib": round(free / GIB, 2), "total_gib": round(total / GIB, 2)}
        if free < MIN_FREE_FRACTION * total:
            return failed(
                "free_memory",
                f"{detail}: other processes hold the device (nvidia-smi shows which)",
                **values,
            )
        return passed("free_memory", detail, **values)
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return skipped("free_memory", f"no /proc/meminfo on this system ({sys.platform})")
    fields = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * 1024  # kB
    if "MemAvailable" not in fields or "MemTotal" not in fields:
        return skipped("free_memory", "/proc/meminfo has no MemAvailable")
    free, total = fields["MemAvailable"], fields["MemTotal"]
    return passed(
        "free_memory",
        f"{free / GIB:.1f} GiB available of {total / GIB:.1f} GiB (/proc/meminfo)",
        free_gib=round(free / GIB, 2),
        total_gib=round(total / GIB, 2),
    )
