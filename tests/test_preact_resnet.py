"""preact-resnet18: the structure against a reference built here from torch.nn primitives (parameter
count, identical logits with copied weights), shapes, the model options, a few training steps."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.config import ModelConfig
from bench.models import ARCHS, EnergyClassifier, build_model


class RefBlock(nn.Module):
    """He et al. 2016's pre-activation basic block, as the adversarial-training code bases write it."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.proj = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = self.proj(a) if self.proj is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


class RefPreActResNet18(nn.Module):
    def __init__(self, num_classes=10, final_bn=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # 3x3 stem, no max-pool
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [RefBlock(cin, cout, stride), RefBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(512) if final_bn else None
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        h = self.blocks(self.conv(x))
        if self.bn is not None:
            h = F.relu(self.bn(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _model(num_classes=10, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="preact-resnet18", **kw), num_classes)


def test_parameter_count_matches_the_reference_structure():
    ref = RefPreActResNet18(10)
    assert n_params(ref) == 11_172_170
    # the copies without the final norm + activation (e.g. kuangliu/pytorch-cifar) have 1,024 fewer
    assert n_params(RefPreActResNet18(10, final_bn=False)) == 11_171_146
    m = _model(10)
    assert n_params(m) == n_params(ref)
    assert sorted(p.shape for p in m.parameters()) == sorted(p.shape for p in ref.parameters())
    assert n_params(_model(100)) == n_params(RefPreActResNet18(100))


def test_same_weights_give_the_reference_logits():
    ref = RefPreActResNet18(10)
    m = _model(10, mean=(0.0,) * 3, std=(1.0,) * 3)  # the reference takes the input as it is
    torch.manual_seed(1)
    for mod in ref.modules():  # non-trivial norm parameters and statistics
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    ours = {k: v for k, v in m.state_dict().items() if k not in ("mean", "std")}
    assert len(ours) == len(ref.state_dict())
    m.load_state_dict({**dict(zip(ours, ref.state_dict().values())), "mean": m.mean, "std": m.std})
    x = torch.rand(3, 3, 32, 32)
    for train in (False, True):
        m.train(train)
        ref.train(train)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-5)


def test_output_shapes_features_and_stem():
    m = _model(7).eval()
    assert isinstance(m, EnergyClassifier) and isinstance(m.first_layer, nn.Conv2d)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats, logits = m.features(x), m(x)
        assert torch.allclose(m.trunk(m.stem(x)), logits, atol=1e-5)
    assert (
        logits.shape == (2, 7) and m.feature_dim == 512 and feats["penultimate"].shape == (2, 512)
    )
    assert [feats[f"stage{i}"].shape[1:] for i in (1, 2, 3, 4)] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
    ]
    assert torch.allclose(feats["logits"], logits, atol=1e-5)
    assert "preact-resnet18" in ARCHS.names()


def test_model_options_are_honoured():
    m = _model(norm="none", activation="leaky_relu", dropout=0.3)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert any(isinstance(mod, nn.LeakyReLU) for mod in m.modules())
    assert any(isinstance(mod, nn.Dropout) and mod.p == 0.3 for mod in m.modules())
    assert all(
        c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d)
    )  # no norm: biases
    m = _model(bn_momentum=0.9)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert len(bns) == 17 and all(b.momentum == 0.9 for b in bns)
    m2 = _model(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(m2.normalize(x)[:, 0], (x[:, 0] - 0.4914) / 0.2470, atol=1e-6)
    with torch.no_grad():
        nchw = m2(x)
        m2.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            m2(x.contiguous(memory_format=torch.channels_last)), nchw, rtol=1e-4, atol=1e-4
        )


def test_a_few_training_steps_lower_the_loss():
    m = _model(10).train()
    g = torch.Generator().manual_seed(2)
    x, y = (
        torch.rand(8, 3, 16, 16, generator=g),
        torch.randint(0, 10, (8,), generator=g),
    )  # 16x16: cheaper, same code
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
