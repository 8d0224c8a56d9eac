"""The model evaluations run on, and data-parallel ranks leaving before rank 0's evaluation.

The end-of-run evaluation of `bench run` and `bench eval RUN` must evaluate the same model: eager
(never the compiled training graph), fp32, NCHW, eval mode, no parameter requiring a gradient, the
EMA weights when the run keeps them; so the two give the same numbers for the same protocol and n.
A probe metric, registered through the real plug-in mechanism, looks at the model it is given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import only_run

REPO = Path(__file__).resolve().parent.parent
PROTOCOL = "test-eval-model"
PROBE = "test-model-probe"
VOLATILE = {"seconds", "evaluated_at"}  # when and how long, not what was measured


def _probe(model, data, settings, ctx) -> dict:
    """What the evaluated model is, and what an attack's ``.backward()`` on the input (FAB's way)
    leaves in its parameters' ``.grad``."""
    params = list(model.parameters())
    convs = [p for p in params if p.dim() == 4]
    x = data.x_test[:4].to(ctx.device).float().div(255.0).requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    return {
        "n_examples": 4,
        "compiled": getattr(model, "_compiled_call_impl", None) is not None
        or hasattr(model, "_orig_mod"),
        "training": model.training,
        "all_fp32": all(p.dtype == torch.float32 for p in params),
        "channels_last": any(
            p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            for p in convs
        ),
        "requires_grad": any(p.requires_grad for p in params),
        "grad_after_backward": any(p.grad is not None for p in params),
        "input_grad": bool(x.grad is not None and x.grad.abs().sum() > 0),
        # which weights: the EMA average and the raw final weights give different sums
        "weights_sum": float(sum(p.detach().double().sum() for p in params)),
    }


@pytest.fixture
def probe_protocol():
    from metrics import METRICS, register_metric
    from metrics.protocols import PGD20, PROTOCOLS, Protocol, register_protocol

    register_metric(PROBE, _probe)
    register_protocol(
        Protocol(
            name=PROTOCOL,
            description="clean, PGD-20 and a look at the evaluated model",
            metrics={"clean": {}, "pgd": dict(PGD20), PROBE: {}},
        )
    )
    try:
        yield PROTOCOL
    finally:
        METRICS.unregister(PROBE)
        PROTOCOLS.unregister(PROTOCOL)


def _stable(results: dict) -> dict:
    return {m: {k: v for k, v in r.items() if k not in VOLATILE} for m, r in results.items()}


def test_end_of_run_and_bench_eval_evaluate_the_same_eager_fp32_model(
    bench_cli, tiny_args, shapes_data_dir, tmp_path, probe_protocol
):
    out = tmp_path / "results"
    # the fast path on the CPU: channels_last, and the model compiled (the eager backend: dynamo's
    # graph capture without code generation); EMA on, so the evaluated weights are the average
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir, steps=4),
        "--set",
        f"eval.protocol={probe_protocol}",
        "--set",
        "train.channels_last=true",
        "--set",
        "train.compile=default",
        "--set",
        "train.compile_backend=eager",
        "--set",
        "train.ema_decay=0.5",
    )
    assert res.exit_code == 0, res.stderr
    (run_dir,) = (out / "runs").iterdir()
    end = json.loads((run_dir / "record.json").read_text())["evaluations"][probe_protocol]
    probe = end[PROBE]
    assert probe["compiled"] is False and probe["training"] is False and probe["all_fp32"] is True
    assert probe["channels_last"] is False and probe["requires_grad"] is False
    assert probe["grad_after_backward"] is False and probe["input_grad"] is True

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    names = {n for n, _ in _params_of(run_dir).named_parameters()}
    ema_sum, raw_sum = (
        float(sum(v.double().sum() for k, v in ckpt[which].items() if k in names))
        for which in ("ema_model", "model")
    )
    assert abs(ema_sum - raw_sum) > 1e-6  # so the sum tells the two apart
    assert probe["weights_sum"] == pytest.approx(
        ema_sum, rel=1e-12, abs=1e-9
    )  # the EMA weights, as before

    # `bench eval` of the same protocol and n on a copy (its results are new entries of the same keys)
    copy_out = tmp_path / "copy"
    shutil.copytree(run_dir, copy_out / "runs" / run_dir.name)
    res = bench_cli(
        "eval", run_dir.name, "--out", str(copy_out), "--protocol", probe_protocol, "-n", "32", "-q"
    )
    assert res.exit_code == 0, res.stderr
    again = json.loads((copy_out / "runs" / run_dir.name / "record.json").read_text())[
        "evaluations"
    ][probe_protocol]
    assert end["clean"]["n_examples"] == again["clean"]["n_examples"] == 32
    assert _stable(again) == _stable(end)


def _params_of(run_dir: Path) -> torch.nn.Module:
    """The run's architecture, to tell its parameters from its buffers by name."""
    from bench.core.record_reading import run_config
    from bench.core.records import RunRecord
    from bench.models import build_model

    rec = RunRecord.load(run_dir).data
    return build_model(run_config(rec).model, rec["data"]["num_classes"])


def test_evaluation_model_is_built_from_the_weights_alone():
    """The function both paths call: a channels_last, compiled, training-mode model's weights give
    an eager, NCHW, fp32 eval-mode copy with no gradients; the training model is left as it was."""
    from bench.core.config import RunConfig
    from bench.models import build_model
    from bench.run.evaluation import evaluation_model

    cfg = RunConfig()
    trained = build_model(cfg.model, 10).to(memory_format=torch.channels_last)
    trained.compile(backend="eager")
    trained.train()
    model = evaluation_model(cfg, 10, trained.state_dict(), torch.device("cpu"))
    assert model is not trained and not model.training
    assert getattr(model, "_compiled_call_impl", None) is None
    assert all(
        p.dtype == torch.float32 and p.is_contiguous() and not p.requires_grad
        for p in model.parameters()
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), trained.state_dict().values())
    )
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and all(p.grad is None for p in model.parameters())
    assert trained.training and all(p.requires_grad for p in trained.parameters())  # untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_other_ranks_leave_before_rank_0_evaluates(tmp_path, shapes_data_dir):
    """Two gloo ranks started as torchrun would start them: rank 1 exits once training is saved,
    while rank 0 is still evaluating (no collective waits on the evaluation, so no process-group
    timeout can end it), and rank 0 then completes the run on its own."""
    out = tmp_path / "results"
    port = str(_free_port())
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "-q",
        "--out",
        str(out),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "data.train_subset=128",
        "--set",
        "data.batch_size=32",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.eval_every=0",
        "--set",
        "eval.n_examples=64",
        "--set",
        "eval.batch_size=64",
    ]
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
        }
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 300
    while len(ended) < 2 and time.monotonic() < deadline:
        for rank, p in enumerate(procs):
            if rank not in ended and p.poll() is not None:
                ended[rank] = time.time()  # the clock of the files' modification times
        time.sleep(0.02)
    for p in procs:
        if p.poll() is None:
            p.kill()
    errs = [p.communicate()[1] for p in procs]
    assert len(ended) == 2, errs
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errs]
    run_dir, rec = only_run(out)
    assert rec["status"] == "complete" and rec["evaluations"]["quick"]["pgd"]["n_examples"] == 64
    # rank 0 writes the record a last time once its evaluation is over (rank 1 writes nothing): rank 1
    # had exited before that, instead of waiting in a barrier for the evaluation to end
    written = (run_dir / "record.json").stat().st_mtime
    assert ended[1] < written, (ended, written, rec["timings"])
