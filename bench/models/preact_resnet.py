"""Pre-activation ResNet-18 (He et al., ECCV 2016, "Identity Mappings in Deep Residual Networks")
in the CIFAR form adversarial-training papers use (Rice et al. 2020, locuslab/robust_overfitting;
the ResNet-18 rows of TRADES/MART-style comparisons): a 3x3 stem convolution (no max-pool, for 32x32
inputs), four stages of two pre-activation basic blocks with 64, 128, 256 and 512 channels (strides
1, 2, 2, 2), a final norm + activation, global average pooling and a linear head.

Block: ``out = conv2(act(norm2(conv1(act(norm1(x)))))) + shortcut``, where the shortcut is the
identity, or a 1x1 strided convolution of the *activated* input ``act(norm1(x))`` when the shape
changes. Convolutions carry no bias under batch norm (the reference: 11,172,170 parameters for 10
classes, 1,024 of them in the final norm; without it, as in some copies, 11,171,146); with
``norm=none`` they get biases, as the other architectures here do.
"""

from __future__ import annotations

import torch.nn as nn

from bench.models.base import ARCHS, EnergyClassifier, make_act, make_norm, preact_trunk_features


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm, momentum, act):
        super().__init__()
        bias = norm == "none"
        self.bn1 = make_norm(norm, cin, momentum)
        self.act1 = make_act(act)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = make_norm(norm, cout, momentum)
        self.act2 = make_act(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x):
        out = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet(EnergyClassifier):
    def __init__(
        self,
        blocks=(2, 2, 2, 2),
        widths=(64, 128, 256, 512),
        num_classes=10,
        norm="batch",
        bn_momentum=0.1,
        activation="relu",
        dropout=0.0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    ):
        super().__init__(num_classes, mean, std)
        # the first layer is an affine convolution (PYLD relies on it); the first block's norm follows it
        self.first_layer = nn.Conv2d(3, widths[0], 3, padding=1, bias=norm == "none")
        stages, cin = [], widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(
                    PreActBlock(
                        cin, cout, 2 if i > 0 and j == 0 else 1, norm, bn_momentum, activation
                    )
                )
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.bn = make_norm(norm, cin, bn_momentum)
        self.act = make_act(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def trunk_features(self, h):
        return preact_trunk_features(self.stages, self.bn, self.act, self.head, h, self.dropout)


@ARCHS.register("preact-resnet18")
def preact_resnet18(**kw) -> PreActResNet:
    return PreActResNet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kw)
