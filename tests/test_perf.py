"""`bench perf`: FLOP accounting against the cost model, timing structure, CLI output."""

from __future__ import annotations

import json

import pytest
import torch

from bench.core.config import ModelConfig
from bench.models import build_model
from bench.tools.flops import FlopCount, forward_flops_per_image
from bench.tools.perf import run_perf


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


PROGRESS: list[dict] = []  # what run_perf handed to on_progress while making perf_report


@pytest.fixture(scope="module")
def perf_report(shapes_data_dir):
    return run_perf(
        ["ce", "pgd-at"],
        "smoke",
        device="cpu",
        steps=1,
        warmup=1,
        peak_tflops=1.0,
        fid_images=0,
        overrides=(f"data.data_dir={shapes_data_dir}",),
        on_progress=PROGRESS.append,
    )


def test_forward_equivalents_follow_the_cost_model(perf_report):
    fe = {(r["method"], r["variant"]): r["fe_per_image"] for r in perf_report["results"]}
    # ce: one training pass = forward + full backward = 3 forward-equivalents
    assert fe[("ce", "fast")] == pytest.approx(3.0, rel=0.02)
    # pgd-at (smoke: 3 PGD steps): 3 input-gradient steps x 2 + one training pass x 3 = 9
    assert fe[("pgd-at", "fast")] == pytest.approx(9.0, rel=0.03)
    assert fe[("ce", "plain")] == pytest.approx(
        fe[("ce", "fast")], rel=1e-6
    )  # same math, other layout


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
    assert (
        pgd["peak"] == "given"
        and pgd["peak_tflops"] == 1.0
        and perf_report["peaks"]
        == {"given": {"tflops": 1.0, "measured_by": "given (--peak-tflops)"}}
    )
    assert pgd["images_per_s"] == pytest.approx(pgd["batch_size"] / pgd["seconds_per_step"])
    # the phases come from a separate, synchronised profiling pass, scaled onto the timed step
    assert (
        pgd["profiled_seconds_per_step"] > 0 and pgd["phases"]["attack"] < pgd["seconds_per_step"]
    )


def test_the_report_is_handed_over_after_each_method(perf_report):
    """A run cut short by a time limit keeps the methods it timed (the CLI writes each partial report)."""
    assert [p["complete"] for p in PROGRESS] == [False, False] and perf_report["complete"] is True
    assert [{r["method"] for r in p["results"]} for p in PROGRESS] == [{"ce"}, {"ce", "pgd-at"}]
    assert "fid_features" not in PROGRESS[0] and perf_report["fid_features"]["skipped"]


def test_split_phases_scales_the_profiled_split_onto_the_timed_step():
    from bench.tools.perf import split_phases

    # profiled: 2 steps of 0.5 s, attack 0.4 s and update 0.2 s in all (0.2 and 0.1 per step, 0.2 s
    # other); the timed step, without the regions' synchronisation, took 0.25 s: half of each
    phases = split_phases({"attack": 0.4, "update": 0.2}, 0.5, 2, 0.25)
    assert phases == pytest.approx({"attack": 0.1, "update": 0.05, "other": 0.1})
    assert split_phases({}, 0.0, 1, 0.3) == {"other": 0.3}


def test_the_timed_loop_runs_with_no_region_active(shapes_data_dir, monkeypatch):
    """Regions synchronise the device at their edges: only the separate profiling pass may have them on."""
    import bench.core.timing
    from bench.run.resolve import resolve_config
    from bench.tools.perf import time_method
    from bench.train.trainer import Trainer

    seen: list[tuple[int, bool]] = []
    real_step = Trainer.train_step

    def spy(self, step):
        seen.append((step, bench.core.timing._active is not None))
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", spy)
    cfg = resolve_config(
        "pgd-at",
        preset="smoke",
        device="cpu",
        overrides=[
            f"data.data_dir={shapes_data_dir}",
            "data.batch_size=16",
            "data.train_subset=64",
        ],
    )
    row = time_method(cfg, "fast", steps=3, warmup=1, peaks=None, profile_steps=2)
    # step 0 warm-up, step 1 counted for FLOPs, steps 2-4 timed, steps 5-6 profiled
    assert seen == [
        (0, False),
        (1, False),
        (2, False),
        (3, False),
        (4, False),
        (5, True),
        (6, True),
    ]
    assert row.phases["attack"] > 0 and sum(row.phases.values()) == pytest.approx(
        row.seconds_per_step
    )
    assert row.mfu is None and row.peak is None


