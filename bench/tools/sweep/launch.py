"""The job each cell of a sweep runs (:class:`CellJob`) and the submitit executors that run it.

How preemption, time limits and requeueing work is in docs/scale.md. One thing submitit cannot do
alone: its signal handler requeues at once, so :class:`_Preemption` first lets the trainer
checkpoint at its next step and stop, then hands over to submitit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from bench.core.errors import BenchError, InterruptedRun
from bench.core.record_reading import load_record
from bench.core.run_dirs import runs_root
from bench.tools.sweep.spec import LocalSettings, SlurmSettings, slurm_minutes
from bench.tools.sweep.state import CellFailed, SweepDir, first_line


class _Preemption:
    """While the trainer (or the evaluation) owns SIGTERM, submitit's USR2 is passed on to it, so the
    run checkpoints at its next step; outside those, either signal requeues at once. ``preempted``
    says whether either arrived: ``signal.set_wakeup_fd`` sees every signal with a Python handler,
    so a SIGTERM the trainer handled alone counts too."""

    def __enter__(self) -> _Preemption:
        self.usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self.seen: set[int] = set()
        self.old = {s: signal.getsignal(s) for s in (self.usr, signal.SIGTERM)}
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.old_fd = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        signal.signal(self.usr, self._on_usr)
        signal.signal(signal.SIGTERM, lambda *_: self.requeue())  # nothing trains now
        self.own_term = signal.getsignal(signal.SIGTERM)
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self.old_fd)
        os.close(self.rfd)
        os.close(self.wfd)
        for sig, handler in self.old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    @property
    def preempted(self) -> bool:
        try:
            while chunk := os.read(self.rfd, 512):
                self.seen.update(chunk)
        except BlockingIOError:
            pass
        return bool(self.seen & {self.usr, signal.SIGTERM})

    def _on_usr(self, signum, frame) -> None:
        current = signal.getsignal(signal.SIGTERM)
        if callable(current) and current != self.own_term:
            current(signal.SIGTERM, frame)  # the trainer's: stop at the next step, saved
        else:
            self.requeue()

    def requeue(self) -> None:
        """submitit's handler: calls CellJob.checkpoint, requeues the job and exits the process."""
        handler = self.old[self.usr]
        if not callable(handler):  # not started by submitit: nobody to requeue it
            raise InterruptedRun("stopped by a signal")
        handler(self.usr, None)


TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _ddp_environment(env) -> None:
    """torchrun's variables from the SLURM tasks of one job (one task per process, rank 0 first)."""
    digits = "".join(ch for ch in str(env.job_id) if ch.isdigit()) or "0"
    os.environ.update(
        RANK=str(env.global_rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.num_tasks),
        MASTER_ADDR=env.hostnames[0],
        MASTER_PORT=str(20000 + int(digits[-6:]) % 20000),
    )


def _log(line: str) -> None:
    print(line, flush=True)


