"""Input stems: everything between the model input (N, 3, H, W floats in [0, 1]) and the first learned layer.

The stem lives inside the model and its statistics are persistent buffers, so they are saved with the
weights and training, evaluation and serving can never preprocess differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


class DCTStem(nn.Module):
    """Per-channel 2-D DCT of the whole view, log(|coefficient| + eps), then per-coefficient standardisation.

    The DCT runs on the [0, 1] values as given, not on 0..255. Scaling by 255 would only add log(255) to every
    log-coefficient (removed again by the per-coefficient mean) but would push `eps` 255x further below the
    8-bit quantisation noise (std 1/255/sqrt(12) ~ 1.1e-3 on the [0, 1] scale, preserved per coefficient by an
    orthonormal DCT). On [0, 1], LOG_EPS = 1e-6 floors log|.| at -13.8, about 7 below that noise floor (-6.8),
    so eps only tames exact zeros (flat images, padding) and never hides a real coefficient.

    `mean` and `std` (channels, size, size) start as 0 and 1 and are set by `fit_stem_statistics` (or
    `set_statistics`); `fitted` records that this happened. All three are saved in the state_dict.
    """

    needs_statistics = True

    def __init__(self, size: int, channels: int = 3, eps: float = LOG_EPS) -> None:
        super().__init__()
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

    def log_dct(self, x: torch.Tensor) -> torch.Tensor:
        """log(|DCT(x)| + eps) per channel, without the normalisation."""
        expected = (self.channels, self.size, self.size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DCTStem expects (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
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
        if x.device.type not in _AUTOCAST_DEVICES:  # e.g. "meta" for FLOP counting: no autocast there
            return self._normalised_log_dct(x.float())
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._normalised_log_dct(x.float())

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
        return f"size={self.size}, channels={self.channels}, eps={self.eps:g}, fitted={self.is_fitted}"


Stem = PixelStem | DCTStem


def create_stem(kind: str, size: int, channels: int = 3) -> Stem:
    """The stem named in a VariantSpec: "pixel" or "dct"."""
    if kind == "pixel":
        return PixelStem()
    if kind == "dct":
        return DCTStem(size, channels)
    raise ValueError(f"unknown stem {kind!r}; choose pixel or dct")


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
