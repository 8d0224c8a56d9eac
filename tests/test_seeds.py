"""`bench run --seeds` and `bench compare --group seeds`: several seeds, one row, mean +- t-interval."""

from __future__ import annotations

import csv
import importlib
import io
import json
import sys

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


def _grouped(bench_cli, out, records):
    from test_compare import _record

    from bench.core.io import write_json

    for run_id, seed, clean, extra in records:
        rec = {**_record(run_id, "my-method", "shapes10", seed, clean, clean / 2), **extra}
        write_json(out / "runs" / run_id / "record.json", rec)
    res = bench_cli("compare", "--out", str(out), "--group", "seeds", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    return list(csv.DictReader(io.StringIO(res.stdout)))


def _plugin(digest):
    part = {"kind": "method", "name": "my-method", "package": "my-plugin", "version": "0.1"}
    return {"environment": {"plugins": [{**part, "module": "my_plugin", "source_sha256": digest}]}}


def test_runs_of_one_seed_are_not_independent_seeds(bench_cli, tmp_path):
    rows = _grouped(bench_cli, tmp_path, [("r1", 0, 0.60, {}), ("r2", 0, 0.70, {})])
    (row,) = rows
    assert row["run_id"] == "2 runs" and row["seeds"] == "1"
    assert row["seed"] == "0,0 (repeated: no interval)" and row["quick/clean ±"] == ""
    md = bench_cli("compare", "--out", str(tmp_path), "--group", "seeds")
    assert "0,0 (repeated: no interval)" in md.stdout and " ± " not in md.stdout
    # the report's trade-off plane: one point, not "×2" seeds, no error bars
    from bench.leaderboard.compare import leaderboard_and_meta, load_records
    from bench.leaderboard.grouping import group_seeds
    from bench.leaderboard.report.tables import planes

    records = load_records(tmp_path)
    df, meta = leaderboard_and_meta(records)
    ((point,),) = [p.points for p in planes(group_seeds(df, records), meta)]
    assert point.seeds == 1 and point.clean_err is None and point.robust_err is None


def test_runs_of_edited_plugin_code_or_other_settings_are_not_grouped(bench_cli, tmp_path):
    rows = _grouped(
        bench_cli,
        tmp_path / "code",
        [("r1", 0, 0.60, _plugin("a" * 64)), ("r2", 1, 0.70, _plugin("b" * 64))],
    )
    assert sorted(r["run_id"] for r in rows) == ["r1", "r2"]
    same = [("r1", 0, 0.60, _plugin("a" * 64)), ("r2", 1, 0.70, _plugin("a" * 64))]
    assert [r["seeds"] for r in _grouped(bench_cli, tmp_path / "same", same)] == ["2"]
    lr = [("r1", 0, 0.6, {"changes": {"optim.lr": 0.01}}), ("r2", 1, 0.7, {"changes": {}})]
    for rec in lr:
        rec[3]["preset_variant"] = {}
    rows = _grouped(bench_cli, tmp_path / "changes", lr)
    assert sorted((r["run_id"], r["changes"]) for r in rows) == [
        ("r1", "optim.lr=0.01"),
        ("r2", ""),
    ]


def test_plugin_entries_carry_a_digest_of_their_source(tmp_path, monkeypatch):
    from bench.run.resolve import source_digest

    pkg = tmp_path / "edited_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from edited_plugin.method import X\n")
    (pkg / "method.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "edited_plugin", importlib.import_module("edited_plugin"))
    before = source_digest({"module": "edited_plugin.method"})
    assert before is not None and len(before) == 64
    (pkg / "method.py").write_text("X = 2  # a bug fixed\n")
    assert source_digest({"module": "edited_plugin.method"}) not in (before, None)
