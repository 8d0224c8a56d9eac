"""Submitting a sweep's cells through submitit, and the job each cell runs.

A cell's job is :class:`CellJob`, a callable that submitit pickles and runs in a fresh process
(local) or on a node (SLURM). It calls the library entry points of `bench run`
(:func:`bench.run.runner.start_run`, :func:`bench.run.runner.resume_run`), writes the run's id into the
sweep directory the moment the run exists, and follows submitit's checkpointing interface: its
``checkpoint`` method returns a :class:`submitit.helpers.DelayedSubmission` of the same cell, which
submitit requeues.

Preemption. Before a time limit SLURM sends submitit's signal (USR2, ``#SBATCH --signal``); a
preempted job gets SIGTERM. Either one, while the run trains, makes the trainer checkpoint at its
next step and stop (the run is then ``interrupted``); the job then hands over to submitit's own
handler, which calls ``checkpoint`` and requeues the job (``scontrol requeue``; the local executor
restarts the process). The requeued job finds the cell's run id and resumes the run exactly. A
signal that arrives while nothing trains (loading data, the evaluation's end) requeues at once:
the run's last checkpoint is on disk. SIGINT (``scancel --signal=INT``, Ctrl-C) stops a run
resumable without requeueing it.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.core.errors import BenchError, InterruptedRun
from bench.core.records import load_record, now, runs_root
from bench.tools.sweep.spec import LocalSettings, SlurmSettings, slurm_minutes
from bench.tools.sweep.state import SweepDir, first_line


# -- the job ----------------------------------------------------------------------------------
class _Preemption:
    """Turns the scheduler's signals into a checkpointed stop of the run, then a requeue by submitit.

    While the trainer (or the evaluation) runs, it owns SIGTERM: submitit's USR2 is passed on to that
    handler so the run checkpoints at its next step. Outside those, either signal requeues at once.
    ``preempted`` says whether either arrived: ``signal.set_wakeup_fd`` records every signal that has
    a Python handler, the trainer's included, so a SIGTERM the trainer handled alone is seen too."""

    def __init__(self) -> None:
        import submitit

        self.usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self.seen: set[int] = set()

    def __enter__(self) -> _Preemption:
        self.submitit_handler = signal.getsignal(self.usr)
        self.old_term = signal.getsignal(signal.SIGTERM)
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.old_fd = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        signal.signal(self.usr, self._on_usr)
        signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self.old_fd)
        self._drain()
        os.close(self.rfd)
        os.close(self.wfd)
        signal.signal(
            self.usr, self.submitit_handler if self.submitit_handler is not None else signal.SIG_DFL
        )
        signal.signal(
            signal.SIGTERM, self.old_term if self.old_term is not None else signal.SIG_DFL
        )

    def _drain(self) -> None:
        try:
            while chunk := os.read(self.rfd, 512):
                self.seen.update(chunk)
        except BlockingIOError:
            pass

    @property
    def preempted(self) -> bool:
        self._drain()
        return bool(self.seen & {self.usr, signal.SIGTERM})

    def _on_term(self, signum, frame) -> None:  # nothing trains now: requeue at once
        self.requeue()

    def _on_usr(self, signum, frame) -> None:
        current = signal.getsignal(signal.SIGTERM)
        if callable(current) and current != self._on_term:
            current(
                signal.SIGTERM, frame
            )  # the trainer's or the evaluation's: stop at the next step, saved
        else:
            self.requeue()

    def requeue(self) -> None:
        """submitit's handler: calls CellJob.checkpoint, requeues the job and exits the process."""
        handler = self.submitit_handler
        if not callable(handler):  # not started by submitit: nobody to requeue it
            raise InterruptedRun("stopped by a signal")
        handler(self.usr, None)


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _ddp_environment(env) -> None:
    """torchrun's variables from the SLURM tasks of one job (one task per process, rank 0 first)."""
    host = env.hostnames[0]
    digits = "".join(ch for ch in str(env.job_id) if ch.isdigit()) or "0"
    os.environ.update(
        RANK=str(env.global_rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.num_tasks),
        MASTER_ADDR=host,
        MASTER_PORT=str(20000 + int(digits[-6:]) % 20000),
    )


