"""Random draws inside attacks and samplers do not depend on the input's memory layout: on the
fast path (channels_last) they equal the plain path's (NCHW) for the same seed, so the two paths
differ by rounding only. `torch.randn_like` / `empty_like(...).uniform_` keep the input's layout
and fill it in memory order, which on a channels_last tensor permutes the numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.attacks.ebjdat import ebjdat_attack
from bench.attacks.pgd import pgd_linf
from bench.attacks.trades import trades_attack
from bench.sampling.langevin import sgld


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).eval()


def _both(run):
    """run(x) on an NCHW batch and on the same batch as channels_last, from the same seed."""
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(7)
        out.append(run(x.contiguous(memory_format=fmt)))
    return out


@pytest.mark.parametrize("name", ["sgld", "pgd", "trades", "mart-start", "ebjdat"])
def test_draws_are_the_same_in_both_layouts(name):
    model = _model()
    y = torch.arange(6) % 5
    runs = {
        "sgld": lambda x: sgld(
            model, x * 2 - 1, steps=3, step_size=0.0, noise_std=0.1, clamp=False
        ),
        "pgd": lambda x: pgd_linf(
            model, x, y, eps=8 / 255, alpha=2 / 255, steps=0
        ),  # the random start alone
        "trades": lambda x: trades_attack(model, x, eps=8 / 255, alpha=2 / 255, steps=0),
        "mart-start": lambda x: pgd_linf(
            model,
            x,
            y,
            steps=0,
            start=lambda c: c + 0.001 * torch.randn_like(c, memory_format=torch.contiguous_format),
        ),
        "ebjdat": lambda x: ebjdat_attack(model, x, y, eps=8 / 255, alpha=2 / 255, steps=0),
    }
    plain, fast = _both(runs[name])
    assert not torch.equal(plain, _both(lambda x: x)[0])  # something random happened
    torch.testing.assert_close(fast.contiguous(), plain, rtol=0, atol=1e-6)
