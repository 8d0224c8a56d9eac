"""What a run does when the machine fails it: a full disk, a kill before the first checkpoint,
SIGTERM during the evaluation, a checkpoint that does not fit the model.

Each ends in one line naming the fix, a record that says what happened, and a run that
`bench run --resume` finishes.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_args, subprocess_env
from test_bad_input import assert_one_error_line, snapshot

from bench.core.errors import DiskFull
from bench.core.io import torch_save
from bench.train import checkpoint


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- a full disk -------------------------------------------------------------------------------------
def test_a_full_disk_in_an_atomic_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path, monkeypatch
):
    target = tmp_path / "last.pt"
    torch_save({"step": 1}, target)
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bench.core.io.os.fsync", full)
    with pytest.raises(
        DiskFull, match=f"no space left on the disk holding {tmp_path} \\(writing last.pt;"
    ):
        torch_save({"step": 2}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs: room for a run's record, not for a resnet8 checkpoint (~1 MB). Needs mount rights."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(
            "cannot mount a small tmpfs here (needs root): the in-process ENOSPC test covers the write"
        )
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_during_a_run_gives_one_line_and_the_run_resumes_elsewhere(
    bench_cli, small_disk, tmp_path, shapes_data_dir
):
    out = small_disk / "results"
    res = bench_cli("run", "--method", "ce", *make_tiny_args(out, shapes_data_dir))
    assert_one_error_line(
        res, "no space left on the disk holding", "checkpoints", "bench run --resume", code=4
    )
    (run_dir,) = (out / "runs").iterdir()
    rec = _record(run_dir)
    assert rec["status"] == "interrupted" and "no space left" in rec["message"]
    assert not list(run_dir.rglob("*.tmp"))
    # moved to a disk with room, it continues from its last good checkpoint and completes
    moved = tmp_path / "results" / "runs" / run_dir.name
    shutil.copytree(run_dir, moved)
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(tmp_path / "results"), "-q")
    assert res.exit_code == 0, res.stderr
    assert _record(moved)["status"] == "complete"


# -- killed before the first checkpoint; litter of killed writes ------------------------------------------
def _killed_before_first_checkpoint(complete_run: Path, out: Path) -> Path:
    """A copy of ``complete_run`` as a kill between the record's creation and the first checkpoint leaves it."""
    run_dir = out / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints")
    rec = _record(run_dir)
    for key in ("evaluations", "evaluated_checkpoint", "finished_at"):
        rec.pop(key, None)
    rec["status"], rec["training"] = "running", {}
    (run_dir / "record.json").write_text(json.dumps(rec))
    return run_dir


def test_resume_restarts_in_place_a_run_killed_before_its_first_checkpoint(
    bench_cli, complete_run, tmp_path
):
    out = tmp_path / "results"
    run_dir = _killed_before_first_checkpoint(complete_run, out)
    (run_dir / "checkpoints").mkdir()
    litter = [
        run_dir / "checkpoints" / ".last.pt.k2j3h4.tmp",
        run_dir / ".record.json.a8s7d6.tmp",
        run_dir / "samples" / ".buffer-step-00000004.png.x1y2.tmp",
    ]
    for p in litter:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half a file")
    foreign = (
        run_dir / "samples" / ".quick-generated.npz.q9w8.tmp"
    )  # `bench eval` may be writing it: kept
    foreign.write_bytes(b"being written")
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "-q")
    assert res.exit_code == 0, res.stderr
    assert f"run {run_dir.name}: no checkpoint had been written" in res.stderr
    rec = _record(run_dir)
    assert rec["status"] == "complete"
    assert (
        rec["training"]["resumes"][-1]["at_step"] == 0
        and "step 0 in place" in rec["training"]["resumes"][-1]["note"]
    )
    # the same weights as the uninterrupted run: the restart is a new run in the same directory
    _same_weights(run_dir / "checkpoints" / "last.pt", complete_run / "checkpoints" / "last.pt")
    assert not any(p.exists() for p in litter) and foreign.exists()


def test_a_missing_last_checkpoint_with_periodic_ones_names_the_newest(
    bench_cli, complete_run, tmp_path
):
    out = tmp_path / "results"
    run_dir = _killed_before_first_checkpoint(complete_run, out)
    (run_dir / "checkpoints").mkdir()
    for step in (2, 4):
        shutil.copy(
            complete_run / "checkpoints" / "last.pt",
            run_dir / "checkpoints" / f"step-{step:08d}.pt",
        )
    before = snapshot(out)
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out))
    assert_one_error_line(
        res, "last.pt is missing", f"--checkpoint {run_dir / 'checkpoints' / 'step-00000004.pt'}"
    )
    assert snapshot(out) == before


# -- SIGTERM during the end-of-run evaluation ----------------------------------------------------------
def test_sigterm_during_the_evaluation_leaves_an_interrupted_run_that_resume_finishes(
    tmp_path, shapes_data_dir
):
    out = tmp_path / "results"
    args = [
        "run",
        "--method",
        "ce",
        *make_tiny_args(out, shapes_data_dir),
        "--set",
        "eval.n_examples=2000",
        "--set",
        "eval.batch_size=250",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, sent = time.time() + 240, False
    while time.time() < deadline and proc.poll() is None:
        runs = list((out / "runs").glob("*")) if (out / "runs").is_dir() else []
        if runs and (runs[0] / "record.json").is_file():
            try:
                training = _record(runs[0]).get("training") or {}
            except ValueError:
                training = {}
            if (
                training.get("total_steps")
                and training.get("steps_done") == training["total_steps"]
            ):
                time.sleep(0.5)  # inside the evaluation (PGD-20 on 2000 images: several seconds)
                proc.send_signal(signal.SIGTERM)
                sent = True
                break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert sent, err
    assert proc.returncode == 130, err
    (run_dir,) = (out / "runs").iterdir()
    rec = _record(run_dir)
    assert rec["status"] == "interrupted" and "during the evaluation" in rec["message"], rec
    assert "error: interrupted during the evaluation; finish it with: bench run --resume" in err
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--resume",
            run_dir.name,
            "--out",
            str(out),
            "-q",
            "--set",
            "eval.n_examples=32",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    rec = _record(run_dir)
    assert rec["status"] == "complete" and rec["evaluations"]["quick"]["clean"]["n_examples"] == 32
    assert rec["training"]["resumes"][-1]["overrides"] == {
        "eval.n_examples": {"from": 2000, "to": 32}
    }


# -- a checkpoint of the wrong shape ----------------------------------------------------------------------
def test_a_checkpoint_of_the_wrong_shape_gives_one_line_everywhere(
    bench_cli, complete_run, tmp_path
):
    out = tmp_path / "results"
    run_dir = out / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.ndim == 2)  # the classifier's weight
    ckpt["model"][key] = torch.zeros(3, 7)
    torch.save(ckpt, last)
    rec = _record(run_dir)
    rec["status"] = "interrupted"  # so that --resume tries it
    (run_dir / "record.json").write_text(json.dumps(rec))
    before = snapshot(out)
    expected = f"{key} has shape [3, 7] in the file but"
    for args in (
        ["eval", run_dir.name, "--out", str(out), "-q"],
        [
            "sample",
            run_dir.name,
            "--out",
            str(out),
            "--npz",
            str(tmp_path / "samples.npz"),
            "-n",
            "4",
        ],
        ["run", "--resume", run_dir.name, "--out", str(out), "-q"],
    ):
        res = bench_cli(*args)
        assert_one_error_line(res, f"checkpoint {last} does not fit the run's model", expected)
        assert snapshot(out) == before, args
