"""Constants and the table of model variants: the one place other modules read them from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# log(|DCT| + LOG_EPS): ONE constant for training, evaluation and serving (GANDCTAnalysis used two).
LOG_EPS = 1e-6


def cache_root() -> Path:
    """Where animeprov keeps what it can make again (decoder reconstructions, exported inference graphs):
    $ANIMEPROV_CACHE, else ~/.cache/animeprov."""
    return Path(os.environ.get("ANIMEPROV_CACHE") or Path.home() / ".cache" / "animeprov")


# Decompression-bomb guard: images with more pixels than this are refused (PIL's own warning is ~89 MP).
DEFAULT_MAX_PIXELS = 64_000_000

# Transparent pixels are composited on this colour before anything else sees them.
DEFAULT_ALPHA_BACKGROUND = (255, 255, 255)

# File extensions that batch commands pick up when walking folders.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".apng")

# Classes a model may be trained on that name no generator (decoder-trace twins of human images, see
# animeprov.pairs): an "ai" verdict whose best class is one of them reports the generator as "unknown".
AUXILIARY_CLASSES = ("decoder-trace",)

# Tiles `predict` judges at most per image, spread over it (`io.tile_grid`): every 64 px tile of a 256 px
# image, a quarter of a 512 px image's. On 512 px mosaics of held-out sources 16 of the 64 tiles cost 0.007
# of ROC-AUC for a quarter of the work (docs/predict.md, "Fewer tiles").
DEFAULT_MAX_TILES = 16

# The class meaning "drawn by a person"; detection is P(generated) = 1 - P(HUMAN_CLASS).
DEFAULT_HUMAN_CLASS = "human"

# Verdict calibration targets (evaluation/calibration.py explains each). Here rather than there so that the
# command line can show them as defaults without importing the fitting code (scipy, sklearn) at start-up.
DEFAULT_TARGET_FPR = 0.01  # human images judged "ai": false accusations, the costly error
DEFAULT_TARGET_FNR = 0.05  # generated images judged "artist"
DEFAULT_KNOWN_PASS_RATE = 0.95  # known-generator images that must not be called "unknown generator"


@dataclass(frozen=True)
class VariantSpec:
    """A model variant (the paper's six and ours): a backbone, an input stem and whether CBAM masks the stem
    output."""

    name: str
    backbone: str  # "cnn" | "pooled-cnn" | "xception" | "efficientnet-lite0[-4|-5]"
    stem: str  # "pixel" | "dct" | "npr" | "highpass" | "npr-dct" | "highpass-dct" (transforms/stem.py)
    attention: bool  # CBAM on the stem output (the paper's "Mask")


VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("cnn-pixel", "cnn", "pixel", False),
        VariantSpec("cnn-dct", "cnn", "dct", False),
        VariantSpec("cnn-dct-mask", "cnn", "dct", True),
        VariantSpec("xception-pixel", "xception", "pixel", False),
        VariantSpec("xception-dct", "xception", "dct", False),
        VariantSpec("xception-dct-mask", "xception", "dct", True),
        # Beyond the paper: inputs that keep generator traces and drop content (issue: generalisation to
        # sources never seen; docs/results/generalisation.md compares them under leave-one-source-out).
        VariantSpec("pooled-pixel", "pooled-cnn", "pixel", False),
        VariantSpec("pooled-npr", "pooled-cnn", "npr", False),
        VariantSpec("pooled-highpass", "pooled-cnn", "highpass", False),
        VariantSpec("cnn-npr-dct", "cnn", "npr-dct", False),
        # EfficientNet-Lite0, which can start from ImageNet weights (train --set init=imagenet). The pixel
        # stem's [-1, 1] is the input scale those weights were trained on; the NPR stem's residual (x8) lands
        # at about the same scale, and BatchNorm right after the first conv absorbs what remains.
        VariantSpec("effnet-pixel", "efficientnet-lite0", "pixel", False),
        VariantSpec("effnet-npr", "efficientnet-lite0", "npr", False),
        # Its first 4 or 5 of 7 stages (80 or 112 channels pooled): training steps on 64 px patches about 2x
        # or 1.5x as fast, but more false accusations on unseen sources (docs/results/generalisation.md).
        VariantSpec("effnet4-pixel", "efficientnet-lite0-4", "pixel", False),
        VariantSpec("effnet5-pixel", "efficientnet-lite0-5", "pixel", False),
    )
}


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None
