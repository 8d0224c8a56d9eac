"""The run record: one writer, a schema version, records of older versions still load."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import only_run

from bench.core.record_reading import SCHEMA, load_record
from bench.core.records import RunRecord

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "schema1"


@pytest.fixture
def old_results(tmp_path):
    """Records written by the version before schema 2 (commit 506b067: two 3-step smoke runs)."""
    shutil.copytree(FIXTURES, tmp_path / "old")
    return tmp_path / "old"


def test_schema1_records_load_and_upgrade_in_memory(old_results):
    for run_dir in (old_results / "runs").iterdir():
        on_disk = json.loads((run_dir / "record.json").read_text())
        assert on_disk["schema"] == 1 and "changes" not in on_disk
        rec = load_record(run_dir)
        assert rec["schema"] == SCHEMA and rec["changes"] is None  # unknown, worked out by compare
        assert (
            json.loads((run_dir / "record.json").read_text()) == on_disk
        )  # loading never rewrites


def test_schema1_records_in_compare_and_show(old_results, bench_cli):
    res = bench_cli("compare", "--out", str(old_results), "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = {line.split(",")[0]: line for line in res.stdout.splitlines()[1:] if line}
    header = res.stdout.splitlines()[0].split(",")
    pgd = [r for r in rows if "pgd-at" in r][0]
    fields = dict(zip(header, rows[pgd].split(",")))
    assert "optim.lr=0.02" in fields["changes"] and fields["quick/clean n"] == "20"
    for run in rows:
        shown = bench_cli("show", run, "--out", str(old_results))
        assert (
            shown.exit_code == 0 and "eval [quick]" in shown.stdout and "accuracy" in shown.stdout
        )


def test_new_records_store_their_changes_and_compare_reads_them(
    tmp_path, bench_cli, tiny_args, shapes_data_dir, monkeypatch
):
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir, steps=2),
        "--set",
        "optim.lr=0.03",
        "--set",
        "eval.enabled=false",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(out)
    assert (
        rec["schema"] == SCHEMA
        and rec["changes"]["optim.lr"] == 0.03
        and rec["changes"]["train.max_steps"] == 2
    )
    assert not any(k in rec["changes"] for k in ("seed", "device", "data.data_dir"))
    assert rec["preset_variant"] == {}  # ce has no variant of the presets of its own
    # where each value came from, as --dry-run prints it; defaults are not listed
    assert rec["sources"]["optim.lr"] == "--set/flags" and rec["sources"]["method"] == "--method"
    assert rec["sources"]["optim.schedule"] == "method" and "model.dropout" not in rec["sources"]

    import bench.run.resolve

    def no_resolving(*a, **k):
        raise AssertionError("compare re-resolved a record that stores its changes")

    monkeypatch.setattr(bench.run.resolve, "changes_of", no_resolving)
    monkeypatch.setattr(bench.run.resolve, "variant_of", no_resolving)
    table = bench_cli("compare", "--out", str(out), "--format", "csv")
    assert table.exit_code == 0 and "optim.lr=0.03" in table.stdout


def test_a_stale_copy_never_drops_evaluations_another_process_saved(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = RunRecord(
        run_dir,
        {
            "run_id": "r",
            "status": "running",
            "training": {},
            "timings": {},
            "evaluations": {},
            "artifacts": {},
        },
    )
    trainer.save()
    evaluator = RunRecord.load(run_dir)  # e.g. `bench eval` in another process
    evaluator.merge_evaluation(
        "standard",
        {
            "autoattack": {
                "accuracy": 0.4,
                "n_examples": 10,
                "seconds": 2.0,
                "evaluated_at": "2026-11-30T10:00:00+0000",
            }
        },
    )
    trainer.update_training(steps_done=5)  # the trainer's copy never saw that result
    rec = load_record(run_dir)
    assert (
        rec["training"]["steps_done"] == 5
        and rec["evaluations"]["standard"]["autoattack"]["accuracy"] == 0.4
    )
    # of two results of one metric, the later one is kept whichever copy saves last
    trainer.merge_evaluation(
        "standard",
        {
            "autoattack": {
                "accuracy": 0.3,
                "n_examples": 10,
                "evaluated_at": "2026-11-30T09:00:00+0000",
            }
        },
    )
    assert load_record(run_dir)["evaluations"]["standard"]["autoattack"]["accuracy"] == 0.4
    evaluator = RunRecord.load(run_dir)
    evaluator.merge_evaluation(
        "standard",
        {
            "autoattack": {
                "accuracy": 0.5,
                "n_examples": 10,
                "evaluated_at": "2026-11-30T11:00:00+0000",
            }
        },
    )
    assert load_record(run_dir)["evaluations"]["standard"]["autoattack"]["accuracy"] == 0.5


def test_a_stale_copy_keeps_the_artifacts_skips_and_time_of_an_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = RunRecord(
        run_dir,
        {
            "run_id": "r",
            "status": "running",
            "training": {},
            "timings": {"train_seconds": 1.0},
            "evaluations": {},
            "artifacts": {"checkpoint": "checkpoints/last.pt"},
        },
    )
    trainer.save()
    provider = {"package": "tb-metric-pkg", "version": "0.1", "module": "tb_metric_pkg"}
    RunRecord.update(
        run_dir,
        lambda rec: rec.merge_evaluation(
            "standard",
            {
                "energy": {
                    "gap_adv": 0.1,
                    "n_examples": 8,
                    "seconds": 3.0,
                    "evaluated_at": "2026-11-30T10:00:00+0000",
                    "artifacts": {"histogram": "figures/energy.png"},
                },
                "noise-acc": {
                    "accuracy": 0.5,
                    "n_examples": 8,
                    "evaluated_at": "2026-11-30T10:00:00+0000",
                    "provider": provider,
                },
            },
            skipped={"fid": "no weights"},
            save=False,
        ),
    )
    trainer.update_training(steps_done=7, train_seconds=2.0)
    rec = load_record(run_dir)
    assert rec["artifacts"] == {
        "checkpoint": "checkpoints/last.pt",
        "standard/energy/histogram": "figures/energy.png",
    }
    assert rec["evaluation_skipped"] == {"standard": {"fid": "no weights"}}
    assert (
        rec["timings"] == {"train_seconds": 2.0, "eval_seconds": 3.0}
        and rec["training"]["steps_done"] == 7
    )
    # the plugin that produced a kept result stays listed with it
    assert rec["environment"]["plugins"] == [{"kind": "metric", "name": "noise-acc", **provider}]


def test_a_record_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    from bench.core.errors import BenchError

    (tmp_path / "record.json").write_text(json.dumps({"run_id": "r", "schema": SCHEMA + 1}))
    with pytest.raises(BenchError, match="newer than this trilemma-bench reads") as exc:
        load_record(tmp_path)
    assert "\n" not in str(exc.value)


@pytest.mark.slow
def test_bench_eval_while_the_run_trains_keeps_both(tmp_path, shapes_data_dir):
    """`bench eval` in one process while `bench run` trains in another: the trainer's later record
    writes keep the evaluation, and the evaluation does not put back stale training state."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT, run_subprocess, subprocess_env

    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--data-dir",
        str(shapes_data_dir),
        "-q",
        "--set",
        "train.max_steps=100000",
        "--set",
        "train.checkpoint_every=4",
        "--set",
        "eval.enabled=false",
        "--set",
        "data.batch_size=16",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not list(out.glob("runs/*/checkpoints/last.pt")) and time.time() < deadline:
            time.sleep(0.1)
        (run_dir,) = (out / "runs").iterdir()
        res = run_subprocess(
            "eval",
            run_dir.name,
            "--out",
            out,
            "--protocol",
            "quick",
            "--metrics",
            "clean",
            "-n",
            "16",
            "-q",
        )
        assert res.exit_code == 0, res.stderr
        assert proc.poll() is None, "training ended before the evaluation"
        # let the trainer write its record again after the evaluation merged (a checkpoint every 4 steps)
        seen = load_record(run_dir)["training"]["steps_done"]
        while (
            load_record(run_dir)["training"]["steps_done"] <= seen + 8
            and time.time() < deadline + 60
        ):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    rec = load_record(run_dir)
    assert rec["status"] == "interrupted" and rec["training"]["steps_done"] > seen + 8
    assert rec["evaluations"]["quick"]["clean"]["n_examples"] == 16


