"""Perturbations: exact small cases against PIL/scipy references, sizes, seeding, spec errors, augment."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from animeprov.perturb import (
    DEFAULT_LADDER,
    MAX_SIDE,
    Augmenter,
    SpecError,
    chain_sizes,
    encode_jpeg,
    parse_augment,
    parse_ladder,
    parse_spec,
    perturb,
    perturb_patch,
    perturbed_shape,
)

# ITU-T T.81 Annex K.1 luminance quantisation table (row-major): what libjpeg uses at quality 50.
ANNEX_K_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ]
)


def image(height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth-ish random content (so compression has something to keep) as uint8 RGB."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(128, 60, size=(height, width, 3))
    return np.clip(gaussian_filter(noise, sigma=(1.5, 1.5, 0)) * 3 - 256, 0, 255).astype(np.uint8)


def pil_round_trip(pixels: np.ndarray, **save_args) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, **save_args)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def scaled_table(quality: int) -> np.ndarray:
    """libjpeg's jpeg_quality_scaling applied to the Annex K table."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((ANNEX_K_LUMA * scale + 50) // 100, 1, 255)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_quality_is_really_applied(quality):
    pixels = image()
    with Image.open(io.BytesIO(encode_jpeg(pixels, quality))) as encoded:
        luma_table = np.array(encoded.quantization[0]).reshape(8, 8)
    # Pillow >= 8.3 reports the table in natural (row-major) order.
    assert np.array_equal(luma_table, scaled_table(quality))
    assert np.array_equal(
        perturb(pixels, f"jpeg:{quality}"), pil_round_trip(pixels, format="JPEG", quality=quality)
    )


def test_jpeg_lower_quality_loses_more():
    pixels = image()
    errors = [np.abs(perturb(pixels, f"jpeg:{q}").astype(int) - pixels).mean() for q in (95, 75, 50)]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_webp_matches_pil_encode_at_that_quality():
    pixels = image()
    expected = pil_round_trip(pixels, format="WEBP", quality=80, lossless=False, method=4)
    assert np.array_equal(perturb(pixels, "webp:80"), expected)
    assert not np.array_equal(perturb(pixels, "webp:30"), expected)


def test_resize_chains_give_the_right_sizes():
    assert chain_sizes((512, 512), "resize:512-1024-512") == [(512, 512), (1024, 1024), (512, 512)]
    # On smaller data the paper's chain keeps its ratios: 256 -> 512 -> 256.
    assert chain_sizes((256, 256), "resize:512-1024-512") == [(256, 256), (512, 512), (256, 256)]
    assert chain_sizes((768, 1024), "resize:768-512") == [(768, 1024), (512, 683)]
    assert chain_sizes((256, 256), "scale:0.5-2") == [(256, 256), (128, 128), (256, 256)]
    pixels = image(32, 24)
    assert perturb(pixels, "resize:512-1024").shape == (64, 48, 3)
    assert perturb(pixels, "resize:768-512").shape == (21, 16, 3)
    # The absolute chain on 32 px data and the same chain as factors are one and the same operation.
    assert np.array_equal(perturb(pixels, "resize:512-1024-512"), perturb(pixels, "scale:2-0.5"))
    assert not np.array_equal(perturb(pixels, "resize:512-1024-512"), pixels)  # resampling is lossy


def test_resize_is_pil_bicubic():
    pixels = image(20, 20)
    expected = np.asarray(Image.fromarray(pixels).resize((40, 40), Image.Resampling.BICUBIC))
    assert np.array_equal(perturb(pixels, "scale:2"), expected)


def test_blur_matches_scipy_and_zero_is_identity():
    pixels = image()
    reference = np.clip(np.rint(gaussian_filter(pixels.astype(np.float32), (1.0, 1.0, 0))), 0, 255)
    assert np.array_equal(perturb(pixels, "blur:1.0"), reference.astype(np.uint8))
    assert np.array_equal(perturb(pixels, "blur:0"), pixels)


def test_noise_has_the_stated_sigma_and_is_seeded():
    grey = np.full((200, 200, 3), 128, np.uint8)  # far from 0 and 255: no clipping
    noisy = perturb(grey, "noise:3", seed=7).astype(float) - 128
    assert abs(noisy.mean()) < 0.05
    assert noisy.std() == pytest.approx(3.0, rel=0.03)
    assert np.array_equal(perturb(grey, "noise:3", seed=7), perturb(grey, "noise:3", seed=7))
    assert not np.array_equal(perturb(grey, "noise:3", seed=7), perturb(grey, "noise:3", seed=8))