class CellJob(Checkpointable):
    """What submitit runs for a cell: ``CellJob(...)(index, cfg)`` starts the cell's run, or resumes
    the run it has. Checkpointable: a requeued job is the same call. Who submitted it, where and
    when are kept in its pickle, which :meth:`SweepDir.jobs` reads back."""

    def __init__(self, sweep_dir, out, launcher: str, nproc: int = 1):
        self.sweep_dir, self.out = str(sweep_dir), str(out)
        self.launcher, self.nproc = launcher, nproc
        self.host, self.submitted = socket.gethostname(), time.time()

    def __call__(self, index: int, cfg) -> str | None:
        env = submitit.JobEnvironment()
        if self.nproc > 1:
            _ddp_environment(env)
        else:  # inherited from whoever submitted (e.g. a shell inside torchrun): not this run's
            for key in TORCHRUN_VARIABLES:
                os.environ.pop(key, None)
        main = env.global_rank == 0
        with _Preemption() as guard:
            try:
                return self._run(SweepDir(self.sweep_dir), index, cfg, main)
            except InterruptedRun:
                if guard.preempted and main:
                    _log(f"cell {index}: preempted; requeueing")
                    guard.requeue()  # exits the process if submitit requeues the job
                raise
            except Exception as exc:
                error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                raise CellFailed(first_line(error) or "failed") from exc

    def _run(self, sweep: SweepDir, index: int, cfg, main: bool) -> str | None:
        from bench.run.runner import resume_run, start_run

        run_id = sweep.run_id(index)
        run_dir = runs_root(self.out) / run_id if run_id else None
        if run_dir is not None and (run_dir / "record.json").is_file():
            if load_record(run_dir).get("status") == "complete":
                _log(f"cell {index}: run {run_id} is already complete")
                return run_id
            _log(f"cell {index}: resuming run {run_id}")
            return resume_run(run_id, out=self.out, show_progress=False, announce=_log).run_id

        def announce(line: str) -> None:  # "run <id>: ...", once the run's directory exists
            _log(line)
            parts = line.split()
            if main and len(parts) > 1 and parts[0] == "run":
                sweep.link_run(index, runs_root(self.out) / parts[1].rstrip(":"))

        return start_run(cfg, out=self.out, show_progress=False, announce=announce).run_id


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
    mem = f"{int(s.mem_gb)}GB" if s.mem_gb == int(s.mem_gb) else f"{int(s.mem_gb * 1024)}MB"
    optional = {
        "gpus_per_node": s.gpus_per_run,
        "cpus_per_task": s.cpus_per_run and max(1, s.cpus_per_run // s.nproc),
        "mem": s.mem_gb and mem,
        "account": s.account,
        "setup": list(s.setup),
    }
    return params | {k: v for k, v in optional.items() if v}


def sbatch_preview(sweep: SweepDir, name: str, s: SlurmSettings, n: int) -> str:
    """The sbatch script submitit writes for ``n`` cells (an array when n > 1), by submitit's writer."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = job_folder(sweep)
    python = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
    return _make_sbatch_string(
        command=python, folder=folder, map_count=n if n > 1 else None, **slurm_parameters(name, s)
    )


def _executor(sweep: SweepDir, launcher: str, settings, name: str):
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


def _submission_failed(exc: Exception) -> BenchError:
    text = first_line(getattr(exc, "stderr", None) or exc)
    return BenchError(
        f"submitit could not submit the jobs ({type(exc).__name__}: {text}); nothing was submitted"
    )


def submit_slurm(sweep: SweepDir, name: str, settings: SlurmSettings, todo, out: str, echo) -> None:
    """One sbatch call: a job array of the cells ``todo`` ((index, cfg) pairs; one: a plain job)."""
    ex = _executor(sweep, "slurm", settings, name)
    job = CellJob(sweep.path, out, "slurm", settings.nproc)
    try:
        ids = [j.job_id for j in ex.map_array(job, *zip(*todo))]
    except Exception as exc:
        raise _submission_failed(exc) from None
    array = f" (array of {len(ids)})" if len(ids) > 1 else ""
    echo(
        f"submitted {len(ids)} cell(s) to SLURM partition {settings.partition}: job "
        f"{ids[0].split('_')[0]}{array}"
    )


def run_local(
    sweep: SweepDir,
    settings: LocalSettings,
    todo,
    out: str,
    echo: Callable[[str], None],
    poll_s: float = 0.2,
) -> None:
    """Run the cells as local submitit jobs, at most ``max_parallel`` at once; returns when all ended.
    Ctrl-C stops the running cells (each resumes from its last checkpoint) and ends the sweep."""
    ex = _executor(sweep, "local", settings, "")
    job = CellJob(sweep.path, out, "local")
    queue, running = list(todo), {}
    try:
        while queue or running:
            while queue and len(running) < settings.max_parallel:
                index, cfg = queue.pop(0)
                try:
                    submitted = ex.submit(job, index, cfg)
                except Exception as exc:
                    raise _submission_failed(exc) from None
                running[submitted] = index
                echo(f"cell {index}: job {submitted.job_id} started")
            for ended in [j for j in running if j.done()]:
                echo(f"cell {running.pop(ended)}: job {ended.job_id} ended")
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for j in running:
            j.cancel()
        deadline = time.time() + 60
        while time.time() < deadline and not all(j.done() for j in running):
            time.sleep(poll_s)
        raise InterruptedRun(
            f"sweep interrupted; its running cells stopped, each resumable; run the same "
            f"`bench sweep` again to continue (`bench sweep-status {sweep.path}`)"
        ) from None


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's SLURM state from one ``sacct`` call (through submitit's watcher); {} without sacct."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher(delay_s=0)
    for jid in job_ids:
        watcher.register_job(jid)
    watcher.update()
    states = {jid: watcher.get_state(jid, mode="cache") for jid in job_ids}
    return {jid: s for jid, s in states.items() if s != "UNKNOWN"}
