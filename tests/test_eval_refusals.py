"""`bench eval` refuses an out-of-range option or metric setting in one line, before the model is
loaded and with the record untouched: no false result stored with exit 0 (issue 26, items 2-3)."""

from __future__ import annotations

import json
import shutil

import pytest
from test_bad_input import assert_one_error_line, snapshot

import bench.run.evaluation


@pytest.fixture
def out_with_a_run(tmp_path, complete_run):
    out = tmp_path / "results"
    shutil.copytree(complete_run, out / "runs" / complete_run.name)
    return out


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--batch-size", "-1", "--metrics", "clean"], ["--batch-size must be a positive", "-1"]),
        (["--batch-size", "0", "--metrics", "clean"], ["--batch-size must be a positive", "0"]),
        (["-n", "0"], ["-n/--n-examples must be a positive number of test images, got 0"]),
        (["--set", "pgd.steps=-3"], ["--set pgd.steps=-3 is out of range", "integer >= 1"]),
        (["--set", "pgd.steps=0"], ["--set pgd.steps=0 is out of range"]),
        (["--set", "pgd.n_examples=-3"], ["--set pgd.n_examples=-3 is out of range", "images"]),
        (["--set", "pgd.eps=-0.5"], ["--set pgd.eps=-0.5 is out of range", "pixel units"]),
        (["--set", "pgd.eps=2"], ["--set pgd.eps=2.0 is out of range", "<= 1"]),
        (["--set", "pgd.alpha=0"], ["--set pgd.alpha=0.0 is out of range", "> 0"]),
        (["--set", "pgd.eot=0"], ["--set pgd.eot=0 is out of range"]),
        (["--set", "pgd.restarts=-1"], ["--set pgd.restarts=-1 is out of range"]),
        (["--set", "pgd.norm=L2"], ["--set pgd.norm='L2' is out of range", "autoattack.norm=L2"]),
        (["--set", "pgd.input_noise=0.1"], ["--set pgd.input_noise: test-time noise", "protocol"]),
        (
            ["-p", "custom", "--metrics", "calibration", "--set", "calibration.bins=0"],
            ["--set calibration.bins=0 is out of range"],
        ),
        (
            ["-p", "custom", "--metrics", "energy", "--set", 'energy.attack={"steps": -1}'],
            ["--set energy.attack.steps=-1 is out of range"],
        ),
        (
            ["-p", "custom", "--metrics", "energy", "--set", 'energy.attack={"eot": 4}'],
            ["--set energy.attack: unknown setting 'eot'"],
        ),
        (
            ["-p", "custom", "--metrics", "autoattack", "--set", "autoattack.version=fast"],
            ["--set autoattack.version='fast' is out of range", "standard, rand, plus, custom"],
        ),
        (
            ["-p", "custom", "--metrics", "autoattack", "--set", "autoattack.attacks=apgd,square"],
            ["--set autoattack.attacks=['apgd', 'square'] is out of range", "apgd-ce"],
        ),
        (
            ["-p", "custom", "--metrics", "autoattack", "--set", "autoattack.seed=-1"],
            ["--set autoattack.seed=-1 is out of range"],
        ),
        (
            ["-p", "custom", "--metrics", "kid", "--set", "kid.select_top_ratio=1.5"],
            ["--set kid.select_top_ratio=1.5 is out of range", "<= 1"],
        ),
        (
            ["-p", "custom", "--metrics", "fid", "--set", "fid.real_split=val"],
            ["--set fid.real_split='val' is out of range", "train+test, authors"],
        ),
        (
            ["-p", "custom", "--metrics", "fid", "--set", "fid.n_samples=1"],
            ["--set fid.n_samples=1 is out of range", ">= 2"],
        ),
    ],
)
def test_an_out_of_range_setting_is_one_line_before_the_model_is_loaded(
    args, fragments, bench_cli, out_with_a_run, complete_run, monkeypatch
):
    def no_loading(*a, **k):
        raise AssertionError("the model was loaded for a request that is refused")

    monkeypatch.setattr(bench.run.evaluation, "load_evaluation_model", no_loading)
    before = snapshot(out_with_a_run)
    res = bench_cli(
        "eval", complete_run.name, "--out", str(out_with_a_run), "-q", "-p", "quick", *args
    )
    assert_one_error_line(res, *fragments)
    assert snapshot(out_with_a_run) == before


def test_a_given_batch_size_is_used_and_the_stored_result_is_true(
    bench_cli, out_with_a_run, complete_run
):
    """The request the refusals guard still runs: --batch-size 7 evaluates every one of the -n
    images (the accuracy is the one of the default batch size) and stores it under ``clean``."""
    record = out_with_a_run / "runs" / complete_run.name / "record.json"
    base = ["eval", complete_run.name, "--out", str(out_with_a_run), "-q", "-p", "quick"]
    first = bench_cli(*base, "--metrics", "clean", "-n", "20")
    assert first.exit_code == 0, first.stderr
    stored = json.loads(record.read_text())["evaluations"]["quick"]["clean"]
    res = bench_cli(*base, "--metrics", "clean", "-n", "20", "--batch-size", "7")
    assert res.exit_code == 0, res.stderr
    again = json.loads(record.read_text())["evaluations"]["quick"]["clean"]
    assert again["n_examples"] == 20 and again["accuracy"] == stored["accuracy"]