class CellJob:
    """One cell of a sweep as a submitit job: start the cell's run, or resume it if it has one."""

    def __init__(self, sweep_dir: str, index: int, cfg, out: str, nproc: int = 1):
        self.sweep_dir, self.index, self.cfg, self.out, self.nproc = (
            str(sweep_dir),
            index,
            cfg,
            str(out),
            nproc,
        )

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's checkpointing interface: the requeued job is this cell again; it resumes the run."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(
            CellJob(self.sweep_dir, self.index, self.cfg, self.out, self.nproc)
        )

    def __call__(self) -> str | None:
        import submitit

        env = submitit.JobEnvironment()
        if self.nproc > 1:
            _ddp_environment(env)
        else:  # inherited from whoever submitted (e.g. a shell inside torchrun): not this one-process run's
            for key in TORCHRUN_VARIABLES:
                os.environ.pop(key, None)
        main = env.global_rank == 0
        sweep = SweepDir(self.sweep_dir)
        if main:
            sweep.update_cell(self.index, lambda d: _started(d, env.job_id))
        with _Preemption() as guard:
            try:
                return self._run(sweep, main, env.job_id)
            except InterruptedRun:
                if guard.preempted and main:
                    _log(f"cell {self.index}: preempted; requeueing")
                    guard.requeue()  # exits the process if submitit requeues the job
                raise
            except Exception as exc:
                if main:
                    error = (
                        str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                    )
                    sweep.update_cell(
                        self.index, lambda d: _failed(d, env.job_id, first_line(error))
                    )
                raise

    def _run(self, sweep: SweepDir, main: bool, job_id: str) -> str | None:
        from bench.run.runner import resume_run, start_run

        run_id = sweep.cell(self.index).get("run_id")
        run_dir = runs_root(self.out) / run_id if run_id else None
        if run_dir is not None and (run_dir / "record.json").is_file():
            if load_record(run_dir).get("status") == "complete":
                _log(f"cell {self.index}: run {run_id} is already complete")
                return run_id
            _log(f"cell {self.index}: resuming run {run_id}")
            return resume_run(run_id, out=self.out, show_progress=False, announce=_log).run_id

        def announce(line: str) -> None:
            _log(line)
            parts = line.split()
            if main and len(parts) > 1 and parts[0] == "run":
                new_id = parts[1].rstrip(":")
                sweep.update_cell(self.index, lambda d: _run_started(d, job_id, new_id))

        return start_run(self.cfg, out=self.out, show_progress=False, announce=announce).run_id


def _log(line: str) -> None:
    print(line, flush=True)


