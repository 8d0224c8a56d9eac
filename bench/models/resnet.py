"""Small, fast ResNets for CPU presets: ``resnet8`` (16/32/64 channels, 78k parameters) and
``resnet8-wide`` (32/64/128). Post-activation basic blocks, one per stage."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from bench.models.base import ARCHS, EnergyClassifier, make_act, make_norm


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, momentum, act):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = make_norm(norm, cout, momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.bn2 = make_norm(norm, cout, momentum)
        self.act1, self.act2 = make_act(act), make_act(act)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)
            self.shortcut = nn.Sequential(conv, make_norm(norm, cout, momentum))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class SmallResNet(EnergyClassifier):
    def __init__(
        self,
        widths=(16, 32, 64),
        num_classes=10,
        norm="batch",
        bn_momentum=0.1,
        activation="relu",
        dropout=0.0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    ):
        super().__init__(num_classes, mean, std)
        # the first layer is an affine convolution (PYLD relies on it); the norm and
        # activation that follow it belong to the trunk
        self.first_layer = nn.Conv2d(3, widths[0], 3, padding=1, bias=True)
        self.bn0 = make_norm(norm, widths[0], bn_momentum)
        self.act0 = make_act(activation)
        cins, strides = (widths[0], *widths[:-1]), (1,) + (2,) * (len(widths) - 1)
        self.stages = nn.ModuleList(
            BasicBlock(cin, w, s, norm, bn_momentum, activation)
            for cin, w, s in zip(cins, widths, strides)
        )
        cin = widths[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def trunk_features(self, h):
        maps = {}
        h = self.act0(self.bn0(h))
        for i, stage in enumerate(self.stages):
            h = stage(h)
            maps[f"stage{i + 1}"] = h
        maps["penultimate"] = F.adaptive_avg_pool2d(h, 1).flatten(1)
        maps["logits"] = self.head(self.dropout(maps["penultimate"]))
        return maps


@ARCHS.register("resnet8")
def resnet8(**kw) -> SmallResNet:
    """ResNet-8, 16/32/64 channels, 78k parameters: the CPU presets' model."""
    return SmallResNet(widths=(16, 32, 64), **kw)


@ARCHS.register("resnet8-wide")
def resnet8_wide(**kw) -> SmallResNet:
    """ResNet-8 with doubled widths, 32/64/128 channels."""
    return SmallResNet(widths=(32, 64, 128), **kw)