def test_crop_is_a_seeded_window_without_resampling():
    pixels = image(40, 50)
    out = perturb(pixels, "crop:0.8", seed=3)
    assert out.shape == (32, 40, 3)
    windows = [
        (top, left)
        for top in range(40 - 32 + 1)
        for left in range(50 - 40 + 1)
        if np.array_equal(pixels[top : top + 32, left : left + 40], out)
    ]
    assert len(windows) == 1
    assert np.array_equal(out, perturb(pixels, "crop:0.8", seed=3))
    assert perturb(pixels, "crop:1").shape == pixels.shape


@pytest.mark.parametrize("spec", DEFAULT_LADDER)
def test_every_ladder_step_is_a_pure_function(spec):
    pixels = image()
    before = pixels.copy()
    first, second = perturb(pixels, spec, seed=5), perturb(pixels, spec, seed=5)
    assert np.array_equal(first, second)
    assert np.array_equal(pixels, before)  # the input is never modified
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first is not pixels


def test_steps_joined_with_plus_apply_left_to_right():
    pixels = image()
    assert np.array_equal(perturb(pixels, "jpeg:90+blur:1"), perturb(perturb(pixels, "jpeg:90"), "blur:1"))
    assert [s.kind for s in parse_spec("JPEG:90 + blur:1").steps] == ["jpeg", "blur"]


def test_strength_orders_each_family():
    assert parse_spec("jpeg:95").strength < parse_spec("jpeg:75").strength < parse_spec("jpeg:50").strength
    assert parse_spec("resize:512-1024-512").strength == pytest.approx(2.0)
    assert parse_spec("resize:512-1024").strength == pytest.approx(1.0)
    assert parse_spec("scale:2-0.5").family == "resize"
    assert parse_spec("none").family == "none" and parse_spec("none").strength == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty perturbation spec"),
        ("jpeg", "needs a value"),
        ("jpeg:abc", "values must be numbers"),
        ("jpeg:101", "quality must be a whole number from 1 to 100"),
        ("jpeg:7.5", "quality must be a whole number"),
        ("gamma:2", "unknown perturbation 'gamma'"),
        ("resize:512", "needs at least two sizes"),
        ("resize:512-10.5", "whole numbers of pixels"),
        ("scale:0-2", "scale factors must be positive"),
        ("crop:1.5", "kept fraction must be in (0, 1]"),
        ("blur:-1", "must not be negative"),
        ("blur:1-2", "blur takes one value"),
        ("none+jpeg:90", "'none' cannot be combined"),
        ("scale:100-100", "more than 8192 px"),
    ],
)
def test_spec_errors_say_what_is_wrong(spec, message):
    with pytest.raises(SpecError) as error:
        perturb(image(), spec)
    assert message in str(error.value)


def test_ladder_parsing_keeps_order_and_drops_duplicates():
    ladder = parse_ladder(["none", "jpeg:75", "JPEG:75", "blur:1"])
    assert [p.spec for p in ladder] == ["none", "jpeg:75", "blur:1"]


def test_perturb_refuses_non_rgb_arrays():
    with pytest.raises(ValueError, match="uint8"):
        perturb(np.zeros((8, 8, 3), np.float32), "blur:1")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        perturb(np.zeros((8, 8), np.uint8), "blur:1")


def test_augment_parsing():
    augmenter = parse_augment("resize, jpeg,p=0.25", min_side=64)
    assert augmenter == Augmenter(("resize", "jpeg"), p=0.25, min_side=64)
    assert parse_augment("all").kinds == ("resize", "jpeg", "webp", "blur", "noise", "crop")
    assert parse_augment("") is None and parse_augment("none") is None
    for bad, message in (
        ("sharpen", "unknown kind 'sharpen'"),
        ("p=2", "p must be in [0, 1]"),
        ("p=0.5", "no kinds"),
    ):
        with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_augment(bad)


