"""Run directories (``<out>/runs/<run-id>/``): a fresh one for each run, finding and listing them,
and their two OS locks, which the OS releases when their process dies: :class:`RunLock` (one
trainer per run, on ``<run>/.lock``, which names its owner) and :func:`dir_lock` (one writer of
``record.json``, or one submitter of a sweep, at a time). See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError


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
    remove_orphans(root)
    safe_ds = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(dataset).stem)[:24]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        run_id = f"{stamp}-{method}-{safe_ds}-{secrets.token_hex(3)}"
        with contextlib.suppress(FileExistsError):
            (root / run_id).mkdir()
            return run_id, root / run_id
    raise BenchError(f"could not create a unique run directory under {root}")


def resolve_run(ref: str, out: str | Path) -> Path:
    """A run given by id (under ``out``/runs), by its directory, or by its record.json path."""
    p = Path(ref)
    for c in (p, p.parent if p.name == "record.json" else p, runs_root(out) / ref):
        if (c / "record.json").is_file():
            return c
    if p.is_absolute() or len(p.parts) > 1:  # a path, not an id: say where we looked
        raise BenchError(f"run directory {p} not found (no record.json in it)")
    known = list_runs(out)[-5:]
    hint = f"; recent runs: {', '.join(r.name for r in known)}" if known else ""
    raise BenchError(
        f"run {ref!r} not found under {runs_root(out)}/ (pass a run id or a run directory){hint}"
    )


def list_runs(out: str | Path) -> list[Path]:
    root = runs_root(out)
    remove_orphans(root)
    return (
        sorted(d for d in root.iterdir() if (d / "record.json").is_file()) if root.is_dir() else []
    )


def _orphan(d: Path) -> bool:
    """A run directory holding only temporary files of record writes (so no record)."""
    names = [p.name for p in d.iterdir()] if d.is_dir() else []
    return bool(names) and all(n.startswith(".record.json.") and n.endswith(".tmp") for n in names)


def remove_orphans(root: Path) -> None:
    """Remove the run directories that a kill during their first record write left with only that
    write's temporary file: without a record they are invisible to every command. A writer holds
    the directory's lock while its temporary file exists, so one whose lock is taken stays."""
    for d in sorted(root.iterdir()) if root.is_dir() else ():
        with contextlib.suppress(OSError):  # being written (BlockingIOError), or gone meanwhile
            if _orphan(d):
                with dir_lock(d, blocking=False):
                    if not _orphan(d):
                        continue
                    for p in d.iterdir():
                        p.unlink()
                    d.rmdir()
                print(
                    f"note: removed {d}: a run killed in its first record write left only a .tmp",
                    file=sys.stderr,
                )


@contextlib.contextmanager
def dir_lock(path: Path, blocking: bool = True) -> Iterator[None]:
    """An exclusive ``flock`` on the directory itself (no lock file is left in it). Not blocking:
    raises ``BlockingIOError`` at once when another process holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RunLock:
    """Exclusive ownership of a run directory while a process trains it: a ``flock`` on ``.lock``,
    held for the process's life and released by the OS when it dies (kill -9, a crash), so a dead
    owner's lock is simply taken. The file names the owner ("host pid"), for messages and
    :func:`live_status`, and goes on release."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> RunLock:
        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 256).decode(errors="replace").strip().rpartition(" ")[2]
                os.close(fd)
                raise BenchError(
                    f"run {self.path.parent.name} is being trained by process {pid or '?'}; "
                    "wait for it to finish or stop it before resuming"
                )
            # the lock is ours unless its owner removed the file while we opened it: then retry
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
                    self.fd = fd
                    return self
            os.close(fd)
        raise BenchError(f"could not lock {self.path}; remove it if no process trains this run")

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(
                missing_ok=True
            )  # while still holding it: a taker that opened it retries
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def live_status(run_dir: Path, rec: dict[str, Any]) -> str | None:
    """The record's status, except that a run recorded as ``running`` whose training process is gone
    (killed before it could write ``interrupted``) reads as ``interrupted``. Only a process on this
    host can be checked: the owner named in ``.lock`` (or no ``.lock`` at all) must still exist."""
    status = rec.get("status")
    if status != "running":
        return status
    try:
        host, _, pid = (Path(run_dir) / ".lock").read_text().strip().rpartition(" ")
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
