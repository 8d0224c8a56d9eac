"""Exact resume: a run killed (SIGKILL) or interrupted (SIGINT) and resumed ends with the same
weights, bit for bit, as the uninterrupted run with the same seed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env

STEPS = 16
# pgd-at with augmentation: data order, crops/flips and the attack's random start all draw
# randomness, so an inexact resume shows up in the weights
SETTINGS = [
    "data.train_subset=64",
    "data.batch_size=16",
    f"train.max_steps={STEPS}",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=2",
    "train.log_every=1",
    "train.eval_examples=16",
    "eval.enabled=false",
    "method.steps=1",
]


def _args(out: Path, data_dir: Path) -> list[str]:
    args = [
        "run",
        "--method",
        "pgd-at",
        "--preset",
        "smoke",
        "--seed",
        "3",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "-q",
    ]
    for s in SETTINGS:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def reference_weights(shapes_data_dir, tmp_path_factory):
    """The uninterrupted run (in-process, through the library)."""
    from bench.run.resolve import resolve_config
    from bench.run.runner import start_run

    cfg = resolve_config(
        "pgd-at", preset="smoke", seed=3, overrides=[*SETTINGS, f"data.data_dir={shapes_data_dir}"]
    )
    res = start_run(cfg, out=tmp_path_factory.mktemp("reference"), show_progress=False)
    assert res.record["training"]["steps_done"] == STEPS
    return torch.load(res.run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def _start_and_wait_for_checkpoint(out: Path, data_dir: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *_args(out, data_dir)],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = list((out / "runs").glob("*/checkpoints/step-*.pt"))
        if runs:
            return proc, runs[0].parent.parent
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first periodic checkpoint: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no periodic checkpoint within 180 s")


def _assert_same_weights(run_dir: Path, reference: dict) -> None:
    final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert final["step"] == STEPS
    assert final["model"].keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(final["model"][k], v), k


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights(
    shapes_data_dir, tmp_path, reference_weights, bench_cli
):
    out = tmp_path / "results"
    proc, run_dir = _start_and_wait_for_checkpoint(out, shapes_data_dir)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 0 < killed_at < STEPS  # killed in the middle
    rec = json.loads((run_dir / "record.json").read_text())
    assert (
        rec["status"] == "running"
    )  # as left by the dead process (the record is never half-written)

    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "-q")
    assert res.exit_code == 0, res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "complete" and rec["training"]["steps_done"] == STEPS
    assert [r["at_step"] for r in rec["training"]["resumes"]] == [killed_at]
    steps = [h["step"] for h in rec["training"]["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    _assert_same_weights(run_dir, reference_weights)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_leaves_a_resumable_interrupted_run(
    sig, shapes_data_dir, tmp_path, reference_weights, bench_cli
):
    """Ctrl-C, or SIGTERM as a cluster scheduler sends on preemption."""
    out = tmp_path / "results"
    proc, run_dir = _start_and_wait_for_checkpoint(out, shapes_data_dir)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr
    assert f"bench run --resume {run_dir.name}" in errors[0]
    rec = json.loads((run_dir / "record.json").read_text())
    assert (
        rec["status"] == "interrupted"
        and rec["message"]
        and "interrupted at step" in rec["message"]
    )
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["step"]
    assert 0 < stopped < STEPS and rec["training"]["steps_done"] == stopped
    assert f"interrupted at step {stopped}/{STEPS}" in errors[0]

    res = bench_cli(
        "run", "--resume", str(run_dir), "-q"
    )  # a run directory works as the reference too
    assert res.exit_code == 0, res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "complete" and rec["message"] is None
    _assert_same_weights(run_dir, reference_weights)


def test_ctrl_c_during_the_evaluation(shapes_data_dir, tmp_path, bench_cli, tiny_args):
    """Ctrl-C in the end-of-run evaluation leaves an interrupted run whose resume only evaluates."""
    from metrics import METRICS, register_metric
    from metrics.protocols import PROTOCOLS, Protocol, register_protocol

    calls = []

    @register_metric("test-ctrl-c")
    def ctrl_c(model, data, settings, ctx):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return {"accuracy": 0.5, "n_examples": settings["n_examples"]}

    register_protocol(
        Protocol(name="test-ctrl-c", description="presses Ctrl-C once", metrics={"test-ctrl-c": {}})
    )
    try:
        out = tmp_path / "results"
        res = bench_cli(
            "run",
            "--method",
            "ce",
            *tiny_args(out, shapes_data_dir, steps=2),
            "--set",
            "eval.protocol=test-ctrl-c",
        )
        assert res.exit_code == 130, res.stderr
        (run_dir,) = (out / "runs").iterdir()
        assert res.stderr.strip().splitlines()[-1] == (
            f"error: interrupted during the evaluation; finish it with: bench run --resume {run_dir.name}"
        )
        rec = json.loads((run_dir / "record.json").read_text())
        assert (
            rec["status"] == "interrupted"
            and rec["training"]["steps_done"] == 2
            and not rec["evaluations"]
        )
        weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]

        res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "-q")
        assert res.exit_code == 0, res.stderr
        rec = json.loads((run_dir / "record.json").read_text())
        assert (
            rec["status"] == "complete" and rec["training"]["steps_done"] == 2 and len(calls) == 2
        )
        assert rec["evaluations"]["test-ctrl-c"]["test-ctrl-c"]["accuracy"] == 0.5
        final = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert all(torch.equal(final[k], v) for k, v in weights.items())  # no extra training
    finally:
        METRICS.unregister("test-ctrl-c")
        PROTOCOLS.unregister("test-ctrl-c")


def test_a_run_from_an_older_version_resumes_under_its_recorded_digest(shapes_data_dir, tmp_path):
    """A run started before its config gained fields (new fields change ``cfg.digest()``) still
    resumes: checkpoints are matched against the digest recorded when the run started."""
    from bench.core.errors import BenchError
    from bench.core.records import RunRecord
    from bench.run.resolve import resolve_config
    from bench.run.runner import resume_run, start_run
    from bench.run.saved_runs import load_run_model
    from bench.train import checkpoint

    cfg = resolve_config(
        "ce",
        preset="smoke",
        overrides=[
            "data.train_subset=64",
            "data.batch_size=16",
            "train.max_steps=4",
            "train.checkpoint_every=2",
            "eval.enabled=false",
            f"data.data_dir={shapes_data_dir}",
        ],
    )
    run_dir = start_run(cfg, out=tmp_path, show_progress=False).run_dir
    old = "0123456789abcdef"  # what an older version's digest of the same run looked like
    for path in (run_dir / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=False)
        ckpt["config_digest"] = old
        ckpt["step"] = ckpt["state"]["step"] = 2  # as if interrupted half-way
        checkpoint.save(path, ckpt)
    rec = RunRecord.load(run_dir)
    rec.data.update(status="interrupted", config_digest=old)
    rec.save()
    assert cfg.digest() != old

    res = resume_run(str(run_dir), out=tmp_path, show_progress=False)
    assert res.record["status"] == "complete" and res.record["training"]["steps_done"] == 4
    assert (
        torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["config_digest"] == old
    )
    load_run_model(run_dir, torch.device("cpu"))  # evaluation loads it too
    # a checkpoint of another run is still refused
    foreign = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    foreign["config_digest"] = "ffffffffffffffff"
    checkpoint.save(run_dir / "checkpoints" / "last.pt", foreign)
    with pytest.raises(BenchError, match="different configuration"):
        load_run_model(run_dir, torch.device("cpu"))
