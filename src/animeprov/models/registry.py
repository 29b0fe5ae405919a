"""Variant names -> models, and a size/cost summary of all of them."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from animeprov.config import VARIANTS, get_variant
from animeprov.models.classifier import Classifier
from animeprov.models.efficientnet import load_imagenet_weights

# TrainConfig.init values: "" = random initialisation; "imagenet" = the backbone starts from ImageNet weights.
INITS = ("", "imagenet")
# Backbone name -> the function that fills it with ImageNet weights (all but its final classifier) and
# returns the names of the tensors it filled.
IMAGENET_WEIGHTS: dict[str, Callable[[torch.nn.Module], set[str]]] = {
    "efficientnet-lite0": load_imagenet_weights,
    "efficientnet-lite0-4": load_imagenet_weights,
    "efficientnet-lite0-5": load_imagenet_weights,
}


def create_model(name: str, num_classes: int, size: int) -> Classifier:
    """A freshly initialised model of variant `name` for (N, 3, size, size) inputs in [0, 1].

    Raises ValueError for an unknown variant, fewer than 2 classes or a size the backbone cannot handle.
    """
    return Classifier(get_variant(name), num_classes, size)


def initialise(model: Classifier, init: str) -> set[str]:
    """Start `model` from the weights `init` names (TrainConfig.init): "" keeps the random initialisation,
    "imagenet" loads ImageNet weights into the backbone (not its final classifier, nor the stem or CBAM).
    Returns the names (in `model.state_dict()`) of the tensors that now hold pretrained values.

    Raises ValueError for an unknown `init` or a backbone without ImageNet weights, and
    efficientnet.WeightsNotInstalledError (a FileNotFoundError naming the package to install) when the
    weights are not installed.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(map(repr, INITS))}")
    if not init:
        return set()
    backbone = model.spec.backbone
    if backbone not in IMAGENET_WEIGHTS:
        usable = [name for name, spec in VARIANTS.items() if spec.backbone in IMAGENET_WEIGHTS]
        raise ValueError(
            f"init={init!r}: variant {model.spec.name!r} (backbone {backbone!r}) has no ImageNet weights; "
            f"variants that have: {', '.join(usable)}"
        )
    filled = IMAGENET_WEIGHTS[backbone](model.backbone)
    return {f"backbone.{name}" for name in filled}


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
