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


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 2) of an (N, C, H, W) map with even H and W, as two adds of neighbouring rows and then
    columns (equal up to float rounding: the four values are summed in another order), in x's layout.

    In channels_last memory the row pairs are contiguous runs of W * C values, so the first add is one long
    vectorised pass; PyTorch's CPU kernel vectorises over channels instead, and with 4 or 8 of them it is
    4-5x slower than this.
    """
    n, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(n * h // 2, 2, w // 2, 2 * c)
        pairs = rows[:, 0] + rows[:, 1]  # (N * H/2, W/2, 2C): columns 2j and 2j+1 side by side
        pooled = (pairs[..., :c] + pairs[..., c:]).mul_(0.25)
        return pooled.view(n, h // 2, w // 2, c).permute(0, 3, 1, 2)
    rows = x.reshape(n * c * h // 2, 2, w)
    pairs = (rows[:, 0] + rows[:, 1]).view(-1, w // 2, 2)
    return (pairs[..., 0] + pairs[..., 1]).mul_(0.25).view(n, c, h // 2, w // 2)


class AvgPool2x2(nn.AvgPool2d):
    """nn.AvgPool2d(2) that runs `avg_pool_2x2` for CPU inference (no autograd) on even sides; training,
    saliency (autograd), other devices, odd sides and torch.compile / export tracing use PyTorch's kernel."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and x.ndim == 4
            and x.shape[-2] % 2 == 0
            and x.shape[-1] % 2 == 0
            and not torch.compiler.is_compiling()
        ):
            return avg_pool_2x2(x)
        return super().forward(x)


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    # No BatchNorm (as in Frank et al.'s simple CNN): the stems already standardise the input, and at full
    # resolution BN's extra passes cost about a quarter more CPU time per training step at 256 px.
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
    if pool:
        layers.append(AvgPool2x2())
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
