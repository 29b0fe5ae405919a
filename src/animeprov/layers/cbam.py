"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

Channel attention, then spatial attention, each a sigmoid gate multiplied onto the features. In this project
CBAM sits on the 3-channel input representation (the paper's "Mask"), so it has to work for tiny channel
counts where the usual `C // reduction` hidden width would be zero.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """Gate per channel: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) with one MLP shared by both descriptors."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        # At C = 3 a strict C // r would give zero (or one) hidden units; a small floor keeps the gate expressive
        # for the price of a few dozen parameters.
        hidden = max(channels // reduction, min_hidden)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3))
        peak = x.amax(dim=(2, 3))
        logits = self.mlp(avg) + self.mlp(peak)
        return torch.sigmoid(logits)[:, :, None, None]


class SpatialAttention(nn.Module):
    """Gate per position: sigmoid(conv7x7([mean over channels; max over channels]))."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptors = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(descriptors))


class CBAM(nn.Module):
    """x -> x * channel_gate -> (.) * spatial_gate. Output has the input's shape.

    The gates of the latest forward pass are kept (detached) in `last_channel_gate` (N, C, 1, 1) and
    `last_spatial_gate` (N, 1, H, W) for visualisation; pass `keep_gates=False` to skip that.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        kernel_size: int = 7,
        min_hidden: int = 4,
        keep_gates: bool = True,
    ) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction, min_hidden)
        self.spatial_attention = SpatialAttention(kernel_size)
        self.keep_gates = keep_gates
        self.last_channel_gate: torch.Tensor | None = None
        self.last_spatial_gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = self.channel_attention(x)
        x = x * channel_gate
        spatial_gate = self.spatial_attention(x)
        if self.keep_gates:
            self.last_channel_gate = channel_gate.detach()
            self.last_spatial_gate = spatial_gate.detach()
        return x * spatial_gate
