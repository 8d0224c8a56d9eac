"""`bench eval`, `bench compare --reference` and `bench show` end to end on a finished tiny run."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest


@pytest.fixture
def run_copy(tmp_path, complete_run):
    out = tmp_path / "results"
    shutil.copytree(complete_run, out / "runs" / complete_run.name)
    return out, out / "runs" / complete_run.name


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TRILEMMA_OFFLINE", "1")
    monkeypatch.delenv("TRILEMMA_FID_WEIGHTS", raising=False)


def samples_npz(path, shape, n=24):
    rng = np.random.default_rng(0)
    c, h, w = shape
    np.savez(path, x=rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8))
    return path


def test_fid_without_weights_fails_in_one_line_and_leaves_the_record(
    bench_cli, run_copy, offline, tmp_path
):
    out, run_dir = run_copy
    rec = json.loads((run_dir / "record.json").read_text())
    gen = samples_npz(tmp_path / "gen.npz", rec["data"]["image_shape"])
    before = (run_dir / "record.json").read_bytes()
    res = bench_cli(
        "eval", run_dir.name, "--out", str(out), "--metrics", "fid", "--samples", str(gen), "-q"
    )
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: no Inception weights for FID")
    assert (
        "weights-inception-2015-12-05-6726825d.pth" in lines[0]
        and "bench fid-weights --from-fid-helper" in lines[0]
    )
    assert (run_dir / "record.json").read_bytes() == before


def test_eval_merges_metrics_and_show_links_figures(bench_cli, run_copy, offline, tmp_path):
    out, run_dir = run_copy
    rec0 = json.loads((run_dir / "record.json").read_text())
    gen = samples_npz(tmp_path / "gen.npz", rec0["data"]["image_shape"])
    res = bench_cli(
        "eval",
        run_dir.name,
        "--out",
        str(out),
        "--protocol",
        "standard",
        "-n",
        "24",
        "-q",
        "--metrics",
        "clean,pgd,energy,calibration",
        "--samples",
        str(gen),
    )
    assert res.exit_code == 0, res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["evaluations"]["quick"] == rec0["evaluations"]["quick"]  # earlier results kept
    std = rec["evaluations"]["standard"]
    assert set(std) == {"clean", "pgd", "energy", "calibration"}
    for m in std.values():
        assert m["protocol"] == "standard" and m["n_examples"] == 24
    e = std["energy"]
    assert e["n_generated"] == 24 and e["gap_adv"] == pytest.approx(e["mean_adv"] - e["mean_clean"])
    assert e["gap_gen"] == pytest.approx(e["mean_gen"] - e["mean_clean"])
    assert e["gap_adv"] > 0  # PGD raises the loss, and on this model the energy with it
    assert std["pgd"]["accuracy"] <= std["clean"]["accuracy"]
    for key in ("standard/energy/energy_histogram", "standard/calibration/reliability_diagram"):
        assert (run_dir / rec["artifacts"][key]).stat().st_size > 1000

    # the fid preflight fails before anything runs: the earlier results stay as they were
    res = bench_cli(
        "eval",
        run_dir.name,
        "--out",
        str(out),
        "-q",
        "--metrics",
        "clean,fid",
        "--samples",
        str(gen),
    )
    assert res.exit_code != 0
    assert json.loads((run_dir / "record.json").read_text())["evaluations"] == rec["evaluations"]

    # the whole standard protocol skips FID/KID/IS (no weights) and says so
    shown = bench_cli("show", run_dir.name, "--out", str(out))
    assert shown.exit_code == 0, shown.stderr
    assert "eval [standard]" in shown.stdout and "energy" in shown.stdout
    assert "energy_histogram" in shown.stdout and "reliability_diagram" in shown.stdout
    assert "file://" in shown.stdout and "(missing)" not in shown.stdout


def test_compare_reference_rows_are_kept_apart(bench_cli, run_copy):
    out, run_dir = run_copy
    res = bench_cli("compare", "--out", str(out), "--reference", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "measured" and kinds.count("measured") == 1
    assert kinds == sorted(kinds)  # measured rows first, then every reported row
    rep = {r["run_id"]: r for r in rows if r["kind"] == "reported"}
    trades = rep["Zhang2019Theoretically (RobustBench)"]
    assert (
        float(trades["standard/autoattack"]) == 53.08 and float(trades["standard/clean"]) == 84.92
    )
    assert float(trades["standard/autoattack n"]) == 10000 and "RobustBench" in trades["source"]
    eb = rep["EB-JDAT-SADAJEM (paper)"]
    assert float(eb["paper/autoattack"]) == 66.3 and float(eb["paper/fid"]) == 27.42
    assert "secondary source" in eb["note"] and "quick/clean" in eb and eb["quick/clean"] == ""
    measured = rows[0]
    assert (
        measured["run_id"] == run_dir.name
        and measured["source"] == ""
        and measured["quick/clean"] != ""
    )

    # sorting and filtering work within each group; reported rows never move above measured ones
    res = bench_cli(
        "compare",
        "--out",
        str(out),
        "--reference",
        "--format",
        "csv",
        "--sort",
        "standard/autoattack",
        "--filter",
        "dataset=cifar10",
        "--ascending",
    )
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert all(r["kind"] == "reported" for r in rows)
    aa = [float(r["standard/autoattack"]) for r in rows if r["standard/autoattack"]]
    assert aa == sorted(aa) and aa[0] == 0.0

    md = bench_cli("compare", "--out", str(out), "--reference")
    assert md.exit_code == 0 and "| kind" in md.stdout.splitlines()[0]
    assert "reported rows are published numbers, not measured here" in md.stdout
    plain = bench_cli("compare", "--out", str(out))
    assert "reported" not in plain.stdout and "kind" not in plain.stdout


def test_changed_settings_and_ad_hoc_metrics_are_new_entries(bench_cli, tmp_path, complete_run):
    out = tmp_path / "results"
    shutil.copytree(complete_run, out / "runs" / complete_run.name)
    path = out / "runs" / complete_run.name / "record.json"
    before = json.loads(path.read_text())["evaluations"]["quick"]["pgd"]
    res = bench_cli(
        "eval",
        complete_run.name,
        "--out",
        str(out),
        "--protocol",
        "quick",
        "--metrics",
        "pgd",
        "--set",
        "pgd.steps=3",
        "-n",
        "16",
        "-q",
    )
    assert res.exit_code == 0, res.stderr
    ev = json.loads(path.read_text())["evaluations"]
    assert ev["quick"]["pgd"] == before  # the protocol's own result is kept
    assert (
        ev["quick"]["pgd[steps=3]"]["settings"]["steps"] == 3
        and ev["quick"]["pgd[steps=3]"]["metric"] == "pgd"
    )
    # a metric outside the protocol: one line naming the custom protocol, nothing written
    res = bench_cli(
        "eval",
        complete_run.name,
        "--out",
        str(out),
        "--protocol",
        "quick",
        "--metrics",
        "calibration",
    )
    assert res.exit_code == 2 and "metric 'calibration' is not part of protocol quick" in res.stderr
    assert "--protocol custom --metrics calibration" in res.stderr
    res = bench_cli("eval", complete_run.name, "--out", str(out), "--protocol", "custom", "-q")
    assert (
        res.exit_code == 2
        and "protocol custom has no metrics of its own; name them with --metrics" in res.stderr
    )
    res = bench_cli(
        "eval",
        complete_run.name,
        "--out",
        str(out),
        "--protocol",
        "custom",
        "--metrics",
        "calibration",
        "-n",
        "16",
        "-q",
    )
    assert res.exit_code == 0, res.stderr
    assert "calibration" in json.loads(path.read_text())["evaluations"]["custom"]
    table = bench_cli("compare", "--out", str(out), "--format", "csv")
    header = table.stdout.splitlines()[0].split(",")
    assert "quick/pgd" in header and "quick/pgd[steps=3]" in header and "custom/ece" in header
