"""`bench perf`: FLOP accounting against the cost model, timing structure, CLI output."""

from __future__ import annotations

import json

import pytest
import torch

from bench.perf import FlopCount, forward_flops_per_image, run_perf
from bench.config import ModelConfig
from bench.models import build_model


def test_flop_count_matches_the_convolution_formula():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(2, 3, 16, 16)
    with FlopCount() as fc:
        conv(x)
    assert fc.total == 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3  # 2 FLOP per multiply-accumulate


def test_flop_count_works_with_input_only_gradients():
    model = build_model(ModelConfig(arch="resnet8"), 10)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    fwd = forward_flops_per_image(model, (3, 32, 32), torch.device("cpu")) * 4
    with FlopCount() as fc:
        torch.autograd.grad(model(x).sum(), x)
    # an input-only gradient skips the weight-gradient convolutions: about 2 forwards, not 3
    assert 1.8 < fc.total / fwd < 2.2


@pytest.fixture(scope="module")
def perf_report(shapes_data_dir):
    return run_perf(["ce", "pgd-at"], "smoke", device="cpu", steps=1, warmup=1, peak_tflops=1.0,
                    overrides=(f"data.data_dir={shapes_data_dir}",))


def test_forward_equivalents_follow_the_cost_model(perf_report):
    fe = {(r["method"], r["variant"]): r["fe_per_image"] for r in perf_report["results"]}
    # ce: one training pass = forward + full backward = 3 forward-equivalents
    assert fe[("ce", "fast")] == pytest.approx(3.0, rel=0.02)
    # pgd-at (smoke: 3 PGD steps): 3 input-gradient steps x 2 + one training pass x 3 = 9
    assert fe[("pgd-at", "fast")] == pytest.approx(9.0, rel=0.03)
    assert fe[("ce", "plain")] == pytest.approx(fe[("ce", "fast")], rel=1e-6)  # same math, other layout


def test_report_has_phases_ratios_and_mfu(perf_report):
    by = {(r["method"], r["variant"]): r for r in perf_report["results"]}
    pgd = by[("pgd-at", "fast")]
    assert pgd["phases"]["attack"] > 0 and pgd["phases"]["update"] > 0
    assert by[("ce", "fast")]["phases"].get("attack", 0.0) == 0.0
    total = sum(pgd["phases"].values())
    assert total == pytest.approx(pgd["seconds_per_step"], rel=1e-6)
    assert set(perf_report["ratios"]) == {"ce", "pgd-at"}
    assert perf_report["ratios"]["ce"]["fast_vs_plain"] > 0
    assert 0 < pgd["mfu"] < 1  # given peak 1 TFLOP/s, far above this CPU
    assert pgd["images_per_s"] == pytest.approx(pgd["batch_size"] / pgd["seconds_per_step"])


def test_cli_prints_table_and_writes_json(bench_cli, shapes_data_dir, tmp_path):
    out = tmp_path / "perf.json"
    res = bench_cli("perf", "--method", "ce", "--steps", "1", "--warmup", "0", "--no-plain", "--peak-tflops", "1",
                    "--set", f"data.data_dir={shapes_data_dir}", "--json", str(out))
    assert res.exit_code == 0, res.stderr
    assert "| ce" in res.stdout and "FE/img" in res.stdout
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == ["fast"]


def test_cli_rejects_unknown_method_and_bad_steps(bench_cli):
    res = bench_cli("perf", "--method", "nope")
    assert res.exit_code != 0 and len(res.error_lines) == 1 and "unknown method 'nope'" in res.stderr
    res = bench_cli("perf", "--method", "ce", "--steps", "0")
    assert res.exit_code != 0 and res.error_lines == ["error: --steps must be >= 1 and --warmup >= 0"]
