"""A JEM run made to diverge on purpose: a clean stop, and `--on-divergence rollback`.

The learning rate is sane for 8 steps and absurd afterwards (a step schedule with gamma 1e5 at
epoch 2 = step 8: Adam at lr 10), so the divergence happens at a known point after good
checkpoints exist. Every 2 steps the guard reads the terms back and a checkpoint is written.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.run.saved_runs import load_run_model
from bench.train import checkpoint

DIVERGE_AT_STEP_8 = (
    "train.max_steps=12",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "eval.enabled=false",
    "optim.lr=0.0001",
    "optim.warmup_steps=0",
    "optim.schedule=step",
    "optim.milestones=[2]",
    "optim.gamma=100000.0",
    "method.sampler.steps=2",
    "method.sampler.buffer_size=64",
    "method.grid_size=4",
)


def jem_args(tiny_args, results_root, data_dir, *extra):
    args = ["run", "--method", "jem", *tiny_args(results_root, data_dir, steps=12)]
    for s in DIVERGE_AT_STEP_8:
        args += ["--set", s]
    return args + list(extra)


def only_run(results_root):
    (run_dir,) = (results_root / "runs").iterdir()
    return run_dir, json.loads((run_dir / "record.json").read_text())


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(
    bench_cli, tiny_args, results_root, shapes_data_dir
):
    res = bench_cli(*jem_args(tiny_args, results_root, shapes_data_dir))
    assert res.exit_code == 3, res.stderr
    assert len(res.error_lines) == 1 and len(res.error_lines[0].splitlines()) == 1
    line = res.error_lines[0]
    assert (
        "diverged" in line
        and "last good checkpoint kept" in line
        and "--on-divergence rollback" in line
    )
    run_dir, rec = only_run(results_root)
    assert rec["status"] == "diverged" and "diverged" in rec["message"]
    assert (
        "near step 10" in line and rec["training"]["rollbacks"] == []
    )  # found at the window's end
    assert all(
        math.isfinite(v)
        for h in rec["training"]["history"]
        for k, v in h.items()
        if isinstance(v, float)
    )
    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 8  # the state before the first absurd update
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    buf = ckpt["method"]["sampler"]["buffer"]["x"]
    assert buf.shape == (64, 3, 32, 32) and torch.isfinite(buf).all()
    model, _, data, _ = load_run_model(run_dir, torch.device("cpu"))
    with torch.no_grad():
        e = model.energy(data.x_test[:16].float() / 255)
    assert torch.isfinite(e).all() and e.abs().max() < 1e3
    assert (run_dir / rec["artifacts"]["buffer_grid"]).is_file()


def test_rollback_continues_with_a_lower_learning_rate(
    bench_cli, tiny_args, results_root, shapes_data_dir
):
    res = bench_cli(
        *jem_args(
            tiny_args,
            results_root,
            shapes_data_dir,
            "--on-divergence",
            "rollback",
            "--set",
            "train.rollback_lr_factor=1e-6",
        )
    )
    assert res.exit_code == 0, res.stderr
    assert "rolled back to step 8" in res.stderr  # notices go to stderr, results to stdout
    run_dir, rec = only_run(results_root)
    assert rec["status"] == "complete" and rec["training"]["steps_done"] == 12
    (event,) = rec["training"]["rollbacks"]
    assert event["to_step"] == 8 and event["at_step"] == 10 and event["reseed"] == 1
    assert event["lr_scale"] == pytest.approx(1e-6) and rec["training"][
        "lr_scale"
    ] == pytest.approx(1e-6)
    assert any(k in event["reason"] for k in ("non-finite", "exploded"))
    hist = rec["training"]["history"]
    assert [h["step"] for h in hist] == [
        2,
        4,
        6,
        8,
        10,
        12,
    ]  # the diverged window is not in the history
    assert all(math.isfinite(h["loss"]) and abs(h["e_sample"]) < 1e5 for h in hist)
    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 12 and all(
        torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point()
    )


def test_rollbacks_run_out_then_stop(bench_cli, tiny_args, results_root, shapes_data_dir):
    res = bench_cli(
        *jem_args(
            tiny_args,
            results_root,
            shapes_data_dir,
            "--on-divergence",
            "rollback",
            "--set",
            "train.rollback_lr_factor=1.0",
            "--set",
            "train.max_rollbacks=1",
        )
    )
    assert res.exit_code == 3 and len(res.error_lines) == 1
    assert "rolled back 1 times already" in res.error_lines[0]
    _, rec = only_run(results_root)
    assert rec["status"] == "diverged" and len(rec["training"]["rollbacks"]) == 1


def test_a_diverged_run_resumes_with_a_lower_learning_rate(
    bench_cli, tiny_args, results_root, shapes_data_dir
):
    from test_bad_input import assert_one_error_line, snapshot

    assert bench_cli(*jem_args(tiny_args, results_root, shapes_data_dir)).exit_code == 3
    run_dir, _ = only_run(results_root)
    before = snapshot(results_root)
    # only settings that do not redefine the weights trained so far may change
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(results_root), "--set", "optim.gamma=1"
    )
    assert_one_error_line(
        res, "--resume cannot change optim.gamma", "only optim.lr, train.on_divergence"
    )
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(results_root), "--set", "optim.lr=-1"
    )
    assert_one_error_line(res, "optim.lr")
    assert snapshot(results_root) == before
    # the JEM user's manual restart: the same run, from its last good checkpoint, at a lower learning rate
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(results_root), "-q", "--set", "optim.lr=1e-9"
    )
    assert res.exit_code == 0, res.stderr
    assert "optim.lr: 0.0001 -> 1e-09" in res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "complete" and rec["training"]["steps_done"] == 12
    assert rec["config"]["optim"]["lr"] == 1e-9 and rec["changes"]["optim.lr"] == 1e-9
    resume = rec["training"]["resumes"][-1]
    assert resume["at_step"] == 8 and resume["overrides"] == {
        "optim.lr": {"from": 0.0001, "to": 1e-9}
    }
    # after the milestone the schedule multiplies the new base rate by gamma: 1e-9 * 1e5
    assert [h["lr"] for h in rec["training"]["history"] if h["step"] > 8] == pytest.approx(
        [1e-4, 1e-4]
    )
    assert all(math.isfinite(h["loss"]) for h in rec["training"]["history"])
