"""A sweep's directory and where each of its cells stands: the cell's run record is its state, and
submitit's job folder holds its jobs. The layout and the status rules are in docs/scale.md."""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.io import read_json, write_json, write_text
from bench.core.record_reading import load_record
from bench.core.records import now
from bench.core.run_dirs import dir_lock, live_status, runs_root

FORMAT = 2  # 1 kept cells/NNN.json beside the run records
STATUSES = ("pending", "running", "complete", "failed", "interrupted")
# SLURM states of a job that is queued or running (anything else has ended)
SLURM_ALIVE = set(
    "PENDING RUNNING REQUEUED REQUEUE_HOLD REQUEUE_FED CONFIGURING COMPLETING RESIZING SUSPENDED "
    "SIGNALING STAGE_OUT".split()
)


def first_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


class CellFailed(BenchError):
    """A cell's job failed; its one-line message ends the traceback submitit keeps as the result."""


_FAILED = f"{CellFailed.__module__}.{CellFailed.__qualname__}: "


@dataclass
class Job:
    """One submitit job of a cell, read back from the pickle submitit keeps in its folder."""

    id: str
    launcher: str
    host: str
    submitted: float
    folder: Path

    @functools.cached_property
    def result(self) -> tuple[str, Any] | None:
        """submitit's ``("success", value)`` or ``("error", traceback)``; None while none is written."""
        for path in sorted(self.folder.glob(f"{self.id}_*_result.pkl")):
            try:
                with open(path, "rb") as fh:
                    return pickle.load(fh)
            except Exception:  # unreadable: the job ended all the same
                return ("error", "")
        return None

    @property
    def error(self) -> str | None:
        """The error the cell's job reported (:class:`CellFailed`), if it did."""
        kind, text = self.result or ("", "")
        last = str(text or "").strip().rpartition("\n")[2] if kind == "error" else ""
        return last[len(_FAILED) :] if last.startswith(_FAILED) else None

    @property
    def log_hint(self) -> str:
        return f"see {self.folder / f'{self.id}_0_log.err'}"


class SweepDir:
    """``spec.yaml``, ``sweep.json`` (the grid, written last), ``runs/NNN`` (each cell's run, a link
    to its run directory) and ``jobs/`` (submitit's folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sweep_file, self.spec_file = self.path / "sweep.json", self.path / "spec.yaml"
        self.runs_dir, self.jobs_dir = self.path / "runs", self.path / "jobs"

    def exists(self) -> bool:
        return self.sweep_file.is_file()

    def load(self) -> dict[str, Any]:
        if not self.exists():
            raise BenchError(
                f"{self.path} is not a sweep directory (no sweep.json); `bench sweep SPEC` makes one"
            )
        try:
            data = read_json(self.sweep_file)
        except (OSError, ValueError) as exc:
            raise BenchError(
                f"{self.sweep_file} is unreadable ({type(exc).__name__}); it may have been edited by hand"
            )
        if not isinstance(data, dict) or "cells" not in data:
            raise BenchError(f"{self.sweep_file} is not a trilemma-bench sweep (format {FORMAT})")
        if data.get("format") != FORMAT:
            raise BenchError(
                f"{self.sweep_file} is a sweep of format {data.get('format')}, which this version "
                f"does not read (format {FORMAT}); submit its spec again with --dir NEW_DIR"
            )
        return data

    def check(self, spec, out: Path) -> None:
        """The directory is absent, empty, or the sweep of ``spec`` with its runs under ``out``;
        anything else is left alone (one line)."""
        p = self.path
        if not self.exists():
            if p.exists() and (not p.is_dir() or any(p.iterdir())):
                raise BenchError(f"{p} exists and is not a sweep directory; pass --dir NEW_DIR")
            return
        data = self.load()
        if data.get("spec_digest") != spec.digest:
            raise BenchError(
                f"sweep directory {p} holds another spec (sweep {data.get('name')!r}, its copy "
                f"in {self.spec_file}); give the sweep another name: or pass --dir NEW_DIR"
            )
        if Path(data.get("out", "")) != out:
            raise BenchError(
                f"sweep {p} keeps its runs under {data.get('out')}; pass --out {data.get('out')}"
            )

    def create(self, spec, cells, cfgs, out: Path) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.spec_file, spec.text)
        grid = [{**c.to_dict(), "config_digest": cfg.digest()} for c, cfg in zip(cells, cfgs)]
        write_json(
            self.sweep_file,
            {
                "format": FORMAT,
                "name": spec.name,
                "spec_digest": spec.digest,
                "spec": self.spec_file.name,
                "out": str(out),
                "created_at": now(),
                "axes": [k for k, _ in spec.axes],
                "cells": grid,
            },
        )

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Held by the `bench sweep` that submits this sweep (for a local sweep, until its cells end)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(dir_lock(self.path, blocking=False))
            except BlockingIOError:
                raise BenchError(
                    f"another `bench sweep` is submitting {self.path} now; wait for it to end"
                ) from None
            yield

    # -- each cell's run and jobs ------------------------------------------------------------
    def link_run(self, index: int, run_dir: Path) -> None:
        """Point cell ``index`` at its run directory (atomically: a new link replaces the old)."""
        link = self.runs_dir / f"{index:03d}"
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(run_dir, self.runs_dir))
        os.replace(tmp, link)

    def run_id(self, index: int) -> str | None:
        try:
            return Path(os.readlink(self.runs_dir / f"{index:03d}")).name
        except OSError:
            return None

    def run_ids(self) -> list[str]:
        return [r for c in self.load()["cells"] if (r := self.run_id(c["index"]))]

    def jobs(self) -> dict[int, list[Job]]:
        """Each cell's jobs, oldest first, from the calls submitit pickled (``CellJob(index, cfg)``)."""
        from submitit.core.utils import DelayedSubmission

        found: dict[int, list[Job]] = {}
        for pkl in self.jobs_dir.glob("*/*_submitted.pkl"):
            try:
                call = DelayedSubmission.load(pkl)
                job, index = call.function, call.args[0]
                info = Job(pkl.parent.name, job.launcher, job.host, job.submitted, pkl.parent)
            except Exception:  # not one of ours, or written by another version
                continue
            found.setdefault(index, []).append(info)
        return {i: sorted(js, key=lambda j: (j.submitted, j.id)) for i, js in found.items()}


