"""Architectures: shapes, the energy interface, normalisation inside, features, stem/trunk."""

from __future__ import annotations

import pytest
import torch

from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.models import ARCHS, EnergyClassifier, build_model


def _model(arch, num_classes=10, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, **kw), num_classes).eval()


@pytest.mark.parametrize("arch, k", [("resnet8", 10), ("resnet8-wide", 100), ("wrn-10-2", 7)])
def test_output_shapes_and_features(arch, k):
    m = _model(arch, k)
    assert isinstance(m, EnergyClassifier)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        logits = m(x)
        feats = m.features(x)
    assert logits.shape == (5, k) and logits.dtype == torch.float32
    assert {"stem", "stage1", "stage2", "stage3", "penultimate", "logits"} <= set(feats)
    assert torch.allclose(feats["logits"], logits, atol=1e-5)
    assert feats["penultimate"].shape == (5, m.feature_dim)
    assert feats["stage3"].shape[-1] == 8  # two stride-2 stages: 32 -> 8
    with torch.no_grad():
        assert torch.allclose(m.trunk(m.stem(x)), logits, atol=1e-5)
        assert torch.allclose(m.stem(x), m.first_layer(m.normalize(x)), atol=1e-6)
    assert isinstance(m.first_layer, torch.nn.Conv2d)  # affine first layer (PYLD relies on it)


def test_energy_definitions():
    m = _model("resnet8")
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        logits = m(x)
        e = m.energy(x)
        ey = m.energy(x, y)
    assert e.shape == (6,) and ey.shape == (6,)
    assert torch.allclose(e, -torch.logsumexp(logits, 1), atol=1e-5)
    assert torch.allclose(ey, -logits[torch.arange(6), y], atol=1e-5)
    # log p(y|x) = -E(x, y) + E(x)
    assert torch.allclose(-ey + e, torch.log_softmax(logits, 1)[torch.arange(6), y], atol=1e-5)
    assert (ey >= e - 1e-5).all()  # one class logit is below the logsumexp
    # energy is differentiable w.r.t. the input (samplers need it)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m.energy(xr).sum(), xr)
    assert g.abs().sum() > 0


def test_inputs_in_unit_range_are_normalised_inside():
    m = _model("resnet8")
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(m.normalize(x), (x - 0.5) / 0.5)
    assert torch.allclose(m.normalize(torch.zeros(1, 3, 2, 2)), torch.full((1, 3, 2, 2), -1.0))
    assert torch.allclose(m.normalize(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))
    # the configured statistics are used, and are part of the state dict (saved with checkpoints)
    m2 = _model("resnet8", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    x_hat = m2.normalize(x)
    assert torch.allclose(x_hat[:, 1], (x[:, 1] - 0.4822) / 0.2435, atol=1e-6)
    assert "mean" in m2.state_dict() and "std" in m2.state_dict()
    with torch.no_grad():
        assert not torch.allclose(m(x), m2(x))  # same weights (seed 0), different normalisation


def test_norm_and_activation_options():
    m = _model("wrn-10-1", norm="none", activation="leaky_relu")
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert any(isinstance(mod, torch.nn.LeakyReLU) for mod in m.modules())
    m = _model("resnet8", bn_momentum=0.9)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(b.momentum == 0.9 for b in bns)


def test_resnet8_is_small():
    n = sum(p.numel() for p in _model("resnet8").parameters())
    assert 60_000 < n < 100_000


def test_wrn_28_10_parameter_count():
    torch.manual_seed(0)
    m = ARCHS.get("wrn-28-10")(num_classes=10)
    n = sum(p.numel() for p in m.parameters())
    assert n == pytest.approx(36.5e6, rel=0.005)
    assert m.head.in_features == 640 and len(m.stages[0]) == 4


@pytest.mark.parametrize("arch", ["wrn-27-10", "wrn-4-1", "wrn-30-2"])
def test_bad_wrn_depth(arch):
    with pytest.raises(BenchError, match="depth must be 6n\\+4"):
        _model(arch)


def test_unknown_arch_lists_known():
    with pytest.raises(
        BenchError,
        match="unknown architecture 'resnet18'; choose one of: preact-resnet18, resnet8, resnet8-wide, wrn-D-W",
    ):
        _model("resnet18")


def test_model_mode_keep_leaves_every_submodule_as_it_was():
    """``keep``/None touches nothing: a submodule frozen in eval mode inside a training model (a
    frozen batch norm) stays in eval mode after the block, where ``train(was)`` would flip it."""
    import torch.nn as nn

    from bench.models.base import model_mode

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    model[1].eval()
    for mode in (None, "keep"):
        with model_mode(model, mode):
            assert model.training and not model[1].training
        assert model.training and not model[1].training
    with model_mode(model, "eval"):
        assert not model.training
    assert model.training
