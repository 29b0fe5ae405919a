"""The whole model of one variant: input stem -> optional CBAM "mask" -> backbone -> logits."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from animeprov.config import VariantSpec
from animeprov.layers.cbam import CBAM
from animeprov.models.cnn import PooledCNN, SmallCNN
from animeprov.models.efficientnet import EfficientNetLite0
from animeprov.models.xception import Xception
from animeprov.transforms.stem import create_stem

INPUT_CHANNELS = 3  # the model input is always RGB in [0, 1]

# Backbone name -> constructor (in_channels, num_classes, size).
BACKBONES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "cnn": SmallCNN,
    "pooled-cnn": PooledCNN,
    "xception": Xception,
    "efficientnet-lite0": EfficientNetLite0,
    "efficientnet-lite0-4": partial(EfficientNetLite0, stages=4),
    "efficientnet-lite0-5": partial(EfficientNetLite0, stages=5),
}


class Classifier(nn.Module):
    """Takes (N, 3, size, size) float pixels in [0, 1] and returns (N, num_classes) logits.

    All preprocessing after loading happens in `stem`, whose statistics (for DCT stems) are buffers in the
    state_dict. `attention` is CBAM on the stem output when `spec.attention` (the paper's Fig. 5), else an
    identity. `backbone.features` / `backbone.head` split the backbone for Grad-CAM.
    """

    def __init__(self, spec: VariantSpec, num_classes: int, size: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if spec.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {spec.backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.spec = spec
        self.num_classes = num_classes
        self.size = size
        self.stem = create_stem(spec.stem, size, INPUT_CHANNELS)
        self.attention: nn.Module = CBAM(INPUT_CHANNELS) if spec.attention else nn.Identity()
        self.backbone = BACKBONES[spec.backbone](INPUT_CHANNELS, num_classes, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.head[-1](self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features: what the final linear layer sees (the familiarity check measures distances)."""
        expected = (INPUT_CHANNELS, self.size, self.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{self.spec.name} expects input (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        return self.backbone.head[:-1](self.backbone.features(self.attention(self.stem(x))))

    def extra_repr(self) -> str:
        return f"variant={self.spec.name}, num_classes={self.num_classes}, size={self.size}"