# -- status ---------------------------------------------------------------------------------
@dataclass
class CellStatus:
    index: int
    key: str
    values: dict[str, Any]
    status: str  # one of STATUSES
    detail: str = ""
    run_id: str | None = None
    job_id: str | None = None
    attempts: int = 0  # jobs submitted
    failures: int = 0  # jobs that ended in an error (the latest included when the cell is failed)


def _local_alive(job: Job) -> bool | None:
    """Whether a local job's controller process still runs (None: it ran on another host)."""
    if job.host != socket.gethostname() or not job.id.isdigit():
        return None
    try:
        os.kill(int(job.id), 0)
        return b"submitit" in Path(f"/proc/{job.id}/cmdline").read_bytes()  # not a reused pid
    except ProcessLookupError:
        return False
    except FileNotFoundError:  # no /proc here
        return True
    except OSError:
        return None


def _status(run_dir: Path | None, last: Job | None, states: dict[str, str]) -> tuple[str, str]:
    """A cell's status and its detail, from its run's record and its latest job (docs/scale.md)."""
    rec = None
    if run_dir is not None and (run_dir / "record.json").is_file():
        try:
            rec = load_record(run_dir)
        except BenchError as exc:
            return "failed", str(exc)
    recorded = live_status(run_dir, rec) if rec is not None else None
    if recorded == "complete":
        return "complete", ""
    state = states.get(last.id, "") if last else ""
    alive = None  # True: queued or running; False: ended; None: cannot tell from here
    if last is not None and last.launcher == "local":
        alive = _local_alive(last)
    elif state:
        alive = state.split()[0].upper() in SLURM_ALIVE
    if alive:
        if state.upper().startswith(("PENDING", "REQUEUED")):
            return "pending", f"queued (job {last.id})" + (", resumes its run" if rec else "")
        return "running", "" if recorded == "running" else "job started"
    if last and last.error:
        return "failed", last.error
    if recorded in ("failed", "diverged"):
        return "failed", f"{recorded}: {first_line(rec.get('message'))}"
    if recorded == "running" and alive is False:
        return "interrupted", f"its job ended ({state or 'process gone'})"
    if recorded == "running":
        return "running", ""
    if recorded == "interrupted":
        return "interrupted", first_line(rec.get("message"))
    if recorded is not None:
        return "interrupted", f"run status {recorded}"
    if last is None:
        return "pending", "not submitted"
    if last.result is not None:
        return "failed", f"the job ended with an error before its run started; {last.log_hint}"
    if alive is None:
        return "pending", f"submitted (job {last.id})"
    if state:
        why = f"job {last.id} ended {state.split()[0]} before its run started"
        return "failed", f"{why}; {last.log_hint}"
    return "interrupted", "the job ended before its run started"


def statuses(sweep: SweepDir, slurm_states=None) -> list[CellStatus]:
    """Each cell's status; ``slurm_states(job_ids)`` gives SLURM jobs' states (sacct)."""
    data, jobs, out = sweep.load(), sweep.jobs(), []
    slurm = [j.id for js in jobs.values() for j in js if j.launcher == "slurm"]
    states = slurm_states(slurm) if slurm_states else {}
    for c in data["cells"]:
        run_id, cell_jobs = sweep.run_id(c["index"]), jobs.get(c["index"], [])
        last = cell_jobs[-1] if cell_jobs else None
        run_dir = runs_root(data["out"]) / run_id if run_id else None
        status, detail = _status(run_dir, last, states)
        failures = sum(1 for j in cell_jobs if j.error)
        failures += status == "failed" and last is not None and not last.error  # seen from outside
        job_id, values = last.id if last else None, c.get("values", {})
        row = (c["index"], c["key"], values, status, detail, run_id, job_id, len(cell_jobs))
        out.append(CellStatus(*row, failures))
    return out
