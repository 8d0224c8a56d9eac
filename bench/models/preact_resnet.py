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

from bench.models.base import ARCHS, PreActNet, make_act, make_norm, residual_stages


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
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        return self.conv2(self.act2(self.bn2(self.conv1(out)))) + skip


class PreActResNet(PreActNet):
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
        strides = (1,) + (2,) * (len(widths) - 1)
        args = (norm, bn_momentum, activation)
        self.stages, cin = residual_stages(PreActBlock, widths[0], widths, blocks, strides, *args)
        self.add_head(cin, norm, bn_momentum, activation, dropout)


@ARCHS.register("preact-resnet18")
def preact_resnet18(**kw) -> PreActResNet:
    return PreActResNet(blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kw)
