"""bf16 autocast and the attacks' and samplers' arithmetic: iterates in fp32, the network alone in bf16.

CPU autocast supports bfloat16, so everything here runs on the CPU as the fast path runs it on CUDA:
- TRADES's clean pass and first step run outside autocast: its KL's gradient at the 0.001 * N(0, I)
  start is below bf16's rounding, so a bf16 first step is rounding noise (bench/attacks/trades.py);
- every attack returns fp32 iterates, also from a half-precision batch, and keeps the start
  perturbation that bf16 would round away;
- the class-Gaussian draws (JEM++'s and EB-JDAT's fresh chain starts, drawn inside the training
  step's autocast) are the fp32 draws.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from bench.attacks.ebjdat import ebjdat_attack
from bench.attacks.pgd import pgd_linf
from bench.attacks.trades import trades_attack
from bench.core.config import ModelConfig
from bench.models import build_model
from bench.sampling.gaussians import ClassGaussians
from bench.sampling.langevin import pyld, sgld

EPS, ALPHA = 8 / 255, 2 / 255


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="resnet8", mean=(0.0,) * 3, std=(1.0,) * 3), num_classes=10)
    x, _ = pixels()
    m.train()
    with (
        torch.no_grad()
    ):  # non-trivial running statistics, so the attacks' eval mode is a real network
        for k in range(4):
            m(x.roll(k, 0))
    return m


def pixels(n=16, size=16, seed=1):
    """Images on the 8-bit grid (k / 255), as the trainer's batches are, and labels."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 255,
        torch.randint(0, 10, (n,), generator=g),
    )


def signs_agree(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    return float(((a - x).sign() == (b - x).sign()).float().mean())


def trades(model, x, steps, context=contextlib.nullcontext, seed=3):
    with context():
        torch.manual_seed(seed)
        return trades_attack(model, x, eps=EPS, alpha=ALPHA, steps=steps)


def test_trades_first_step_under_bf16_is_the_fp32_step(model):
    """The first step from x + 0.001 N(0, I) is computed in fp32 even under bf16 autocast: the same
    iterate bit for bit (a bf16 first step agrees with it in sign on about half the pixels: chance)."""
    x, _ = pixels()
    fp32 = trades(model, x, steps=1)
    under_bf16 = trades(model, x, steps=1, context=bf16)
    assert under_bf16.dtype == torch.float32
    assert torch.equal(under_bf16, fp32)
    assert model.training  # the attack's eval mode was put back


def test_trades_under_bf16_follows_the_fp32_attack(model):
    """After the fp32 first step the remaining steps run in bf16 and stay close to the fp32 path
    (measured: 95 % of the perturbation's signs agree after 10 steps; a bf16 first step gives 56 %)."""
    x, _ = pixels()
    fp32 = trades(model, x, steps=10)
    under_bf16 = trades(model, x, steps=10, context=bf16)
    assert under_bf16.dtype == torch.float32
    assert signs_agree(under_bf16, fp32, x) > 0.85
    assert (
        (under_bf16 - x).abs().max() <= EPS + 1e-6
        and under_bf16.min() >= 0
        and under_bf16.max() <= 1
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trades_start_perturbation_survives_bf16(model, dtype):
    """steps=0 returns the start itself: x + 0.001 N(0, I), in fp32, from an fp32 or a bf16 batch
    (in a bf16 iterate the perturbation would round away on most pixels: its spacing is 2^-8 on [0.5, 1))."""
    x, _ = pixels()
    xin = x.to(dtype)
    torch.manual_seed(3)
    noise = torch.randn(x.shape)  # what the attack's randn_like draws after the same seed
    with bf16():
        torch.manual_seed(3)
        start = trades_attack(model, xin, eps=EPS, alpha=ALPHA, steps=0)
    assert start.dtype == torch.float32
    expected = (xin.float() + 0.001 * noise).clamp(0, 1)
    assert torch.allclose(start, expected, atol=1e-7, rtol=0)
    moved = (start - xin.float()) != 0
    assert moved.float().mean() > 0.99  # only pixels clamped at 0 or 1 may stay put


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pgd_iterates_are_fp32_under_bf16(model, dtype):
    """PGD (uniform start, and MART's Gaussian start) under bf16 autocast: fp32 iterates in the
    eps-ball around the fp32 batch, also when the batch comes in bf16."""
    x, y = pixels()
    xin = x.to(dtype)
    with bf16():
        torch.manual_seed(4)
        uniform = pgd_linf(model, xin, y, eps=EPS, alpha=ALPHA, steps=2)
        torch.manual_seed(4)
        start = pgd_linf(
            model,
            xin,
            y,
            eps=EPS,
            alpha=ALPHA,
            steps=0,
            start=lambda c: c + 0.001 * torch.randn_like(c),
        )
    for got in (uniform, start):
        assert got.dtype == torch.float32
        assert (got - xin.float()).abs().max() <= EPS + 1e-6
    torch.manual_seed(4)
    assert torch.allclose(start - xin.float(), 0.001 * torch.randn(x.shape), atol=1e-7, rtol=0)


def test_ebjdat_attack_iterates_are_fp32_under_bf16(model):
    x, y = pixels()
    xin = x.to(torch.bfloat16)
    with bf16():
        torch.manual_seed(5)
        got = ebjdat_attack(model, xin, y, steps=2, eps_units="pixel", project=True)
    assert got.dtype == torch.float32
    assert (got - xin.float()).abs().max() <= EPS + 1e-6
    assert (
        got - xin.float()
    ).abs().max() > ALPHA  # it moved beyond one step: the start and the steps survived


def test_sampler_iterates_are_fp32_under_bf16(model):
    x, _ = pixels()
    xs = x * 2 - 1
    with bf16():
        torch.manual_seed(6)
        out_sgld = sgld(model, xs, steps=2, step_size=1.0, noise_std=0.01, clamp=False)
        out_pyld = pyld(model, xs, n_steps=2, in_steps=2, fast=False)
    assert out_sgld.dtype == torch.float32 and out_pyld.dtype == torch.float32


@pytest.mark.parametrize(
    "n_per_class", [8, 40]
)  # n <= D: low-rank factor; n > D: Cholesky factor (D = 27)
@pytest.mark.parametrize("dense", [False, True])
def test_gaussian_draws_are_fp32_under_autocast(n_per_class, dense):
    """Class-Gaussian draws inside bf16 autocast equal the fp32 draws from the same seed (autocast
    would run the factor products in bf16: errors of about 5e-3 on the [-1, 1] scale)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3 * n_per_class, 3, 3, 3), generator=g, dtype=torch.uint8)
    y = torch.arange(3 * n_per_class) % 3
    gauss = ClassGaussians.fit(x, y, 3, augment=False, noise_std=0.0)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    torch.manual_seed(7)
    fp32 = gauss.sample(labels, dense=dense)
    with bf16():
        torch.manual_seed(7)
        under_bf16 = gauss.sample(labels, dense=dense)
    assert under_bf16.dtype == torch.float32
    assert torch.equal(under_bf16, fp32)