def _attempt(data: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The attempt this job is: the one with its id, else the newest (its id not written yet)."""
    attempts = data.setdefault("attempts", [])
    for a in reversed(attempts):
        if str(a.get("job_id")) == str(job_id):
            return a
    if attempts and not attempts[-1].get("job_id"):
        return attempts[-1]
    attempts.append({"launcher": "?", "job_id": None, "host": None, "submitted_at": None})
    return attempts[-1]


def _started(data: dict[str, Any], job_id: str) -> None:
    a = _attempt(data, job_id)
    a.update(job_id=str(job_id), started_at=now(), node=socket.gethostname())


def _run_started(data: dict[str, Any], job_id: str, run_id: str) -> None:
    data["run_id"] = run_id
    _attempt(data, job_id)["run_id"] = run_id


def _failed(data: dict[str, Any], job_id: str, error: str) -> None:
    _attempt(data, job_id).update(error=error or "failed", ended_at=now())


# -- executors --------------------------------------------------------------------------------
def job_folder(sweep: SweepDir) -> str:
    return str(sweep.jobs_dir / "%j")


def slurm_parameters(name: str, s: SlurmSettings) -> dict[str, Any]:
    """What SlurmExecutor.update_parameters gets: sbatch's own names (submitit writes --key=value)."""
    params: dict[str, Any] = {
        "job_name": f"sweep-{name}",
        "partition": s.partition,
        "time": slurm_minutes(s.time, "launcher.slurm.time"),
        "nodes": 1,
        "ntasks_per_node": s.nproc,
        "array_parallelism": s.array_parallelism,
    }
    if s.gpus_per_run:
        params["gpus_per_node"] = s.gpus_per_run
    if s.cpus_per_run:
        params["cpus_per_task"] = max(1, s.cpus_per_run // s.nproc)
    if s.mem_gb:
        params["mem"] = (
            f"{int(s.mem_gb)}GB" if s.mem_gb == int(s.mem_gb) else f"{int(s.mem_gb * 1024)}MB"
        )
    if s.account:
        params["account"] = s.account
    if s.setup:
        params["setup"] = list(s.setup)
    return params


def sbatch_preview(sweep: SweepDir, name: str, s: SlurmSettings, n: int) -> str:
    """The sbatch script submitit writes for ``n`` cells (an array when n > 1), from submitit's own writer."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(job_folder(sweep))]
    )
    return _make_sbatch_string(
        command=python,
        folder=job_folder(sweep),
        map_count=n if n > 1 else None,
        **slurm_parameters(name, s),
    )


def _executor(sweep: SweepDir, launcher: str, settings, name: str):
    import submitit

    try:
        if launcher == "local":
            ex = submitit.LocalExecutor(folder=job_folder(sweep))
            ex.update_parameters(timeout_min=settings.timeout_min)
            return ex
        ex = submitit.SlurmExecutor(folder=job_folder(sweep), max_num_timeout=settings.max_requeues)
        ex.update_parameters(**slurm_parameters(name, settings))
        return ex
    except RuntimeError as exc:  # SlurmExecutor without srun on PATH
        raise BenchError(
            f"cannot submit to SLURM from here ({first_line(exc)}); run bench sweep on the cluster's "
            "login node, or use --launcher local"
        ) from None


def _add_attempt(sweep: SweepDir, index: int, launcher: str) -> None:
    sweep.update_cell(
        index,
        lambda d: d["attempts"].append(
            {
                "launcher": launcher,
                "job_id": None,
                "host": socket.gethostname(),
                "submitted_at": now(),
            }
        ),
    )


def _set_job_id(sweep: SweepDir, index: int, job_id: str) -> None:
    def change(d):
        if d["attempts"] and not d["attempts"][-1].get("job_id"):
            d["attempts"][-1]["job_id"] = str(job_id)

    sweep.update_cell(index, change)


def _drop_unsubmitted(sweep: SweepDir, index: int) -> None:
    def change(d):
        if d["attempts"] and not d["attempts"][-1].get("job_id"):
            d["attempts"].pop()

    sweep.update_cell(index, change)


def _submission_failed(exc: Exception) -> BenchError:
    text = first_line(getattr(exc, "stderr", None) or exc)
    return BenchError(
        f"submitit could not submit the jobs ({type(exc).__name__}: {text}); nothing was submitted"
    )


def submit_slurm(
    sweep: SweepDir,
    name: str,
    settings: SlurmSettings,
    todo: list[tuple[int, Any]],
    out: str,
    echo: Callable[[str], None],
) -> list[str]:
    """One sbatch call: a job array of the cells (a plain job for one cell). Returns the job ids."""
    ex = _executor(sweep, "slurm", settings, name)
    for index, _ in todo:
        _add_attempt(sweep, index, "slurm")
    try:
        with ex.batch():
            jobs = [
                ex.submit(CellJob(str(sweep.path), index, cfg, out, settings.nproc))
                for index, cfg in todo
            ]
    except Exception as exc:
        for index, _ in todo:
            _drop_unsubmitted(sweep, index)
        raise _submission_failed(exc) from None
    ids = []
    for (index, _), job in zip(todo, jobs):
        _set_job_id(sweep, index, job.job_id)
        ids.append(job.job_id)
    echo(
        f"submitted {len(jobs)} cell(s) to SLURM partition {settings.partition}: job "
        f"{ids[0].split('_')[0]}{' (array of ' + str(len(ids)) + ')' if len(ids) > 1 else ''}"
    )
    return ids


def run_local(
    sweep: SweepDir,
    settings: LocalSettings,
    todo: list[tuple[int, Any]],
    out: str,
    echo: Callable[[str], None],
    poll_s: float = 0.2,
) -> None:
    """Run the cells as local submitit jobs, at most ``max_parallel`` at once; returns when all ended.
    Ctrl-C stops the running cells (each resumes from its last checkpoint) and ends the sweep."""
    ex = _executor(sweep, "local", settings, "")
    queue = list(todo)
    running: dict[Any, int] = {}
    try:
        while queue or running:
            while queue and len(running) < settings.max_parallel:
                index, cfg = queue.pop(0)
                _add_attempt(sweep, index, "local")
                try:
                    job = ex.submit(CellJob(str(sweep.path), index, cfg, out))
                except Exception as exc:
                    _drop_unsubmitted(sweep, index)
                    raise _submission_failed(exc) from None
                _set_job_id(sweep, index, job.job_id)
                running[job] = index
                echo(f"cell {index}: job {job.job_id} started")
            for job in [j for j in running if j.done()]:
                echo(f"cell {running.pop(job)}: job {job.job_id} ended")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running:
            job.cancel()
        deadline = time.time() + 60
        while time.time() < deadline and not all(j.done() for j in running):
            time.sleep(poll_s)
        raise InterruptedRun(
            f"sweep interrupted; its running cells stopped, each resumable; run the same "
            f"`bench sweep` again to continue (`bench sweep-status {sweep.path}`)"
        ) from None


def slurm_states(sweep: SweepDir, job_ids: list[str]) -> dict[str, str]:
    """Each job's SLURM state from one ``sacct`` call (through submitit's watcher); {} without sacct."""
    import shutil

    if not job_ids or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for jid in job_ids:
        watcher.register_job(str(jid))
    watcher.update()
    return {
        jid: watcher.get_state(str(jid), mode="cache")
        for jid in job_ids
        if watcher.get_state(str(jid), mode="cache") != "UNKNOWN"
    }
