"""Streaming statistics against numpy, and the input stems they normalise."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from animeprov.config import LOG_EPS
from animeprov.transforms.stats import RunningMeanStd
from animeprov.transforms.stem import DCTStem, PixelStem, create_stem, fit_stem_statistics

UNEVEN_BATCHES = [1, 7, 13, 2, 30, 1, 6]


def _feed(stats: RunningMeanStd, data: np.ndarray, sizes) -> None:
    start = 0
    for n in sizes:
        stats.update(torch.from_numpy(data[start : start + n]))
        start += n
    assert start == len(data)


def test_uneven_batches_match_numpy():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(sum(UNEVEN_BATCHES), 3, 4, 5))
    stats = RunningMeanStd((3, 4, 5))
    _feed(stats, data, UNEVEN_BATCHES)
    assert stats.count == len(data)
    np.testing.assert_allclose(stats.mean.numpy(), data.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std.numpy(), data.std(axis=0), rtol=1e-12)


def test_large_offset_keeps_precision():
    # A naive sum-of-squares variance loses everything here; the parallel combination does not.
    data = 1e8 + np.random.default_rng(1).normal(0.0, 1.0, size=(500, 4))
    stats = RunningMeanStd((4,))
    _feed(stats, data, [100, 250, 150])
    np.testing.assert_allclose(stats.std.numpy(), data.std(axis=0), rtol=1e-6)


def test_merge_equals_one_pass():
    data = np.random.default_rng(2).random((40, 2, 3))
    one_pass = RunningMeanStd((2, 3))
    _feed(one_pass, data, [40])
    first, second, empty = RunningMeanStd((2, 3)), RunningMeanStd((2, 3)), RunningMeanStd((2, 3))
    _feed(first, data[:11], [4, 7])
    _feed(second, data[11:], [29])
    first.merge(second)
    first.merge(empty)
    assert first.count == 40
    assert torch.allclose(first.mean, one_pass.mean, atol=1e-14)
    assert torch.allclose(first.std, one_pass.std, atol=1e-14)


def test_constant_data_std_is_floored_and_shapes_are_checked():
    stats = RunningMeanStd((3,), min_std=1e-4)
    stats.update(torch.full((5, 3), 2.5))
    assert torch.equal(stats.std, torch.full((3,), 1e-4, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        stats.update(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="merge"):
        stats.merge(RunningMeanStd((4,)))


def test_pixel_stem_scales_to_minus_one_one():
    stem = create_stem("pixel", 8)
    assert isinstance(stem, PixelStem) and not stem.needs_statistics
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(stem(x).flatten(), torch.tensor([-1.0, -0.5, 1.0]))
    assert fit_stem_statistics(stem, iter([torch.rand(2, 3, 8, 8)])) is None


def test_log_dct_is_log_magnitude_of_the_orthonormal_dct():
    stem = create_stem("dct", 8)
    assert isinstance(stem, DCTStem) and stem.needs_statistics
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = np.log(np.abs(scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho")) + LOG_EPS)
    np.testing.assert_allclose(stem.log_dct(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    # Unfitted statistics are the identity normalisation.
    assert torch.equal(stem(x), stem.log_dct(x))
    with pytest.raises(ValueError, match="expects"):
        stem(torch.rand(2, 3, 8, 9))


def test_fitted_stem_standardises_its_training_data():
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(24, 3, 16, 16, generator=generator) ** 2  # skewed, so the statistics are non-trivial
    stem = DCTStem(16)
    seen: list[int] = []
    batches = [(images[:10], torch.zeros(10)), images[10:17], images[17:]]  # (images, labels) tuples work too
    stats = fit_stem_statistics(stem, batches, on_batch=seen.append)
    assert seen == [10, 7, 7] and stats.count == 24 and stem.is_fitted
    out = stem(images).double()
    assert torch.allclose(out.mean(dim=0), torch.zeros(3, 16, 16, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(
        out.std(dim=0, unbiased=False), torch.ones(3, 16, 16, dtype=torch.float64), atol=1e-3
    )
    # The statistics are persistent buffers: a fresh stem loading the state_dict behaves identically.
    fresh = DCTStem(16)
    fresh.load_state_dict(stem.state_dict())
    assert fresh.is_fitted and torch.equal(fresh(images), stem(images))


def test_fit_refuses_empty_input_and_bad_statistics():
    stem = DCTStem(8)
    with pytest.raises(ValueError, match="no images"):
        fit_stem_statistics(stem, [])
    with pytest.raises(ValueError, match="shape"):
        stem.set_statistics(torch.zeros(3, 8, 8), torch.ones(3, 8, 7))
    with pytest.raises(ValueError, match="positive"):
        stem.set_statistics(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    assert not stem.is_fitted
