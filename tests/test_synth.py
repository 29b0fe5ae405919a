"""The synthetic fingerprint benchmark: files, manifest, determinism, resuming and the fingerprints."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.fft import dctn

from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data import synth
from animeprov.data.synth import (
    ARCHITECTURES,
    DEFAULT_CLASSES,
    EXTRA_CLASSES,
    MANIFEST_COLUMNS,
    SYNTH_CLASSES,
    bilinear_up2,
    decode,
    decoder_kernels,
    generate_synthetic,
    image_seed,
    synthesize,
    upsample2,
)

SIZE = 32  # the smallest size that still shows everything below


def read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def hashes(manifest: Path) -> dict[str, str]:
    return {row["path"]: row["sha256"] for row in read_manifest(manifest)}


def test_classes_are_human_plus_generators_with_held_out_extras():
    assert DEFAULT_CLASSES[0] == DEFAULT_HUMAN_CLASS
    assert len(DEFAULT_CLASSES) >= 5
    assert EXTRA_CLASSES and not set(EXTRA_CLASSES) & set(DEFAULT_CLASSES)
    assert set(SYNTH_CLASSES) == set(ARCHITECTURES)
    assert ARCHITECTURES[DEFAULT_HUMAN_CLASS].stages == 0
    assert all(ARCHITECTURES[name].stages > 0 for name in SYNTH_CLASSES[1:])


def test_manifest_layout_and_values(tmp_path):
    manifest = generate_synthetic(tmp_path / "set", per_class=2, size=SIZE, seed=3)
    assert manifest == tmp_path / "set" / "manifest.csv"
    with manifest.open(encoding="utf-8", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == MANIFEST_COLUMNS
    rows = read_manifest(manifest)
    assert [row["class"] for row in rows] == [name for name in DEFAULT_CLASSES for _ in range(2)]
    for row in rows:
        name, index = row["class"], int(row["path"][-9:-4])
        assert row["path"] == f"{name}/{name}-{index:05d}.png"
        file = manifest.parent / row["path"]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(file) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
        assert (row["width"], row["height"], row["format"]) == (str(SIZE), str(SIZE), "PNG")
        assert row["group"] == f"{name}-{index:05d}"
        assert int(row["seed"]) == image_seed(3, name, index)
        assert row["architecture"] == ARCHITECTURES[name].description
        assert 0.0 <= float(row["quality"]) <= 1.0
    # Balanced ImageFolder, and nothing else left behind (no temporary files).
    for name in DEFAULT_CLASSES:
        assert sorted(p.name for p in (manifest.parent / name).iterdir()) == [
            f"{name}-0000{i}.png" for i in (0, 1)
        ]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = hashes(generate_synthetic(tmp_path / "a", per_class=2, size=SIZE, seed=7))
    again = hashes(generate_synthetic(tmp_path / "b", per_class=2, size=SIZE, seed=7))
    other = hashes(generate_synthetic(tmp_path / "c", per_class=2, size=SIZE, seed=8))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[path] != other[path] for path in first)
    assert len(set(first.values())) == len(first)  # every image differs from every other


def test_workers_write_the_same_bytes_and_report_progress(tmp_path):
    classes = ["human", "transposed-conv", "nearest-conv-b"]
    done: list[int] = []
    parallel = generate_synthetic(
        tmp_path / "p", 3, SIZE, seed=1, classes=classes, workers=2, on_progress=done.append
    )
    serial = generate_synthetic(tmp_path / "s", 3, SIZE, seed=1, classes=classes, workers=0)
    assert hashes(parallel) == hashes(serial)
    assert sum(done) == 9 and all(n > 0 for n in done)


def test_resume_keeps_intact_images_and_redraws_broken_ones(tmp_path):
    out = tmp_path / "set"
    classes = ["human", "pixel-shuffle"]
    reference = hashes(generate_synthetic(tmp_path / "reference", 3, SIZE, seed=2, classes=classes))
    generate_synthetic(out, 2, SIZE, seed=2, classes=classes)
    kept, broken, deleted = (
        out / p
        for p in ("human/human-00000.png", "human/human-00001.png", "pixel-shuffle/pixel-shuffle-00000.png")
    )
    kept_mtime = kept.stat().st_mtime_ns
    broken.write_bytes(b"not a png")
    deleted.unlink()
    done: list[int] = []
    manifest = generate_synthetic(out, 3, SIZE, seed=2, classes=classes, on_progress=done.append)
    assert hashes(manifest) == reference
    assert all(hashlib.sha256((out / p).read_bytes()).hexdigest() == h for p, h in reference.items())
    assert kept.stat().st_mtime_ns == kept_mtime  # not redrawn
    assert done[0] == 2 and sum(done) == 6  # 2 intact images kept, 4 drawn
    # Another seed reuses nothing.
    done.clear()
    generate_synthetic(out, 1, SIZE, seed=5, classes=classes, on_progress=done.append)
    assert done == [1, 1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": ["human", "no-such-generator"]},
        {"classes": []},
        {"classes": ["human", "human"]},
        {"size": 60},  # not a multiple of 8
        {"per_class": 0},
        {"workers": -1},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs):
    arguments = {"per_class": 1, "size": SIZE} | kwargs
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path, **arguments)


def test_unknown_class_raises_everywhere():
    with pytest.raises(ValueError, match="unknown synthetic class"):
        synthesize("gan-9000", 0, SIZE)
    with pytest.raises(ValueError):
        decoder_kernels(DEFAULT_HUMAN_CLASS)  # a person has no decoder


def test_content_does_not_depend_on_the_class():
    """Given the same per-image seed every class draws the same picture: only its synthesis differs."""
    results = {name: synthesize(name, 12345, 64) for name in SYNTH_CLASSES}
    assert len({quality for _, quality in results.values()}) == 1
    human = results[DEFAULT_HUMAN_CLASS][0].astype(float)
    for name, (pixels, _) in results.items():
        # Same drawing: the classes differ by a few grey levels on average (grain and fingerprint) ...
        assert np.abs(pixels - human).mean() < 8, name
        # ... but never byte for byte.
        assert name == DEFAULT_HUMAN_CLASS or not np.array_equal(pixels, results[DEFAULT_HUMAN_CLASS][0])


def naive_transposed_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Reference: insert zeros between samples, then correlate with the kernel anchored at L // 2."""
    channels, h, w = x.shape
    size, centre = kernel.shape[-1], kernel.shape[-1] // 2
    zeros = np.zeros((channels, 2 * h + 2 * size, 2 * w + 2 * size))
    zeros[:, size : size + 2 * h : 2, size : size + 2 * w : 2] = x
    out = np.zeros((channels, 2 * h, 2 * w))
    for k in range(size):
        for m in range(size):
            top, left = size + k - centre, size + m - centre
            out += kernel[:, k, m, None, None] * zeros[:, top : top + 2 * h, left : left + 2 * w]
    return out


