"""The DCT against scipy's reference implementation, for both backends."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from animeprov.transforms import dct as dct_module
from animeprov.transforms.dct import dct2, dct_matrix, idct2

SHAPES = [(6, 6), (5, 9), (2, 3, 8, 8), (2, 3, 7, 4)]
BACKENDS = ["scipy", "matrix"]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _random(shape, dtype, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape)).to(dtype)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_matrix_is_orthonormal_and_matches_scipy(n):
    matrix = dct_matrix(n, dtype=torch.float64)
    assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # Column j of C is the DCT of the unit vector e_j, so C = dct(I) applied column by column.
    reference = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    np.testing.assert_allclose(matrix.numpy(), reference, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_dct2_and_idct2_match_scipy(shape, dtype, backend):
    x = _random(shape, dtype)
    tol = TOLERANCE[dtype]
    expected = scipy.fft.dctn(x.double().numpy(), type=2, axes=(-2, -1), norm="ortho")
    out = dct2(x, backend)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_allclose(out.double().numpy(), expected, atol=tol * np.abs(expected).max())
    expected_inverse = scipy.fft.idctn(x.double().numpy(), type=2, axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(idct2(x, backend).double().numpy(), expected_inverse, atol=tol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(shape, backend):
    x = _random(shape, torch.float64, seed=1)
    assert torch.allclose(idct2(dct2(x, backend), backend), x, atol=1e-12)


def test_scipy_backend_keeps_channels_last_tensors_correct():
    x = _random((2, 3, 8, 8), torch.float32).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(dct2(x, "scipy"), dct2(x.contiguous(), "matrix"), atol=1e-5)


def test_auto_uses_autograd_capable_matrix_when_a_gradient_is_needed():
    x = _random((1, 3, 6, 6), torch.float64).requires_grad_()
    out = dct2(x)  # auto
    assert out.grad_fn is not None
    assert torch.autograd.gradcheck(lambda t: dct2(t, "matrix"), (x,))
    with torch.no_grad():
        assert dct2(x).grad_fn is None


def test_matrix_cached_inside_inference_mode_still_supports_autograd():
    dct_module._MATRICES.clear()
    with torch.inference_mode():
        dct2(torch.rand(1, 1, 11, 11), "matrix")
    x = torch.rand(1, 1, 11, 11, requires_grad=True)
    dct2(x, "matrix").square().sum().backward()
    # Parseval: the orthonormal DCT preserves the squared norm, so the gradient of sum(DCT(x)^2) is 2x.
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-5)


def test_tracing_never_leaves_a_placeholder_matrix_in_the_cache():
    class MatrixDCT(torch.nn.Module):
        def forward(self, x):
            return dct2(x, "matrix")

    dct_module._MATRICES.clear()
    torch.export.export(MatrixDCT(), (torch.rand(1, 3, 9, 9),))
    x = torch.rand(1, 3, 9, 9)
    assert torch.allclose(dct2(x, "matrix"), dct2(x, "scipy"), atol=1e-5)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="CPU only"):
        dct2(torch.empty(2, 4, 4, device="meta"), "scipy")
    with pytest.raises(ValueError, match="unknown DCT backend"):
        dct2(torch.rand(4, 4), "fft")
    with pytest.raises(ValueError, match="at least 2"):
        dct2(torch.rand(4))
    with pytest.raises(ValueError, match="positive"):
        dct_matrix(0)
