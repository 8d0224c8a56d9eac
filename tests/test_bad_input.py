"""Bad input: one clear line on stderr ("error: ..."), a non-zero exit, nothing lost or overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, make_tiny_args, only_run, subprocess_env

from methods import METHODS, register_method


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(res, *fragments, code=2):
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.error_lines) == 1, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    # only the "run <id>: ..." banner may come before the error, nothing after it
    assert lines[-1] == res.error_lines[0] and all(
        line.startswith("run ") for line in lines[:-1]
    ), res.stderr
    for f in fragments:
        assert f in res.error_lines[0], (f, res.error_lines[0])


@pytest.fixture
def out_with_a_run(tmp_path, complete_run):
    """A results root that already holds a complete run (must survive every failure untouched)."""
    out = tmp_path / "results"
    shutil.copytree(complete_run, out / "runs" / complete_run.name)
    return out


# -- unknown names and bad settings: caught before anything is written ---------------------------------------
@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--method", "nope"], ["unknown method 'nope'; choose one of:", "ce", "pgd-at"]),
        (
            ["--method", "ce", "--dataset", "cifar11"],
            ["unknown dataset 'cifar11'; choose one of:", "shapes10", "npz:PATH"],
        ),
        (
            ["--method", "ce", "--arch", "resnet9"],
            ["unknown architecture 'resnet9'; choose one of:", "resnet8", "wrn-D-W"],
        ),
        (["--method", "ce", "--arch", "wrn-27-10"], ["wrn-27-10: depth must be 6n+4"]),
        (
            ["--method", "ce", "--preset", "turbo"],
            ["unknown preset 'turbo'; choose one of:", "smoke", "cpu", "paper"],
        ),
        (
            ["--method", "ce", "--set", "optim.lr"],
            ["malformed --set 'optim.lr'", "section.key=value"],
        ),
        (["--method", "ce", "--set", "optim.lr=[0.1"], ["malformed"]),
        (
            ["--method", "ce", "--set", "optim.learning_rate=0.1"],
            ["unknown setting 'optim.learning_rate'", "lr"],
        ),
        (["--method", "ce", "--set", "optim.lr=fast"], ["optim.lr expects a number, got 'fast'"]),
        (
            ["--method", "ce", "--set", "train.max_steps=ten"],
            ["train.max_steps expects an integer"],
        ),
        (["--method", "pgd-at", "--set", "method.stepz=3"], ["unknown setting 'stepz'", "steps"]),
        (
            ["--method", "ce", "--set", "data.train_subset=20"],
            ["data.batch_size=32", "exceeds the 20 training images", "--set data.batch_size=N"],
        ),
        (
            ["--method", "ce", "--config", "/nonexistent/run.yaml"],
            ["config file '/nonexistent/run.yaml' not found"],
        ),
        (
            ["--method", "ce", "--dataset", "npz:/nonexistent/data.npz"],
            ["npz dataset '/nonexistent/data.npz' not found"],
        ),
        (
            ["--method", "ce", "--dataset", "cifar10", "--set", "data.download=false"],
            ["cifar10 not found in", "cifar-10-python.tar.gz", "--data-dir"],
        ),
        (["--method", "ce", "--set", "optim.sam_rho=-1"], ["optim.sam_rho must be >= 0"]),
        (["--method", "ce", "--set", "optim.sam_adaptive=maybe"], ["optim.sam_adaptive", "maybe"]),
        (["--method", "ce", "--set", "train.fast=sometimes"], ["train.fast expects true/false"]),
        (["--method", "ce", "--set", "train.compile=turbo"], ["train.compile", "turbo"]),
        (
            ["--method", "ebjdat-sada-jem", "--set", "method.px_augment=twice"],
            ["method.px_augment='twice' is not valid"],
        ),
        (
            ["--method", "ebjdat-sada-jem", "--set", "method.px_batch_size=-4"],
            ["method.px_batch_size must be >= 0"],
        ),
        (
            ["--method", "ce", "--set", "optim.lr=.nan"],
            ["optim.lr expects a finite number, got nan"],
        ),
        (
            ["--method", "ce", "--set", "data.batch_size=.nan"],
            ["data.batch_size expects an integer, got nan"],
        ),
        (
            ["--method", "ce", "--set", "data.batch_size=.inf"],
            ["data.batch_size expects an integer, got inf"],
        ),
        (
            ["--method", "ce", "--set", "train.epochs=.nan"],
            ["train.epochs expects a finite number, got nan"],
        ),
        (
            ["--method", "ce", "--set", "train.epochs=.inf"],
            ["train.epochs expects a finite number, got inf"],
        ),
        (
            ["--method", "ce", "--set", "train.eval_examples=0"],
            ["train.eval_examples must be positive, got 0"],
        ),
        (
            ["--method", "ce", "--set", "model.dropout=2"],
            ["model.dropout is a probability", "[0, 1)"],
        ),
        (
            ["--method", "ce", "--set", "train.divergence_bound=-1"],
            ["train.divergence_bound must be positive"],
        ),
        (
            ["--method", "ebjdat", "--set", "method.eps=.nan"],
            ["eps expects a finite number, got nan"],
        ),
        (["--checkpoint", "x.pt", "--method", "ce"], ["--checkpoint only goes with --resume"]),
        ([], ["missing --method", "bench list methods"]),
    ],
)
def test_bad_run_input(extra, fragments, bench_cli, out_with_a_run, shapes_data_dir):
    before = snapshot(out_with_a_run)
    args = make_tiny_args(out_with_a_run, shapes_data_dir, steps=1)
    if "--data-dir" in extra or "cifar10" in extra:
        args[args.index("--data-dir") + 1] = str(out_with_a_run.parent / "no-cifar-here")
    res = bench_cli("run", *args, *extra)  # after the tiny settings: the later option wins
    assert_one_error_line(res, *fragments)
    assert snapshot(out_with_a_run) == before  # no new run directory, nothing changed


def test_bad_npz_file_is_rejected_before_a_run_starts(
    bench_cli, tmp_path, out_with_a_run, shapes_data_dir
):
    import numpy as np

    bad = tmp_path / "floats.npz"
    np.savez(bad, x=np.zeros((40, 32, 32, 3), np.float32), y=np.zeros(40, np.int64))
    before = snapshot(out_with_a_run)
    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--dataset",
        f"npz:{bad}",
        *make_tiny_args(out_with_a_run, shapes_data_dir),
    )
    assert_one_error_line(res, "'x' must be uint8 of shape (N, H, W, 3)")
    assert snapshot(out_with_a_run) == before


def _npz(path, n=60, size=16, labels=None, **extra):
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.arange(n) % 2 if labels is None else labels
    np.savez(
        path,
        x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        y=np.asarray(y, np.int64),
        **extra,
    )
    return path


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda p: _npz(p, n=0, labels=[]), ["holds no images (array 'x' is empty)"]),
        (lambda p: _npz(p, labels=[0] * 60), ["has 1 class; a classifier needs at least 2"]),
        (
            lambda p: _npz(p, classes=__import__("numpy").array(["cat", "dog", "emu"])),
            ["class 'emu' has no training images", "drop them from 'classes' or add images"],
        ),
        (
            lambda p: _npz(p, size=4),
            ["needs images larger than 4 pixels; these are 4x4", "--set data.pad_mode=zeros"],
        ),
    ],
)
def test_unusable_npz_data_is_refused_before_a_run_starts(
    make, fragments, bench_cli, tmp_path, out_with_a_run, shapes_data_dir
):
    bad = make(tmp_path / "bad.npz")
    before = snapshot(out_with_a_run)
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *make_tiny_args(out_with_a_run, shapes_data_dir),
        "--dataset",
        f"npz:{bad}",
        "--set",
        "data.batch_size=8",
        "--set",
        "data.train_subset=0",
    )
    assert_one_error_line(res, *fragments)
    assert snapshot(out_with_a_run) == before


@pytest.mark.parametrize(
    "sets, fragments",
    [
        (
            ["pgd.stepz=1"],
            [
                "--set pgd.stepz: unknown setting 'stepz' of metric pgd",
                "alpha, eot, eps, input_noise",
                "restarts, steps",
            ],
        ),
        (["pgdd.steps=1"], ["unknown metric 'pgdd'"]),
        (["pgd.eot=x"], ["--set pgd.eot expects an integer, got 'x'"]),
        (["pgd.eps=.nan"], ["--set pgd.eps expects a number, got '.nan'"]),
        (
            ["autoattack.eps=0.1"],
            [
                "metric 'autoattack' is not evaluated here (this evaluation runs clean, pgd)",
                "--metrics autoattack",
            ],
        ),
    ],
)
def test_eval_settings_that_would_not_act_are_refused(
    sets, fragments, bench_cli, out_with_a_run, complete_run
):
    before = snapshot(out_with_a_run)
    args = ["eval", complete_run.name, "--out", str(out_with_a_run), "-q", "--protocol", "quick"]
    for item in sets:
        args += ["--set", item]
    assert_one_error_line(bench_cli(*args), *fragments)
    assert snapshot(out_with_a_run) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(bench_cli, out_with_a_run, shapes_data_dir):
    before = snapshot(out_with_a_run)
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *make_tiny_args(out_with_a_run, shapes_data_dir),
        "--device",
        "cuda",
    )
    assert_one_error_line(res, "no CUDA device is available", "--device cpu")
    assert snapshot(out_with_a_run) == before


def test_unwritable_out_directory(bench_cli, tmp_path, shapes_data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = bench_cli("run", "--method", "ce", *make_tiny_args(blocker / "sub", shapes_data_dir))
    assert_one_error_line(res, "cannot write to the results directory", "--out")
    assert blocker.read_text() == "not a directory"


# -- resume errors -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, shapes_data_dir):
    """A real interrupted run: its method presses Ctrl-C (SIGINT to this process) during step 3."""
    from conftest import _run_main

    from methods.ce import CrossEntropy

    @register_method("test-ctrl-c")
    class CtrlC(CrossEntropy):
        def training_step(self, model, x, y, ctx):
            if ctx.step == 2:
                signal.raise_signal(signal.SIGINT)
            return super().training_step(model, x, y, ctx)

    out = tmp_path_factory.mktemp("interrupted") / "results"
    res = _run_main(
        [
            "run",
            "--method",
            "test-ctrl-c",
            *make_tiny_args(out, shapes_data_dir, steps=6),
            "--set",
            "eval.enabled=false",
        ]
    )
    assert res.exit_code == 130, res.stderr
    run_dir, rec = only_run(out)
    assert rec["status"] == "interrupted" and rec["training"]["steps_done"] == 3
    yield run_dir
    METHODS.unregister("test-ctrl-c")


@pytest.fixture
def resumable(interrupted_run, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(interrupted_run, out / "runs" / interrupted_run.name)
    return out, out / "runs" / interrupted_run.name


def test_interrupted_run_resumes(bench_cli, resumable):
    """The fixture's run is resumable (so the failures below are about the damage, not the run)."""
    out, run_dir = resumable
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "-q")
    assert res.exit_code == 0, res.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "complete" and rec["training"]["steps_done"] == 6