def test_a_running_record_whose_process_is_gone_reads_as_interrupted(
    tmp_path, bench_cli, complete_run
):
    import os
    import socket
    import subprocess
    import sys

    from bench.core.run_dirs import live_status

    results = tmp_path / "results"
    run_dir = results / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    rec = json.loads((run_dir / "record.json").read_text())
    rec["status"] = "running"
    (run_dir / "record.json").write_text(json.dumps(rec))
    host = socket.gethostname()
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout
    )

    assert live_status(run_dir, rec) == "interrupted"  # no .lock: nobody trains it
    (run_dir / ".lock").write_text(f"{host} {os.getpid()}")
    assert live_status(run_dir, rec) == "running"  # its owner lives
    (run_dir / ".lock").write_text(f"elsewhere {dead}")
    assert live_status(run_dir, rec) == "running"  # another host: cannot tell
    (run_dir / ".lock").write_text(f"{host} {dead}")
    assert live_status(run_dir, rec) == "interrupted"
    assert live_status(run_dir, {**rec, "status": "complete"}) == "complete"

    table = bench_cli("compare", "--out", str(results), "--format", "csv")
    header, row = table.stdout.splitlines()[:2]
    assert dict(zip(header.split(","), row.split(",")))["status"] == "interrupted"
    shown = bench_cli("show", complete_run.name, "--out", str(results))
    assert (
        f"(interrupted: its process is gone; continue with bench run --resume {complete_run.name})"
        in shown.stdout
    )
    assert (
        json.loads((run_dir / "record.json").read_text())["status"] == "running"
    )  # reading changes nothing


