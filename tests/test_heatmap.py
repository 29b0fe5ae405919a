"""Heatmaps: evidence confined to a known quadrant is found there; shapes, ranges, determinism, overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from animeprov.config import VARIANTS
from animeprov.heatmap import class_heatmap, colour_map, overlay_heatmap, random_keep_masks
from animeprov.models import create_model
from animeprov.transforms.stem import fit_stem_statistics

SIZE = 32
HALF = SIZE // 2


def quadrant_means(heat: np.ndarray) -> np.ndarray:
    """Mean heat per quadrant: [[top-left, top-right], [bottom-left, bottom-right]]."""
    return heat.reshape(2, HALF, 2, HALF).mean(axis=(1, 3))


class TopLeftDetailModel(nn.Module):
    """Class 1's logit: fine-detail energy (squared Laplacian) of the top-left quadrant; class 0's: 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
        detail = F_conv(grey, kernel)[:, 0, :HALF, :HALF]
        energy = detail.pow(2).mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(energy), 20 * energy], dim=1)


def F_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, kernel, padding=1)


def noise_images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_occlusion_finds_evidence_in_the_known_quadrant():
    heat = class_heatmap(TopLeftDetailModel(), noise_images(2, 0), 1, method="occlusion")
    assert heat.shape == (2, SIZE, SIZE) and heat.dtype == np.float32
    for image_heat in heat:
        means = quadrant_means(image_heat)
        assert np.unravel_index(image_heat.argmax(), image_heat.shape) < (HALF, HALF)
        assert means[0, 0] > 3 * means.ravel()[1:].max()
        # the bottom-right cells never change the top-left quadrant's detail: their coefficients are 0
        assert image_heat[HALF + 4 :, HALF + 4 :].max() < 1e-6


def make_quadrant_data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random content with mild noise, quantised to 8 bits like a real image file; class 1 adds a
    checkerboard (the highest DCT frequency) to the top-left quadrant only."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = images + 0.03 * torch.randn(images.shape, generator=generator)
    labels = torch.arange(n) % 2
    checker = (torch.arange(HALF).view(-1, 1) + torch.arange(HALF).view(1, -1)) % 2 * 0.3 - 0.15
    images[labels == 1, :, :HALF, :HALF] += checker
    return (images.clamp(0, 1) * 255).round() / 255, labels


