"""`bench run --seeds` and `bench compare --group seeds`: several seeds, one row, mean +- t-interval."""

from __future__ import annotations

import csv
import io
import json

import pytest
import scipy.stats
from conftest import make_tiny_args
from test_bad_input import assert_one_error_line, snapshot


def test_seeds_run_one_after_another_and_group_into_one_row(bench_cli, tmp_path, shapes_data_dir):
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *[a for a in make_tiny_args(out, shapes_data_dir, steps=2) if a not in ("--seed", "0")],
        "--seeds",
        "3,1",
    )
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/record.json"))]
    assert sorted(r["seed"] for r in recs) == [1, 3] and all(
        r["status"] == "complete" for r in recs
    )
    assert res.stdout.count("record: ") == 2
    grouped = bench_cli("compare", "--out", str(out), "--group", "seeds", "--format", "csv")
    assert grouped.exit_code == 0, grouped.stderr
    (row,) = list(csv.DictReader(io.StringIO(grouped.stdout)))
    assert row["run_id"] == "2 runs" and row["seeds"] == "2" and row["seed"] == "1,3"
    clean = [
        round(100 * r["evaluations"]["quick"]["clean"]["accuracy"], 2) for r in recs
    ]  # as the table shows them
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=sum(clean) / 2, scale=scipy.stats.sem(clean))
    assert float(row["quick/clean"]) == pytest.approx(sum(clean) / 2, abs=1e-3)
    assert float(row["quick/clean ±"]) == pytest.approx((hi - lo) / 2, abs=1e-3)
    assert float(row["quick/clean n"]) == 32 and "quick/clean ci_lo" not in row
    md = bench_cli("compare", "--out", str(out), "--group", "seeds")
    assert f"{sum(clean) / 2:g}"[:4] in md.stdout and " ± " in md.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--seeds", "0,0"], ["--seeds '0,0' repeats 0; each seed once"]),
        (["--seeds", "0,x"], ["'x' is not a non-negative integer"]),
        (["--seeds", "1.5"], ["'1.5' is not a non-negative integer"]),
        (["--seeds", ""], ["--seeds is empty"]),
        (["--seeds", "0,1", "--seed", "2"], ["give either --seed or --seeds, not both"]),
    ],
)
def test_bad_seeds_are_refused_before_anything_is_written(
    args, fragments, bench_cli, tmp_path, shapes_data_dir
):
    out = tmp_path / "results"
    base = [a for a in make_tiny_args(out, shapes_data_dir, steps=1) if a not in ("--seed", "0")]
    res = bench_cli("run", "--method", "ce", *base, *args)
    assert_one_error_line(res, *fragments)
    assert not out.exists()


def test_an_unknown_group_is_refused(bench_cli, tmp_path, complete_run):
    before = snapshot(complete_run.parent.parent)
    res = bench_cli("compare", "--out", str(complete_run.parent.parent), "--group", "colour")
    assert_one_error_line(res, "'colour' is not 'seeds'")
    assert snapshot(complete_run.parent.parent) == before
