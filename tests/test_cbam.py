"""CBAM: shapes at any channel count, gates in (0, 1), gradients, and the kept gates."""

from __future__ import annotations

import pytest
import torch

from animeprov.layers.cbam import CBAM


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
