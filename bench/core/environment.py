"""What a run ran on: package versions, the git revision, the device, the host and the command.

Stored as a record's ``environment`` (docs/records.md).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyautoattack", "torch-fidelity")
PACKAGES += ("trilemma-bench",)


def git_info() -> dict[str, Any]:
    src = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        rev = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", False
    return {"revision": rev or None, "dirty": dirty if rev else None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def device_info(device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"type": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def environment(device) -> dict[str, Any]:
    return {
        "packages": package_versions(),
        "git": git_info(),
        "device": device_info(device),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "pid": os.getpid(),
    }
