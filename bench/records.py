"""Run directories and run records (``results/runs/<run-id>/record.json``).

A record is plain JSON with fixed top-level keys (see :func:`new_record`); every evaluation
number sits under ``evaluations[<protocol>][<metric>]`` together with its settings and sample
count. Records are rewritten atomically as a run progresses.
"""

from __future__ import annotations

import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import read_json, write_json

SCHEMA = 1
PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pyautoattack", "torch-fidelity", "trilemma-bench")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def runs_root(out: str | Path) -> Path:
    return Path(out) / "runs"


def new_run_dir(out: str | Path, method: str, dataset: str) -> tuple[str, Path]:
    """Create a fresh, unique run directory; never reuses or overwrites an existing one."""
    root = runs_root(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{secrets.token_hex(4)}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"cannot write to the results directory {Path(out)!s} ({exc.strerror}); pass a writable --out DIR")
    safe_ds = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(dataset).stem if True)[:24]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        run_id = f"{stamp}-{method}-{safe_ds}-{secrets.token_hex(3)}"
        path = root / run_id
        try:
            path.mkdir()
            return run_id, path
        except FileExistsError:
            continue
    raise BenchError(f"could not create a unique run directory under {root}")


def git_info() -> dict[str, Any]:
    src = Path(__file__).resolve().parent.parent
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10).stdout.strip()
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


def new_record(run_id: str, cfg, device, data_summary: dict) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": "running",
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "arch": cfg.model.arch,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "environment": environment(device),
        "data": data_summary,
        "created_at": now(),
        "updated_at": now(),
        "finished_at": None,
        "message": None,
        "timings": {},
        "training": {"history": [], "validation": [], "rollbacks": [], "resumes": []},
        "evaluations": {},
        "artifacts": {},
    }


def save_record(run_dir: Path, record: dict[str, Any]) -> None:
    record["updated_at"] = now()
    write_json(Path(run_dir) / "record.json", record)


class RunLock:
    """Exclusive ownership of a run directory while a process trains it (``.lock`` holds the PID).

    A lock left by a process that no longer exists (kill -9, a crash) is taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def __enter__(self) -> "RunLock":
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self.path.read_text().strip() if self.path.is_file() else ""
                host, _, pid = owner.rpartition(" ")
                if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
                    raise BenchError(f"run {self.path.parent.name} is being trained by process {pid}; "
                                     "wait for it to finish or stop it before resuming")
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self.held = True
            return self
        raise BenchError(f"could not lock {self.path}; remove it if no process trains this run")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_run(ref: str, out: str | Path) -> Path:
    """A run given by id (under ``out``/runs), by its directory, or by its record.json path."""
    p = Path(ref)
    candidates = [p, p.parent if p.name == "record.json" else None, runs_root(out) / ref]
    for c in candidates:
        if c is not None and (c / "record.json").is_file():
            return c
    known = list_runs(out)[-5:]
    hint = f"; recent runs: {', '.join(r.name for r in known)}" if known else ""
    raise BenchError(f"run {ref!r} not found under {runs_root(out)}/ (pass a run id or a run directory){hint}")


def load_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "record.json"
    try:
        rec = read_json(path)
    except (OSError, ValueError) as exc:
        raise BenchError(f"record {path} is unreadable ({type(exc).__name__}); it may have been edited by hand")
    if not isinstance(rec, dict) or "run_id" not in rec:
        raise BenchError(f"{path} is not a trilemma-bench run record")
    return rec


def list_runs(out: str | Path) -> list[Path]:
    root = runs_root(out)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "record.json").is_file())