def test_augmenter_is_seeded_respects_p_and_keeps_the_view_possible():
    pixels = image(64, 64)
    never = Augmenter(("jpeg",), p=0.0)
    assert np.array_equal(never(pixels, np.random.default_rng(0)), pixels)
    always = Augmenter(("resize", "crop", "jpeg", "webp", "blur", "noise"), p=1.0, min_side=48)
    specs = {always.sample((64, 64), np.random.default_rng(seed)).spec for seed in range(60)}
    assert {spec.split(":")[0] for spec in specs} == {"scale", "crop", "jpeg", "webp", "blur", "noise"}
    for seed in range(60):
        out = always(pixels, np.random.default_rng(seed))
        assert min(out.shape[:2]) >= 48, always.sample((64, 64), np.random.default_rng(seed)).spec
        assert np.array_equal(out, always(pixels, np.random.default_rng(seed)))
    half = Augmenter(("noise",), p=0.5)
    applied = [half.sample((8, 8), np.random.default_rng(seed)).spec != "none" for seed in range(400)]
    assert 0.4 < np.mean(applied) < 0.6
    # An image already smaller than the view is never resampled up to fit it, nor does it fail to sample.
    small = image(40, 40)
    for seed in range(60):
        assert always(small, np.random.default_rng(seed)).shape == small.shape
    # Nor does a large one fail because an upscale would pass MAX_SIDE (it would stop a training run).
    resize_only = Augmenter(("resize",), p=1.0, min_side=48)
    for seed in range(60):
        spec = resize_only.sample((64, MAX_SIDE - 100), np.random.default_rng(seed))
        chain_sizes((64, MAX_SIDE - 100), spec.steps[0])  # raises SpecError past MAX_SIDE


# Edges of every kind: the image's corners and borders (not on the 16 px JPEG grid) and the interior.
PATCH_CORNERS = ((0, 0), (0, 200), (168, 0), (168, 200), (77, 101), (16, 35))


@pytest.mark.parametrize(
    "spec",
    [
        "none",
        "blur:1.5",
        "blur:0.3",
        "jpeg:40",
        "jpeg:95",
        "jpeg:60+blur:0.8",
        "scale:2-0.5",
        "resize:512-1024-512",
        "scale:2",
        "scale:0.5",
    ],
)
def test_perturb_patch_is_the_whole_images_patch(spec):
    """Blur, JPEG and resizing by 2 or 1/2 perturb a neighbourhood exactly as the whole image."""
    pixels = image(200, 232)
    whole = perturb(pixels, spec)
    assert whole.shape[:2] == perturbed_shape(pixels.shape[:2], spec)
    scale = whole.shape[0] / pixels.shape[0]
    for top, left in PATCH_CORNERS:
        top, left = (
            min(round(top * scale), whole.shape[0] - 32),
            min(round(left * scale), whole.shape[1] - 32),
        )
        patch = perturb_patch(pixels, spec, top, left, 32, np.random.default_rng(0))
        assert np.array_equal(patch, whole[top : top + 32, left : left + 32]), (spec, top, left)


def test_perturb_patch_other_kinds_match_in_kind():
    pixels = image(200, 232)
    # a scale of 1.5: the window's sampling grid lies within a pixel of the whole image's
    whole = perturb(pixels, "scale:1.5")
    for top, left in ((0, 0), (150, 280), (260, 310)):
        patch = perturb_patch(pixels, "scale:1.5", top, left, 32, np.random.default_rng(0)).astype(int)
        right = np.abs(patch - whole[top : top + 32, left : left + 32]).mean()
        shifted = np.abs(patch - whole[top + 3 : top + 35, left : left + 32]).mean()
        assert right < 0.25 * shifted, (top, left, right, shifted)
    # noise: other draws of the same sigma
    grey = (pixels // 2 + 64).astype(np.uint8)  # nothing clipped
    patch = perturb_patch(grey, "noise:4", 50, 60, 64, np.random.default_rng(0)).astype(float)
    assert abs((patch - grey[50:114, 60:124]).std() - 4.0) < 0.4
    assert not np.array_equal(patch, perturb(grey, "noise:4", seed=0)[50:114, 60:124])
    # WebP: as much damage as on the whole image, not the same pixels
    whole = perturb(pixels, "webp:60").astype(int)
    patch = perturb_patch(pixels, "webp:60", 80, 96, 64, np.random.default_rng(0)).astype(int)
    clean = pixels[80:144, 96:160].astype(int)
    damage = np.abs(patch - clean).mean() / np.abs(whole[80:144, 96:160] - clean).mean()
    assert 0.7 < damage < 1.4


def test_perturb_patch_refuses_crops_and_patches_outside_the_output():
    pixels = image(64, 64)
    assert perturbed_shape((64, 64), "jpeg:90+crop:0.8") is None
    with pytest.raises(ValueError, match="crops at random"):
        perturb_patch(pixels, "crop:0.8", 0, 0, 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not fit the 32x32 output"):
        perturb_patch(pixels, "scale:0.5", 20, 0, 16, np.random.default_rng(0))