@pytest.mark.parametrize(
    "key",
    [
        "<img src=x onerror=alert(1)>",
        'pgd"',
        "pgd'",
        "a&b",
        "pgd`",
        "x\x1b[31m",
        "x\ny",
        " pgd",
        "",
        "p" * 501,
    ],
)
@pytest.mark.parametrize("where", ["protocol", "metric", "skipped protocol", "skipped metric"])
def test_a_protocol_or_metric_key_that_is_not_a_plain_name_makes_the_record_unreadable(
    tmp_path, bench_cli, key, where
):
    """Keys reach the report and the terminal as names: such a record is skipped with one warning
    naming its file (as any unreadable record is), and never rendered."""
    from bench.core.errors import BenchError
    from bench.core.io import write_json

    out = tmp_path / "results"
    good = {"clean": {"accuracy": 0.5, "n_examples": 10}}
    names = {
        "protocol": {"evaluations": {key: good}},
        "metric": {"evaluations": {"standard": {key: good["clean"]}}},
        "skipped protocol": {"evaluations": {}, "evaluation_skipped": {key: {"fid": "no data"}}},
        "skipped metric": {"evaluations": {}, "evaluation_skipped": {"standard": {key: "why"}}},
    }[where]
    for run_id, extra in (("r1-bad", names), ("r2-good", {"evaluations": {"standard": good}})):
        rec = {"run_id": run_id, "schema": SCHEMA, "method": "ce", "status": "complete", **extra}
        write_json(out / "runs" / run_id / "record.json", rec)
    with pytest.raises(BenchError, match="is not a plain name") as exc:
        load_record(out / "runs" / "r1-bad")
    assert "\n" not in str(exc.value) and "\x1b" not in str(exc.value)
    assert load_record(out / "runs" / "r2-good")["run_id"] == "r2-good"
    res = bench_cli("compare", "--out", out, "--format", "csv")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "r1-bad" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped"), res.stderr
    assert "r1-bad" not in res.stdout and "r2-good" in res.stdout


