"""Wide ResNets (Zagoruyko & Komodakis), pre-activation, as used by JEM and EB-JDAT.

``wrn-D-W`` for any depth D = 6n + 4 and width W; ``wrn-28-10`` is the paper's network.
Norm ``batch`` or ``none`` (the JEM base trains without normalisation layers).
"""

from __future__ import annotations

import torch.nn as nn

from bench.core.errors import BenchError
from bench.models.base import ARCHS, PreActNet, make_act, make_norm, residual_stages


class WideBasic(nn.Module):
    def __init__(self, cin, cout, stride, norm, momentum, act, dropout):
        super().__init__()
        self.bn1 = make_norm(norm, cin, momentum)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=True)
        self.bn2 = make_norm(norm, cout, momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=True)
        self.act1, self.act2 = make_act(act), make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=True)

    def forward(self, x):
        out = self.dropout(self.conv1(self.act1(self.bn1(x))))
        return self.conv2(self.act2(self.bn2(out))) + self.shortcut(x)


class WideResNet(PreActNet):
    def __init__(
        self,
        depth=28,
        width=10,
        num_classes=10,
        norm="batch",
        bn_momentum=0.1,
        activation="leaky_relu",
        dropout=0.0,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    ):
        super().__init__(num_classes, mean, std)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise BenchError(f"wrn-{depth}-{width}: depth must be 6n+4 (e.g. 16, 22, 28, 34, 40)")
        self.first_layer = nn.Conv2d(3, 16, 3, padding=1, bias=True)
        widths, counts = (16 * width, 32 * width, 64 * width), ((depth - 4) // 6,) * 3
        args = (norm, bn_momentum, activation, dropout)
        self.stages, cin = residual_stages(WideBasic, 16, widths, counts, (1, 2, 2), *args)
        self.add_head(cin, norm, bn_momentum, activation)  # dropout lives in the blocks


@ARCHS.register_pattern(r"wrn-(?P<depth>\d+)-(?P<width>\d+)", "wrn-D-W")
def wrn(depth, width, **kw) -> WideResNet:
    return WideResNet(depth=depth, width=width, **kw)
