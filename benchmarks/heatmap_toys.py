"""The two design checks behind docs/heatmap.md, run on the trained toys of tests/test_heatmap.py.

The toys are small models trained in a few seconds on 32 px images whose class-1 evidence (a checkerboard)
sits in the top-left quadrant only, so a heatmap's correct answer is known. They are imported from the test
module on purpose: the figures in the docs are about exactly the toy the tests assert on.

`gradcam`: on the trained cnn-pixel toy, plain Grad-CAM (gradient averaged over positions, then weighted by
the activations) against the HiResCAM form `class_heatmap(method="gradcam")` uses (gradient x activation at
each position). Prints, for each class-1 test image, the mean heat per quadrant of both maps
([[top-left, top-right], [bottom-left, bottom-right]]).

`single-patch`: on the trained cnn-dct-mask toy, the textbook occlusion (blur one 8 x 8 patch, stride 4,
everything else intact) against the random-mask fit `class_heatmap(method="occlusion")` uses. Prints, per
image, the change of the class log-odds caused by each single patch ("drop" > 0: the patch supported the
class) inside and outside the evidence quadrant, then the random-mask fit's mean effect per quadrant (nats).

    .venv/bin/python benchmarks/heatmap_toys.py gradcam
    .venv/bin/python benchmarks/heatmap_toys.py single-patch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from animeprov.heatmap import blurred_copy, class_heatmap, class_log_odds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_heatmap import HALF, SIZE, make_quadrant_data, quadrant_means, train_toy  # noqa: E402

PATCH = 8
STRIDE = 4
TEST_SEED, TEST_IMAGES = 7, 8  # the held-out images of the test (half of them class 1)


def class_one_test_images() -> torch.Tensor:
    images, labels = make_quadrant_data(TEST_SEED, TEST_IMAGES)
    return images[labels == 1]


def gradcam_vs_hirescam() -> None:
    model = train_toy("cnn-pixel", 64, 40, 1e-2)  # the test's settings
    positives = class_one_test_images()
    classes = torch.ones(len(positives), dtype=torch.long)
    features = model.backbone.features(model.attention(model.stem(positives)))
    log_odds = class_log_odds(model.backbone.head(features), classes).sum()
    (gradients,) = torch.autograd.grad(log_odds, features)
    plain = (gradients.mean(dim=(2, 3), keepdim=True) * features).sum(1).detach().clamp(min=0)
    print("plain Grad-CAM, max over each image's map:", plain.amax(dim=(1, 2)).tolist())

    hirescam = class_heatmap(model, positives, 1, method="gradcam")
    for i, heat in enumerate(hirescam):
        print(f"image {i}: HiResCAM mean heat per quadrant {np.round(quadrant_means(heat), 3).tolist()}")
    # Same upsampling and per-image scaling as class_heatmap, so the two are drawn on one scale.
    upsampled = torch.nn.functional.interpolate(
        plain[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )[:, 0]
    for i, heat in enumerate(upsampled):
        peak = heat.max()
        heat = (heat / peak if peak > 0 else heat).numpy()
        print(
            f"image {i}: plain Grad-CAM mean heat per quadrant {np.round(quadrant_means(heat), 3).tolist()}"
        )


def single_patch_vs_random_masks() -> None:
    model = train_toy("cnn-dct-mask", 16, 20, 3e-3)  # the test's settings
    positives = class_one_test_images()
    blurred = blurred_copy(positives, 3)
    cls = torch.tensor([1])
    corners = range(0, SIZE - PATCH + 1, STRIDE)
    with torch.no_grad():
        for i, image in enumerate(positives):
            base = class_log_odds(model(image[None]), cls).item()
            drops_inside, drops_elsewhere = [], []
            for top in corners:
                for left in corners:
                    occluded = image.clone()
                    patch = (slice(None), slice(top, top + PATCH), slice(left, left + PATCH))
                    occluded[patch] = blurred[i][patch]
                    drop = base - class_log_odds(model(occluded[None]), cls).item()
                    inside = top + PATCH <= HALF and left + PATCH <= HALF
                    (drops_inside if inside else drops_elsewhere).append(drop)
            print(
                f"image {i}: log-odds {base:.1f}; single-patch drop inside the evidence quadrant "
                f"min {min(drops_inside):.1f} max {max(drops_inside):.1f} mean {np.mean(drops_inside):.1f}; "
                f"elsewhere mean {np.mean(drops_elsewhere):.1f}"
            )
    heat = class_heatmap(model, positives, 1, method="occlusion", normalize=False)
    for i, image_heat in enumerate(heat):
        means = np.round(quadrant_means(image_heat), 2).tolist()
        print(f"image {i}: random-mask fit, mean effect per quadrant (nats) {means}")


EXPERIMENTS = {"gradcam": gradcam_vs_hirescam, "single-patch": single_patch_vs_random_masks}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    EXPERIMENTS[parser.parse_args().experiment]()


if __name__ == "__main__":
    main()
