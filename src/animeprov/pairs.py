"""Decoder-trace pairs: human images passed through a real latent decoder, as content-matched twins.

Latent-diffusion models (SD 1.x, NovelAI, SDXL, Flux) all draw their pixels through an 8x upsampling VAE
decoder. A human image sent through an encoder and such a decoder looks the same but carries the decoder's
trace; training "human" against "its own reconstruction" (same patch, same augmentation: `ImageDataset`'s
`pair_keys`) leaves the model nothing but that trace to tell them apart (the "aligned data" idea, Rajan et
al., ICLR 2025).

The decoder here is taef2 (madebyollin/taesd, MIT; weights shipped in `animeprov/weights/taef2` with their
licence): a tiny autoencoder for the FLUX.2 latent space, fast enough for a CPU. Reconstructions are cached
as lossless PNGs named by the source file's sha256, so each image is reconstructed once per machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from animeprov.config import AUXILIARY_CLASSES, cache_root
from animeprov.io import load_image, sha256_file

PAIR_CLASS = AUXILIARY_CLASSES[0]  # the class of the reconstructions; `predict` reports it as "unknown"
PAIR_METHODS = ("taef2",)
WEIGHTS_DIR = Path(__file__).parent / "weights" / "taef2"
SCALE = 8  # the decoder upsamples 8x: image sides are cut to a multiple of 8


def default_cache() -> Path:
    """Where reconstructions are kept: $ANIMEPROV_CACHE/taef2, else ~/.cache/animeprov/taef2."""
    return cache_root() / "taef2"


def _conv(cin: int, cout: int, *, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class _Block(nn.Module):
    """Residual block: three 3x3 convs with ReLUs between, plus the input, then ReLU. A "mid" block first adds
    a 1x1 -> GroupNorm -> 1x1 branch (`pool`)."""

    def __init__(self, mid: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(64, 64), nn.ReLU(), _conv(64, 64), nn.ReLU(), _conv(64, 64))
        self.pool = (
            nn.Sequential(
                nn.Conv2d(64, 256, 1, bias=False),
                nn.GroupNorm(4, 256),
                nn.ReLU(),
                nn.Conv2d(256, 64, 1, bias=False),
            )
            if mid
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def taef2_encoder() -> nn.Sequential:
    down = lambda: _conv(64, 64, bias=False, stride=2)  # noqa: E731
    return nn.Sequential(
        _conv(3, 64),
        _Block(),
        down(),
        _Block(),
        _Block(),
        _Block(),
        down(),
        _Block(),
        _Block(),
        _Block(),
        down(),
        _Block(True),
        _Block(True),
        _Block(True),
        _conv(64, 32),
    )


def taef2_decoder() -> nn.Sequential:
    up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
    return nn.Sequential(
        _Clamp(),
        _conv(32, 64),
        nn.ReLU(),
        _Block(True),
        _Block(True),
        _Block(True),
        up(),
        _conv(64, 64, bias=False),
        _Block(),
        _Block(),
        _Block(),
        up(),
        _conv(64, 64, bias=False),
        _Block(),
        _Block(),
        _Block(),
        up(),
        _conv(64, 64, bias=False),
        _Block(),
        _conv(64, 3),
    )


class TinyAutoencoder(nn.Module):
    """taef2: RGB in [0, 1] (sides a multiple of 8) -> 32-channel latent at 1/8 -> RGB in [0, 1]."""

    def __init__(self, weights_dir: Path = WEIGHTS_DIR) -> None:
        super().__init__()
        # Built under a forked RNG: the random initialisation (overwritten by the weights below) must not
        # consume the caller's random stream, or training would depend on whether the cache was warm.
        with torch.random.fork_rng():
            self.encoder = taef2_encoder()
            self.decoder = taef2_decoder()
        for name, part in (("encoder", self.encoder), ("decoder", self.decoder)):
            state = load_file(str(weights_dir / f"taef2_{name}.safetensors"))
            part.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the same image through encoder and decoder, cut to sides a multiple of 8."""
        height, width = (pixels.shape[0] // SCALE) * SCALE, (pixels.shape[1] // SCALE) * SCALE
        if height == 0 or width == 0:
            raise ValueError(
                f"an image of {pixels.shape[1]}x{pixels.shape[0]} px is too small to reconstruct"
            )
        x = (
            torch.from_numpy(np.ascontiguousarray(pixels[:height, :width])).permute(2, 0, 1)[None].float()
            / 255
        )
        out = self(x.contiguous(memory_format=torch.channels_last))[0].permute(1, 2, 0)
        return (out * 255).round().to(torch.uint8).numpy()


def reconstruction_path(cache: Path, digest: str, method: str = "taef2") -> Path:
    return cache / f"{digest}.{method}.png"


def cached_reconstructions(
    paths: list[Path],
    *,
    method: str = "taef2",
    cache: Path | None = None,
    on_image: Callable[[], None] | None = None,
) -> list[Path | None]:
    """The reconstruction of each file (a PNG in `cache`), made where missing; None for a file that cannot
    be loaded or is too small (the caller reports it). Each PNG is written to a temporary name and renamed,
    so an interrupted run leaves no half-written file."""
    if method not in PAIR_METHODS:
        raise ValueError(f"unknown pair method {method!r}; choose one of {', '.join(PAIR_METHODS)}")
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    model: TinyAutoencoder | None = None
    out: list[Path | None] = []
    for path in paths:
        try:
            target = reconstruction_path(cache, sha256_file(path), method)
            if not target.exists():
                model = model or TinyAutoencoder()
                pixels = model.reconstruct(load_image(path).pixels)
                partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                Image.fromarray(pixels).save(partial, format="PNG", compress_level=1)
                os.replace(partial, target)
            out.append(target)
        except (OSError, ValueError):  # ImageError is a ValueError: unreadable, too small
            out.append(None)
        if on_image is not None:
            on_image()
    return out


def add_decoder_pairs(
    rows: list[dict],
    csv_path: str | Path,
    *,
    human_class: str,
    method: str = "taef2",
    source_column: str = "source",
    cache: Path | None = None,
    on_image: Callable[[], None] | None = None,
) -> tuple[list[dict], list[int], list[tuple[str, str]]]:
    """`rows` plus one PAIR_CLASS row per human row (its reconstruction), the pair key of every row (a twin
    shares its original's key, so both get the same patch and augmentation) and (path, reason) of the human
    files that could not be reconstructed. A twin's source is "<original source>+decoder-trace": source-
    balanced sampling then gives the twins as much weight as the human sources they come from."""
    from animeprov.data.manifest import image_path

    human = [i for i, row in enumerate(rows) if row["class"] == human_class]
    paths = [image_path(csv_path, rows[i]) for i in human]
    made = cached_reconstructions(paths, method=method, cache=cache, on_image=on_image)
    twins, keys, failed = [], list(range(len(rows))), []
    for index, path, twin in zip(human, paths, made, strict=True):
        if twin is None:
            failed.append((str(path), f"no {method} reconstruction: unreadable or smaller than {SCALE} px"))
            continue
        source = rows[index].get(source_column) or rows[index]["class"]
        twins.append(
            {
                **rows[index],
                "path": str(twin.resolve()),
                "class": PAIR_CLASS,
                source_column: f"{source}+{PAIR_CLASS}",
            }
        )
        keys.append(index)
    return rows + twins, keys, failed
