"""The sweep directory, and what each cell's status is.

```
<dir>/spec.yaml        the spec's text as first submitted
<dir>/sweep.json       name, spec digest, results root, the expanded grid (each cell's axis values,
                       its `bench run` arguments and config digest); written last, so its presence
                       marks a complete sweep directory
<dir>/cells/NNN.json   one per cell: its run id and its attempts (launcher, job id, host, times, error)
<dir>/jobs/            submitit's folder: each job's pickled call, its logs and its result
```

Every file is written atomically (``bench.core.io.write_json``). A cell file is changed by the
submitting `bench sweep` (a new attempt, its job id) and by the job itself (its run id as soon as
the run exists, its error), each under a lock on ``cells/``. A cell's status is worked out from
these, the run's record (``bench.core.records.live_status``) and, where it can be asked, whether the
job is still alive (a local job's process; a SLURM job's state from ``sacct``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.io import read_json, write_json, write_text
from bench.core.records import live_status, load_record, now, runs_root

FORMAT = 1
STATUSES = ("pending", "running", "complete", "failed", "interrupted")
# SLURM states of a job that is queued or running (anything else has ended)
SLURM_ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
}


def first_line(text: Any) -> str:
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


class _flock:
    """An exclusive ``flock`` on a directory for the block (released by the OS if the process dies)."""

    def __init__(self, path: Path, wait: bool = True):
        self.path, self.wait = path, wait

    def __enter__(self) -> _flock:
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class _SubmitLock(_flock):
    def __init__(self, path: Path):
        super().__init__(path, wait=False)

    def __enter__(self) -> _SubmitLock:
        try:
            super().__enter__()
        except BlockingIOError:
            raise BenchError(
                f"another `bench sweep` is submitting {self.path} now; wait for it to end"
            ) from None
        return self


class SweepDir:
    """A sweep's directory (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    sweep_file = property(lambda self: self.path / "sweep.json")
    spec_file = property(lambda self: self.path / "spec.yaml")
    cells_dir = property(lambda self: self.path / "cells")
    jobs_dir = property(lambda self: self.path / "jobs")

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
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("cells"), list)
        ):
            raise BenchError(f"{self.sweep_file} is not a trilemma-bench sweep (format {FORMAT})")
        return data

    def check_same(self, spec, out: Path) -> dict[str, Any]:
        """The existing sweep, if it is the sweep of ``spec`` with runs under ``out``; else one line."""
        data = self.load()
        if data.get("spec_digest") != spec.digest:
            raise BenchError(
                f"sweep directory {self.path} holds another spec (sweep {data.get('name')!r}, its copy "
                f"in {self.spec_file}); give the sweep another name: or pass --dir NEW_DIR"
            )
        if Path(data.get("out", "")) != out:
            raise BenchError(
                f"sweep {self.path} keeps its runs under {data.get('out')}; pass --out {data.get('out')}"
            )
        return data

    def check_free(self) -> None:
        """A directory that is neither absent, empty nor a sweep is left alone (one line)."""
        if (
            self.path.exists()
            and not self.exists()
            and (not self.path.is_dir() or any(self.path.iterdir()))
        ):
            raise BenchError(f"{self.path} exists and is not a sweep directory; pass --dir NEW_DIR")

    def create(self, spec, cells, cfgs, out: Path) -> dict[str, Any]:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.spec_file, spec.text)
        for cell in cells:
            write_json(
                self.cell_file(cell.index),
                {"index": cell.index, "key": cell.key, "run_id": None, "attempts": []},
            )
        data = {
            "format": FORMAT,
            "name": spec.name,
            "spec_digest": spec.digest,
            "spec": self.spec_file.name,
            "out": str(out),
            "created_at": now(),
            "axes": [k for k, _ in spec.axes],
            "cells": [
                {**c.to_dict(), "config_digest": cfg.digest()} for c, cfg in zip(cells, cfgs)
            ],
        }
        write_json(self.sweep_file, data)
        return data

    # -- cells ---------------------------------------------------------------------------
    def cell_file(self, index: int) -> Path:
        return self.cells_dir / f"{index:03d}.json"

    def cell(self, index: int) -> dict[str, Any]:
        try:
            data = read_json(self.cell_file(index))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            return {"index": index, "run_id": None, "attempts": []}
        data.setdefault("attempts", [])
        return data

    def update_cell(self, index: int, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read, change and write a cell's file under the lock on ``cells/``."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        with _flock(self.cells_dir):
            data = self.cell(index)
            change(data)
            write_json(self.cell_file(index), data)
        return data

    def submitting(self) -> _SubmitLock:
        """Held by the `bench sweep` that submits this sweep (for a local sweep, until its cells end)."""
        return _SubmitLock(self.path)

    def run_ids(self) -> list[str]:
        data = self.load()
        ids = [self.cell(c["index"]).get("run_id") for c in data["cells"]]
        return [i for i in ids if i]


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
    launcher: str | None = None
    attempts: int = 0
    # attempts that ended in an error (the latest included when the cell is failed)
    failures: int = 0


def _local_alive(attempt: dict[str, Any]) -> bool | None:
    """Whether a local job's controller process still runs (None: it ran on another host)."""
    if attempt.get("host") != socket.gethostname():
        return None
    pid = str(attempt.get("job_id") or "")
    if not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():  # a reused pid is not our job
        try:
            return b"submitit" in cmdline.read_bytes()
        except OSError:
            return None
    return True


def job_alive(attempt: dict[str, Any] | None, slurm_states: dict[str, str]) -> bool | None:
    """True: queued or running; False: ended; None: cannot tell from here."""
    if not attempt or not attempt.get("job_id"):
        return None
    if attempt.get("launcher") == "local":
        return _local_alive(attempt)
    state = slurm_states.get(str(attempt["job_id"]))
    if not state:
        return None
    return state.split()[0].upper() in SLURM_ALIVE


def _job_result_exists(sweep: SweepDir, job_id: str) -> bool:
    return any((sweep.jobs_dir / job_id).glob(f"{job_id}_*_result.pkl"))


def _log_hint(sweep: SweepDir, job_id: str) -> str:
    return f"see {sweep.jobs_dir / job_id / f'{job_id}_0_log.err'}"


def cell_status(
    sweep: SweepDir,
    grid_cell: dict[str, Any],
    out: Path,
    slurm_states: dict[str, str] | None = None,
) -> CellStatus:
    """Where one cell stands (see the module docstring for the evidence used)."""
    index = grid_cell["index"]
    state = sweep.cell(index)
    attempts = state.get("attempts") or []
    last = attempts[-1] if attempts else None
    run_id = state.get("run_id")
    job_id = str(last["job_id"]) if last and last.get("job_id") else None
    slurm_state = (slurm_states or {}).get(job_id or "", "")
    st = CellStatus(
        index,
        grid_cell["key"],
        grid_cell.get("values", {}),
        "pending",
        run_id=run_id,
        job_id=job_id,
        launcher=last.get("launcher") if last else None,
        attempts=len(attempts),
        failures=sum(1 for a in attempts if a.get("error")),
    )

    def done(status: str, detail: str = "") -> CellStatus:
        st.status, st.detail = status, detail
        if status == "failed" and last is not None and not last.get("error"):
            # seen from outside the job (run record, scheduler, result file): it counts too
            st.failures += 1
        return st

    rec, run_dir = None, None
    if run_id:
        run_dir = runs_root(out) / run_id
        if (run_dir / "record.json").is_file():
            try:
                rec = load_record(run_dir)
            except BenchError as exc:
                return done("failed", str(exc))
    recorded = live_status(run_dir, rec) if rec is not None else None
    if recorded == "complete":
        return done("complete")
    alive = job_alive(last, slurm_states or {})
    if alive:
        queued = slurm_state.upper().startswith(("PENDING", "REQUEUED"))
        if queued:
            return done("pending", f"queued (job {job_id})" + (", resumes its run" if rec else ""))
        return done("running", "" if recorded == "running" else "job started")
    if last and last.get("error"):
        return done("failed", first_line(last["error"]))
    if recorded in ("failed", "diverged"):
        return done("failed", f"{recorded}: {first_line(rec.get('message'))}")
    if recorded == "running":
        if alive is False:
            return done("interrupted", f"its job ended ({slurm_state or 'process gone'})")
        return done("running")
    if recorded == "interrupted":
        return done("interrupted", first_line(rec.get("message")))
    if recorded is not None:
        return done("interrupted", f"run status {recorded}")
    # no run yet
    if not attempts:
        return done("pending", "not submitted")
    if alive is None:
        if job_id and _job_result_exists(sweep, job_id):
            return done(
                "failed",
                f"the job ended with an error before its run started; {_log_hint(sweep, job_id)}",
            )
        return done("pending", f"submitted (job {job_id})" if job_id else "submitted")
    if job_id and _job_result_exists(sweep, job_id):
        return done(
            "failed",
            f"the job ended with an error before its run started; {_log_hint(sweep, job_id)}",
        )
    if slurm_state:
        return done(
            "failed",
            f"job {job_id} ended {slurm_state.split()[0]} before its run started; "
            f"{_log_hint(sweep, job_id)}",
        )
    return done("interrupted", "the job ended before its run started")


def statuses(sweep: SweepDir, slurm_states: dict[str, str] | None = None) -> list[CellStatus]:
    data = sweep.load()
    out = Path(data["out"])
    return [cell_status(sweep, c, out, slurm_states) for c in data["cells"]]


def slurm_job_ids(sweep: SweepDir) -> list[str]:
    """The job ids of each cell's latest SLURM attempt (what `sacct` is asked about)."""
    data = sweep.load()
    ids = []
    for c in data["cells"]:
        attempts = sweep.cell(c["index"]).get("attempts") or []
        if attempts and attempts[-1].get("launcher") == "slurm" and attempts[-1].get("job_id"):
            ids.append(str(attempts[-1]["job_id"]))
    return ids


# -- what a submission does with each cell ---------------------------------------------------
@dataclass
class Action:
    cell: CellStatus
    submit: bool
    what: str  # start | resume | retry | skip | give up
    note: str = ""


def plan(cells: list[CellStatus], retries: int) -> list[Action]:
    """Complete and in-progress cells are skipped, interrupted ones resumed, failed ones retried while
    they have failed at most ``retries`` times, new ones started."""
    actions = []
    for c in cells:
        if c.status == "complete":
            actions.append(Action(c, False, "skip"))
        elif c.status == "running" or (c.status == "pending" and c.attempts):
            actions.append(Action(c, False, "skip", c.detail or "in progress"))
        elif c.status == "pending":
            actions.append(Action(c, True, "start"))
        elif c.status == "interrupted":
            actions.append(Action(c, True, "resume" if c.run_id else "start", c.detail))
        else:  # failed
            failures = max(c.failures, 1)
            if failures <= retries:
                actions.append(
                    Action(c, True, "retry", f"retry {failures} of {retries}: {c.detail}")
                )
            else:
                actions.append(
                    Action(
                        c,
                        False,
                        "give up",
                        f"failed {failures} time(s), retries: {retries}: {c.detail}",
                    )
                )
    return actions


def record_failure(sweep: SweepDir, c: CellStatus) -> None:
    """Write a failure seen from outside the job (run record, scheduler, result file) into its attempt."""

    def change(data: dict[str, Any]) -> None:
        if data["attempts"] and not data["attempts"][-1].get("error"):
            data["attempts"][-1]["error"] = c.detail or "failed"

    sweep.update_cell(c.index, change)


# -- tables ---------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (pipes), columns padded to their widest cell."""
    text = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(text[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in text[1:]]
    )


def _value_columns(axes: list[str], c: CellStatus) -> list[Any]:
    return [c.values.get(a, "") for a in axes]


def status_table(axes: list[str], cells: list[CellStatus]) -> str:
    rows = [
        [c.index, *_value_columns(axes, c), c.status, c.run_id or "-", c.job_id or "-", c.detail]
        for c in cells
    ]
    return table(["cell", *axes, "status", "run", "job", "detail"], rows)


def plan_table(axes: list[str], actions: list[Action]) -> str:
    """What a submission does with each cell, and the run each cell will have (``new``: started by its job)."""
    rows = [
        [
            a.cell.index,
            *_value_columns(axes, a.cell),
            a.cell.status,
            a.what,
            a.cell.run_id or ("new" if a.submit else "-"),
            a.note,
        ]
        for a in actions
    ]
    return table(["cell", *axes, "status", "action", "run", "note"], rows)


def summary(cells: list[CellStatus]) -> str:
    counts = {s: sum(1 for c in cells if c.status == s) for s in STATUSES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no cells"
