"""Input stems: everything between the model input (N, 3, H, W floats in [0, 1]) and the first learned layer.

The stem lives inside the model and its statistics are persistent buffers, so they are saved with the
weights and training, evaluation and serving can never preprocess differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.fft
import torch
from torch import nn

from animeprov.config import LOG_EPS
from animeprov.transforms.dct import Backend, dct2
from animeprov.transforms.stats import RunningMeanStd

_AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class PixelStem(nn.Module):
    """Scaled pixels: [0, 1] -> [-1, 1]."""

    needs_statistics = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5).div_(0.5)  # in place on the fresh difference: one full-size allocation, not two


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """NPR (Tan et al., CVPR 2024): x minus x nearest-downsampled 2x and nearest-upsampled back.

    Each 2x2 block minus its top-left pixel: zero wherever neighbouring pixels agree, so it keeps the
    local correlation that an upsampling layer (and a latent decoder's 2x steps) leaves between neighbours,
    and drops most of the content. Odd sides: the last row/column is its own block's top-left (residual 0).
    """
    height, width = x.shape[-2:]
    if height % 2 or width % 2:
        anchors = x[..., ::2, ::2]
        upsampled = anchors.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return x - upsampled[..., :height, :width]
    # Even sides (every model size): each pair of rows minus its anchors widened 2x, broadcast over the pair.
    # The same subtractions (bit-identical), but the broadcast runs along whole rows instead of an anchor
    # image upsampled both ways: ~1.8x faster on CPU for NCHW inputs, ~1.2x for channels_last.
    anchors = x[..., ::2, ::2].repeat_interleave(2, dim=-1)
    return (x.unflatten(-2, (height // 2, 2)) - anchors.unsqueeze(-2)).flatten(-3, -2)


def highpass_residual(x: torch.Tensor) -> torch.Tensor:
    """x minus its 3x3 box mean (replicate padding): a fixed high-pass filter per channel."""
    channels = x.shape[1]
    kernel = torch.full((channels, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    return x - torch.nn.functional.conv2d(padded, kernel, groups=channels)


RESIDUALS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "npr": npr_residual,
    "highpass": highpass_residual,
}

# Residuals of 8-bit images are small (mostly within +-0.1): scaled so the first conv starts on unit-ish
# inputs, as the pixel stem's [-1, 1].
RESIDUAL_SCALE = 8.0


class ResidualStem(nn.Module):
    """A fixed residual filter (`RESIDUALS`) of the [0, 1] pixels, times RESIDUAL_SCALE: an input that keeps
    the traces a generator's decoder leaves between neighbouring pixels and little of the picture."""

    needs_statistics = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in RESIDUALS:
            raise ValueError(f"unknown residual {kind!r}; choose one of {', '.join(RESIDUALS)}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RESIDUALS[self.kind](x).mul_(RESIDUAL_SCALE)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class DCTStem(nn.Module):
    """Per-channel 2-D DCT of the whole view, log(|coefficient| + eps), then per-coefficient standardisation.

    With `residual` (a name in RESIDUALS) the DCT is taken of that residual of the view instead of the view.

    The DCT runs on the [0, 1] values as given, not on 0..255. Scaling by 255 would only add log(255) to every
    log-coefficient (removed again by the per-coefficient mean) but would push `eps` 255x further below the
    8-bit quantisation noise (std 1/255/sqrt(12) ~ 1.1e-3 on the [0, 1] scale, preserved per coefficient by an
    orthonormal DCT). On [0, 1], LOG_EPS = 1e-6 floors log|.| at -13.8, about 7 below that noise floor (-6.8),
    so eps only tames exact zeros (flat images, padding) and never hides a real coefficient.

    `mean` and `std` (channels, size, size) start as 0 and 1 and are set by `fit_stem_statistics` (or
    `set_statistics`); `fitted` records that this happened. All three are saved in the state_dict.
    """

    needs_statistics = True

    def __init__(
        self, size: int, channels: int = 3, eps: float = LOG_EPS, residual: str | None = None
    ) -> None:
        super().__init__()
        if residual is not None and residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose one of {', '.join(RESIDUALS)}")
        self.residual = residual
        self.size = size
        self.channels = channels
        self.eps = eps
        # "auto": scipy on CPU when no gradient is needed (fastest), the autograd-capable matmul otherwise.
        self.dct_backend: Backend = "auto"
        self.register_buffer("mean", torch.zeros(channels, size, size))
        self.register_buffer("std", torch.ones(channels, size, size))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.channels, self.size, self.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DCTStem expects (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def log_dct(self, x: torch.Tensor) -> torch.Tensor:
        """log(|DCT(x)| + eps) per channel, without the normalisation."""
        self._check_input(x)
        if self.residual is not None:
            x = RESIDUALS[self.residual](x)
        coefficients = dct2(x, self.dct_backend)
        if coefficients.requires_grad:
            return torch.log(coefficients.abs() + self.eps)
        # The fresh result is ours: working in place saves two full-size allocations (and their page faults),
        # about 3x faster on CPU at 512 px.
        return coefficients.abs_().add_(self.eps).log_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always float32, even under AMP: in fp16/bf16 the matrix DCT's sums lose most digits of the small
        # high-frequency coefficients that carry generator fingerprints (a third of the outputs off by more
        # than 0.05 std in fp16 at 512 px). The layers after the stem may still run in reduced precision.
        if self._inference_on_cpu(x):
            return self._cpu_inference(x)
        if x.device.type not in _AUTOCAST_DEVICES:  # e.g. "meta" for FLOP counting: no autocast there
            return self._normalised_log_dct(x.float())
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._normalised_log_dct(x.float())

    def _inference_on_cpu(self, x: torch.Tensor) -> bool:
        """Whether `_cpu_inference` applies: CPU, no autograd (so never in training, nor for saliency), the
        scipy DCT, float32 statistics, and not while torch.compile / torch.export traces."""
        return (
            x.device.type == "cpu"
            and self.mean.device.type == "cpu"
            and self.mean.dtype == torch.float32
            and not torch.is_grad_enabled()
            and self.dct_backend in ("auto", "scipy")
            and not torch.compiler.is_compiling()
        )

    def _cpu_inference(self, x: torch.Tensor) -> torch.Tensor:
        """`_normalised_log_dct` for CPU inference, equal up to float rounding (checked against the plain
        path in tests/test_inference_paths.py), ~1.3x faster on 64 px tiles:

        - one float32 copy to NCHW first: the residual and the DCT then run along contiguous rows. In
          channels_last memory a row interleaves the three channels, and NPR's anchor broadcast becomes a
          gather of 3-float runs (the NCHW copy and the final strided write cost less than that).
        - abs, log and the standardisation in numpy, in place on the DCT's fresh output: numpy's log is
          ~2.5x faster than torch's on CPU (SIMD), and in place nothing is allocated.
        - the last step (the division by std) writes straight into the input's layout: channels_last in,
          channels_last out, as the convolutions after the stem want (engine.prepare_model).
        """
        self._check_input(x)
        channels_last = _is_channels_last(x)
        x = x.float().contiguous()
        residual = RESIDUALS[self.residual](x) if self.residual is not None else x
        values = scipy.fft.dctn(
            residual.numpy(),
            type=2,
            axes=(-2, -1),
            norm="ortho",
            workers=torch.get_num_threads(),
            overwrite_x=self.residual is not None,  # the residual is ours; the caller's pixels are not
        )
        np.abs(values, out=values)
        values += self.eps
        np.log(values, out=values)
        values -= self.mean.numpy()
        out = torch.empty(
            x.shape, memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        np.divide(values, self.std.numpy(), out=out.numpy())
        return out

    def _normalised_log_dct(self, x: torch.Tensor) -> torch.Tensor:
        values = self.log_dct(x)
        # Statistics laid out like the values (channels_last or not), else the broadcast is a strided crawl.
        memory_format = torch.channels_last if _is_channels_last(values) else torch.contiguous_format
        mean = self.mean.unsqueeze(0).contiguous(memory_format=memory_format)
        std = self.std.unsqueeze(0).contiguous(memory_format=memory_format)
        if values.requires_grad:
            return (values - mean) / std
        return values.sub_(mean).div_(std)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        shape = tuple(self.mean.shape)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise ValueError(
                f"statistics must have shape {shape}, got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool((std > 0).all()):
            raise ValueError("std must be positive everywhere")
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.fitted.fill_(True)

    def extra_repr(self) -> str:
        residual = f", residual={self.residual}" if self.residual else ""
        return (
            f"size={self.size}, channels={self.channels}, eps={self.eps:g}, fitted={self.is_fitted}{residual}"
        )


Stem = PixelStem | ResidualStem | DCTStem

STEMS = ("pixel", "dct", *RESIDUALS, *(f"{name}-dct" for name in RESIDUALS))


def create_stem(kind: str, size: int, channels: int = 3) -> Stem:
    """The stem named in a VariantSpec: "pixel", "dct", a residual ("npr", "highpass") or the DCT of one
    ("npr-dct", "highpass-dct")."""
    if kind == "pixel":
        return PixelStem()
    if kind == "dct":
        return DCTStem(size, channels)
    if kind in RESIDUALS:
        return ResidualStem(kind)
    if kind.endswith("-dct") and kind.removesuffix("-dct") in RESIDUALS:
        return DCTStem(size, channels, residual=kind.removesuffix("-dct"))
    raise ValueError(f"unknown stem {kind!r}; choose one of {', '.join(STEMS)}")


@torch.no_grad()
def fit_stem_statistics(
    stem: nn.Module,
    batches: Iterable[torch.Tensor | tuple | list],
    on_batch: Callable[[int], None] | None = None,
) -> RunningMeanStd | None:
    """Stream [0, 1] image batches through `stem.log_dct`; store the per-coefficient mean and std in the stem.

    `batches` yields tensors (N, C, size, size), or tuples/lists whose first item is one (so a DataLoader of
    (images, labels) works). `on_batch(n)` is called after each batch with its number of images, e.g. to
    advance a progress bar. Returns the accumulated statistics, or None (consuming nothing) for a stem
    without statistics.
    """
    if not getattr(stem, "needs_statistics", False):
        return None
    stats = RunningMeanStd(stem.mean.shape)
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        stats.update(stem.log_dct(images.to(stem.mean.device)))
        if on_batch is not None:
            on_batch(images.shape[0])
    if stats.count == 0:
        raise ValueError("no images to fit the stem statistics on")
    stem.set_statistics(stats.mean, stats.std)
    return stats