def test_corrupt_checkpoint_on_resume(bench_cli, resumable):
    out, run_dir = resumable
    last = run_dir / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = snapshot(out)
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out))
    assert_one_error_line(res, f"checkpoint {last} is corrupt", "--checkpoint")
    assert snapshot(out) == before  # the record and the (damaged) checkpoint are left as they were
    # the periodic checkpoint the message points at still works
    (periodic,) = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1:]
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(out), "--checkpoint", str(periodic), "-q"
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads((run_dir / "record.json").read_text())["status"] == "complete"


def test_checkpoint_from_another_config(bench_cli, resumable, complete_run):
    out, run_dir = resumable
    before = snapshot(out)
    other = complete_run / "checkpoints" / "last.pt"
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "--checkpoint", str(other))
    assert_one_error_line(
        res, "belongs to a different configuration", "resume it with the run it came from"
    )
    assert snapshot(out) == before
    # the same when the foreign file sits in the run's own checkpoint folder
    shutil.copy(other, run_dir / "checkpoints" / "last.pt")
    before = snapshot(out)
    res = bench_cli("run", "--resume", str(run_dir))
    assert_one_error_line(res, "belongs to a different configuration")
    assert snapshot(out) == before


def test_missing_checkpoint_and_unknown_run(bench_cli, resumable):
    out, run_dir = resumable
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(out), "--checkpoint", str(out / "nope.pt")
    )
    assert_one_error_line(res, "is missing")
    res = bench_cli("run", "--resume", "20990101-000000-ce-x-000000", "--out", str(out))
    assert_one_error_line(res, "run '20990101-000000-ce-x-000000' not found", run_dir.name)
    res = bench_cli("show", "20990101-000000-ce-x-000000", "--out", str(out))
    assert_one_error_line(res, "run '20990101-000000-ce-x-000000' not found")
    gone = out / "elsewhere" / "20990101-000000-ce-x-000000"  # a path: named, not "under runs/"
    res = bench_cli("show", str(gone), "--out", str(out))
    assert_one_error_line(res, f"run directory {gone} not found (no record.json in it)")
    assert "not found under" not in res.stderr
    res = bench_cli(
        "run", "--resume", run_dir.name, "--out", str(out), "--method", "ce", "--seed", "1"
    )
    assert_one_error_line(
        res, "--resume continues a run with its saved config; drop --method, --seed"
    )
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "--preset", "cpu")
    assert_one_error_line(res, "--resume continues a run with its saved config; drop --preset")
    res = bench_cli("run", "--resume", run_dir.name, "--out", str(out), "--dry-run")
    assert_one_error_line(res, "--dry-run shows a new run's plan; drop it with --resume")