def train_toy(variant: str, n_images: int, steps: int, lr: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(variant, 2, SIZE)
    images, labels = make_quadrant_data(seed, n_images)
    fit_stem_statistics(model.stem, [images])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = slice(step * 16 % n_images, step * 16 % n_images + 16)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        test_images, test_labels = make_quadrant_data(seed + 1, 16)
        accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
    assert accuracy == 1.0, f"toy {variant} did not learn the quadrant pattern (accuracy {accuracy})"
    return model


@pytest.mark.parametrize(
    ("variant", "method", "n_images", "steps", "lr"),
    [("cnn-dct-mask", "occlusion", 16, 20, 3e-3), ("cnn-pixel", "gradcam", 64, 40, 1e-2)],
)
def test_trained_toy_heat_lands_on_the_quadrant_with_the_evidence(variant, method, n_images, steps, lr):
    model = train_toy(variant, n_images, steps, lr)
    images, labels = make_quadrant_data(7, 8)
    positives = images[labels == 1]
    heat = class_heatmap(model, positives, 1, method=method)
    for image_heat in heat:
        means = quadrant_means(image_heat)
        assert means[0, 0] == means.max()
        assert means[0, 0] > 1.5 * np.sort(means.ravel())[-2]


def test_auto_picks_occlusion_for_dct_and_gradcam_for_pixel():
    images = noise_images(1, 1)
    dct = create_model("cnn-dct", 3, SIZE)
    np.testing.assert_array_equal(
        class_heatmap(dct, images, 0), class_heatmap(dct, images, 0, method="occlusion")
    )
    pixel = create_model("cnn-pixel", 3, SIZE)
    np.testing.assert_array_equal(
        class_heatmap(pixel, images, 0), class_heatmap(pixel, images, 0, method="gradcam")
    )


def test_gradcam_works_under_no_grad_and_with_frozen_weights():
    model = create_model("cnn-pixel", 3, SIZE)
    images = noise_images(2, 6)
    expected = class_heatmap(model, images, 1, method="gradcam")
    model.requires_grad_(False)
    with torch.no_grad():
        np.testing.assert_array_equal(class_heatmap(model, images, 1, method="gradcam"), expected)
    assert expected.max() == 1


def test_gradcam_refuses_frequency_domain_models():
    with pytest.raises(ValueError, match="occlusion"):
        class_heatmap(create_model("cnn-dct-mask", 3, SIZE), noise_images(1, 0), 0, method="gradcam")
    with pytest.raises(ValueError, match="unknown heatmap method"):
        class_heatmap(create_model("cnn-pixel", 3, SIZE), noise_images(1, 0), 0, method="saliency")


# Every cnn variant and the Xception with the most parts (DCT stem, CBAM, separable convs): each Xception
# costs seconds on CPU.
@pytest.mark.parametrize(
    "variant", [name for name in VARIANTS if name.startswith("cnn")] + ["xception-dct-mask"]
)
def test_deterministic_map_in_range(variant):
    torch.manual_seed(0)
    model = create_model(variant, 3, SIZE)
    model.train()
    images = noise_images(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a coarse grid keeps Xception's occlusion cheap
    first = class_heatmap(model, images, [0, 2], method="occlusion", grid=2, samples=8)
    second = class_heatmap(model, images, [0, 2], method="occlusion", grid=2, samples=8)
    assert first.shape == (2, SIZE, SIZE) and first.dtype == np.float32
    assert np.isfinite(first).all() and first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, second)
    assert model.training, "the model's mode must be restored"
    for key, value in model.state_dict().items():  # BatchNorm statistics untouched: eval mode was used
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_raw_maps_are_the_unnormalised_drops():
    images = noise_images(2, 4)
    model = TopLeftDetailModel()
    raw = class_heatmap(model, images, 1, method="occlusion", normalize=False)
    heat = class_heatmap(model, images, 1, method="occlusion")
    assert raw.min() >= 0 and raw.max() > 1e-3
    np.testing.assert_allclose(heat, raw / raw.max(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-7)


class ConstantModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.3, -1.2, 2.0]]).expand(len(x), -1) + 0 * x.mean()


def test_no_evidence_gives_an_all_zero_map_and_bad_class_indices_are_refused():
    heat = class_heatmap(ConstantModel(), noise_images(2, 5), [0, 2], method="occlusion")
    np.testing.assert_array_equal(heat, 0)  # no region changes anything: no heat, not scaled-up noise
    raw = class_heatmap(ConstantModel(), noise_images(2, 5), 1, method="occlusion", normalize=False)
    np.testing.assert_array_equal(raw, 0)
    with pytest.raises(ValueError, match="class indices"):
        class_heatmap(TopLeftDetailModel(), noise_images(2, 5), [0], method="occlusion")
    with pytest.raises(ValueError, match="out of range"):
        class_heatmap(create_model("cnn-pixel", 3, SIZE), noise_images(1, 5), 3)


def test_keep_masks_are_balanced_and_seeded():
    keep = random_keep_masks(10, 3, seed=1)
    assert keep.shape == (10, 9)
    np.testing.assert_array_equal(keep.sum(0).numpy(), 5)  # every cell kept in exactly half of the samples
    torch.testing.assert_close(keep, random_keep_masks(10, 3, seed=1))
    assert not torch.equal(keep, random_keep_masks(10, 3, seed=2))


def test_overlay_blends_the_colour_map_into_the_picture():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    heat = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    picture = overlay_heatmap(pixels, heat)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (30, 20)
    np.testing.assert_array_equal(np.asarray(overlay_heatmap(pixels, heat, alpha=0.0)), pixels)
    np.testing.assert_array_equal(np.asarray(overlay_heatmap(pixels, heat, alpha=1.0)), colour_map(heat))
    expected = np.rint(0.55 * pixels + 0.45 * colour_map(heat).astype(np.float64))
    assert np.abs(np.asarray(picture).astype(np.float64) - expected).max() <= 1
    cold, hot = colour_map(np.array([0.0, 1.0]))
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue for no evidence, red for the strongest
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(pixels, heat[:, :10])
    with pytest.raises(ValueError, match="uint8"):
        overlay_heatmap(pixels.astype(np.float32), heat)
