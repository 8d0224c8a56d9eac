"""`bench compare`: records -> leaderboard in md/csv/latex/json, --sort, --filter."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest

from bench.io import write_json


def _record(run_id, method, dataset, seed, clean, pgd, n=500):
    ev = {"quick": {
        "clean": {"accuracy": clean, "loss": 1.0, "n_examples": n, "protocol": "quick", "settings": {}, "seconds": 1.0},
        "pgd": {"accuracy": pgd, "clean_accuracy": clean, "n_examples": n, "protocol": "quick",
                "settings": {"eps": 8 / 255}, "seconds": 9.0},
    }}
    return {"schema": 1, "run_id": run_id, "status": "complete", "method": method, "dataset": dataset,
            "arch": "resnet8", "preset": "cpu", "seed": seed, "config": {}, "timings": {"train_seconds": 120.0},
            "training": {"epochs_done": 6.0}, "evaluations": ev}


@pytest.fixture
def results(tmp_path, complete_run):
    out = tmp_path / "results"
    for rec in (_record("r1-ce", "ce", "shapes10", 0, 0.90, 0.01),
                _record("r2-pgd", "pgd-at", "shapes10", 0, 0.70, 0.40),
                _record("r3-pgd", "pgd-at", "npz:cifar.npz", 1, 0.60, 0.45, n=200)):
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    shutil.copytree(complete_run, out / "runs" / complete_run.name)  # and a real one
    return out


def _csv(bench_cli, out, *args):
    res = bench_cli("compare", "--out", str(out), "--format", "csv", *args)
    assert res.exit_code == 0, res.stderr
    return list(csv.DictReader(io.StringIO(res.stdout)))


def test_leaderboard_rows_and_columns(bench_cli, results, complete_run):
    rows = _csv(bench_cli, results)
    assert len(rows) == 4
    by_id = {r["run_id"]: r for r in rows}
    assert set(by_id) == {"r1-ce", "r2-pgd", "r3-pgd", complete_run.name}
    r2 = by_id["r2-pgd"]
    assert (r2["method"], r2["dataset"], r2["seed"], r2["status"]) == ("pgd-at", "shapes10", "0", "complete")
    assert float(r2["quick/clean"]) == 70.0 and float(r2["quick/pgd"]) == 40.0  # accuracy in percent
    assert float(r2["quick/pgd n"]) == 500 and float(by_id["r3-pgd"]["quick/pgd n"]) == 200
    assert float(r2["train_min"]) == 2.0
    real = json.loads((complete_run / "record.json").read_text())
    assert float(by_id[complete_run.name]["quick/pgd"]) == pytest.approx(100 * real["evaluations"]["quick"]["pgd"]["accuracy"], abs=0.006)  # 2 decimals


def test_sort_and_filter(bench_cli, results):
    ids = [r["run_id"] for r in _csv(bench_cli, results, "--sort", "quick/pgd")]
    assert ids[:2] == ["r3-pgd", "r2-pgd"] and len(ids) == 4
    pgd = [float(r["quick/pgd"]) for r in _csv(bench_cli, results, "--sort", "quick/pgd")]
    assert pgd == sorted(pgd, reverse=True)
    asc = [float(r["quick/clean"]) for r in _csv(bench_cli, results, "--sort", "quick/clean", "--ascending")]
    assert asc == sorted(asc)
    only = _csv(bench_cli, results, "--filter", "method=pgd-at", "--sort", "quick/clean")
    assert [r["run_id"] for r in only] == ["r2-pgd", "r3-pgd"]
    both = _csv(bench_cli, results, "--filter", "method=pgd-at", "--filter", "dataset=shapes10")
    assert [r["run_id"] for r in both] == ["r2-pgd"]
    not_ce = _csv(bench_cli, results, "--filter", "method!=ce")
    assert {r["run_id"] for r in not_ce} == {"r2-pgd", "r3-pgd"}  # the real run is ce too
    seed1 = _csv(bench_cli, results, "--filter", "seed=1")
    assert [r["run_id"] for r in seed1] == ["r3-pgd"]


def test_formats(bench_cli, results):
    out = str(results)
    md = bench_cli("compare", "--out", out, "--sort", "quick/pgd", "--filter", "method=pgd-at")
    assert md.exit_code == 0, md.stderr
    lines = [line for line in md.stdout.strip().splitlines() if line.startswith("|")]
    assert lines[0].startswith("|") and "quick/clean" in lines[0] and "quick/pgd" in lines[0]
    assert set(lines[1].replace("|", "").replace(":", "").strip()) <= {"-", " "}
    assert len(lines) == 4 and "r3-pgd" in lines[2] and "r2-pgd" in lines[3]
    assert "| 45? " in lines[2]  # a PGD result stored before the guardrail checks: marked unchecked
    assert md.stdout.strip().endswith("(evaluate again with bench eval)")

    latex = bench_cli("compare", "--out", out, "--format", "latex", "--filter", "method=ce")
    assert latex.exit_code == 0, latex.stderr
    assert "\\begin{tabular}" in latex.stdout and "\\end{tabular}" in latex.stdout
    assert "run\\_id" in latex.stdout and "r1-ce" in latex.stdout and "r2-pgd" not in latex.stdout

    js = bench_cli("compare", "--out", out, "--format", "json", "--sort", "quick/clean")
    rows = json.loads(js.stdout)
    assert isinstance(rows, list) and rows[0]["run_id"] == "r1-ce" and rows[0]["quick/clean"] == 90.0
    assert {"run_id", "method", "dataset", "quick/pgd", "quick/pgd n"} <= set(rows[0])


@pytest.mark.parametrize("args, match", [
    (("--sort", "quick/fid"), "cannot sort by 'quick/fid'; choose one of: run_id"),
    (("--filter", "colour=red"), "cannot filter on 'colour'; filter as COLUMN=VALUE with one of: run_id"),
    (("--filter", "method"), "--filter 'method' names no value; write COLUMN=VALUE or COLUMN!=VALUE"),
])
def test_bad_sort_or_filter(bench_cli, results, args, match):
    res = bench_cli("compare", "--out", str(results), *args)
    assert res.exit_code == 2 and res.stderr.startswith("error: " + match.split(";")[0])
    assert match.split("; ")[1] in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_no_runs(bench_cli, tmp_path):
    res = bench_cli("compare", "--out", str(tmp_path / "empty"))
    assert res.exit_code == 2
    assert res.stderr.startswith("error: no runs under") and "bench run --method ce --preset smoke" in res.stderr


def test_changes_column_lists_the_settings_a_run_changed_from_its_preset(bench_cli, results, complete_run):
    rows = {r["run_id"]: r for r in _csv(bench_cli, results)}
    changes = rows[complete_run.name]["changes"].split()
    # the tiny run's --set items, and nothing chosen by a flag (data_dir, seed, device)
    assert "train.max_steps=4" in changes
    assert not any(c.startswith(("data.data_dir=", "seed=", "device=")) for c in changes)
    assert rows["r1-ce"]["changes"] == "?"  # a record without a config: unknown, not "none"


def test_changes_column_is_empty_for_a_preset_run_and_names_a_switch(tmp_path):
    from bench.compare import preset_changes
    from bench.resolve import resolve_config

    cfg = resolve_config("ebjdat", preset="cpu").to_dict()
    rec = {"method": "ebjdat", "preset": "cpu", "config": cfg}
    assert preset_changes(rec) == ""
    switched = resolve_config("ebjdat", preset="cpu", overrides=["method.adv_energy_sign=-1"]).to_dict()
    assert preset_changes({**rec, "config": switched}) == "method.adv_energy_sign=-1.0"


def _checked(rec, reliable, reasons=()):
    pgd = rec["evaluations"]["quick"]["pgd"]
    pgd["reliable"] = reliable
    pgd["checks"] = {"randomness": {"passed": reliable, "detail": "x"}}
    if reasons:
        pgd["unreliable_reasons"] = list(reasons)
    return rec


def test_reliability_marks_intervals_and_reliable_only(bench_cli, tmp_path):
    out = tmp_path / "results"
    for rec in (_checked(_record("r1-ok", "pgd-at", "shapes10", 0, 0.70, 0.40), True),
                _checked(_record("r2-bad", "pgd-at", "shapes10", 1, 0.70, 0.55), False, ["randomness: no EOT"]),
                _record("r3-old", "pgd-at", "shapes10", 2, 0.60, 0.45)):
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    md = bench_cli("compare", "--out", str(out), "--ci")
    assert md.exit_code == 0, md.stderr
    row = {line.split("|")[1].strip(): line for line in md.stdout.splitlines() if line.startswith("| r")}
    # pgd 40% of 500: Wilson [35.8, 44.4] (scipy's binomtest agrees; see test_guards)
    assert "| 40 [35.8" in row["r1-ok"] and "]  |" not in row["r1-ok"] and "!" not in row["r1-ok"]
    assert "| 55 [50.6" in row["r2-bad"] and row["r2-bad"].split("55 [")[1].split("|")[0].strip().endswith("]!")
    assert "45 [" in row["r3-old"] and row["r3-old"].split("45 [")[1].split("|")[0].strip().endswith("]?")
    assert "! failed a guardrail check" in md.stdout
    rows = {r["run_id"]: r for r in _csv(bench_cli, out, "--ci")}
    assert [rows[k]["quick/pgd reliable"] for k in ("r1-ok", "r2-bad", "r3-old")] == ["yes", "no", "unchecked"]
    assert float(rows["r1-ok"]["quick/pgd ci_lo"]) == pytest.approx(35.8, abs=0.1)
    assert "quick/clean reliable" not in rows["r1-ok"]  # clean accuracy is not an attack: no checks
    assert float(rows["r1-ok"]["quick/clean ci_lo"]) == pytest.approx(65.8, abs=0.1)
    only = {r["run_id"]: r for r in _csv(bench_cli, out, "--reliable-only")}
    assert only["r1-ok"]["quick/pgd"] == "40.0" and only["r2-bad"]["quick/pgd"] == "" and only["r3-old"]["quick/pgd"] == ""
    assert only["r2-bad"]["quick/clean"] == "70.0"  # the run stays, with its numbers that need no checks