@pytest.mark.parametrize("size", [3, 4, 6])
def test_upsample2_is_a_transposed_convolution(size):
    rng = np.random.default_rng(size)
    x = rng.random((3, 10, 12)).astype(np.float32)
    kernel = rng.random((3, size, size)).astype(np.float32)
    ours, reference = upsample2(x, kernel), naive_transposed_conv(x, kernel)
    inner = (slice(None), slice(4, -4), slice(4, -4))  # borders differ: we replicate edges, zeros do not
    np.testing.assert_allclose(ours[inner], reference[inner], rtol=1e-5, atol=1e-5)


def test_reference_stack_reconstructs_the_drawing(monkeypatch):
    """With bilinear kernels and all detail kept, decoding returns its input: the fingerprints are only
    what a class does differently."""
    monkeypatch.setattr(synth, "DETAIL_KEPT", 1.0)
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 32)).astype(np.float32) * 255
    bilinear = np.broadcast_to(np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]), (3, 4, 4))
    np.testing.assert_allclose(bilinear_up2(x), upsample2(x, bilinear.astype(np.float32)), atol=1e-4)
    np.testing.assert_allclose(decode(x, [bilinear] * 3), x, atol=1e-3)


def test_layer_types_leave_flat_areas_flat_or_checkered():
    flat = np.full((3, 8, 8), 100.0, dtype=np.float32)
    for name in SYNTH_CLASSES[1:]:
        for kernel in decoder_kernels(name):
            assert kernel.sum(axis=(1, 2)) == pytest.approx([4.0] * 3, abs=1e-4)  # gain 1 after x2 in 2-D
            inner = upsample2(flat, kernel)[:, 4:-4, 4:-4]
            spread = float(inner.max() - inner.min())
            if ARCHITECTURES[name].layer in ("nearest", "bilinear"):
                assert spread < 1e-3, name  # the conv after a fixed upsampler cannot tell phases apart
            else:
                assert 0.05 < spread < 5, name  # own taps per output phase: a faint checkerboard


def mean_log_spectrum(name: str, count: int, size: int) -> np.ndarray:
    images = np.stack([synthesize(name, image_seed(0, name, i), size)[0] for i in range(count)])
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.log(np.abs(dctn(luma, axes=(1, 2), norm="ortho")) + 1e-6).mean(axis=0)


def peak_prominence(spectrum: np.ndarray) -> float:
    """How far the checkerboard coefficient (N-1, N-1) stands above its 6x6 corner neighbourhood."""
    corner = spectrum[-6:, -6:]
    return float(corner[-1, -1] - (corner.sum() - corner[-1, -1]) / (corner.size - 1))


def test_transposed_conv_leaves_a_checkerboard_peak_that_human_does_not():
    human = peak_prominence(mean_log_spectrum(DEFAULT_HUMAN_CLASS, 24, 64))
    for name in ("transposed-conv", "pixel-shuffle"):
        generated = peak_prominence(mean_log_spectrum(name, 24, 64))
        assert generated > 1.0 and generated > human + 0.7, (name, generated, human)