def test_flops_are_counted_on_an_eager_pass_of_a_compiled_model():
    """A compiled call runs fused kernels (on CUDA, CUDA-graph replays dispatch no op at all), which a
    dispatch-mode counter cannot see, so the count forces eager execution; a hook on the model tells a
    compiled call from an eager one (in a compiled call its side effect replays the traced value)."""
    from bench.tools.perf import count_flops_eagerly

    x = torch.rand(4, 3, 32, 32)
    with (
        FlopCount() as eager
    ):  # on another instance: whether dynamo runs a graph under a mode depends on history
        build_model(ModelConfig(arch="resnet8"), 10)(x).sum().backward()
    model = build_model(ModelConfig(arch="resnet8"), 10)
    compiled: list[bool] = []
    model.register_forward_hook(
        lambda mod, inp, out: compiled.append(torch.compiler.is_compiling())
    )
    model.compile(
        backend="aot_eager"
    )  # dynamo + AOT autograd without code generation: seconds on a CPU
    for _ in range(2):
        model(x).sum().backward()
    assert compiled[-2:] == [True, True]
    compiled.clear()
    assert count_flops_eagerly(lambda: model(x).sum().backward()) == eager.total
    assert compiled == [False]


def test_each_step_is_divided_by_its_own_precisions_peak():
    from bench.core.config import TrainConfig
    from bench.tools.flops import peak_for
    from bench.tools.perf import step_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fast, plain = TrainConfig(), TrainConfig(fast=False)
    assert step_precision(True, fast, cuda) == "bf16"
    assert (
        step_precision(False, fast, cuda) == "tf32"
    )  # fast path, autocast off: TF32 matmuls and convolutions
    assert step_precision(False, TrainConfig(tf32=False), cuda) == "fp32"
    assert step_precision(False, plain, cuda) == "fp32"
    assert step_precision(True, fast, cpu) == "bf16" and step_precision(False, fast, cpu) == "fp32"
    assert [peak_for(p, cuda) for p in ("bf16", "tf32", "fp32")] == ["bf16", "tf32", "fp32"]
    assert [peak_for(p, cpu) for p in ("bf16", "tf32", "fp32")] == ["fp32"] * 3


def test_measured_peaks_on_the_cpu_are_fp32_for_every_variant(shapes_data_dir):
    report = run_perf(
        ["ce"],
        "smoke",
        device="cpu",
        steps=1,
        warmup=0,
        fid_images=0,
        overrides=(
            f"data.data_dir={shapes_data_dir}",
            "data.batch_size=16",
            "data.train_subset=64",
            "train.amp=bf16",
        ),
    )
    by = {r["variant"]: r for r in report["results"]}
    assert by["fast"]["precision"] == "bf16" and by["plain"]["precision"] == "fp32"
    assert by["fast"]["peak"] == by["plain"]["peak"] == "fp32" and list(report["peaks"]) == ["fp32"]
    peak = report["peaks"]["fp32"]
    assert peak["measured_by"] == "fp32 matmul 1024x1024" and peak["tflops"] > 0
    for r in by.values():
        assert r["mfu"] == pytest.approx(
            r["step_gflop"] * 1e9 / r["seconds_per_step"] / (peak["tflops"] * 1e12)
        )


def test_cli_prints_table_and_writes_json(bench_cli, shapes_data_dir, tmp_path):
    out = tmp_path / "perf.json"
    res = bench_cli(
        "perf",
        "--method",
        "ce",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--no-plain",
        "--peak-tflops",
        "1",
        "--fid-images",
        "0",
        "--set",
        f"data.data_dir={shapes_data_dir}",
        "--json",
        str(out),
    )
    assert res.exit_code == 0, res.stderr
    assert "| ce" in res.stdout and "FE/img" in res.stdout
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["results"]] == ["fast"] and report["complete"] is True
    assert "of peak" in res.stdout and "peaks: given 1 TFLOP/s" in res.stdout


def test_cli_rejects_unknown_method_and_bad_steps(bench_cli):
    res = bench_cli("perf", "--method", "nope")
    assert (
        res.exit_code != 0 and len(res.error_lines) == 1 and "unknown method 'nope'" in res.stderr
    )
    res = bench_cli("perf", "--method", "ce", "--steps", "0")
    assert res.exit_code != 0 and res.error_lines == [
        "error: --steps must be >= 1 and --warmup >= 0"
    ]
    res = bench_cli("perf", "--method", "ce", "--peak-tflops", "0")
    assert res.exit_code == 2 and res.error_lines == [
        "error: --peak-tflops must be > 0 (or leave it out to measure the peaks)"
    ]


