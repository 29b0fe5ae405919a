"""Variant names -> models, and a size/cost summary of all of them."""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from animeprov.config import VARIANTS, get_variant
from animeprov.models.classifier import Classifier


def create_model(name: str, num_classes: int, size: int) -> Classifier:
    """A freshly initialised model of variant `name` for (N, 3, size, size) inputs in [0, 1].

    Raises ValueError for an unknown variant, fewer than 2 classes or a size the backbone cannot handle.
    """
    return Classifier(get_variant(name), num_classes, size)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: Classifier, *, stem_only: bool = False) -> int:
    """FLOPs of one forward pass of a single image, as counted by torch's FlopCounterMode.

    Counts matrix multiplications and convolutions (a multiply-add = 2 FLOPs) of the model's mathematics:
    the count runs on a weightless copy on the "meta" device, where the DCT takes its matmul form and CBAM its
    direct 7x7 conv (not the CPU fast paths: the FFT-based scipy DCT costs far less than the matmul form's
    4 * size^3 per channel; the polyphase CBAM conv about 3x more). Elementwise ops, pooling, BatchNorm, log
    and sigmoid are not counted (a few FLOPs per activation against tens to thousands for the convs).
    `stem_only` counts just the stem.
    """
    counted = copy.deepcopy(model.stem if stem_only else model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        counted(torch.empty(1, 3, model.size, model.size, device="meta"))
    return counter.get_total_flops()


def model_summary(size: int, num_classes: int = 5) -> list[dict]:
    """One row per variant: name, backbone, stem, attention, params, forward GFLOPs per image at `size` (see
    `forward_flops`) and, of those, `dct_gflops` for the matrix-form DCT."""
    rows = []
    for name, spec in VARIANTS.items():
        model = create_model(name, num_classes, size)
        rows.append(
            {
                "name": name,
                "backbone": spec.backbone,
                "stem": spec.stem,
                "attention": spec.attention,
                "params": count_parameters(model),
                "gflops": forward_flops(model) / 1e9,
                "dct_gflops": forward_flops(model, stem_only=True) / 1e9,
            }
        )
    return rows