def test_resume_of_a_complete_run(bench_cli, out_with_a_run, complete_run):
    before = snapshot(out_with_a_run)
    res = bench_cli("run", "--resume", complete_run.name, "--out", str(out_with_a_run))
    assert_one_error_line(res, f"run {complete_run.name} is already complete", "start a new run")
    assert snapshot(out_with_a_run) == before


def test_unreadable_record(bench_cli, out_with_a_run, complete_run):
    rec = out_with_a_run / "runs" / complete_run.name / "record.json"
    rec.write_text("{ half a record")
    res = bench_cli("show", complete_run.name, "--out", str(out_with_a_run))
    assert_one_error_line(res, "is unreadable")
    # one corrupt record does not fail the whole table: it is skipped with a warning naming its file
    shutil.copytree(complete_run, out_with_a_run / "runs" / "a-good-copy")
    res = bench_cli("compare", "--out", str(out_with_a_run), "--format", "csv")
    assert (
        res.exit_code == 0
        and complete_run.name in res.stdout
        and len(res.stdout.strip().splitlines()) == 2
    )
    assert (
        res.stderr.strip()
        == f"warning: skipped {rec}: record {rec} is unreadable (JSONDecodeError); "
        "it may have been edited by hand"
    )
    assert rec.read_text() == "{ half a record"


