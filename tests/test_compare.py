"""`bench compare`: records -> leaderboard in md/csv/latex/json, --sort, --filter."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket

import pytest

from bench.core.io import write_json


def _record(run_id, method, dataset, seed, clean, pgd, n=500):
    ev = {
        "quick": {
            "clean": {
                "accuracy": clean,
                "loss": 1.0,
                "n_examples": n,
                "protocol": "quick",
                "settings": {},
                "seconds": 1.0,
            },
            "pgd": {
                "accuracy": pgd,
                "clean_accuracy": clean,
                "n_examples": n,
                "protocol": "quick",
                "settings": {"eps": 8 / 255},
                "seconds": 9.0,
            },
        }
    }
    return {
        "schema": 1,
        "run_id": run_id,
        "status": "complete",
        "method": method,
        "dataset": dataset,
        "arch": "resnet8",
        "preset": "cpu",
        "seed": seed,
        "config": {},
        "timings": {"train_seconds": 120.0, "eval_seconds": 30.0},
        "training": {"epochs_done": 6.0},
        "evaluations": ev,
    }


@pytest.fixture
def results(tmp_path, complete_run):
    out = tmp_path / "results"
    for rec in (
        _record("r1-ce", "ce", "shapes10", 0, 0.90, 0.01),
        _record("r2-pgd", "pgd-at", "shapes10", 0, 0.70, 0.40),
        _record("r3-pgd", "pgd-at", "npz:cifar.npz", 1, 0.60, 0.45, n=200),
    ):
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
    assert (r2["method"], r2["dataset"], r2["seed"], r2["status"]) == (
        "pgd-at",
        "shapes10",
        "0",
        "complete",
    )
    assert (
        float(r2["quick/clean"]) == 70.0 and float(r2["quick/pgd"]) == 40.0
    )  # accuracy in percent
    assert float(r2["quick/pgd n"]) == 500 and float(by_id["r3-pgd"]["quick/pgd n"]) == 200
    assert float(r2["train_min"]) == 2.0 and float(r2["eval_min"]) == 0.5
    real = json.loads((complete_run / "record.json").read_text())
    assert float(by_id[complete_run.name]["quick/pgd"]) == pytest.approx(
        100 * real["evaluations"]["quick"]["pgd"]["accuracy"], abs=0.006
    )  # 2 decimals


def test_sort_and_filter(bench_cli, results):
    ids = [r["run_id"] for r in _csv(bench_cli, results, "--sort", "quick/pgd")]
    assert ids[:2] == ["r3-pgd", "r2-pgd"] and len(ids) == 4
    pgd = [float(r["quick/pgd"]) for r in _csv(bench_cli, results, "--sort", "quick/pgd")]
    assert pgd == sorted(pgd, reverse=True)
    asc = [
        float(r["quick/clean"])
        for r in _csv(bench_cli, results, "--sort", "quick/clean", "--ascending")
    ]
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
    # the brief view: one protocol, named below the table with n when it is the same for every run
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "run",
        "method",
        "dataset",
        "seed",
        "clean",
        "pgd",
    ]  # changes "?" (schema 1) goes below
    assert set(lines[1].replace("|", "").replace(":", "").strip()) <= {"-", " "}
    assert len(lines) == 4 and "r3-pgd" in lines[2] and "r2-pgd" in lines[3]
    assert (
        "| 45? (n=200)" in lines[2]
    )  # n differs between the runs: in the cell; ? = stored before the checks
    below = md.stdout.strip().splitlines()[len(lines) + 1 :]
    assert (
        below[0] == "protocol quick"
        and "? stored before the checks (bench eval again)" in md.stdout
    )
    assert "arch resnet8, preset cpu, status complete" in md.stdout
    wide = bench_cli("compare", "--out", out, "--wide", "--filter", "method=pgd-at")
    assert "quick/clean" in wide.stdout and "quick/pgd n" in wide.stdout

    latex = bench_cli("compare", "--out", out, "--format", "latex", "--filter", "method=ce")
    assert latex.exit_code == 0, latex.stderr
    assert "\\begin{tabular}" in latex.stdout and "\\end{tabular}" in latex.stdout
    assert "\\toprule" in latex.stdout and "r1-ce" in latex.stdout and "r2-pgd" not in latex.stdout
    assert (
        "\\caption{protocol quick" in latex.stdout
    )  # the brief view: the protocol named, headline columns only

    js = bench_cli("compare", "--out", out, "--format", "json", "--sort", "quick/clean")
    rows = json.loads(js.stdout)
    assert (
        isinstance(rows, list) and rows[0]["run_id"] == "r1-ce" and rows[0]["quick/clean"] == 90.0
    )
    assert {"run_id", "method", "dataset", "quick/pgd", "quick/pgd n"} <= set(rows[0])


@pytest.mark.parametrize(
    "args, match",
    [
        (("--sort", "quick/fid"), "cannot sort by 'quick/fid'; choose one of: run_id"),
        (
            ("--filter", "colour=red"),
            "cannot filter on 'colour'; filter as COLUMN=VALUE with one of: run_id",
        ),
        (
            ("--filter", "method"),
            "--filter 'method' names no value; write COLUMN=VALUE, COLUMN!=VALUE or COLUMN>NUMBER",
        ),
    ],
)
def test_bad_sort_or_filter(bench_cli, results, args, match):
    res = bench_cli("compare", "--out", str(results), *args)
    assert res.exit_code == 2 and res.stderr.startswith("error: " + match.split(";")[0])
    assert match.split("; ")[1] in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_no_runs(bench_cli, tmp_path):
    res = bench_cli("compare", "--out", str(tmp_path / "empty"))
    assert res.exit_code == 2
    assert (
        res.stderr.startswith("error: no runs under")
        and "bench run --method ce --preset smoke" in res.stderr
    )


def test_changes_column_lists_the_settings_a_run_changed_from_its_preset(
    bench_cli, results, complete_run
):
    rows = {r["run_id"]: r for r in _csv(bench_cli, results)}
    changes = rows[complete_run.name]["changes"].split()
    # the tiny run's --set items, and nothing chosen by a flag (data_dir, seed, device)
    assert "train.max_steps=4" in changes
    assert not any(c.startswith(("data.data_dir=", "seed=", "device=")) for c in changes)
    assert rows["r1-ce"]["changes"] == "?"  # a record without a config: unknown, not "none"


def test_changes_column_shows_the_methods_own_preset_budget_and_a_switch(tmp_path):
    """A preset run of a method without a variant of its own shows nothing; one with a variant
    (pgd-at's PGD-5 on cpu) shows it as a --set would be shown, so rows compare at a glance."""
    from bench.leaderboard.compare import changes_text
    from bench.run.resolve import resolve_config

    ce = {"method": "ce", "preset": "cpu", "config": resolve_config("ce", preset="cpu").to_dict()}
    assert changes_text(ce) == ""
    rec = {
        "method": "pgd-at",
        "preset": "cpu",
        "config": resolve_config("pgd-at", preset="cpu").to_dict(),
    }
    assert changes_text(rec) == (
        "method.alpha=0.0078431 method.eps_warmup_epochs=3.0 method.steps=5 train.epochs=8.0"
    )
    switched = resolve_config(
        "pgd-at", preset="cpu", overrides=["method.steps=7", "optim.lr=0.02"]
    ).to_dict()
    assert changes_text({**rec, "config": switched}) == (
        "method.alpha=0.0078431 method.eps_warmup_epochs=3.0 "
        "method.steps=7 optim.lr=0.02 train.epochs=8.0"
    )
    # what the record stores wins over today's preset files
    stored = {**rec, "changes": {}, "preset_variant": {"method.steps": 4}}
    assert changes_text(stored) == "method.steps=4"


def _checked(rec, reliable, reasons=()):
    pgd = rec["evaluations"]["quick"]["pgd"]
    pgd["reliable"] = reliable
    pgd["checks"] = {"randomness": {"passed": reliable, "detail": "x"}}
    if reasons:
        pgd["unreliable_reasons"] = list(reasons)
    return rec


def test_reliability_marks_intervals_and_reliable_only(bench_cli, tmp_path):
    out = tmp_path / "results"
    for rec in (
        _checked(_record("r1-ok", "pgd-at", "shapes10", 0, 0.70, 0.40), True),
        _checked(
            _record("r2-bad", "pgd-at", "shapes10", 1, 0.70, 0.55), False, ["randomness: no EOT"]
        ),
        _record("r3-old", "pgd-at", "shapes10", 2, 0.60, 0.45),
    ):
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    md = bench_cli("compare", "--out", str(out), "--ci")
    assert md.exit_code == 0, md.stderr
    row = {
        line.split("|")[1].strip(): line
        for line in md.stdout.splitlines()
        if line.startswith("| r")
    }
    # pgd 40% of 500: Wilson [35.8, 44.4] (scipy's binomtest agrees; see test_guards)
    assert "| 40 [35.8" in row["r1-ok"] and "]  |" not in row["r1-ok"] and "!" not in row["r1-ok"]
    assert "| 55 [50.6" in row["r2-bad"] and row["r2-bad"].split("55 [")[1].split("|")[
        0
    ].strip().endswith("]!")
    assert "45 [" in row["r3-old"] and row["r3-old"].split("45 [")[1].split("|")[
        0
    ].strip().endswith("]?")
    assert "! failed a guardrail check" in md.stdout
    rows = {r["run_id"]: r for r in _csv(bench_cli, out, "--ci")}
    assert [rows[k]["quick/pgd reliable"] for k in ("r1-ok", "r2-bad", "r3-old")] == [
        "yes",
        "no",
        "unchecked",
    ]
    assert float(rows["r1-ok"]["quick/pgd ci_lo"]) == pytest.approx(35.8, abs=0.1)
    assert "quick/clean reliable" not in rows["r1-ok"]  # clean accuracy is not an attack: no checks
    assert float(rows["r1-ok"]["quick/clean ci_lo"]) == pytest.approx(65.8, abs=0.1)
    only = {r["run_id"]: r for r in _csv(bench_cli, out, "--reliable-only")}
    assert (
        only["r1-ok"]["quick/pgd"] == "40.0"
        and only["r2-bad"]["quick/pgd"] == ""
        and only["r3-old"]["quick/pgd"] == ""
    )
    assert (
        only["r2-bad"]["quick/clean"] == "70.0"
    )  # the run stays, with its numbers that need no checks


def _full(run_id, method, seed, clean, robust, status="complete"):
    """A record as a demo leaves it: `quick` from bench run, `standard` from bench eval (every metric)."""
    rec = _checked(_record(run_id, method, "shapes10", seed, clean, robust + 0.05, n=1000), True)
    rec["status"] = rec_status = status
    aa = {
        "accuracy": robust,
        "clean_accuracy": clean,
        "n_examples": 1000,
        "eps": 8 / 255,
        "reliable": robust < 0.5,
        "checks": {"library": {"passed": robust < 0.5, "detail": "x"}},
    }
    std = {
        "clean": {"accuracy": clean, "n_examples": 1000},
        "pgd": {
            "accuracy": robust + 0.02,
            "clean_accuracy": clean,
            "n_examples": 1000,
            "eps": 8 / 255,
            "reliable": True,
        },
        "autoattack": aa,
        "calibration": {"ece": 0.05, "n_examples": 1000},
        "fid": {"fid": 123.456, "n_samples": 500, "n_examples": 500, "small_n": "500 < 10,000"},
        "kid": {
            "kid_mean": 0.0812,
            "kid_std": 0.0031,
            "n_samples": 500,
            "n_examples": 500,
            "small_n": "500 < 10,000",
        },
        "is": {"is_mean": 3.21, "is_std": 0.1, "n_examples": 500},
        "energy": {"gap_adv": -1.234, "gap_gen": 5.678, "n_examples": 1000},
    }
    rec["evaluations"]["standard"] = std
    rec["changes"] = {"method.sampler.steps": 5} if method == "jem++" else {}
    assert rec_status == status
    return rec


@pytest.fixture
def demo(tmp_path):
    out = tmp_path / "results"
    recs = [
        _full(f"20261201-10000{i}-{m}-shapes10-{h}", m, 0, c, r)
        for i, (m, h, c, r) in enumerate(
            [
                ("ce", "a1b2c3", 0.92, 0.0),
                ("pgd-at", "d4e5f6", 0.71, 0.38),
                ("jem++", "0a1b2c", 0.88, 0.02),
                ("ebjdat", "3d4e5f", 0.80, 0.61),
            ]
        )
    ]
    recs.append(
        _full("20261201-110000-trades-shapes10-9f9f9f", "trades", 0, 0.5, 0.2, status="running")
    )
    for rec in recs:
        write_json(out / "runs" / rec["run_id"] / "record.json", rec)
    # the trades run is alive: its lock names this process
    (out / "runs" / recs[-1]["run_id"] / ".lock").write_text(
        f"{socket.gethostname()} {os.getpid()}"
    )
    return out


def test_the_brief_view_fits_120_characters_and_names_protocol_and_n(bench_cli, demo):
    res = bench_cli("compare", "--out", str(demo))
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # accuracy -> robustness (the strongest attack only) -> generation -> energies; no calibration or IS
    assert header == [
        "run",
        "method",
        "changes",
        "clean",
        "autoattack",
        "fid",
        "kid",
        "gap_adv",
        "gap_gen",
    ]
    assert "| a1b2c3 " in lines[2] and "ebjdat" in res.stdout and "trades" not in res.stdout
    assert "| 61! " in res.stdout  # an AutoAttack number failing its library check
    assert "0.0812 ± 0.0031" in res.stdout  # KID with its std
    text = res.stdout
    assert (
        "protocol standard (also stored: quick" in text
        and "n: clean 1000, autoattack 1000, fid 500*, kid 500*" in text
        and "* under 10,000 samples: biased" in text
    )
    assert "1 run(s) still training are not shown (--all shows them)" in text
    assert "trades" in bench_cli("compare", "--out", str(demo), "--all").stdout
    quick = bench_cli("compare", "--out", str(demo), "--protocol", "quick").stdout
    assert (
        "protocol quick (also stored: standard" in quick
        and "autoattack" not in quick.splitlines()[0]
    )
    wide = bench_cli("compare", "--out", str(demo), "--wide").stdout
    assert "standard/ece" in wide.splitlines()[0], wide.splitlines()[0]


def test_compare_for_papers_filters_columns_and_formats(bench_cli, demo):
    rows = _csv(
        bench_cli, demo, "--filter", "standard/autoattack>30", "--filter", "standard/clean<=80"
    )
    assert [r["method"] for r in rows] == ["pgd-at", "ebjdat"], rows
    assert rows[0]["standard/autoattack n"] == "1000"  # integers stay integers in CSV
    res = bench_cli("compare", "--out", str(demo), "--filter", "standard/autoattack>high")
    assert res.exit_code == 2 and "> compares numbers; 'high' is not one" in res.stderr
    js = bench_cli(
        "compare",
        "--out",
        str(demo),
        "--format",
        "json",
        "--columns",
        "standard/clean,standard/autoattack",
    )
    assert '"standard/clean"' in js.stdout and "\\/" not in js.stdout
    row = json.loads(js.stdout)[0]
    assert set(row) == {
        "run_id",
        "standard/clean",
        "standard/clean n",
        "standard/clean reliable",
        "standard/autoattack",
        "standard/autoattack n",
        "standard/autoattack reliable",
    } - {"standard/clean reliable"}
    res = bench_cli("compare", "--out", str(demo), "--columns", "standard/colour")
    assert (
        res.exit_code == 2
        and "--columns: unknown standard/colour; choose from: run_id" in res.stderr
    )
    res = bench_cli("compare", "--out", str(demo), "--protocol", "paper")
    assert (
        res.exit_code == 2
        and "no numbers of protocol 'paper' in this table; it has: quick, standard" in res.stderr
    )
    # a column left empty by the filter is dropped
    only_ce = _csv(bench_cli, demo, "--filter", "method=ce", "--reliable-only")
    assert "standard/autoattack" in only_ce[0]  # ce's autoattack passed its checks (0 < 50)
    bad = _csv(bench_cli, demo, "--filter", "method=ebjdat", "--reliable-only")
    assert "standard/autoattack" not in bad[0] and "standard/autoattack n" not in bad[0]


def _of_step(rec, protocol, metric, step, file="checkpoints/last.pt"):
    rec["evaluations"][protocol][metric]["checkpoint"] = {"step": step, "file": file, "sha256": "a"}
    return rec


def test_results_of_an_earlier_checkpoint_are_marked_everywhere(bench_cli, tmp_path):
    """A `bench eval` taken at step 8 of a 32-step run stays in the finished run's record: compare,
    show and report mark it; the results of the evaluated weights and older records are unmarked."""
    out = tmp_path / "results"
    rec = _record("r1-late", "ce", "shapes10", 0, 0.90, 0.30)
    rec["training"] = {"epochs_done": 6.0, "steps_done": 32}
    rec["evaluated_checkpoint"] = {"checkpoint": "checkpoints/last.pt", "step": 32}
    _of_step(_of_step(rec, "quick", "clean", 8, "checkpoints/step-00000008.pt"), "quick", "pgd", 32)
    old = _record("r2-old", "ce", "shapes10", 1, 0.80, 0.20)  # stored before checkpoints were named
    for r in (rec, old):
        write_json(out / "runs" / r["run_id"] / "record.json", r)
    md = bench_cli("compare", "--out", str(out))
    assert md.exit_code == 0, md.stderr
    row = {line.split("|")[1].strip(): line for line in md.stdout.splitlines() if "| r" in line}
    assert "| 90†" in row["r1-late"] and "30†" not in row["r1-late"]
    assert "†" not in row["r2-old"] and "† of an earlier" in md.stdout
    show = bench_cli("show", str(out / "runs" / "r1-late"))
    assert show.exit_code == 0, show.stderr
    assert (
        "† of step 8 (checkpoints/step-00000008.pt), not of the weights the run reports (step 32)"
        in (show.stdout)
    )
    assert show.stdout.count("†") == 1
    assert "†" not in bench_cli("show", str(out / "runs" / "r2-old")).stdout
    page = tmp_path / "page.html"
    rep = bench_cli("report", "--out", str(out), "--html", str(page))
    assert rep.exit_code == 0, rep.stderr
    html = page.read_text()
    assert re.search(r"<td>90 \[[^<]*\]†</td>", html) and not re.search(r"<td>30 [^<]*†", html)
    assert html.count("†") == 2  # the cell and the note on the marks


def test_evaluation_stores_the_checkpoint_it_evaluated(bench_cli, tmp_path, complete_run):
    run_dir = tmp_path / "results" / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    rec = json.loads((run_dir / "record.json").read_text())
    final = rec["evaluated_checkpoint"]["step"]
    (end,) = {json.dumps(r["checkpoint"]) for r in rec["evaluations"]["quick"].values()}
    assert json.loads(end)["step"] == final and len(json.loads(end)["sha256"]) == 64
    res = bench_cli("eval", str(run_dir), "--protocol", "custom", "--metrics", "clean", "-q")
    assert res.exit_code == 0, res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    ckpt = rec["evaluations"]["custom"]["clean"]["checkpoint"]
    # the weights `bench eval` loads from last.pt are the ones the end of the run evaluated
    assert ckpt == {**json.loads(end), "file": "checkpoints/last.pt"}
    assert "†" not in bench_cli("show", str(run_dir)).stdout


def test_a_run_without_a_number_shows_an_empty_cell(bench_cli, tmp_path):
    out = tmp_path / "results"
    a, b = _record("a", "ce", "shapes10", 0, 0.9, 0.1), _record("b", "ce", "shapes10", 1, 0.8, 0.2)
    a["evaluations"] = {"custom": {"clean": a["evaluations"]["quick"]["clean"]}}
    b["evaluations"] = {"custom": {"pgd": b["evaluations"]["quick"]["pgd"]}}
    for r in (a, b):
        write_json(out / "runs" / r["run_id"] / "record.json", r)
    for args in ((), ("--wide",)):
        res = bench_cli("compare", "--out", str(out), "--protocol", "custom", *args)
        assert res.exit_code == 0, res.stderr
        assert not re.search(r"\bnan\b", res.stdout) and re.search(r"\| +90 +\|", res.stdout)


def test_an_evaluation_of_an_earlier_checkpoint_is_marked_by_show_and_compare(
    bench_cli, tmp_path, shapes_data_dir
):
    from conftest import make_tiny_args, only_run

    out = tmp_path / "results"
    args = make_tiny_args(out, shapes_data_dir, steps=4)
    sets = ["--set", "train.checkpoint_every=2", "--set", "train.keep_checkpoints=2"]
    assert bench_cli("run", "--method", "ce", *args, *sets).exit_code == 0
    run_dir, _ = only_run(out)
    early = run_dir / "checkpoints" / "step-00000002.pt"
    for ckpt in (early, run_dir / "checkpoints" / "last.pt"):
        res = bench_cli(
            "eval",
            str(run_dir),
            "--checkpoint",
            str(ckpt),
            "-p",
            "custom",
            "--metrics",
            "clean",
            "-q",
        )
        assert res.exit_code == 0, res.stderr
        if ckpt == early:
            rec = json.loads((run_dir / "record.json").read_text())
            stored = rec["evaluations"]["custom"]["clean"]["checkpoint"]
            assert (stored["step"], stored["file"]) == (2, "checkpoints/step-00000002.pt")
            assert (
                "† of step 2 (checkpoints/step-00000002.pt)"
                in bench_cli("show", str(run_dir)).stdout
            )
            assert "†" in bench_cli("compare", "--out", str(out), "--protocol", "custom").stdout
    # evaluated again from the final weights: the mark goes, as the result is replaced
    assert "†" not in bench_cli("show", str(run_dir)).stdout
    assert "†" not in bench_cli("compare", "--out", str(out), "--wide").stdout
