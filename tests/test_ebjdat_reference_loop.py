"""The reference-schedule EB-JDAT attack (2-image chunks, clean logits recomputed) that `bench perf`
times computes the same adversarial batch as the batched fast path."""

from __future__ import annotations

import pytest
import torch

from bench.attacks.ebjdat import ebjdat_attack
from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.core.timing import measure_regions
from bench.models import build_model


@pytest.mark.parametrize("project", [False, True])
def test_reference_loop_equals_batched_attack(project):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet8"), 10)
    x, y = torch.rand(7, 3, 32, 32), torch.randint(0, 10, (7,))  # odd: the last chunk has one image
    torch.manual_seed(1)
    fast = ebjdat_attack(model, x, y, steps=3, project=project)
    torch.manual_seed(1)
    ref = ebjdat_attack(model, x, y, steps=3, project=project, impl="reference")
    assert torch.allclose(fast, ref, atol=1e-6)
    assert (fast - x).abs().max() > 0  # it moved


def test_attack_is_timed_as_its_own_phase_and_rejects_unknown_impl():
    model = build_model(ModelConfig(arch="resnet8"), 10)
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with measure_regions(torch.device("cpu")) as phases:
        ebjdat_attack(model, x, y, steps=1)
    assert phases["attack"] > 0
    with pytest.raises(BenchError, match="batched, reference"):
        ebjdat_attack(model, x, y, steps=1, impl="chunky")