# -- concurrency -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", ["0", "-5"])
def test_eval_with_no_test_images_is_refused_and_keeps_the_stored_result(
    bench_cli, out_with_a_run, complete_run, n
):
    before = snapshot(out_with_a_run)
    res = bench_cli(
        "eval",
        complete_run.name,
        "--out",
        str(out_with_a_run),
        "--protocol",
        "quick",
        "-n",
        n,
        "-q",
    )
    assert_one_error_line(res, f"-n/--n-examples must be a positive number of test images, got {n}")
    assert snapshot(out_with_a_run) == before


@pytest.mark.slow
def test_concurrent_runs_into_one_results_root(tmp_path, shapes_data_dir, out_with_a_run):
    out = out_with_a_run
    before = snapshot(out)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench",
                "run",
                "--method",
                m,
                *make_tiny_args(out, shapes_data_dir, steps=3, seed=s),
                "--set",
                "eval.enabled=false",
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m, s in (("ce", 0), ("ce", 0))
    ]  # the same method and seed: the same second, the same name stem
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for _stdout, stderr, code in results:
        assert code == 0, stderr
    dirs = [Path(r[0].strip().splitlines()[-1].removeprefix("record: ")).parent for r in results]
    assert dirs[0] != dirs[1]
    for d in dirs:
        rec = json.loads((d / "record.json").read_text())
        assert (
            rec["run_id"] == d.name
            and rec["status"] == "complete"
            and rec["training"]["steps_done"] == 3
        )
        assert (d / "checkpoints" / "last.pt").is_file()
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # the earlier run is untouched
    assert len({k.split("/")[1] for k in after}) == 3