def test_plain_names_still_load(tmp_path):
    """What the engine stores (a metric under changed settings) and plugin names are plain names."""
    from bench.core.io import write_json

    keys = ["pgd", "pgd[steps=50]", "autoattack[attacks=apgd-ce+apgd-t,eps=0.03137]", "é-noise"]
    keys += [f"fid[cache_dir=/a b/{'c' * 400}]"]  # a long path with a space, as --set may give
    rec = {"run_id": "r", "evaluations": {"my.proto-2": {k: {"accuracy": 1} for k in keys}}}
    write_json(tmp_path / "record.json", rec)
    assert list(load_record(tmp_path)["evaluations"]["my.proto-2"]) == keys


def test_a_key_that_is_not_a_plain_name_is_never_stored(tmp_path):
    """The writer refuses what the reader would refuse, so no evaluation makes a record unreadable."""
    from bench.core.errors import BenchError

    rec = RunRecord(tmp_path, {"run_id": "r", "evaluations": {}})
    rec.save()
    before = (tmp_path / "record.json").read_text()
    res = {"accuracy": 0.5, "n_examples": 10}
    for protocol, results, skipped in (
        ("quick", {"fid[weights=/o'brien/w.pth]": res}, None),
        ("<b>", {"clean": res}, None),
        ("quick", {"clean": res}, {"kid\n": "why"}),
    ):
        with pytest.raises(
            BenchError, match="cannot store in run r: the key .* is not a plain name"
        ):
            rec.merge_evaluation(protocol, results, skipped)
    assert (tmp_path / "record.json").read_text() == before and rec.data["evaluations"] == {}


def _kill_during_first_record_write(out):
    """A process that creates a run directory and is killed -9 while writing its first record."""
    import signal
    import subprocess
    import sys

    from conftest import REPO_ROOT, subprocess_env

    script = (
        "import os, time; from bench.core.records import RunRecord\nfrom bench.core.run_dirs import new_run_dir\n"
        f"run_id, run_dir = new_run_dir({str(out)!r}, 'ce', 'shapes10')\n"
        "def stall(fd):\n    print(run_dir, flush=True); time.sleep(120)\n"
        "os.fsync = stall  # the temporary file exists, the rename has not happened\n"
        "RunRecord(run_dir, {'run_id': run_id}).save()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
    try:
        run_dir = __import__("pathlib").Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    left = [p.name for p in run_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(".record.json.") and left[0].endswith(".tmp")
    return run_dir


def test_a_kill_during_the_first_record_write_leaves_nothing_behind(tmp_path, bench_cli, capsys):
    """kill -9 while the first record.json is written left ``runs/<id>/`` holding only a ``.tmp``:
    invisible to every command and never cleaned. The next listing removes it with a note, and so
    does the next new run; a directory whose first write is under way (its lock held) stays."""
    from bench.core.run_dirs import dir_lock, list_runs, new_run_dir

    out = tmp_path / "results"
    orphan = _kill_during_first_record_write(out)
    res = bench_cli("compare", "--out", out)
    assert f"note: removed {orphan}" in res.stderr and not orphan.exists()

    orphan = _kill_during_first_record_write(out)
    run_id, fresh = new_run_dir(out, "ce", "shapes10")
    assert not orphan.exists() and fresh.is_dir()
    assert f"note: removed {orphan}" in capsys.readouterr().err

    busy = out / "runs" / "being-written"
    busy.mkdir()
    (busy / ".record.json.abc.tmp").write_text("{")
    with dir_lock(busy):
        assert list_runs(out) == [] and (busy / ".record.json.abc.tmp").is_file()
    (fresh / "notes.txt").write_text("not a record write")  # not only a .tmp: not ours to judge
    list_runs(out)
    assert fresh.is_dir() and not busy.exists()
