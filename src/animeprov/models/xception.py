"""Xception (Chollet, CVPR 2017), layer for layer the reference ("legacy" Keras / Cadene) architecture.

Entry flow: conv 32 (stride 2, no padding), conv 64 (no padding), then residual blocks of 128, 256 and 728
channels that each halve the resolution (max pool, 1x1 strided shortcut). Middle flow: 8 identical blocks
of 728. Exit flow: a 728 -> 1024 block, then separable convs of 1536 and 2048, global average pool and fc.
With 3 input channels and 5 classes it has exactly 20,817,197 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

# Smallest input the stacked strides handle with a non-empty map at every stage (the unpadded 3x3 convs of
# the entry flow need at least 7 px); far below any size we train at.
XCEPTION_MIN_SIZE = 32


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 (one filter per channel), then a pointwise 1x1 mixing channels; no bias (BN follows)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """`reps` x (ReLU -> separable conv -> BN), optional stride-2 max pool, plus a shortcut.

    The shortcut is the identity when the shape is kept, else a strided 1x1 conv + BN. `grow_first` decides
    whether the first or the last separable conv changes the channel count; `start_with_relu=False` drops
    the leading ReLU (the first block follows a ReLU already).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int,
        *,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

        widths = [in_channels] + [out_channels if grow_first else in_channels] * (reps - 1) + [out_channels]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if i > 0 or start_with_relu:
                # Not in place: the block input is still needed by the shortcut.
                layers.append(nn.ReLU(inplace=i > 0))
            layers += [SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class Xception(nn.Module):
    """Xception backbone + classifier. `features` maps (N, C, H, W) to the final 2048-channel map (the
    Grad-CAM target); `head` pools it globally and applies the fc layer."""

    def __init__(self, in_channels: int, num_classes: int, size: int) -> None:
        super().__init__()
        if size < XCEPTION_MIN_SIZE:
            raise ValueError(f"Xception needs inputs of at least {XCEPTION_MIN_SIZE} px, got {size}")
        entry = [
            nn.Conv2d(in_channels, 32, 3, stride=2, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            XceptionBlock(64, 128, 2, 2, start_with_relu=False),
            XceptionBlock(128, 256, 2, 2),
            XceptionBlock(256, 728, 2, 2),
        ]
        middle = [XceptionBlock(728, 728, 3, 1) for _ in range(8)]
        exit_flow = [
            XceptionBlock(728, 1024, 2, 2, grow_first=False),
            SeparableConv2d(1024, 1536),
            nn.BatchNorm2d(1536),
            nn.ReLU(inplace=True),
            SeparableConv2d(1536, 2048),
            nn.BatchNorm2d(2048),
            nn.ReLU(inplace=True),
        ]
        self.features = nn.Sequential(*entry, *middle, *exit_flow)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
