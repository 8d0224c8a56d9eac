"""The fast path (``train.fast``): one switch, and numerics that match the plain path.

Documented tolerances (docs/methods.md, "The fast path"), one optimiser step from the same
weights, batch and seed:
- fp32 channels_last vs plain NCHW: methods without a signed-gradient attack (ce, jem++) agree
  to float rounding (loss terms 1e-5, update direction cosine > 0.9999); with an attack (pgd-at,
  trades, ebjdat) rounding flips the sign of near-zero input gradients, so the adversarial
  examples move a little: loss within 1e-2, update cosine > 0.9.
- bf16 autocast vs fp32: loss within 0.5% relative; update cosine > 0.99 (ce, jem++) or > 0.9
  (attack methods). The CPU runs this with CPU autocast; the CUDA case runs where a GPU is.

The step, the comparison and the tolerance table are library code (bench/tools/doctor/one_step.py), which
`bench doctor` runs on a new machine; these tests pin the table to the documented numbers and check
each method against it.
"""

from __future__ import annotations

import pytest
import torch

from bench.run.resolve import resolve_config
from bench.tools.doctor.one_step import (
    STEP,
    StepResult,
    Tolerance,
    compare,
    cosine,
    step_from_seed,
    tolerance,
)
from bench.tools.doctor.one_step import build_trainer as build_from_config

ATTACKING = {"pgd-at", "trades", "ebjdat"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smoke_config(method: str, overrides: list[str], device: str = "cpu"):
    return resolve_config(
        method, preset="smoke", device=device, overrides=["data.batch_size=32", *overrides]
    )


def build_trainer(method: str, overrides: list[str], device: str = "cpu", tmp: str = ""):
    return build_from_config(smoke_config(method, overrides, device), tmp)


def one_step(method: str, overrides: list[str], device: str = "cpu") -> StepResult:
    """Loss terms and the parameter update of step 5 from the seed's initial weights."""
    return step_from_seed(smoke_config(method, overrides, device), step=STEP)


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
    assert compare(ref, StepResult({"loss": 2.0, "ce": 2.0}, u.clone(), False), tol).passed
    for other, reason in [
        (StepResult({"loss": 2.001, "ce": 2.0}, u, False), "loss"),
        (StepResult({"loss": 2.0, "ce": 2.0}, torch.tensor([1.0, 2.0, 0.5]), False), "cosine"),
        (StepResult({"loss": 2.0, "ce": 2.0}, 1.2 * u, False), "norm ratio"),
        (StepResult({"loss": float("nan"), "ce": 2.0}, u, False), "loss"),
    ]:
        verdict = compare(ref, other, tol)
        assert not verdict.passed
        assert verdict.detail.partition(":")[0] == f"outside the tolerance ({reason})"
    assert not compare(ref, StepResult({"loss": 2.0}, u, False), tol).passed  # a term went missing


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
    plain = one_step(method, ["train.fast=false"])
    fast = one_step(method, ["train.amp=off", "train.channels_last=true"])
    assert (
        plain.attacked == fast.attacked == (method in ATTACKING)
    )  # the step's attack region decides the column
    verdict = compare(plain, fast, tolerance("layout", method in ATTACKING))
    assert verdict.passed, verdict.detail


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ce", "pgd-at", "trades", "jem++", "ebjdat"])
def test_bf16_autocast_within_tolerance(method, device):
    fp32 = one_step(method, ["train.fast=false"], device)
    bf16 = one_step(method, ["train.amp=bf16"], device)
    verdict = compare(fp32, bf16, tolerance("bf16", method in ATTACKING))
    assert verdict.passed, verdict.detail


def test_compiled_model_trains_like_eager(tmp_path):
    """torch.compile (aot_eager backend: dynamo + AOT autograd without code generation, so it runs
    in seconds here) gives the eager updates, keeps the state-dict keys, and handles the sampler's
    input gradients and train/eval switches (jem++)."""
    for method in ("ce", "jem++"):
        eager = one_step(method, ["train.amp=off"])
        comp = one_step(
            method, ["train.amp=off", "train.compile=default", "train.compile_backend=aot_eager"]
        )
        assert abs(eager.terms["loss"] - comp.terms["loss"]) < 1e-4
        assert cosine(eager.update, comp.update) > 0.9999
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
