"""The CPU inference fast paths (NPR by rows, DCTStem._cpu_inference, AvgPool2x2) against straightforward
reference implementations, the bundled reference model end to end, and the stability check's WebP encoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.special import log_softmax

from animeprov.models import create_model
from animeprov.models.cnn import AvgPool2x2, avg_pool_2x2
from animeprov.perturb import decode, encode_webp, perturb
from animeprov.predict import (
    CHECK_WEBP_METHOD,
    Predictor,
    default_batch_size,
    parse_check,
    stability_variant,
)
from animeprov.transforms.stem import DCTStem, npr_residual


def npr_by_hand(x: np.ndarray) -> np.ndarray:
    """Each pixel minus the top-left pixel of its 2x2 block, by index arithmetic over (..., H, W)."""
    height, width = x.shape[-2:]
    rows = (np.arange(height) // 2) * 2
    cols = (np.arange(width) // 2) * 2
    return x - x[..., rows[:, None], cols[None, :]]


def drawing(size: int, seed: int = 0) -> np.ndarray:
    """An image-like (size, size, 3) uint8 picture: smooth shading, hard edges, mild noise, JPEG 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([128 + 90 * np.sin(5 * x + c) * np.cos(3 * y - c) for c in range(3)], axis=-1)
    base[(x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.05] = (250, 240, 230)  # a flat disc with a sharp rim
    pixels = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return decode(buffer.getvalue())


def layouts(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, x.contiguous(memory_format=torch.channels_last)]


# ----------------------------------------------------------------------------------------------------
# NPR residual


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (3, 4, 4), (1, 3, 7, 9), (2, 3, 5, 4)])
def test_npr_residual_equals_the_blockwise_definition_exactly(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for tensor in layouts(x) if x.ndim == 4 else [x]:
        out = npr_residual(tensor)
        # the same float subtractions, whatever the formulation: bit-identical
        assert np.array_equal(out.numpy(), npr_by_hand(x.numpy()))


def test_npr_residual_keeps_gradients():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    npr_residual(x).sum().backward()
    expected = torch.ones(4, 4)
    expected[::2, ::2] -= 4.0  # each anchor: +1 for itself, -1 for each of its block's 4 pixels
    assert torch.equal(x.grad[0, 0], expected)


# ----------------------------------------------------------------------------------------------------
# Average pooling


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 8, 6, 4), (1, 2, 2, 4)])
def test_avg_pool_2x2_matches_torch_in_both_layouts(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    for tensor in [*layouts(x), x[..., : shape[-1] // 2 * 2]]:
        out = avg_pool_2x2(tensor)
        expected = F.avg_pool2d(tensor, 2)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
        assert out.stride() == expected.stride()  # the input's layout, as PyTorch's kernel keeps it


def test_avg_pool_module_takes_the_fast_path_only_for_inference():
    pool = AvgPool2x2()
    assert isinstance(pool, torch.nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.no_grad():
        fast = pool(x)
    trained = pool(x)  # autograd: PyTorch's own kernel, bit for bit
    assert torch.equal(trained, F.avg_pool2d(x, 2)) and trained.requires_grad
    torch.testing.assert_close(fast, trained.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # odd sides: floor, as nn.AvgPool2d
        assert torch.equal(pool(torch.ones(1, 1, 5, 7)), torch.ones(1, 1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# DCT stem


def stem_by_hand(x: np.ndarray, mean: np.ndarray, std: np.ndarray, residual: bool, eps: float) -> np.ndarray:
    """The stem's definition, in float32 as the model computes it: (log(|DCT(residual)| + eps) - mean) / std.

    (Not float64: log(|c| + eps) amplifies the float32 rounding of coefficients near 0 by up to 1 / eps, so
    a float64 stem differs from any float32 one, the plain path's included, by up to ~1e-3 per value.)"""
    x = x.astype(np.float32)
    if residual:
        x = npr_by_hand(x)
    coefficients = scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")
    return (np.log(np.abs(coefficients) + np.float32(eps)) - mean) / std


@pytest.mark.parametrize("residual", [None, "npr"])
def test_dct_stem_cpu_inference_matches_its_definition(residual):
    size = 16
    stem = DCTStem(size, residual=residual)
    generator = torch.Generator().manual_seed(2)
    stem.set_statistics(torch.randn(3, size, size, generator=generator), torch.rand(3, size, size) + 0.5)
    images = torch.rand(4, 3, size, size, generator=generator)
    images[0] = 0.5  # flat: every coefficient but DC is 0, log floors at log(eps)
    expected = stem_by_hand(
        images.numpy(), stem.mean.numpy(), stem.std.numpy(), residual is not None, stem.eps
    )
    for x in layouts(images):
        assert stem._inference_on_cpu(x) is False  # autograd on: the plain path
        plain = stem(x)
        with torch.no_grad():
            assert stem._inference_on_cpu(x)
            fast = stem(x)
        assert fast.is_contiguous(memory_format=torch.channels_last) == plain.is_contiguous(
            memory_format=torch.channels_last
        )
        np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast.numpy(), plain.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(images, images.clone())  # the caller's pixels are never overwritten


def test_dct_stem_keeps_the_plain_path_where_the_fast_one_cannot_run():
    stem = DCTStem(8, residual="npr")
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        stem.dct_backend = "matrix"  # export: the traceable DCT
        assert not stem._inference_on_cpu(x)
        stem.dct_backend = "auto"
        with pytest.raises(ValueError, match="expects"):
            stem(torch.rand(2, 3, 8, 9))


# ----------------------------------------------------------------------------------------------------
# A cnn-npr-dct model (the `traces` recipe's), end to end


def reference_log_probs(model: torch.nn.Module, views: np.ndarray) -> np.ndarray:
    """A cnn-npr-dct model (DCT stem with NPR residual, SmallCNN) written out plainly: the stem from its
    definition, then F.conv2d / ReLU / F.avg_pool2d / linear on NCHW tensors."""
    stem = model.stem
    pixels = views.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    x = torch.from_numpy(stem_by_hand(pixels, stem.mean.numpy(), stem.std.numpy(), True, stem.eps))
    blocks = model.backbone.features
    for i, block in enumerate(blocks):
        conv = block[0]
        x = F.relu(F.conv2d(x, conv.weight.contiguous(), conv.bias, padding=1))
        if i < len(blocks) - 1:
            x = F.avg_pool2d(x, 2)
    linear = model.backbone.head[-1]
    logits = F.linear(x.flatten(1), linear.weight, linear.bias)
    return log_softmax(logits.detach().double().numpy(), axis=1)


@pytest.fixture(scope="module")
def npr_dct_predictor() -> Predictor:
    """cnn-npr-dct at 64 px with seeded random weights and DCT statistics of realistic spread."""
    torch.manual_seed(0)
    model = create_model("cnn-npr-dct", 6, 64)
    model.stem.set_statistics(torch.randn(3, 64, 64) - 6.0, torch.rand(3, 64, 64) + 0.5)
    classes = ["human", "a", "b", "c", "d", "e"]
    # PyTorch: these tests are of its CPU fast paths (onnxruntime has its own test in test_predict.py)
    return Predictor(model, classes=classes, size=64, variant="cnn-npr-dct", device="cpu", backend="torch")


def test_npr_dct_model_log_probs_match_a_plain_implementation(npr_dct_predictor):
    predictor = npr_dct_predictor
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, size=(32, 64, 64, 3), dtype=np.uint8)
    tiles = np.stack(
        [
            drawing(256, seed)[y : y + 64, x : x + 64]
            for seed in range(2)
            for y, x in ((0, 0), (96, 128), (192, 64))
        ]
    )
    flat = np.full((1, 64, 64, 3), 200, np.uint8)
    for views in (noise, tiles, flat):
        fast = predictor.log_probs(views)
        np.testing.assert_allclose(fast, reference_log_probs(predictor.model, views), atol=1e-4, rtol=0)
        with torch.enable_grad():  # the plain (training) code path of the same model
            plain = predictor.log_probs(views)
        np.testing.assert_allclose(fast, plain, atol=1e-4, rtol=0)


def test_default_batch_size_by_view_size(npr_dct_predictor, monkeypatch):
    assert default_batch_size(64) == 128
    assert default_batch_size(128) == 32
    assert default_batch_size(256) == default_batch_size(512) == 16
    sizes = []
    forward = npr_dct_predictor._forward
    monkeypatch.setattr(
        npr_dct_predictor, "_forward", lambda views: sizes.append(len(views)) or forward(views)
    )
    images = [Image.fromarray(drawing(256, seed)) for seed in range(10)]  # 16 tiles each
    results = list(npr_dct_predictor.predict_many(images))
    assert len(results) == 10 and sizes == [128, 32]


# ----------------------------------------------------------------------------------------------------
# Stability checks


def test_webp_check_uses_its_own_encoder_effort_and_perturb_keeps_method_4():
    pixels = drawing(96)
    assert CHECK_WEBP_METHOD == 0
    checked = stability_variant(pixels, "webp:90", 64)
    assert np.array_equal(checked, decode(encode_webp(pixels, 90, method=CHECK_WEBP_METHOD)))
    assert np.array_equal(perturb(pixels, "webp:90"), decode(encode_webp(pixels, 90, method=4)))
    assert np.array_equal(stability_variant(pixels, "jpeg:90", 64), perturb(pixels, "jpeg:90"))


@pytest.mark.parametrize("check", ["jpeg:0", "webp:101", "blur:2", "jpeg:"])
def test_parse_check_refuses_bad_checks(check):
    with pytest.raises(ValueError):
        parse_check(check)
    assert parse_check("shift:4") == ("shift", 4) and parse_check("webp:100") == ("webp", 100)