def test_a_record_without_config_gives_one_line(bench_cli, out_with_a_run, complete_run):
    rec_path = out_with_a_run / "runs" / complete_run.name / "record.json"
    rec = json.loads(rec_path.read_text())
    del rec["config"]
    rec["status"] = "interrupted"
    rec_path.write_text(json.dumps(rec))
    before = snapshot(out_with_a_run)
    for args in (["run", "--resume", complete_run.name], ["eval", complete_run.name, "-n", "8"]):
        res = bench_cli(*args, "--out", str(out_with_a_run), "-q")
        assert_one_error_line(res, "holds no config", "start a new run")
    shown = bench_cli("show", complete_run.name, "--out", str(out_with_a_run))
    assert shown.exit_code == 0 and complete_run.name in shown.stdout
    assert snapshot(out_with_a_run) == before


def test_dry_run_prints_the_config_with_its_sources_and_the_plan_and_writes_nothing(
    bench_cli, tmp_path, shapes_data_dir
):
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "pgd-at",
        *make_tiny_args(out, shapes_data_dir, steps=6),
        "--set",
        "optim.lr=0.02",
        "--dry-run",
    )
    assert res.exit_code == 0, res.stderr
    lines = {line.split(" = ")[0]: line for line in res.stdout.splitlines() if " = " in line}
    assert lines["optim.lr"].split() == ["optim.lr", "=", "0.02", "[--set/flags]"]
    assert lines["data.train_subset"].endswith("[--set/flags]") and lines[
        "optim.momentum"
    ].endswith("[method]")
    assert lines["data.pad_mode"].endswith("[default]")
    assert lines["method.steps"].endswith(
        "[preset smoke of pgd-at]"
    )  # the method's own smoke variant
    assert lines["model.arch"].endswith("[preset smoke]") and lines["method"].endswith("[--method]")
    assert "plan: 6 steps (1.5 epochs of 4 steps: 128 training images, batch 32)" in res.stdout
    assert not out.exists()
    res = bench_cli(
        "run",
        "--method",
        "pgd-at",
        *make_tiny_args(out, shapes_data_dir),
        "--dataset",
        f"npz:{tmp_path / 'none.npz'}",
        "--dry-run",
    )
    assert res.exit_code == 0 and "plan: steps unknown: npz dataset" in res.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_the_default_paper_preset_on_a_cpu_is_refused_in_one_line(bench_cli, tmp_path):
    res = bench_cli("run", "--method", "ce", "--out", str(tmp_path / "results"))
    assert_one_error_line(
        res,
        "the default preset 'paper' trains wrn-28-10",
        "GPU-days",
        "--preset cpu",
        "pass --preset paper to run it anyway",
    )
    assert not (tmp_path / "results").exists()
