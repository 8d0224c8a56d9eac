"""`bench doctor`: the checks a user runs on a new machine, on this CPU (the CUDA-only checks must
say they were skipped and why), a deliberately broken fast path, bad input, and the GPU script."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bench.run.resolve import resolve_config
from bench.tools.doctor import environment
from bench.tools.doctor.environment import process_group_checks

CUDA_ONLY = {"host_sync", "peak_memory", "compile_vs_eager"}
REPO = Path(__file__).resolve().parent.parent


def test_doctor_on_the_cpu_runs_what_applies_and_says_what_it_skipped(
    bench_cli, shapes_data_dir, tmp_path
):
    out = tmp_path / "doctor.json"
    res = bench_cli(
        "doctor",
        "--method",
        "ce",
        "--method",
        "pgd-at",
        "--steps",
        "1",
        "--json",
        str(out),
        "--set",
        f"data.data_dir={shapes_data_dir}",
    )
    assert res.exit_code == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["methods"] == ["ce", "pgd-at"]
    rows = {(c["check"], c["method"]): c for c in report["checks"]}
    environment_checks = [
        "versions",
        "device",
        "precision_flags",
        "free_memory",
        "eval_fp32_eval_mode",
    ]
    per_method = [
        "fast_vs_plain",
        "host_sync",
        "throughput",
        "process_group",
        "peak_memory",
        "compile_vs_eager",
    ]
    assert set(rows) == {(c, None) for c in environment_checks} | {
        (c, m) for c in per_method for m in ("ce", "pgd-at")
    }
    for (check, _method), row in rows.items():
        assert row["status"] in ("pass", "skipped") and row["detail"], row
        if check in CUDA_ONLY:
            assert row["status"] == "skipped" and row["detail"].startswith("CUDA only (")
        else:
            assert row["status"] == "pass", row
    assert report["summary"] == {"pass": 5 + 2 * 3, "fail": 0, "skipped": 2 * 3}
    # the numbers behind the rows
    assert rows[("fast_vs_plain", "pgd-at")]["values"]["attacked"] is True
    assert rows[("fast_vs_plain", "ce")]["values"]["attacked"] is False
    assert rows[("fast_vs_plain", "ce")]["values"]["cosine"] > 0.9999
    assert set(rows[("process_group", "pgd-at")]["values"]["terms"]) >= {"loss", "ce_adv"}
    assert rows[("process_group", "ce")]["detail"].startswith("gloo, 1 rank")
    tp = rows[("throughput", "ce")]["values"]
    assert (
        tp["peak"] == "fp32"
        and 0 < tp["mfu"]
        and tp["fe_per_image"] == pytest.approx(3.0, rel=0.02)
    )
    assert rows[("eval_fp32_eval_mode", None)]["values"]["forwards"] > 2
    # the table on stdout, a progress line per check on stderr
    assert "| fast_vs_plain" in res.stdout and "11 passed, 0 failed, 6 skipped" in res.stdout
    assert (
        "[1/17] versions: pass" in res.stderr
        and "[17/17] compile_vs_eager pgd-at: skipped" in res.stderr
    )


def test_a_broken_fast_path_fails_its_check_and_the_command(
    bench_cli, shapes_data_dir, tmp_path, monkeypatch
):
    from bench.train.trainer import Trainer

    real_total = Trainer._total_loss

    def fast_path_scales_the_loss(
        self, terms
    ):  # the defect: only the fast path trains on 1.5x the loss
        loss = real_total(self, terms)
        return 1.5 * loss if self.cfg.train.fast else loss

    monkeypatch.setattr(Trainer, "_total_loss", fast_path_scales_the_loss)
    out = tmp_path / "doctor.json"
    res = bench_cli(
        "doctor",
        "--method",
        "ce",
        "--steps",
        "1",
        "-q",
        "--json",
        str(out),
        "--set",
        f"data.data_dir={shapes_data_dir}",
    )
    assert res.exit_code == 1
    assert res.error_lines == [
        "error: 1 of 11 checks failed (fast_vs_plain ce); the detail column says why"
    ]
    assert res.stderr.strip() == res.error_lines[0]  # -q: no progress lines
    report = json.loads(out.read_text())
    (row,) = [c for c in report["checks"] if c["status"] == "fail"]
    assert row["check"] == "fast_vs_plain" and row["detail"].startswith(
        "outside the tolerance (loss, norm ratio)"
    )
    assert row["values"]["loss_other"] == pytest.approx(1.5 * row["values"]["loss"], rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--set", "train.amp=fast"], "train.amp"),
        (["--steps", "0"], "--steps and the evaluation's examples must be >= 1"),
        (["--compile-mode", "turbo"], "'turbo' is not one of"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(bench_cli, tmp_path, args, message):
    out = tmp_path / "doctor.json"
    res = bench_cli("doctor", "--method", "ce", *args, "--json", str(out))
    assert res.exit_code == 2 and len(res.error_lines) == 1 and message in res.error_lines[0]
    assert res.stderr.strip() == res.error_lines[0] and res.stdout == ""
    assert not out.exists()


def test_the_evaluation_check_sees_autocast_and_train_mode(shapes_data_dir, monkeypatch):
    from bench.data import load_run_data
    from bench.tools.doctor.evaluation import evaluation_check

    cfg = resolve_config(
        "ce", preset="smoke", device="cpu", overrides=[f"data.data_dir={shapes_data_dir}"]
    )
    data = load_run_data(cfg)
    assert evaluation_check(cfg, data, n_examples=8, pgd_steps=1).status == "pass"
    with torch.autocast(
        "cpu", dtype=torch.bfloat16
    ):  # an evaluation that ran inside the training autocast
        bad = evaluation_check(cfg, data, n_examples=8, pgd_steps=1)
    assert (
        bad.status == "fail"
        and "autocast on" in bad.detail
        and "forwards in torch.bfloat16" in bad.detail
    )
    import metrics.pgd
    from bench.attacks.pgd import pgd_linf

    # the defect: an attack that switches the model to train mode (batch statistics of adversarial inputs)
    monkeypatch.setattr(
        metrics.pgd, "pgd_linf", lambda *a, **k: pgd_linf(*a, **{**k, "mode": "train"})
    )
    bad = evaluation_check(cfg, data, n_examples=8, pgd_steps=1)
    assert bad.status == "fail" and "modules in train mode: model" in bad.detail


def test_the_process_group_reduces_through_a_real_one_rank_group():
    import torch.distributed as dist

    logged = {
        "ok": {"loss": torch.tensor(2.5), "acc": torch.tensor([0.5, 1.0])},
        "bad": {"loss": torch.tensor(float("inf"))},
    }
    rows = {c.method: c for c in process_group_checks(logged, torch.device("cpu"))}
    assert rows["ok"].status == "pass" and rows["ok"].values["terms"] == ["acc", "loss"]
    assert rows["bad"].status == "fail" and "non-finite ['loss']" in rows["bad"].detail
    assert (
        not dist.is_initialized() and "MASTER_PORT" not in os.environ
    )  # destroyed, environment restored


def test_the_versions_check_names_a_missing_package(monkeypatch):
    assert environment.versions().status == "pass"
    monkeypatch.setattr(
        environment, "PACKAGES", (*environment.PACKAGES, "no-such-package-for-bench")
    )
    check = environment.versions()
    assert check.status == "fail" and check.detail.startswith(
        "not installed: no-such-package-for-bench"
    )


def test_the_gpu_script_dry_run_prints_its_commands(tmp_path):
    out = tmp_path / "gpu-out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(out)}
    p = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line.startswith("+ ")]
    assert any(
        "bench doctor --device cuda" in line
        and f"--json {out}/doctor.json" in line
        and "timeout " in line
        for line in lines
    ), lines
    perf = [line for line in lines if "bench perf" in line]
    assert len(perf) == 1 and "timeout " in perf[0]
    for part in (
        "--preset paper",
        "--arch wrn-28-10",
        "--device cuda",
        "--steps 10",
        f"--json {out}/perf.json",
    ):
        assert part in perf[0]
    assert not out.exists()  # a dry run writes nothing
