"""Spectral fingerprints: DCT peaks where a known artefact puts them, streaming = batch, files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.config import LOG_EPS
from animeprov.fingerprint import (
    PLANES,
    compute_fingerprints,
    labelled_images,
    load_fingerprints,
    luminance_log_dct,
    resize_comparison,
    spectrum_image,
)


def cosine_image(
    size: int, k: int, axis: int, rng: np.random.Generator, amplitude: float = 60.0
) -> np.ndarray:
    """Grey noise plus cos(pi * k * (2n + 1) / (2N)) along `axis` (1: columns vary, 0: rows vary).

    That cosine is exactly row k of the orthonormal DCT-II matrix, so its energy lands on DCT index k
    of that axis (and index 0 of the other): coefficient (0, k) for axis 1, (k, 0) for axis 0.
    """
    n = np.arange(size)
    wave = amplitude * np.cos(np.pi * k * (2 * n + 1) / (2 * size))
    pattern = wave[None, :] if axis == 1 else wave[:, None]
    grey = 128 + pattern + rng.normal(0, 4, size=(size, size))
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def save_folder(root: Path, images: dict[str, list[np.ndarray]]) -> Path:
    for cls, arrays in images.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(arrays):
            Image.fromarray(pixels).save(root / cls / f"{i:03d}.png")
    return root


def strongest_ac_coefficient(spectrum: np.ndarray) -> tuple[int, int]:
    masked = spectrum.copy()
    masked[0, 0] = -np.inf  # the DC term (mean brightness) always dominates
    return tuple(int(i) for i in np.unravel_index(np.argmax(masked), masked.shape))


@pytest.mark.parametrize(("k", "axis", "expected"), [(5, 1, (0, 5)), (11, 0, (11, 0)), (31, 1, (0, 31))])
def test_cosine_artefact_peaks_at_its_dct_index(k, axis, expected):
    rng = np.random.default_rng(k)
    spectrum = luminance_log_dct(cosine_image(32, k, axis, rng))
    assert strongest_ac_coefficient(spectrum) == expected
    # The peak holds the whole pattern: amplitude 60/255 times the norms of the cosine (sqrt(N/2)) and of the
    # constant along the other axis (sqrt(N)), which an orthonormal DCT keeps.
    assert spectrum[expected] == pytest.approx(np.log(60 / 255 * np.sqrt(32 / 2) * np.sqrt(32)), abs=0.05)


def test_class_fingerprint_of_files_peaks_at_the_artefact(tmp_path):
    rng = np.random.default_rng(0)
    root = save_folder(
        tmp_path / "data",
        {
            "human": [cosine_image(32, 0, 1, rng, amplitude=0) for _ in range(4)],
            "gen": [cosine_image(32, 7, 0, rng, amplitude=20) for _ in range(4)],
        },
    )
    fingerprints = compute_fingerprints(labelled_images(root), size=32)
    assert strongest_ac_coefficient(fingerprints["gen"].mean()) == (7, 0)
    difference = fingerprints["gen"].mean() - fingerprints["human"].mean()
    assert strongest_ac_coefficient(difference) == (7, 0)


def test_luminance_log_dct_matches_scipy_reference():
    pixels = np.random.default_rng(1).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    luminance = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    expected = np.log(np.abs(scipy.fft.dctn(luminance, norm="ortho")) + LOG_EPS)
    result = luminance_log_dct(pixels)
    assert result.shape == (24, 40) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_streaming_mean_equals_batch_mean_and_crops_without_resizing(tmp_path):
    rng = np.random.default_rng(2)
    sizes = [(32, 32), (40, 48), (33, 35), (64, 32), (32, 32), (48, 40), (32, 50)]
    arrays = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    too_small = rng.integers(0, 256, size=(16, 40, 3), dtype=np.uint8)
    root = save_folder(tmp_path / "data", {"a": [*arrays, too_small]})
    (root / "a" / "broken.png").write_bytes(b"not an image")
    (root / "b").mkdir()
    (root / "b" / "only-broken.png").write_bytes(b"not an image either")

    everything = compute_fingerprints(labelled_images(root), size=32, batch_size=3)
    assert (everything["b"].count, everything["b"].skipped) == (0, 1)  # reported, not dropped
    streamed = everything["a"]
    crops = [a[(a.shape[0] - 32) // 2 :][:32, (a.shape[1] - 32) // 2 :][:, :32] for a in arrays]
    expected = np.mean([luminance_log_dct(c) for c in crops], axis=0)
    assert streamed.count == len(arrays)
    assert streamed.skipped == 2  # the 16-pixel-high image and the broken file
    np.testing.assert_allclose(streamed.mean("luminance"), expected, atol=1e-5)
    red = np.mean(
        [np.log(np.abs(scipy.fft.dctn(c[..., 0] / 255.0, norm="ortho")) + LOG_EPS) for c in crops], 0
    )
    np.testing.assert_allclose(streamed.mean("red"), red, atol=1e-5)
    one_batch = compute_fingerprints(labelled_images(root), size=32, batch_size=100)["a"]
    np.testing.assert_allclose(streamed.mean(), one_batch.mean(), atol=1e-6)


def test_split_csv_selects_rows_and_per_class_caps(tiny_split):
    test_rows = list(labelled_images(tiny_split, split="test"))
    assert len(test_rows) == 6 and {cls for cls, _ in test_rows} == {"human", "gen-a", "gen-b"}
    fingerprints = compute_fingerprints(labelled_images(tiny_split), per_class=3)
    assert {cls: fp.count for cls, fp in fingerprints.items()} == {"gen-a": 3, "gen-b": 3, "human": 3}
    with pytest.raises(ValueError, match="split CSV"):
        list(labelled_images(tiny_split.parent, split="test"))


def test_cli_writes_the_layout_that_load_fingerprints_reads(tiny_split, tmp_path):
    out = tmp_path / "fp"
    result = CliRunner().invoke(app, ["fingerprint", str(tiny_split), "--out", str(out), "--split", "train"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["size"] == 32 and index["human_class"] == "human"
    assert {cls: entry["images"] for cls, entry in index["classes"].items()} == {
        "gen-a": 6,
        "gen-b": 6,
        "human": 6,
    }
    for cls in ("human", "gen-a", "gen-b"):
        for plane in PLANES:
            assert np.load(out / cls / f"{plane}.npy").shape == (32, 32)
            assert Image.open(out / cls / f"{plane}.png").size == (32, 32)
        assert (out / cls / "paper_view.png").is_file()
    assert not (out / "human" / "difference_from_human.npy").exists()
    loaded = load_fingerprints(out)
    assert sorted(loaded) == ["gen-a", "gen-b", "human"]
    np.testing.assert_allclose(
        np.load(out / "gen-a" / "difference_from_human.npy"), loaded["gen-a"] - loaded["human"], atol=1e-6
    )
    assert (out / "resize_panel.png").is_file() and (out / "overview.png").is_file()
    # Without index.json the class folders are found by their luminance.npy.
    (out / "index.json").unlink()
    assert sorted(load_fingerprints(out)) == ["gen-a", "gen-b", "human"]


def test_cli_reports_a_missing_data_path(tmp_path):
    result = CliRunner().invoke(app, ["fingerprint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no such manifest" in " ".join(result.output.split())


def test_resize_round_trip_changes_the_spectrum_and_keeps_the_size(tmp_path):
    rng = np.random.default_rng(3)
    root = save_folder(tmp_path / "data", {"gen": [cosine_image(32, 29, 1, rng) for _ in range(3)]})
    before, after = resize_comparison(labelled_images(root), chain="scale:2-0.5")
    assert before.count == after.count == 3
    # A bicubic round trip is a low-pass filter: the high-frequency artefact at column 29 is attenuated.
    assert after.mean()[0, 29] < before.mean()[0, 29] - 0.3
    # The paper's chain is stated for 512 px; on 32 px crops its ratios apply: the same x2, x0.5 round trip.
    default_before, default_after = resize_comparison(labelled_images(root))
    np.testing.assert_allclose(default_after.mean(), after.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="changes the image size"):
        resize_comparison(labelled_images(root), chain="scale:2")


def test_spectrum_image_is_a_colour_picture_of_the_spectrum():
    spectrum = np.linspace(-3, 3, 20 * 30).reshape(20, 30)
    picture = spectrum_image(spectrum)
    assert picture.mode == "RGB" and picture.size == (30, 20)
    pixels = np.asarray(picture).astype(int)
    assert pixels[0, 0].sum() < pixels[-1, -1].sum()  # inferno: dark for low values, bright for high
    diverging = np.asarray(spectrum_image(spectrum, diverging=True)).astype(int)
    assert diverging[0, 0, 2] > diverging[0, 0, 0] and diverging[-1, -1, 0] > diverging[-1, -1, 2]
    flat = np.asarray(spectrum_image(np.zeros((4, 4))))
    assert (flat == flat[0, 0]).all()


def test_resize_panel_uses_the_crop_size_of_a_class_with_images(tmp_path, monkeypatch):
    """A class whose every file is unreadable sorts first here; its placeholder must not set the size."""
    import animeprov.fingerprint

    rng = np.random.default_rng(4)
    root = save_folder(
        tmp_path / "data",
        {"gen": [cosine_image(32, 29, 1, rng) for _ in range(2)], "human": [cosine_image(32, 3, 1, rng)]},
    )
    (root / "aaa-broken").mkdir()
    (root / "aaa-broken" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    sizes = []
    real = animeprov.fingerprint.resize_comparison

    def recording(items, **kwargs):
        sizes.append(kwargs["size"])
        return real(items, **kwargs)

    monkeypatch.setattr(animeprov.fingerprint, "resize_comparison", recording)
    out = tmp_path / "fp"
    result = CliRunner().invoke(app, ["fingerprint", str(root), "--out", str(out), "--resize-class", "gen"])
    assert result.exit_code == 0, result.output
    assert sizes == [32]
    assert json.loads((out / "index.json").read_text())["classes"]["aaa-broken"]["skipped"] == 1
