"""The fast path (``train.fast``): one switch, and numerics that match the plain path.

Documented tolerances (docs/methods.md, "The fast path"), one optimiser step from the same
weights, batch and seed:
- fp32 channels_last vs plain NCHW: methods without a signed-gradient attack (ce, jem++) agree
  to float rounding (loss terms 1e-5, update direction cosine > 0.9999); with an attack (pgd-at,
  trades, ebjdat) rounding flips the sign of near-zero input gradients, so the adversarial
  examples move a little: loss within 1e-2, update cosine > 0.9.
- bf16 autocast vs fp32: loss within 0.5% relative; update cosine > 0.99 (ce, jem++) or > 0.9
  (attack methods). The CPU runs this with CPU autocast; the CUDA case runs where a GPU is.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from bench.resolve import resolve_config
from bench.models import build_model
from bench.data import load_run_data
from bench.trainer import Trainer
from methods import get_method

ATTACKING = {"pgd-at", "trades", "ebjdat"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build_trainer(method: str, overrides: list[str], device: str = "cpu", tmp: str = ""):
    cfg = resolve_config(method, preset="smoke", device=device, overrides=["data.batch_size=32", *overrides])
    dev = torch.device(device)
    data = load_run_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes).to(dev)
    m = get_method(method).from_dict(cfg.method_cfg)
    m.setup(model, data, dev)
    return Trainer(cfg, model, m, data, dev, tmp, show_progress=False)


def one_step(method: str, overrides: list[str], device: str = "cpu"):
    """Loss terms and the parameter update of step 5 from the seed's initial weights."""
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(method, overrides, device, tmp)
        tr.model.train()
        tr.set_lr(0)
        before = [p.detach().clone() for p in tr.model.parameters()]
        terms = tr.train_step(5)
        update = torch.cat([(p.detach() - q).flatten().float() for p, q in zip(tr.model.parameters(), before)])
    return {k: float(v) for k, v in terms.items()}, update.cpu()


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(u, v, dim=0))


def test_fast_off_is_the_plain_path(tmp_path):
    on = build_trainer("ce", ["train.amp=bf16", "train.channels_last=true"], tmp=str(tmp_path / "a"))
    assert on.use_amp and on.channels_last
    convs = [p for p in on.model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert any(not p.is_contiguous() for p in convs)
    off = build_trainer("ce", ["train.fast=false", "train.amp=bf16", "train.channels_last=true",
                               "train.compile=default"], tmp=str(tmp_path / "b"))
    assert not off.use_amp and not off.channels_last
    assert all(p.ndim != 4 or p.is_contiguous() for p in off.model.parameters())
    assert getattr(off.model, "_compiled_call_impl", None) is None  # compile only acts on the fast path


@pytest.mark.parametrize("method", ["ce", "pgd-at", "trades", "jem++", "ebjdat"])
def test_fp32_channels_last_matches_plain(method):
    plain, u_plain = one_step(method, ["train.fast=false"])
    fast, u_fast = one_step(method, ["train.amp=off", "train.channels_last=true"])
    assert plain.keys() == fast.keys()
    loss_tol, cos_min = (1e-2, 0.9) if method in ATTACKING else (1e-5, 0.9999)
    assert abs(plain["loss"] - fast["loss"]) <= loss_tol * max(1.0, abs(plain["loss"]))
    assert cosine(u_plain, u_fast) > cos_min
    assert 0.9 < float(u_fast.norm() / u_plain.norm()) < 1.1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ce", "pgd-at", "trades", "jem++", "ebjdat"])
def test_bf16_autocast_within_tolerance(method, device):
    fp32, u32 = one_step(method, ["train.fast=false"], device)
    bf16, u16 = one_step(method, ["train.amp=bf16"], device)
    assert abs(bf16["loss"] - fp32["loss"]) <= 5e-3 * abs(fp32["loss"])
    assert cosine(u32, u16) > (0.9 if method in ATTACKING else 0.99)
    assert 0.9 < float(u16.norm() / u32.norm()) < 1.1


def test_compiled_model_trains_like_eager(tmp_path):
    """torch.compile (aot_eager backend: dynamo + AOT autograd without code generation, so it runs
    in seconds here) gives the eager updates, keeps the state-dict keys, and handles the sampler's
    input gradients and train/eval switches (jem++)."""
    for method in ("ce", "jem++"):
        eager, u_eager = one_step(method, ["train.amp=off"])
        comp, u_comp = one_step(method, ["train.amp=off", "train.compile=default", "train.compile_backend=aot_eager"])
        assert abs(eager["loss"] - comp["loss"]) < 1e-4
        assert cosine(u_eager, u_comp) > 0.9999
    tr = build_trainer("ce", ["train.compile=default", "train.compile_backend=aot_eager"], tmp=str(tmp_path))
    assert getattr(tr.model, "_compiled_call_impl", None) is not None
    assert not any(k.startswith("_orig_mod") for k in tr.model.state_dict())


def test_off_and_on_words_reach_string_settings():
    """YAML 1.1 reads ``off`` as false: ``--set train.amp=off`` still means the word."""
    from bench.errors import BenchError

    assert resolve_config("ce", preset="smoke", overrides=["train.amp=off"]).train.amp == "off"
    assert resolve_config("ce", preset="smoke", overrides=["train.compile=off"]).train.compile == "off"
    with pytest.raises(BenchError, match="train.compile"):
        resolve_config("ce", preset="smoke", overrides=["train.compile=on"])
