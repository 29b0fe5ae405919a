"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

Channel attention, then spatial attention, each a sigmoid gate multiplied onto the features. In this project
CBAM sits on the 3-channel input representation (the paper's "Mask"), so it has to work for tiny channel
counts where the usual `C // reduction` hidden width would be zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Gate per channel: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))), one MLP shared by both descriptors."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        # At C = 3 a strict C // r would give zero hidden units; a small floor keeps the gate expressive for
        # the price of a few dozen parameters.
        hidden = max(channels // reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3))
        peak = x.amax(dim=(2, 3))
        logits = self.mlp(avg) + self.mlp(peak)
        return torch.sigmoid(logits)[:, :, None, None]


# Polyphase factor for the CPU spatial convolution (see `polyphase_conv`); 4 measured fastest (vs 2 and 8).
PHASES = 4


def polyphase_index(in_channels: int, kernel_size: int, phases: int) -> torch.Tensor:
    """Where each weight of an (1, in_channels, k, k) kernel lands in the equivalent polyphase kernel.

    Splitting an image into phases x phases sub-images (`pixel_unshuffle`) turns a k x k convolution with one
    output channel into a small convolution on the sub-images with phases^2 outputs, one per output phase.
    Entry [out_phase, in_channel_phase, a, b] indexes the flattened k x k kernel, or points one past its end
    (a zero) where no original tap maps.
    """
    k, r, pad = kernel_size, phases, kernel_size // 2
    reach = (pad + r - 1) // r  # low-resolution taps on either side
    taps = torch.arange(-reach, reach + 1)
    phase = torch.arange(r)
    # Broadcast over (oy, ox, c, py, px, qy, qx): output phase, input channel and phase, low-res tap.
    oy, ox = phase.view(r, 1, 1, 1, 1, 1, 1), phase.view(1, r, 1, 1, 1, 1, 1)
    c = torch.arange(in_channels).view(1, 1, -1, 1, 1, 1, 1)
    py, px = phase.view(1, 1, 1, r, 1, 1, 1), phase.view(1, 1, 1, 1, r, 1, 1)
    qy, qx = taps.view(1, 1, 1, 1, 1, -1, 1), taps.view(1, 1, 1, 1, 1, 1, -1)
    ky, kx = qy * r + py - oy + pad, qx * r + px - ox + pad
    valid = (ky >= 0) & (ky < k) & (kx >= 0) & (kx < k)
    index = torch.where(valid, (c * k + ky) * k + kx, in_channels * k * k)
    return index.reshape(r * r, in_channels * r * r, 2 * reach + 1, 2 * reach + 1)


def polyphase_conv(x: torch.Tensor, conv: nn.Conv2d, index: torch.Tensor, phases: int) -> torch.Tensor:
    """Exactly `conv(x)` for a stride-1 'same' conv with one output channel; H, W divisible by `phases`.

    oneDNN vectorises over output channels, so a conv with a single output channel runs at a fraction of the
    CPU's speed; the polyphase form has phases^2 outputs and, although it does ~3x the multiply-adds, runs the
    7x7 spatial-attention conv (forward + backward) about 2.3x faster on CPU. Gradients reach `conv.weight`
    through the gather.
    """
    weight = torch.cat([conv.weight.flatten(), conv.weight.new_zeros(1)])[index]
    out = F.conv2d(F.pixel_unshuffle(x, phases), weight, padding=index.shape[-1] // 2)
    return F.pixel_shuffle(out, phases) + conv.bias.view(1, -1, 1, 1)


class SpatialAttention(nn.Module):
    """Gate per position: sigmoid(conv7x7([mean over channels; max over channels]))."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)
        # Derived from the kernel size only, so not saved: the state_dict is that of the plain conv.
        self.register_buffer("phase_index", polyphase_index(2, kernel_size, PHASES), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max(dim=...) keeps the argmax, so its backward is a scatter rather than amax's tie-sharing mask.
        descriptors = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], dim=1)
        if x.device.type == "cpu" and x.shape[-2] % PHASES == 0 and x.shape[-1] % PHASES == 0:
            logits = polyphase_conv(descriptors, self.conv, self.phase_index, PHASES)
        else:  # GPU convolutions handle one output channel well
            logits = self.conv(descriptors)
        return torch.sigmoid(logits)


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
