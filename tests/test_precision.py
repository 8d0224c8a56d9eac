"""Precision flags set explicitly and recorded: TF32 and cuDNN autotuning while training
(``train.tf32``, the fast path, ``train.deterministic``) and while evaluating (``eval.tf32``, off by
default), each run recording its training flags and each result the flags it was computed under.

TF32 acts on CUDA GPUs only, but the flags are torch's global settings on any build, so what is
set, when, and what is recorded is checked here on the CPU.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import only_run

from bench.core.device import current_precision, evaluation_precision, precision, training_precision

FP32 = {"tf32_matmul": False, "tf32_cudnn": False, "cudnn_benchmark": False, "deterministic": False}
PROBE = "test-precision-probe"


def _flags_probe(model, data, settings, ctx) -> dict:
    """The flags torch holds while a metric runs (the results' own ``precision`` is recorded by the
    evaluation layer; this says what the metric actually ran under)."""
    return {"n_examples": 1, **{f"seen_{k}": v for k, v in current_precision().items()}}


@pytest.fixture
def probe():
    from metrics import METRICS, register_metric
    from metrics.protocols import PROTOCOLS, Protocol, register_protocol

    register_metric(PROBE, _flags_probe)
    register_protocol(
        Protocol(
            name=PROBE,
            description="clean and the flags it ran under",
            metrics={"clean": {}, PROBE: {}},
        )
    )
    try:
        yield PROBE
    finally:
        METRICS.unregister(PROBE)
        PROTOCOLS.unregister(PROBE)


@pytest.fixture
def training_flags(monkeypatch):
    """The flags torch holds during each training step of a run (observed, the step runs as usual)."""
    from methods import get_method

    seen: list[dict] = []
    cls = get_method("ce")
    step = cls.training_step

    def observed(self, *a, **k):
        seen.append(current_precision())
        return step(self, *a, **k)

    monkeypatch.setattr(cls, "training_step", observed)
    return seen


def _seen(result: dict) -> dict:
    return {k[len("seen_") :]: v for k, v in result.items() if k.startswith("seen_")}


@pytest.mark.parametrize(
    "settings, training, evaluation",
    [
        # the fast path: TF32 and autotuning while training; evaluation in full fp32
        (
            (),
            {
                "tf32_matmul": True,
                "tf32_cudnn": True,
                "cudnn_benchmark": True,
                "deterministic": False,
            },
            FP32,
        ),
        # the plain path is full fp32 whatever train.tf32 says; eval.tf32 opts the evaluation in
        (
            ("train.fast=false", "eval.tf32=true"),
            FP32,
            {**FP32, "tf32_matmul": True, "tf32_cudnn": True},
        ),
    ],
)
def test_runs_set_and_record_their_flags(
    settings,
    training,
    evaluation,
    bench_cli,
    tiny_args,
    shapes_data_dir,
    tmp_path,
    probe,
    training_flags,
):
    before = current_precision()
    out = tmp_path / "results"
    sets = [a for s in settings for a in ("--set", s)]
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir, steps=2),
        *sets,
        "--set",
        f"eval.protocol={probe}",
        "--set",
        "eval.n_examples=8",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(out)
    assert rec["environment"]["precision"] == training
    assert training_flags and all(
        f == training for f in training_flags
    )  # what was recorded is what ran
    results = rec["evaluations"][PROBE]
    assert results["clean"]["precision"] == results[PROBE]["precision"] == evaluation
    assert _seen(results[PROBE]) == evaluation
    assert current_precision() == before  # put back after training and after the evaluation


def test_bench_eval_uses_the_runs_eval_tf32_or_the_flag(bench_cli, complete_run, tmp_path):
    out = tmp_path / "results"
    run_dir = out / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["config"]["eval"]["tf32"] is False
    assert rec["evaluations"]["quick"]["clean"]["precision"] == FP32  # the end-of-run evaluation's
    for flag, expected in (
        (None, FP32),
        ("--tf32", {**FP32, "tf32_matmul": True, "tf32_cudnn": True}),
        ("--no-tf32", FP32),
    ):
        res = bench_cli(
            "eval",
            run_dir.name,
            "--out",
            str(out),
            "--metrics",
            "clean",
            "-n",
            "8",
            "-q",
            *([flag] if flag else []),
        )
        assert res.exit_code == 0, res.stderr
        got = json.loads((run_dir / "record.json").read_text())["evaluations"]["standard"]["clean"][
            "precision"
        ]
        assert got == expected, flag


def test_deterministic_run_records_it_and_runs(
    bench_cli, tiny_args, shapes_data_dir, tmp_path, monkeypatch, training_flags
):
    import os

    from bench.run import runner

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    at_first_forward = []
    first_forward = runner._probe  # the run's first forward pass (observed, it runs as usual)

    def observed(*a, **k):
        at_first_forward.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        return first_forward(*a, **k)

    monkeypatch.setattr(runner, "_probe", observed)
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir, steps=2),
        "--set",
        "train.deterministic=true",
        "--set",
        "eval.enabled=false",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(out)
    assert rec["status"] == "complete" and rec["config"]["train"]["deterministic"] is True
    flags = {
        "tf32_matmul": True,
        "tf32_cudnn": True,
        "cudnn_benchmark": False,
        "deterministic": True,
    }
    assert rec["environment"]["precision"] == flags
    assert training_flags and all(f == flags for f in training_flags)
    # set before anything ran on the device: deterministic cuBLAS reads it when its workspace is made
    assert at_first_forward == [":4096:8"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run


@pytest.mark.parametrize(
    "item, key",
    [
        ("eval.tf32=maybe", "eval.tf32"),
        ("eval.tf32=1", "eval.tf32"),
        ("train.tf32=fast", "train.tf32"),
    ],
)
def test_a_wrong_tf32_value_is_one_line(item, key, bench_cli, tiny_args, shapes_data_dir, tmp_path):
    out = tmp_path / "results"
    res = bench_cli("run", "--method", "ce", *tiny_args(out, shapes_data_dir), "--set", item)
    assert res.exit_code != 0
    assert res.error_lines == [res.stderr.strip()], res.stderr  # one line, nothing else
    assert key in res.stderr and "true/false" in res.stderr
    assert not out.exists(), list(out.rglob("*"))


def test_precision_context_sets_and_restores():
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (
        False,
        True,
    )  # torch's defaults
    torch.backends.cudnn.benchmark = False
    before = current_precision()
    with precision(evaluation_precision(False)) as flags:
        assert flags == current_precision() == FP32  # cuDNN's TF32 default switched off too
    assert current_precision() == before
    with precision(evaluation_precision(True)) as flags:
        assert flags["tf32_matmul"] and flags["tf32_cudnn"] and not flags["cudnn_benchmark"]
        assert torch.get_float32_matmul_precision() == "high"  # the matmul side of TF32
    assert current_precision() == before


def test_the_doctors_precision_check_sets_reads_back_and_restores():
    """`bench doctor`'s precision_flags check: training's and evaluation's flags through the same
    context, read back as above, and put back."""
    from bench.core.config import TrainConfig
    from bench.tools.doctor.environment import precision_flags

    before = current_precision()
    check = precision_flags(TrainConfig(), False, torch.device("cpu"))
    assert check.status == "pass", check.detail
    assert check.values["evaluation"] == FP32 and check.values["now"] == before
    assert check.values["training"] == training_precision(TrainConfig()).as_dict()
    assert current_precision() == before


def test_training_flags_follow_the_fast_path_and_determinism():
    from bench.core.config import TrainConfig

    assert training_precision(TrainConfig()).as_dict() == {
        "tf32_matmul": True,
        "tf32_cudnn": True,
        "cudnn_benchmark": True,
        "deterministic": False,
    }
    assert training_precision(TrainConfig(tf32=False)).tf32 is False
    assert training_precision(TrainConfig(fast=False)) == training_precision(
        TrainConfig(fast=False, tf32=True)
    )
    assert not training_precision(TrainConfig(fast=False)).tf32
    assert not training_precision(TrainConfig(deterministic=True)).cudnn_benchmark
