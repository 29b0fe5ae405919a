"""The paper's small CNN: a few conv + average-pooling blocks, then a linear layer on the flattened map.

For DCT inputs the position of a coefficient matters (a generator's periodic artefacts are peaks at fixed
frequencies), so the map is flattened, never globally pooled: the head sees where in the spectrum a feature
fired, at the resolution of the last block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_WIDTHS = (4, 8, 16, 32)


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    # No BatchNorm (as in Frank et al.'s simple CNN): the stems already standardise the input, and at full
    # resolution BN's extra passes cost about a quarter more CPU time per training step at 256 px.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """conv3x3 -> ReLU blocks; every block but the last ends in AvgPool2d(2); flatten -> Linear.

    `features` is the conv stack: its output (the last conv's activation map, size / 2**(len(widths) - 1) px)
    is the Grad-CAM target. `head` flattens it and maps to `num_classes` logits, so its input width depends on
    `size`.
    """

    def __init__(
        self, in_channels: int, num_classes: int, size: int, widths: Sequence[int] = DEFAULT_WIDTHS
    ) -> None:
        super().__init__()
        num_pools = len(widths) - 1
        if size < 2**num_pools:
            raise ValueError(f"SmallCNN with {num_pools} poolings needs inputs of at least {2**num_pools} px")
        channels = [in_channels, *widths]
        self.features = nn.Sequential(
            *(
                conv_block(cin, cout, pool=i < num_pools)
                for i, (cin, cout) in enumerate(zip(channels[:-1], widths, strict=True))
            )
        )
        final_size = size // 2**num_pools
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * final_size * final_size, num_classes))
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                # He initialisation keeps the activation scale through the ReLUs; without BatchNorm, PyTorch's
                # default (a third of that variance per layer) starts training on a long plateau.
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


POOLED_WIDTHS = (16, 32, 64, 128)


class PooledCNN(SmallCNN):
    """The small CNN, wider, with a global average pool before the linear head.

    For residual stems (NPR, high-pass) a trace is the same wherever it appears in the view, so the head
    should not know where a feature fired: pooling makes the model translation invariant and lets it judge
    any patch the same way. (DCT stems keep SmallCNN's flatten: there the position is the frequency.)
    """

    def __init__(
        self, in_channels: int, num_classes: int, size: int, widths: Sequence[int] = POOLED_WIDTHS
    ) -> None:
        super().__init__(in_channels, num_classes, size, widths)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))