# -- sampler, FID features, AutoAttack (bench.tools.perf_eval) ---------------------------------------
def test_sampler_rows_count_the_samplers_gradient_steps(shapes_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    report = run_perf(
        ["jem", "jem++", "ce"],
        "smoke",
        device="cpu",
        steps=1,
        warmup=0,
        peak_tflops=1.0,
        variants=("fast",),
        fid_images=0,
        overrides=(f"data.data_dir={shapes_data_dir}",),
    )
    rows = {r["method"]: r for r in report["samplers"]}
    assert set(rows) == {"jem", "jem++"}  # ce has no sampler
    from bench.run.resolve import resolve_config

    for m, row in rows.items():
        sc = resolve_config(m, preset="smoke").method_cfg["sampler"]
        # each (outer) step is one input gradient of the whole network, 2 forward-equivalents; PYLD's
        # inner steps touch only the first layer (the affine fast path) and cost almost nothing
        assert row["fe_per_image"] == pytest.approx(2.0 * sc["steps"], rel=0.1)
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / (row["ms_per_draw"] / 1e3))
    assert rows["jem++"]["steps"] == f"{sc['steps']}x{sc['in_steps']}"
    assert report["fid_features"] == {"skipped": "not asked (--fid-images 0)"}
    assert report["autoattack"] == []


def test_fid_feature_timing_says_which_weights_are_missing(monkeypatch, tmp_path):
    from bench.tools.perf_eval import time_fid_features

    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TRILEMMA_FID_WEIGHTS", raising=False)
    res = time_fid_features(torch.device("cpu"), n_images=8, batch_size=4)
    assert "bench fid-weights" in res["skipped"]


def test_fid_feature_timing_with_real_weights():
    from bench.tools.perf_eval import time_fid_features
    from metrics.inception import converted_weights_path, torch_fidelity_weights_path

    if not (converted_weights_path().is_file() or torch_fidelity_weights_path().is_file()):
        pytest.skip("no Inception weights on this machine (bench fid-weights)")
    res = time_fid_features(torch.device("cpu"), n_images=8, batch_size=4)
    assert res["n_images"] == 8 and res["images_per_s"] > 0 and res["precision"] == "fp32"


def test_autoattack_timing_on_a_trained_run(complete_run, monkeypatch):
    import metrics.autoattack
    from bench.tools.perf_eval import time_autoattack

    seen = []
    real = metrics.autoattack.autoattack

    def spy(model, *args):
        seen.append(
            (
                model.training,
                any(p.requires_grad for p in model.parameters()),
                torch.backends.cudnn.allow_tf32,
                torch.backends.cuda.matmul.allow_tf32,
            )
        )
        return real(model, *args)

    monkeypatch.setattr(metrics.autoattack, "autoattack", spy)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # what training leaves on
    res = time_autoattack(
        str(complete_run), complete_run.parent.parent, torch.device("cpu"), n_examples=6
    )
    assert seen == [
        (False, False, False, False)
    ]  # bench eval's model and flags: eval mode, no grads, no TF32
    assert res["run"] == complete_run.name and res["method"] == "ce" and res["n_examples"] == 6
    assert res["robust_accuracy"] <= res["clean_accuracy"]
    assert res["images_per_s"] == pytest.approx(6 / res["seconds"])
    assert res["library"].startswith("pyautoattack")


def test_guardrail_overhead_timing_on_a_trained_run(complete_run):
    from bench.tools.perf_eval import time_guardrails

    res = time_guardrails(
        str(complete_run),
        complete_run.parent.parent,
        torch.device("cpu"),
        n_examples=8,
        steps=2,
        reps=1,
    )
    assert res["run"] == complete_run.name and res["n_examples"] == 8 and res["steps"] == 2
    assert res["seconds_bare"] > 0 and res["seconds_checked"] > 0
    assert res["overhead"] == pytest.approx(res["seconds_checked"] / res["seconds_bare"] - 1)


def test_perf_cli_rejects_an_unknown_aa_run(bench_cli, tmp_path):
    res = bench_cli("perf", "--method", "ce", "--aa-run", "nope", "--out", str(tmp_path))
    assert res.exit_code == 2 and "run 'nope' not found" in res.stderr


def test_sampler_timing_with_a_class_conditional_buffer(shapes_data_dir):
    report = run_perf(
        ["jem"],
        "smoke",
        device="cpu",
        steps=1,
        warmup=0,
        peak_tflops=1.0,
        variants=("fast",),
        fid_images=0,
        overrides=(f"data.data_dir={shapes_data_dir}", "method.sampler.conditional=true"),
    )
    (row,) = report["samplers"]
    assert row["method"] == "jem" and row["images_per_s"] > 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--fid-images", "-1"], "--fid-images must be >= 0 and --aa-n >= 1"),
        (["--aa-n", "0"], "--fid-images must be >= 0 and --aa-n >= 1"),
    ],
)
def test_perf_cli_rejects_bad_counts(bench_cli, args, fragment):
    res = bench_cli("perf", "--method", "ce", *args)
    assert res.exit_code == 2 and fragment in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
