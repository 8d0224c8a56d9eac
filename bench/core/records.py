"""Run directories and run records (``results/runs/<run-id>/record.json``).

:class:`RunRecord` is the one writer of ``record.json``: the runner updates it as training goes
(``update_training``, ``set_status``), the evaluation layer merges results into it
(``merge_evaluation``), and both go through ``save``, which writes atomically under a lock on the
run directory and keeps every evaluation another process wrote meanwhile. The schema (version
:data:`SCHEMA`) is documented in ``docs/records.md``; records of older versions are upgraded in
memory when loaded, so every record ever written still loads.
"""

from __future__ import annotations

import fcntl
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.io import read_json, remove_litter, write_json

# 2: `changes` (settings that depart from the method's preset) stored when the run starts
SCHEMA = 2
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pyautoattack",
    "torch-fidelity",
    "trilemma-bench",
)


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
        raise BenchError(
            f"cannot write to the results directory {Path(out)!s} ({exc.strerror}); pass a writable --out DIR"
        )
    safe_ds = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(dataset).stem if True)[
        :24
    ]
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


def new_record(
    run_id: str,
    cfg,
    device,
    data_summary: dict,
    changes: dict[str, Any] | None = None,
    plugins: list[dict[str, Any]] | None = None,
    variant: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from bench.core.device import training_precision  # torch: imported only where a record is made

    env = environment(device)
    env["plugins"] = list(
        plugins or []
    )  # each package besides trilemma-bench that provided the method or a metric
    # the flags training sets (bench.core.device.training_precision); each evaluation result records its own
    env["precision"] = training_precision(cfg.train).as_dict()
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
        "changes": None if changes is None else dict(changes),
        # where the method's own variant of the preset departs from the preset every method shares
        "preset_variant": None if variant is None else dict(variant),
        "environment": env,
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


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any older schema version as the current version reads it (in memory: the file
    changes only when the record is next saved, e.g. by `bench eval` or a resume)."""
    version = rec.get("schema", 1)
    if not isinstance(version, int) or version > SCHEMA:
        raise BenchError(
            f"record of run {rec.get('run_id')} has schema {version!r}, newer than this trilemma-bench "
            f"reads ({SCHEMA}); upgrade trilemma-bench to read it"
        )
    if version < 2:
        rec.setdefault("changes", None)  # not stored before version 2: `bench compare` works it out
    for key, empty in (("evaluations", {}), ("artifacts", {}), ("timings", {}), ("training", {})):
        if not isinstance(rec.get(key), dict):
            rec[key] = dict(empty)
    rec["schema"] = SCHEMA
    return rec


def run_config(rec: dict[str, Any]):
    """The run's resolved config (a RunConfig) from its record; one line if the record has none usable."""
    from bench.core.config import RunConfig, from_dict

    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        raise BenchError(
            f"the record of run {rec.get('run_id')} holds no config, so the run cannot be resumed or "
            "evaluated; start a new run"
        )
    try:
        return from_dict(RunConfig, cfg)
    except BenchError as exc:
        raise BenchError(
            f"the config in the record of run {rec.get('run_id')} is not valid ({exc}); start a new run"
        )


def _newer(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Of two results of one metric, the later evaluated (``b`` on a tie)."""
    return a if str(a.get("evaluated_at", "")) > str(b.get("evaluated_at", "")) else b


class RunRecord:
    """A run's ``record.json``: read it, change it, save it; the only code that writes the file."""

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data

    @property
    def path(self) -> Path:
        return self.run_dir / "record.json"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    # -- create / load / save ------------------------------------------------------------
    @classmethod
    def create(
        cls,
        run_dir: Path,
        run_id: str,
        cfg,
        device,
        data_summary: dict,
        changes: dict[str, Any] | None = None,
        save: bool = True,
        plugins: list[dict[str, Any]] | None = None,
        variant: dict[str, Any] | None = None,
    ) -> RunRecord:
        rec = cls(run_dir, new_record(run_id, cfg, device, data_summary, changes, plugins, variant))
        if save:
            rec.save()
        return rec

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        return cls(run_dir, load_record(run_dir))

    def save(self) -> None:
        """Write atomically under a lock on the run directory. What the evaluation layer owns
        (results, their artifacts, skipped metrics, evaluation time) and another process saved since
        this copy was read is kept: of two results of one metric, the later evaluated wins."""
        with _dir_lock(self.run_dir):
            self._write_locked()

    @classmethod
    def update(cls, run_dir: Path, change: Callable[[RunRecord], None]) -> RunRecord:
        """Read-modify-write for a process that does not own the run (e.g. `bench eval` while it
        trains): the record is read, changed and written under the lock, so nothing is put back stale."""
        with _dir_lock(Path(run_dir)):
            rec = cls.load(run_dir)
            change(rec)
            rec._write_locked(keep_disk=False)  # read under this lock: nothing on disk is newer
        return rec

    def _write_locked(self, keep_disk: bool = True) -> None:
        if keep_disk and self.path.is_file():
            try:
                disk = read_json(self.path)
            except (OSError, ValueError):
                disk = {}
            if isinstance(disk, dict):
                self._keep_evaluation_parts(disk)
        self.data["updated_at"] = now()
        write_json(self.path, self.data)

    def _keep_evaluation_parts(self, disk: dict[str, Any]) -> None:
        """Results, their figures, skipped metrics, evaluation time and the plugins that produced them."""
        mine = self.data.setdefault("evaluations", {})
        for protocol, results in (disk.get("evaluations") or {}).items():
            if not isinstance(results, dict):
                continue
            slot = mine.setdefault(protocol, {})
            for metric, res in results.items():
                if isinstance(res, dict):
                    slot[metric] = (
                        _newer(res, slot[metric]) if isinstance(slot.get(metric), dict) else res
                    )
        arts = self.data.setdefault("artifacts", {})
        for key, rel in (disk.get("artifacts") or {}).items():
            if key.count("/") >= 2:  # <protocol>/<metric>/<name>: an evaluation's figure
                arts.setdefault(key, rel)
        for protocol, why in (disk.get("evaluation_skipped") or {}).items():
            self.data.setdefault("evaluation_skipped", {}).setdefault(protocol, why)
        self.add_plugins(
            [p for p in (disk.get("environment") or {}).get("plugins") or () if isinstance(p, dict)]
        )
        done = (disk.get("timings") or {}).get("eval_seconds")
        if isinstance(done, (int, float)):
            t = self.data.setdefault("timings", {})
            t["eval_seconds"] = max(t.get("eval_seconds", 0), done)

    # -- changes ------------------------------------------------------------------------
    def set_status(self, status: str, message: str | None = None, save: bool = True) -> None:
        self.data["status"] = status
        self.data["message"] = message
        if status == "complete":
            self.data["finished_at"] = now()
        if save:
            self.save()

    def update_training(
        self,
        artifacts: dict[str, str] | None = None,
        train_seconds: float | None = None,
        save: bool = True,
        **training: Any,
    ) -> None:
        """Training progress (steps, history, validation, rollbacks, ...), its time and artifacts."""
        self.data["training"].update(training)
        if train_seconds is not None:
            self.data["timings"]["train_seconds"] = round(train_seconds, 3)
        self.data["artifacts"].update(artifacts or {})
        if save:
            self.save()

    def add_resume(
        self,
        at_step: int,
        overrides: dict[str, dict[str, Any]] | None = None,
        note: str | None = None,
    ) -> None:
        """One entry per resume: the step it continued from, and the settings it changed
        (``{"optim.lr": {"from": 0.1, "to": 0.01}}``) or why it restarted (``note``)."""
        entry: dict[str, Any] = {"at_step": at_step, "time": now()}
        if overrides:
            entry["overrides"] = overrides
        if note:
            entry["note"] = note
        self.data["training"].setdefault("resumes", []).append(entry)

    def add_plugins(self, plugins: list[dict[str, Any]]) -> None:
        """List each plugin (kind, name, package, version, module) once in ``environment.plugins``."""
        have = self.data.setdefault("environment", {}).setdefault("plugins", [])
        for p in plugins:
            if not any(
                h.get("kind") == p.get("kind") and h.get("name") == p.get("name") for h in have
            ):
                have.append(p)

    def remove_litter(self) -> list[Path]:
        """Delete temporary files left by writes that a kill interrupted: the record's (under the
        directory lock its writers hold) and the trainer's. Call it while holding the run's lock."""
        with _dir_lock(self.run_dir):
            found = remove_litter(self.run_dir, "record.json")
        # written only by the trainer, which holds the run's lock (`bench eval` writes elsewhere in samples/)
        return (
            found
            + remove_litter(self.run_dir / "checkpoints")
            + remove_litter(self.run_dir / "samples", "buffer-*")
        )

    def merge_evaluation(
        self,
        protocol: str,
        results: dict[str, dict[str, Any]],
        skipped: dict[str, str] | None = None,
        save: bool = True,
    ) -> None:
        """Add ``results`` (metric -> result) under ``evaluations[protocol]``, keeping the other metrics'
        earlier results; their artifacts go into ``artifacts`` as ``<protocol>/<metric>/<name>``."""
        self.data.setdefault("evaluations", {}).setdefault(protocol, {}).update(results)
        self.add_plugins(
            [
                {"kind": "metric", "name": res.get("metric") or metric, **res["provider"]}
                for metric, res in results.items()
                if isinstance(res.get("provider"), dict)
            ]
        )
        self.add_plugins(
            [
                {"kind": "protocol", "name": protocol, **res["protocol_provider"]}
                for res in results.values()
                if isinstance(res.get("protocol_provider"), dict)
            ]
        )
        arts = self.data.setdefault("artifacts", {})
        for metric, res in results.items():
            for name, rel in (res.get("artifacts") or {}).items():
                arts[f"{protocol}/{metric}/{name}"] = rel
        if skipped:
            self.data.setdefault("evaluation_skipped", {})[protocol] = dict(skipped)
        t = self.data.setdefault("timings", {})
        t["eval_seconds"] = round(
            t.get("eval_seconds", 0) + sum(r.get("seconds", 0) for r in results.values()), 3
        )
        if save:
            self.save()


class _dir_lock:
    """An exclusive ``flock`` on the directory ``path`` itself for the block: no lock file is left
    behind, and the OS releases it if the process dies."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class RunLock:
    """Exclusive ownership of a run directory while a process trains it: an OS lock (``flock``) on
    ``.lock``, held for the process's life and released by the OS when it dies (kill -9, a crash),
    so a dead owner's lock is simply taken. The file holds "host pid" of the owner, for messages."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 256).decode(errors="replace").strip()
                os.close(fd)
                pid = owner.rpartition(" ")[2] or "?"
                raise BenchError(
                    f"run {self.path.parent.name} is being trained by process {pid}; "
                    "wait for it to finish or stop it before resuming"
                )
            try:  # the lock is ours unless its owner unlinked the file while we opened it: then retry
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, me.encode())
            self.fd, self.held = fd, True
            return self
        raise BenchError(f"could not lock {self.path}; remove it if no process trains this run")

    def __exit__(self, *exc) -> None:
        if self.held and self.fd is not None:
            self.path.unlink(
                missing_ok=True
            )  # while still holding it: a taker that opened it retries
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd, self.held = None, False


def live_status(run_dir: Path, rec: dict[str, Any]) -> str | None:
    """The record's status, except that a run recorded as ``running`` whose training process is gone
    (killed before it could write ``interrupted``) reads as ``interrupted``. Only a process on this
    host can be checked: the owner named in ``.lock`` (or no ``.lock`` at all) must still exist."""
    status = rec.get("status")
    if status != "running":
        return status
    lock = Path(run_dir) / ".lock"
    try:
        host, _, pid = lock.read_text().strip().rpartition(" ")
    except FileNotFoundError:
        return "interrupted"  # the lock goes only with its process, so nobody trains this run
    except OSError:
        return status
    if host != socket.gethostname() or not pid.isdigit():
        return status  # trained elsewhere: cannot tell from here
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "interrupted"
    except PermissionError:
        pass
    return status


def resolve_run(ref: str, out: str | Path) -> Path:
    """A run given by id (under ``out``/runs), by its directory, or by its record.json path."""
    p = Path(ref)
    candidates = [p, p.parent if p.name == "record.json" else None, runs_root(out) / ref]
    for c in candidates:
        if c is not None and (c / "record.json").is_file():
            return c
    known = list_runs(out)[-5:]
    hint = f"; recent runs: {', '.join(r.name for r in known)}" if known else ""
    raise BenchError(
        f"run {ref!r} not found under {runs_root(out)}/ (pass a run id or a run directory){hint}"
    )


def load_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "record.json"
    try:
        rec = read_json(path)
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"record {path} is unreadable ({type(exc).__name__}); it may have been edited by hand"
        )
    if not isinstance(rec, dict) or "run_id" not in rec:
        raise BenchError(f"{path} is not a trilemma-bench run record")
    return upgrade(rec)


def list_runs(out: str | Path) -> list[Path]:
    root = runs_root(out)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / "record.json").is_file())
