"""The fast path (``train.fast``): one switch, and numerics that match the plain path.

Documented tolerances (docs/methods.md, "The fast path"), one optimiser step from the same
weights, batch and seed:
- fp32 channels_last vs plain NCHW: methods without a signed-gradient attack (ce, jem++) agree
  to float rounding (loss terms 1e-5, update direction cosine > 0.9999); with an attack (pgd-at,
  trades, ebjdat) rounding flips the sign of near-zero input gradients, so the adversarial
  examples move a little: loss within 1e-2, update cosine > 0.9.
- bf16 autocast vs fp32: loss within 0.5% relative; update cosine > 0.99 (ce, jem++) or > 0.9
  (attack methods). The CPU runs this with CPU autocast; the CUDA case runs where a GPU is.

The step, the comparison, the tolerance table and the checks are library code
(bench/tools/doctor/steps.py), which `bench doctor` runs on a new machine; these tests pin the table
to the documented numbers and run those checks on each method.
"""

from __future__ import annotations

import pytest
import torch

from bench.run.resolve import resolve_config
from bench.tools.doctor.steps import FastStep, StepResult, Tolerance, compare, tolerance
from bench.tools.doctor.steps import build_trainer as build_from_config

ATTACKING = {"pgd-at", "trades", "ebjdat"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smoke_config(method: str, overrides: list[str], device: str = "cpu"):
    return resolve_config(
        method, preset="smoke", device=device, overrides=["data.batch_size=32", *overrides]
    )


def build_trainer(method: str, overrides: list[str], device: str = "cpu", tmp: str = ""):
    return build_from_config(smoke_config(method, overrides, device), tmp)


def fast_step(method: str, overrides: list[str], device: str = "cpu") -> FastStep:
    """Step 5 from the seed's initial weights (compile off), as `bench doctor` takes it."""
    return FastStep(smoke_config(method, overrides, device))


def compiled_check(method: str, overrides: list[str]):
    """`bench doctor`'s compile_vs_eager check with the aot_eager backend (dynamo + AOT autograd
    without code generation, so it runs in seconds here)."""
    compiled = [*overrides, "train.compile=default", "train.compile_backend=aot_eager"]
    fast = fast_step(method, overrides)
    return fast, fast.against_compiled("default", smoke_config(method, compiled))


def test_the_tolerance_table_is_the_documented_one():
    assert tolerance("layout", False) == Tolerance(loss_abs=1e-5, cos_min=0.9999)
    assert tolerance("layout", True) == Tolerance(loss_abs=1e-2, cos_min=0.9)
    assert tolerance("bf16", False) == Tolerance(loss_rel=5e-3, cos_min=0.99)
    assert tolerance("bf16", True) == Tolerance(loss_rel=5e-3, cos_min=0.9)
    assert tolerance("layout", True).loss_bound(3.0) == pytest.approx(3e-2)  # 1e-2 x max(1, |loss|)
    assert tolerance("bf16", True).loss_bound(-2.0) == pytest.approx(1e-2)  # 0.5 % of |loss|


def test_compare_rejects_each_kind_of_divergence():
    u = torch.tensor([1.0, 2.0, -0.5])
    ref = StepResult({"loss": 2.0, "ce": 2.0}, u, attacked=False)
    tol = tolerance("layout", False)
    assert (
        compare(ref, StepResult({"loss": 2.0, "ce": 2.0}, u.clone(), False), tol).status == "pass"
    )
    for other, reason in [
        (StepResult({"loss": 2.001, "ce": 2.0}, u, False), "loss"),
        (StepResult({"loss": 2.0, "ce": 2.0}, torch.tensor([1.0, 2.0, 0.5]), False), "cosine"),
        (StepResult({"loss": 2.0, "ce": 2.0}, 1.2 * u, False), "norm ratio"),
        (StepResult({"loss": float("nan"), "ce": 2.0}, u, False), "loss"),
    ]:
        verdict = compare(ref, other, tol)
        assert verdict.status == "fail"
        assert verdict.detail.partition(":")[0] == f"outside the tolerance ({reason})"
    # a term went missing; the attack ran in one step only
    assert compare(ref, StepResult({"loss": 2.0}, u, False), tol).status == "fail"
    assert compare(ref, StepResult({"loss": 2.0, "ce": 2.0}, u, True), tol).status == "fail"


def test_fast_off_is_the_plain_path(tmp_path):
    on = build_trainer(
        "ce", ["train.amp=bf16", "train.channels_last=true"], tmp=str(tmp_path / "a")
    )
    assert on.use_amp and on.channels_last
    convs = [p for p in on.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    off = build_trainer(
        "ce",
        ["train.fast=false", "train.amp=bf16", "train.channels_last=true", "train.compile=default"],
        tmp=str(tmp_path / "b"),
    )
    assert not off.use_amp and not off.channels_last
    assert all(p.ndim != 4 or p.is_contiguous() for p in off.model.parameters())
    assert (
        getattr(off.model, "_compiled_call_impl", None) is None
    )  # compile only acts on the fast path


@pytest.mark.parametrize("method", ["ce", "pgd-at", "trades", "jem++", "ebjdat"])
def test_fp32_channels_last_matches_plain(method):
    fast = fast_step(method, ["train.amp=off", "train.channels_last=true"])
    assert fast.tolerance == tolerance("layout", method in ATTACKING)  # the check compares within
    check = fast.against_plain()
    # the step's attack region decides the column (the check fails when the two steps differ in it)
    assert check.values["attacked"] == fast.step.attacked == (method in ATTACKING)
    assert check.status == "pass", check.detail


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ce", "pgd-at", "trades", "jem++", "ebjdat"])
def test_bf16_autocast_within_tolerance(method, device):
    bf16 = fast_step(method, ["train.amp=bf16"], device)
    assert bf16.tolerance == tolerance("bf16", method in ATTACKING)  # the check compares within
    check = bf16.against_plain()
    assert check.status == "pass", check.detail


def test_compiled_model_trains_like_eager(tmp_path):
    """torch.compile (aot_eager backend: dynamo + AOT autograd without code generation, so it runs
    in seconds here) gives the eager updates, keeps the state-dict keys, and handles the sampler's
    input gradients and train/eval switches (jem++)."""
    for method in ("ce", "jem++"):
        _, check = compiled_check(method, ["train.amp=off"])
        assert check.status == "pass", check.detail
        assert check.values["loss_diff"] < 1e-4 and check.values["cosine"] > 0.9999
    tr = build_trainer(
        "ce", ["train.compile=default", "train.compile_backend=aot_eager"], tmp=str(tmp_path)
    )
    assert getattr(tr.model, "_compiled_call_impl", None) is not None
    assert not any(k.startswith("_orig_mod") for k in tr.model.state_dict())


def test_off_and_on_words_reach_string_settings():
    """YAML 1.1 reads ``off`` as false: ``--set train.amp=off`` still means the word."""
    from bench.core.errors import BenchError

    assert resolve_config("ce", preset="smoke", overrides=["train.amp=off"]).train.amp == "off"
    assert (
        resolve_config("ce", preset="smoke", overrides=["train.compile=off"]).train.compile == "off"
    )
    with pytest.raises(BenchError, match="train.compile"):
        resolve_config("ce", preset="smoke", overrides=["train.compile=on"])
