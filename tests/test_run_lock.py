"""A run directory is trained by one process at a time; a dead owner's lock is taken over."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

from bench.core.errors import BenchError
from bench.core.run_dirs import RunLock


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
        with pytest.raises(BenchError, match="is being trained by process"):
            RunLock(tmp_path).__enter__()
        assert lock.held
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / ".lock").write_text(f"{socket.gethostname()} {int(dead.stdout)}")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().endswith(f" {os.getpid()}")


def test_resume_refused_while_another_process_holds_the_run(bench_cli, complete_run):
    run_dir = complete_run
    record = run_dir / "record.json"
    before = record.read_bytes()
    text = before.decode().replace('"status": "complete"', '"status": "interrupted"')
    record.write_text(text)
    # a process that really holds the run's lock (as a training process does)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from bench.core.run_dirs import RunLock; "
            f"lock = RunLock({str(run_dir)!r}).__enter__(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        res = bench_cli("run", "--resume", str(run_dir))
        assert res.exit_code != 0
        assert res.error_lines and f"being trained by process {holder.pid}" in res.error_lines[0]
        assert record.read_text() == text  # untouched
    finally:
        holder.kill()
        (run_dir / ".lock").unlink(missing_ok=True)
        record.write_bytes(before)


def _take(run_dir, barrier, wins):
    barrier.wait()
    try:
        with RunLock(run_dir):
            wins.put(os.getpid())
            time.sleep(0.3)  # held while every other taker tries
    except BenchError:
        pass


@pytest.mark.parametrize("round_", range(5))
def test_many_concurrent_takers_of_a_dead_owners_lock_one_wins(tmp_path, round_):
    import multiprocessing as mp

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / ".lock").write_text(
        f"{socket.gethostname()} {int(dead.stdout)}"
    )  # left by a killed process
    ctx = mp.get_context("fork")
    n = 12
    barrier, wins = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(tmp_path, barrier, wins)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    winners = []
    while not wins.empty():
        winners.append(wins.get())
    assert len(winners) == 1, winners
    assert not (tmp_path / ".lock").exists()  # released and removed by its holder
