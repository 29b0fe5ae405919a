"""CBAM: shapes at any channel count, gates in (0, 1), gradients, and the kept gates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from animeprov.layers.cbam import CBAM, polyphase_conv, polyphase_index


@pytest.mark.parametrize("channels", [1, 3, 64])
def test_shape_gates_and_gradients(channels):
    torch.manual_seed(0)
    cbam = CBAM(channels)
    x = torch.randn(2, channels, 9, 12, requires_grad=True)
    out = cbam(x)
    assert out.shape == x.shape
    channel_gate, spatial_gate = cbam.last_channel_gate, cbam.last_spatial_gate
    assert channel_gate.shape == (2, channels, 1, 1) and spatial_gate.shape == (2, 1, 9, 12)
    for gate in (channel_gate, spatial_gate):
        assert not gate.requires_grad
        assert gate.min() > 0 and gate.max() < 1
    # The kept gates are exactly the ones applied.
    assert torch.allclose(out, x * channel_gate * spatial_gate, atol=1e-6)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in cbam.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_attention_depends_on_content_and_position():
    torch.manual_seed(1)
    cbam = CBAM(3)
    x = torch.randn(2, 3, 16, 16)
    x[1] *= 5  # a different second image
    cbam(x)
    channel_gate, spatial_gate = cbam.last_channel_gate, cbam.last_spatial_gate
    assert not torch.allclose(channel_gate[0], channel_gate[1])
    assert spatial_gate[0].std() > 0  # varies over positions


def test_gates_can_be_left_out():
    cbam = CBAM(3, keep_gates=False)
    cbam(torch.randn(1, 3, 8, 8))
    assert cbam.last_channel_gate is None and cbam.last_spatial_gate is None


@pytest.mark.parametrize("kernel_size", [3, 7, 9])
@pytest.mark.parametrize("phases", [2, 4])
def test_polyphase_conv_equals_the_direct_conv_with_gradients(kernel_size, phases):
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2).double()
    x = torch.randn(2, 2, 12, 16, dtype=torch.float64, requires_grad=True)
    index = polyphase_index(2, kernel_size, phases)
    fast = polyphase_conv(x, conv, index, phases)
    direct = conv(x)
    assert torch.allclose(fast, direct, atol=1e-12)
    upstream = torch.randn_like(direct)
    fast_grads = torch.autograd.grad(fast, (x, conv.weight, conv.bias), upstream)
    direct_grads = torch.autograd.grad(direct, (x, conv.weight, conv.bias), upstream)
    for fast_grad, direct_grad in zip(fast_grads, direct_grads, strict=True):
        assert torch.allclose(fast_grad, direct_grad, atol=1e-12)


def test_cpu_fast_path_matches_the_plain_conv_in_the_module():
    torch.manual_seed(3)
    cbam = CBAM(3).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)  # divisible by the phases: polyphase path
    cbam(x)
    attended = x * cbam.last_channel_gate
    descriptors = torch.cat([attended.mean(1, keepdim=True), attended.amax(1, keepdim=True)], dim=1)
    expected = torch.sigmoid(cbam.spatial_attention.conv(descriptors))
    assert torch.allclose(cbam.last_spatial_gate, expected, atol=1e-12)
    # The derived index is not part of the saved state.
    assert set(cbam.state_dict()) == {
        "channel_attention.mlp.0.weight",
        "channel_attention.mlp.0.bias",
        "channel_attention.mlp.2.weight",
        "channel_attention.mlp.2.bias",
        "spatial_attention.conv.weight",
        "spatial_attention.conv.bias",
    }
