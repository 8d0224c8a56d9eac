"""`bench sweep`: grids of runs through submitit (its local executor for real; SLURM against stand-ins).

There is no SLURM cluster here: the SLURM test puts small stand-in ``sbatch``, ``srun``, ``sacct``
and ``scontrol`` scripts first on PATH. They record their arguments (and the submitted script)
and answer as SLURM would, and the test itself plays the node: it runs a submitted array task's
script with the variables SLURM sets.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.core.errors import BenchError
from bench.tools.sweep.grid import expand, resolve_cells
from bench.tools.sweep.spec import load_spec, slurm_minutes
from bench.tools.sweep.state import SweepDir

TINY = [
    "data.train_subset=128",
    "data.batch_size=32",
    "train.eval_examples=32",
    "eval.n_examples=8",
    "eval.batch_size=8",
    "train.checkpoint_every=2",
    "train.eval_every=0",
]


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _base(data_dir) -> dict:
    return {"dataset": "shapes10", "preset": "smoke", "data_dir": str(data_dir), "set": list(TINY)}


def _run_id(sweep_dir: Path, index: int) -> str | None:
    return SweepDir(sweep_dir).run_id(index)


def _job_ids(sweep_dir: Path, index: int) -> list[str]:
    """The ids of a cell's jobs, oldest first, as submitit's folder holds them."""
    return [j.id for j in SweepDir(sweep_dir).jobs().get(index, [])]


def _record(out: Path, run_id: str) -> dict:
    return json.loads((out / "runs" / run_id / "record.json").read_text())


def _ckpt_step(run_dir: Path) -> int:
    try:
        return int(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"])
    except Exception:  # not written yet, or being replaced right now
        return -1


def _signal_after_checkpoint(
    sweep_dir: Path, out: Path, index: int, sig: int, after_step: int = 2, timeout: float = 180
) -> int:
    """Send ``sig`` to the process training cell ``index`` (named in its run's .lock) once its run
    has checkpointed step ``after_step``; returns the step it had reached."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run_id = _run_id(sweep_dir, index)
        if run_id:
            run_dir = out / "runs" / run_id
            step = _ckpt_step(run_dir)
            if step >= after_step:
                pid = int((run_dir / ".lock").read_text().split()[-1])
                os.kill(pid, sig)
                return step
        time.sleep(0.02)
    raise AssertionError(f"cell {index} never checkpointed step {after_step}")


@pytest.fixture
def no_stray_jobs(tmp_path):
    """After the test, end what is left of the job processes it started (only if it failed midway):
    each process whose command line names this test's directory."""
    yield
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            mine = str(tmp_path).encode() in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if mine:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _same_weights(a: Path, b: Path) -> bool:
    ka = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    kb = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    return (
        ka["step"] == kb["step"]
        and ka["model"].keys() == kb["model"].keys()
        and all(torch.equal(ka["model"][k], kb["model"][k]) for k in ka["model"])
    )


# -- the spec --------------------------------------------------------------------------------
def test_spec_expands_axes_and_exclusions_into_cells(tmp_path, shapes_data_dir):
    spec = load_spec(
        _write(
            tmp_path / "grid.yaml",
            {
                "base": _base(shapes_data_dir),
                "axes": {"method": ["ce", "pgd-at"], "seed": [0, 1, 2], "optim.lr": [0.1, 0.05]},
                "exclude": [{"method": "ce", "optim.lr": 0.05}, {"method": "pgd-at", "seed": 2}],
                "launcher": {"slurm": {"partition": "gpu", "time": "2-00:00:00"}},
            },
        )
    )
    cells = expand(spec)
    assert spec.name == "grid"
    assert [c.key for c in cells] == [
        "method=ce seed=0 optim.lr=0.1",
        "method=ce seed=1 optim.lr=0.1",
        "method=ce seed=2 optim.lr=0.1",
        "method=pgd-at seed=0 optim.lr=0.1",
        "method=pgd-at seed=0 optim.lr=0.05",
        "method=pgd-at seed=1 optim.lr=0.1",
        "method=pgd-at seed=1 optim.lr=0.05",
    ]
    assert [c.index for c in cells] == list(range(7))
    assert cells[4].overrides[-2:] == (f"data.data_dir={shapes_data_dir}", "optim.lr=0.05")
    cfgs = resolve_cells(spec, cells)
    assert [(c.method, c.seed, c.optim.lr) for c in cfgs][3:5] == [
        ("pgd-at", 0, 0.1),
        ("pgd-at", 0, 0.05),
    ]
    assert slurm_minutes(spec.slurm.time, "time") == 2880
    # launcher settings may change between submissions of one sweep; the grid may not
    other = tmp_path / "other"
    other.mkdir()
    text = yaml.safe_load((tmp_path / "grid.yaml").read_text())
    text["launcher"] = {"local": {"max_parallel": 4}}
    assert load_spec(_write(other / "grid.yaml", text)).digest == spec.digest
    text["axes"] = {"seed": [0, 1, 2], "method": ["ce", "pgd-at"], "optim.lr": [0.1, 0.05]}
    assert load_spec(_write(other / "grid.yaml", text)).digest != spec.digest
    # an unquoted 24:00:00 is a time (YAML 1.1 would read it as the integer 86400)
    (tmp_path / "t.yaml").write_text(
        "base: {method: ce}\naxes: {seed: [0]}\nlauncher: {slurm: {partition: p, time: 24:00:00}}\n"
    )
    assert slurm_minutes(load_spec(tmp_path / "t.yaml").slurm.time, "time") == 1440


def test_a_ddp_cell_gets_torchruns_variables_from_its_slurm_tasks(monkeypatch):
    """nproc > 1: each SLURM task of a cell's job is one rank (what bench.train.distributed reads)."""
    import submitit

    from bench.tools.sweep.launch import TORCHRUN_VARIABLES, _ddp_environment

    for key in TORCHRUN_VARIABLES:
        monkeypatch.setenv(key, "")  # so that monkeypatch puts each back as it was after the test
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "777",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    _ddp_environment(submitit.JobEnvironment())
    assert {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
    }
    assert 20000 <= int(os.environ["MASTER_PORT"]) < 40000


def test_the_example_spec_dry_runs_and_writes_nothing(repo_root, tmp_path, bench_cli):
    out = tmp_path / "results"
    res = bench_cli(
        "sweep", repo_root / "docs" / "examples" / "sweep.yaml", "--out", out, "--dry-run"
    )
    assert res.exit_code == 0, res.stderr
    rows = [
        line for line in res.stdout.splitlines() if line.startswith("| ") and "| start " in line
    ]
    assert len(rows) == 12 and "| ebjdat | 2    | pending | start  | new |" in rows[-1]
    assert "dry run: 12 cell(s) would be submitted" in res.stdout and not out.exists()


def test_preset_is_an_axis_when_base_gives_none(repo_root, tmp_path, shapes_data_dir):
    spec = load_spec(repo_root / "docs" / "examples" / "preset-timings.yaml")
    cells = expand(spec)
    assert len(cells) == 26 and {c.preset for c in cells} == {"smoke", "demo"}
    cfgs = resolve_cells(spec, cells[:1] + cells[-1:])
    assert [(c.method, c.preset) for c in cfgs] == [("ce", "smoke"), ("ebjdat-sada-jem", "demo")]
    plain = load_spec(
        _write(tmp_path / "p.yaml", {"base": {"dataset": "shapes10"}, "axes": {"method": ["ce"]}})
    )
    assert expand(plain)[0].preset == "paper"  # no preset anywhere: bench run's default


# -- a real local sweep ------------------------------------------------------------------------
STEPS = 12  # of the ce cells, which are stopped midway (after their checkpoint of step 2)


@pytest.mark.slow
def test_local_sweep_runs_resumes_a_killed_cell_and_skips(
    tmp_path, shapes_data_dir, bench_cli, monkeypatch, no_stray_jobs
):
    """2 methods x 2 seeds through submitit's local executor. Cell 0's training process is killed
    (SIGKILL) mid-run: the sweep ends with it interrupted and says so; submitting the spec again
    resumes it (alone) to the weights of an uninterrupted run, bit for bit; a third submission
    skips all four; status and compare --sweep see exactly the sweep's runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "results"
    spec = _write(
        tmp_path / "grid.yaml",
        {
            "base": _base(shapes_data_dir),
            # ce trains long enough to be killed midway; pgd-at (ten times the cost per step) briefly
            "axes": {"method": ["ce", "pgd-at"], "seed": [0, 1], "train.max_steps": [STEPS, 2]},
            "exclude": [
                {"method": "ce", "train.max_steps": 2},
                {"method": "pgd-at", "train.max_steps": STEPS},
            ],
            "launcher": {"local": {"max_parallel": 2}},
        },
    )
    sweep_dir = out / "sweeps" / "grid"
    killed: list[int] = []
    killer = threading.Thread(
        target=lambda: killed.append(_signal_after_checkpoint(sweep_dir, out, 0, signal.SIGKILL)),
        daemon=True,
    )
    killer.start()
    first = bench_cli("sweep", spec, "--out", out)
    killer.join(timeout=60)
    assert killed and 0 < killed[0] < STEPS, killed
    assert first.exit_code == 2 and len(first.error_lines) == 1, first.stderr
    assert "1 of 4 cells did not complete (3 complete, 1 interrupted)" in first.error_lines[0]
    assert (sweep_dir / "spec.yaml").read_text() == spec.read_text()
    grid = json.loads((sweep_dir / "sweep.json").read_text())
    assert [c["key"] for c in grid["cells"]] == [
        f"method=ce seed=0 train.max_steps={STEPS}",
        f"method=ce seed=1 train.max_steps={STEPS}",
        "method=pgd-at seed=0 train.max_steps=2",
        "method=pgd-at seed=1 train.max_steps=2",
    ]
    run_ids, job_ids = (
        [_run_id(sweep_dir, i) for i in range(4)],
        [_job_ids(sweep_dir, i) for i in range(4)],
    )
    assert all(r and len(j) == 1 and j[0] for r, j in zip(run_ids, job_ids))
    assert (
        _record(out, run_ids[0])["status"] == "running"
    )  # as the kill left it; its process is gone
    status = bench_cli("sweep-status", sweep_dir)
    assert status.exit_code == 0
    rows = {
        line.split("|")[1].strip(): [v.strip() for v in line.split("|")[1:-1]]
        for line in status.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| cell")
    }
    assert [rows[i][4] for i in "0123"] == ["interrupted", "complete", "complete", "complete"]
    assert rows["0"][5] == run_ids[0] and rows["0"][6] == job_ids[0][0]

    again = bench_cli("sweep", spec, "--out", out)  # resumes cell 0, skips the rest
    assert again.exit_code == 0, again.stderr
    assert len(_job_ids(sweep_dir, 0)) == 2 and all(
        len(_job_ids(sweep_dir, i)) == 1 for i in (1, 2, 3)
    )
    assert _run_id(sweep_dir, 0) == run_ids[0]  # the same run, resumed
    rec0 = _record(out, run_ids[0])
    assert rec0["status"] == "complete" and len(rec0["training"]["resumes"]) == 1

    # the uninterrupted reference, in this results root too (so compare --sweep must leave it out)
    from bench.run.resolve import resolve_config
    from bench.run.runner import start_run

    cfg = resolve_config(
        "ce",
        preset="smoke",
        dataset="shapes10",
        seed=0,
        overrides=[*TINY, f"data.data_dir={shapes_data_dir}", f"train.max_steps={STEPS}"],
    )
    ref = start_run(cfg, out=out, show_progress=False)
    assert rec0["config_digest"] == ref.record["config_digest"]
    assert _same_weights(ref.run_dir, out / "runs" / run_ids[0]), (
        "the resumed cell has other weights"
    )

    jobs_before = sorted(p.name for p in (sweep_dir / "jobs").iterdir())
    third = bench_cli("sweep", spec, "--out", out)
    assert third.exit_code == 0 and "nothing to submit: 4 complete" in third.stderr
    assert sorted(p.name for p in (sweep_dir / "jobs").iterdir()) == jobs_before
    assert len(list((out / "runs").iterdir())) == 5  # the sweep's four and the reference

    table = bench_cli("compare", "--sweep", sweep_dir, "--group", "seeds", "--format", "csv")
    assert table.exit_code == 0, table.stderr
    grouped = {r["method"]: r for r in csv.DictReader(io.StringIO(table.stdout))}
    assert {m: (r["seeds"], r["seed"]) for m, r in grouped.items()} == {
        "ce": ("2", "0,1"),
        "pgd-at": ("2", "0,1"),
    }


# -- SLURM against stand-ins -------------------------------------------------------------------
STANDINS = {
    # records its arguments and the script; answers as sbatch does
    "sbatch": """#!/bin/bash
n=$(ls "$STANDIN_LOG"/sbatch-*.sh 2>/dev/null | wc -l)
printf '%s\\n' "$@" > "$STANDIN_LOG/sbatch-$n.args"
cp "${@: -1}" "$STANDIN_LOG/sbatch-$n.sh"
echo "Submitted batch job $((4242 + n))"
""",
    # on a node: drops srun's own options and runs the command
    "srun": """#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in --unbuffered) shift;; --output|--error) shift 2;; *) break;; esac; done
exec "$@"
""",
    # the job states the test writes into sacct.states
    "sacct": """#!/bin/bash
printf '%s\\n' "$*" >> "$STANDIN_LOG/sacct.args"
echo "JobID|State|NodeList"
cat "$STANDIN_LOG/sacct.states" 2>/dev/null
""",
    "scontrol": """#!/bin/bash
printf '%s\\n' "$*" >> "$STANDIN_LOG/scontrol.args"
""",
}


def _standins(tmp_path, monkeypatch) -> Path:
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm-log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in STANDINS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


def _slurm_env(array_id: int, task: int) -> dict[str, str]:
    """What SLURM sets for one task of an array job."""
    return {
        "SLURM_JOB_ID": str(array_id + 100 + task),
        "SLURM_ARRAY_JOB_ID": str(array_id),
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "node1",
    }


def _run_array_task(script: Path, array_id: int, task: int) -> subprocess.Popen:
    """Run a submitted array task as a SLURM node would (the stand-in srun runs the command)."""
    return subprocess.Popen(
        ["bash", str(script)],
        env={**os.environ, **_slurm_env(array_id, task)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


@pytest.mark.slow
def test_slurm_sweep_against_stand_in_sbatch_sacct_scontrol(
    tmp_path, shapes_data_dir, bench_cli, monkeypatch, no_stray_jobs
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    log = _standins(tmp_path, monkeypatch)
    out = tmp_path / "results"
    missing = f"npz:{tmp_path / 'absent.npz'}"  # resolves, then fails when the job loads it
    spec = _write(
        tmp_path / "cluster.yaml",
        {
            "base": {
                **{k: v for k, v in _base(shapes_data_dir).items() if k != "dataset"},
                "method": "ce",
            },
            "axes": {"seed": [0, 1], "dataset": ["shapes10", missing], "train.max_steps": [STEPS]},
            "exclude": [{"seed": 1, "dataset": missing}],
            "retries": 1,
            "launcher": {
                "default": "slurm",
                "slurm": {
                    "partition": "gpu",
                    "gpus_per_run": 2,
                    "nproc": 2,
                    "cpus_per_run": 16,
                    "mem_gb": 64,
                    "time": "12:00:00",
                    "account": "proj",
                    "array_parallelism": 2,
                    "setup": ["module load cuda"],
                },
            },
        },
    )
    sweep_dir = out / "sweeps" / "cluster"

    dry = bench_cli("sweep", spec, "--out", out, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert not out.exists() and not list(log.iterdir())  # nothing written, nothing submitted
    expected = {
        "--array=0-2%2",
        "--partition=gpu",
        "--gpus-per-node=2",
        "--ntasks-per-node=2",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=720",
        "--account=proj",
        "--signal=USR2@90",
        "--nodes=1",
    }
    assert expected <= {
        line.split()[1] for line in _sbatch_lines(dry.stdout)
    }  # a task per DDP process

    # two DDP processes do not fit this test machine: the cells submitted train with one
    spec.write_text(spec.read_text().replace("nproc: 2", "nproc: 1"))
    dry = bench_cli("sweep", spec, "--out", out, "--dry-run")
    res = bench_cli("sweep", spec, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in log.iterdir() if p.name.startswith("sbatch")) == [
        "sbatch-0.args",
        "sbatch-0.sh",
    ]
    script = (log / "sbatch-0.sh").read_text()
    assert _sbatch_lines(script) == _sbatch_lines(dry.stdout)  # the dry run shows what is submitted
    assert {
        "#SBATCH --array=0-2%2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=16",
    } <= set(_sbatch_lines(script))
    assert (
        "module load cuda" in script
        and "-m submitit.core._submit" in script.strip().splitlines()[-1]
    )
    assert [_job_ids(sweep_dir, i) for i in range(3)] == [["4242_0"], ["4242_1"], ["4242_2"]]

    # the node runs array task 0; SLURM's pre-time-limit signal arrives mid-run
    task0 = _run_array_task(log / "sbatch-0.sh", 4242, 0)
    step = _signal_after_checkpoint(sweep_dir, out, 0, signal.SIGUSR2)
    output = task0.communicate(timeout=120)[0]
    assert (log / "scontrol.args").read_text().split("\n")[0] == "requeue 4242_0", output[-2000:]
    run_id = _run_id(sweep_dir, 0)
    rec = _record(out, run_id)
    saved = _ckpt_step(
        out / "runs" / run_id
    )  # the trainer checkpointed at its next step, then stopped
    assert rec["status"] == "interrupted" and step <= saved < STEPS
    from submitit.core.utils import DelayedSubmission

    requeued = DelayedSubmission.load(sweep_dir / "jobs" / "4242_0" / "4242_0_submitted.pkl")
    assert (
        type(requeued.function).__name__ == "CellJob" and requeued.args[0] == 0
    )  # from checkpoint()

    # the requeued job starts again: what submitit's _submit does on the node (delayed.result()),
    # here in this process; it resumes the run, to the weights of an uninterrupted run
    for key, value in {**_slurm_env(4242, 0), "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(key, value)
    assert requeued.result() == run_id
    rec = _record(out, run_id)
    assert rec["status"] == "complete" and [r["at_step"] for r in rec["training"]["resumes"]] == [
        saved
    ]
    from bench.run.resolve import resolve_config
    from bench.run.runner import start_run

    cfg = resolve_config(
        "ce",
        preset="smoke",
        dataset="shapes10",
        seed=0,
        overrides=[*TINY, f"data.data_dir={shapes_data_dir}", f"train.max_steps={STEPS}"],
    )
    ref = start_run(cfg, out=tmp_path / "reference", show_progress=False)
    assert _same_weights(ref.run_dir, out / "runs" / run_id), (
        "the requeued cell resumed to other weights"
    )

    # task 1 fails (its dataset file is absent): the job writes the error's first line
    task1 = _run_array_task(log / "sbatch-0.sh", 4242, 1)
    task1.communicate(timeout=120)
    assert task1.returncode != 0
    error = SweepDir(sweep_dir).jobs()[1][0].error
    assert "absent.npz" in error and "\n" not in error
    (log / "sacct.states").write_text(
        "4242_0|COMPLETED|node1\n4242_1|FAILED|node1\n4242_[2]|PENDING|None\n"
    )
    status = bench_cli("sweep-status", sweep_dir)
    assert status.exit_code == 0
    lines = {
        line.split("|")[1].strip(): line
        for line in status.stdout.splitlines()
        if line.startswith("| ")
    }
    assert "| complete " in lines["0"] and run_id in lines["0"] and "4242_0" in lines["0"]
    assert "| failed " in lines["1"] and error[:40] in lines["1"]
    assert "| pending " in lines["2"] and "queued (job 4242_2)" in lines["2"]
    assert "3 cells: 1 pending, 1 complete, 1 failed" in status.stdout

    # resubmitting retries the failed cell alone (a plain job, not an array): 0 is complete, 2 queued
    retry = bench_cli("sweep", spec, "--out", out)
    assert retry.exit_code == 0, retry.stderr
    second = (log / "sbatch-1.sh").read_text()
    assert "--array" not in second and "#SBATCH --partition=gpu" in second
    assert _job_ids(sweep_dir, 1) == ["4242_1", "4243"]
    assert [len(_job_ids(sweep_dir, i)) for i in (0, 2)] == [1, 1]
    # the retry fails too (SLURM says so): past `retries: 1` it is reported, not submitted
    (log / "sacct.states").write_text(
        "4242_0|COMPLETED|node1\n4242_[2]|PENDING|None\n4243|FAILED|node1\n"
    )
    gave_up = bench_cli("sweep", spec, "--out", out)
    assert gave_up.exit_code == 2 and len(gave_up.error_lines) == 1
    assert "1 cell(s) failed more than retries: 1 times" in gave_up.error_lines[0]
    assert not (log / "sbatch-2.sh").exists()


# -- bad input ------------------------------------------------------------------------------------
BAD = {
    "unknown --set key": (
        {"axes": {"method": ["ce"], "optim.lrr": [0.1]}},
        (),
        "unknown setting 'optim.lrr'",
    ),
    "unknown method": (
        {"axes": {"method": ["ce", "nope"], "seed": [0]}},
        (),
        "unknown method 'nope'",
    ),
    "empty axis": ({"axes": {"method": ["ce"], "seed": []}}, (), "has no values"),
    "empty grid": (
        {"axes": {"method": ["ce"], "seed": [0]}, "exclude": [{"seed": 0}]},
        (),
        "the grid is empty",
    ),
    "unknown axis": ({"axes": {"method": ["ce"], "lr": [0.1]}}, (), "unknown axis 'lr'"),
    "preset in base and axes": (
        {"axes": {"preset": ["smoke", "demo"]}},
        (),
        "preset is given in base and is also",
    ),
    "unknown launcher flag": (
        {"axes": {"method": ["ce"]}},
        ("--launcher", "pbs"),
        "'pbs' is not one of",
    ),
    "unknown launcher in spec": (
        {"axes": {"method": ["ce"]}, "launcher": {"pbs": {"queue": "q"}}},
        (),
        "unknown launcher 'pbs'",
    ),
    "slurm without partition": (
        {"axes": {"method": ["ce"]}, "launcher": {"slurm": {"gpus_per_run": 1}}},
        ("--launcher", "slurm"),
        "launcher.slurm has no partition",
    ),
    "slurm not configured": (
        {"axes": {"method": ["ce"]}},
        ("--launcher", "slurm"),
        "no launcher.slurm settings",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_submits_nothing(case, tmp_path, shapes_data_dir, bench_cli):
    extra, flags, message = BAD[case]
    spec = _write(tmp_path / "bad.yaml", {"base": _base(shapes_data_dir), **extra})
    out = tmp_path / "results"
    res = bench_cli("sweep", spec, "--out", out, *flags)
    assert res.exit_code == 2 and len(res.error_lines) == 1 and message in res.error_lines[0], (
        res.stderr
    )
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out.exists()


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_a_sweep_directory_of_another_spec_is_left_alone(tmp_path, shapes_data_dir, bench_cli):
    out = tmp_path / "results"
    first = _write(
        tmp_path / "grid.yaml",
        {"base": _base(shapes_data_dir), "axes": {"method": ["ce"], "seed": [0]}},
    )
    spec = load_spec(first)
    cells = expand(spec)
    sweep = SweepDir(out / "sweeps" / "grid")
    sweep.create(spec, cells, resolve_cells(spec, cells), out.resolve())
    before = _snapshot(sweep.path)
    other = tmp_path / "other"
    other.mkdir()
    changed = _write(
        other / "grid.yaml",
        {"base": _base(shapes_data_dir), "axes": {"method": ["ce"], "seed": [0, 1]}},
    )
    for args, refusal in (
        ((changed, "--out", out), "holds another spec"),
        ((changed, "--out", out, "--dry-run"), "holds another spec"),
        ((first, "--out", tmp_path / "elsewhere", "--dir", sweep.path), "keeps its runs under"),
    ):
        res = bench_cli("sweep", *args)
        assert res.exit_code == 2 and len(res.error_lines) == 1, res.stderr
        assert refusal in res.error_lines[0], res.error_lines[0]
    assert _snapshot(sweep.path) == before and not (sweep.path / "jobs").exists()
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(BenchError, match="not a sweep directory"):
        SweepDir(tmp_path).load()
    with sweep.submitting():  # another `bench sweep` of this sweep is submitting now
        res = bench_cli("sweep", first, "--out", out)
    assert res.exit_code == 2 and "another `bench sweep` is submitting" in res.error_lines[0]
    assert _snapshot(sweep.path) == before and not (sweep.path / "jobs").exists()


def test_a_cells_state_is_its_run_record_and_its_jobs(tmp_path, shapes_data_dir):
    """No bookkeeping beside the runs: cell 0's state is its run's record (through its link), cell
    1's the error its job raised, which submitit kept as the job's result; that failure counts
    against `retries`. A sweep directory of another format is refused in one line."""
    from submitit.core.utils import DelayedSubmission

    from bench.tools.sweep.launch import CellJob
    from bench.tools.sweep.state import CellFailed, statuses
    from bench.tools.sweep.submit import plan

    spec = load_spec(
        _write(
            tmp_path / "g.yaml",
            {"base": _base(shapes_data_dir), "axes": {"method": ["ce"], "seed": [0, 1]}},
        )
    )
    cells, out = expand(spec), tmp_path / "results"
    sweep = SweepDir(tmp_path / "sweep")
    sweep.create(spec, cells, resolve_cells(spec, cells), out)
    run_dir = out / "runs" / "run-a"
    run_dir.mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({"run_id": "run-a", "status": "complete"}))
    sweep.link_run(0, run_dir)
    job_dir = sweep.jobs_dir / "77"
    job_dir.mkdir(parents=True)
    DelayedSubmission(CellJob(sweep.path, out, "slurm"), 1, None).dump(job_dir / "77_submitted.pkl")
    error = f"Traceback (most recent call last):\n  ...\n{CellFailed.__module__}.CellFailed: boom"
    with open(job_dir / "77_0_result.pkl", "wb") as fh:
        pickle.dump(("error", error), fh)
    first, second = statuses(sweep)
    assert (first.status, first.run_id, first.attempts) == ("complete", "run-a", 0)
    assert (second.status, second.detail, second.job_id, second.failures) == (
        "failed",
        "boom",
        "77",
        1,
    )
    assert [a.what for a in plan([first, second], retries=0)] == ["skip", "give up"]
    assert sweep.run_ids() == ["run-a"]
    data = json.loads(sweep.sweep_file.read_text())
    sweep.sweep_file.write_text(json.dumps({**data, "format": 1}))
    with pytest.raises(BenchError, match="a sweep of format 1"):
        statuses(sweep)
