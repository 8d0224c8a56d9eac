"""Training-curve loggers: TensorBoard event files read back with tensorboard's own reader, the CSV
history, quiet runs, unknown names, and curves that never double back after a resume."""

from __future__ import annotations

import csv
import json

import pytest

tb = pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, shapes_data_dir):
    from conftest import _run_main, make_tiny_args

    out = tmp_path_factory.mktemp("loggers") / "results"
    res = _run_main(
        [
            "run",
            "--method",
            "jem++",
            *make_tiny_args(out, shapes_data_dir, steps=6),
            "--set",
            "method.sampler.buffer_size=64",
            "--set",
            "train.log_every=2",
            "--set",
            "train.checkpoint_every=3",
            "--set",
            "train.eval_every=0.5",
            "--set",
            "train.loggers=[console,tensorboard,csv]",
        ]
    )
    assert res.exit_code == 0, res.stderr
    (run_dir,) = (out / "runs").iterdir()
    return run_dir, res


def test_tensorboard_holds_every_logged_term_validation_samples_and_final_numbers(logged_run):
    run_dir, _ = logged_run
    rec = json.loads((run_dir / "record.json").read_text())
    hist = rec["training"]["history"]
    acc = _events(run_dir / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    for key in (
        "loss",
        "ce",
        "px",
        "e_data",
        "e_sample",
        "e_gap",
    ):  # every term, energies and their gap
        assert f"train/{key}" in scalars
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        want = [(h["step"], h[key]) for h in hist]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, want))
    assert [e.value for e in acc.Scalars("optim/lr")] == pytest.approx([h["lr"] for h in hist])
    val = rec["training"]["validation"]
    assert val and [(e.step, round(e.value, 6)) for e in acc.Scalars("test/accuracy")] == [
        (v["step"], round(v["accuracy"], 6)) for v in val
    ]
    images = acc.Images("samples/buffer_grid")  # the replay buffer's grid at each checkpoint
    assert [i.step for i in images] == [3, 6] and all(i.width > 0 and i.height > 0 for i in images)
    final = _events(run_dir / "tensorboard" / "final")
    clean = final.Scalars("hparam/quick/clean")
    assert clean and clean[0].value == pytest.approx(
        rec["evaluations"]["quick"]["clean"]["accuracy"]
    )


def test_csv_history_matches_the_record(logged_run):
    run_dir, _ = logged_run
    rec = json.loads((run_dir / "record.json").read_text())
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [h["step"] for h in rec["training"]["history"]]
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [h["loss"] for h in rec["training"]["history"]]
    )
    with open(run_dir / "validation.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rec["training"]["validation"])


def test_quiet_runs_print_no_progress_and_no_validation_lines(
    bench_cli, tmp_path, tiny_args, shapes_data_dir
):
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(tmp_path / "r", shapes_data_dir, steps=4),
        "--set",
        "train.eval_every=0.5",
    )
    assert res.exit_code == 0, res.stderr
    assert (
        "step/s" not in res.stderr
        and "%|" not in res.stderr
        and "test accuracy" not in res.stderr + res.stdout
    )
    args = [a for a in tiny_args(tmp_path / "l", shapes_data_dir, steps=4) if a != "-q"]
    res = bench_cli("run", "--method", "ce", *args, "--set", "train.eval_every=0.5")
    assert res.exit_code == 0, res.stderr
    assert "step 2: test accuracy" in res.stderr  # the console logger's validation line, without -q


def test_unknown_logger_is_refused_before_anything_is_written(
    bench_cli, tmp_path, tiny_args, shapes_data_dir
):
    out = tmp_path / "r"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir),
        "--set",
        "train.loggers=[console,wandbx]",
    )
    assert (
        res.exit_code == 2
        and "unknown logger 'wandbx'" in res.stderr
        and "tensorboard" in res.stderr
    )
    assert not (out / "runs").exists()
    res = bench_cli(
        "run", "--method", "ce", *tiny_args(out, shapes_data_dir), "--set", "train.loggers=5"
    )
    assert res.exit_code == 2 and "train.loggers expects a list" in res.stderr
    assert not (out / "runs").exists()


def test_a_resumed_run_purges_the_steps_after_its_checkpoint(tmp_path):
    """The first process logged steps 1..8 but checkpointed at 4; the resumed one logs 5..8 again with
    other values. The reader must show each step once, with the resumed values."""
    from bench.train.loggers.tensorboard import TensorBoardLogger

    first = TensorBoardLogger(tmp_path, cfg=None, start_step=0)
    for step in range(1, 9):
        first.scalars(step, {"loss": 1.0 * step})
    first.close()
    again = TensorBoardLogger(tmp_path, cfg=None, start_step=4)
    for step in range(5, 9):
        again.scalars(step, {"loss": 100.0 + step})
    again.close()
    got = [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert got == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 105.0),
        (6, 106.0),
        (7, 107.0),
        (8, 108.0),
    ]


def test_csv_logger_drops_rows_after_the_resume_step(tmp_path):
    from bench.train.loggers.csv_log import CSVLogger

    first = CSVLogger(tmp_path, cfg=None)
    for step in (2, 4, 6):
        first.scalars(step, {"loss": float(step)})
    first.close()
    again = CSVLogger(tmp_path, cfg=None, start_step=4)
    again.scalars(6, {"loss": 60.0, "px": 1.0})  # a term that appears later gets its column
    again.close()
    with open(tmp_path / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["loss"], r.get("px")) for r in rows] == [
        ("2", "2.0", ""),
        ("4", "4.0", ""),
        ("6", "60.0", "1.0"),
    ]
