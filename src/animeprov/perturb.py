"""Image perturbations for robustness tests and robust training: pure functions on (H, W, 3) uint8 pixels.

A perturbation is written as a short spec and parsed once into a `Perturbation`:

    none                   the identity (the clean baseline)
    resize:512-1024-512    a resize chain in absolute sizes of the shorter side. The first size is the
                           size the chain starts from; on an image whose shorter side is s != 512 the same
                           ratios are applied (256 -> 512 -> 256), so the paper's chains on 512 px images
                           can be run on 256 px data. `chain_sizes` says which sizes an image really visits.
    scale:2-0.5            the same chain as scale factors (x2, then x0.5), relative to the image
    jpeg:75                JPEG round trip at PIL quality 75 (PIL's default 4:2:0 chroma subsampling)
    webp:80                lossy WebP round trip at quality 80
    blur:1.0               Gaussian blur, sigma 1.0 px (scipy.ndimage, truncated at 4 sigma)
    noise:2                additive Gaussian noise, sigma 2 grey levels (seeded), rounded and clipped
    crop:0.8               keep a window of 0.8 x each side at a seeded random position (no resampling):
                           it shifts the phase of the 8x8 JPEG grid and of periodic upsampling traces
    jpeg:90+resize:...     steps joined by "+" are applied left to right

Resizing uses PIL's bicubic filter. Nothing here knows about classes: every class is perturbed alike,
and a random step draws only from the generator it is given, so identical (pixels, spec, seed) give
identical output in any process.

`Augmenter` draws a random perturbation per training image (kind and strength) from the same families;
`perturb_patch` gives one patch of a perturbed image by perturbing only that patch's neighbourhood.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

KINDS = ("none", "resize", "scale", "jpeg", "webp", "blur", "noise", "crop")

# The default robustness ladder: the paper's resize chains (stated for 512 px images), then compression,
# cropping, blur and noise at increasing strength.
PAPER_RESIZE_CHAINS = ("resize:512-1024-512", "resize:768-512", "resize:512-1024")
DEFAULT_LADDER = (
    "none",
    *PAPER_RESIZE_CHAINS,
    "scale:0.5-2",
    "jpeg:95",
    "jpeg:75",
    "jpeg:50",
    "webp:90",
    "webp:75",
    "crop:0.9",
    "crop:0.7",
    "blur:0.5",
    "blur:1.0",
    "noise:2",
    "noise:5",
)

# Longest side any step may produce: a chain such as scale:100 would otherwise allocate gigabytes.
MAX_SIDE = 8192


class SpecError(ValueError):
    """A perturbation or augmentation spec that cannot be parsed; the message says what is accepted."""


@dataclass(frozen=True)
class Step:
    kind: str
    values: tuple[float, ...]

    @property
    def strength(self) -> float:
        """One number that grows with the damage done, for plotting accuracy against strength."""
        if self.kind in ("jpeg", "webp"):
            return 100.0 - self.values[0]
        if self.kind == "crop":
            return 1.0 - self.values[0]
        if self.kind in ("blur", "noise"):
            return self.values[0]
        if self.kind in ("resize", "scale"):
            # Total resampling, in octaves: 512-1024-512 is 2.0, 768-512 is 0.58.
            factors = _chain_factors(self)
            return float(sum(abs(math.log2(f)) for f in factors))
        return 0.0


@dataclass(frozen=True)
class Perturbation:
    """A parsed spec: zero or more steps applied in order (`none` has no steps)."""

    spec: str
    steps: tuple[Step, ...]

    @property
    def family(self) -> str:
        """The kind of the last step ("none" for the identity): the panel it is plotted in."""
        if not self.steps:
            return "none"
        kind = self.steps[-1].kind
        return "resize" if kind == "scale" else kind

    @property
    def strength(self) -> float:
        return self.steps[-1].strength if self.steps else 0.0

    @property
    def is_random(self) -> bool:
        return any(step.kind in ("noise", "crop") for step in self.steps)

    def __call__(self, pixels: np.ndarray, seed: int | np.random.Generator = 0) -> np.ndarray:
        return perturb(pixels, self, seed=seed)


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------

_SPEC_HELP = (
    "none, resize:512-1024-512, scale:2-0.5, jpeg:75, webp:80, blur:1.0, noise:2, crop:0.8, "
    "or steps joined with '+' (jpeg:90+resize:512-1024-512)"
)


def parse_spec(spec: str | Perturbation) -> Perturbation:
    """Parse a spec string (see the module docstring); raises SpecError saying what is wrong."""
    if isinstance(spec, Perturbation):
        return spec
    text = spec.strip().lower()
    if not text:
        raise SpecError(f"empty perturbation spec; expected one of: {_SPEC_HELP}")
    if text in ("none", "clean"):
        return Perturbation("none", ())
    steps = tuple(_parse_step(part.strip(), text) for part in text.split("+"))
    return Perturbation(text, steps)


def parse_ladder(specs: Sequence[str]) -> list[Perturbation]:
    """Parse a list of specs, dropping duplicates (same text) but keeping the order."""
    seen: dict[str, Perturbation] = {}
    for spec in specs:
        parsed = parse_spec(spec)
        seen.setdefault(parsed.spec, parsed)
    return list(seen.values())


def _parse_step(part: str, whole: str) -> Step:
    kind, _, argument = part.partition(":")
    kind = kind.strip()
    where = f"in perturbation spec {whole!r}"
    if kind == "none":
        raise SpecError(f"'none' cannot be combined with other steps {where}")
    if kind not in KINDS:
        raise SpecError(f"unknown perturbation {kind!r} {where}; expected one of: {_SPEC_HELP}")
    if not argument:
        raise SpecError(f"{kind!r} needs a value {where}, e.g. {_example(kind)}")
    if argument.startswith("-") or "--" in argument:
        raise SpecError(f"{part!r} {where}: values must not be negative ('-' separates chain values)")
    try:
        values = tuple(float(v) for v in argument.split("-"))
    except ValueError:
        raise SpecError(f"{part!r} {where}: values must be numbers, e.g. {_example(kind)}") from None
    if not all(math.isfinite(v) for v in values):
        raise SpecError(f"{part!r} {where}: values must be finite numbers")
    step = Step(kind, values)
    _check_step(step, part, where)
    return step


def _example(kind: str) -> str:
    return {
        "resize": "resize:512-1024-512",
        "scale": "scale:2-0.5",
        "jpeg": "jpeg:75",
        "webp": "webp:80",
        "blur": "blur:1.0",
        "noise": "noise:2",
        "crop": "crop:0.8",
    }[kind]


def _check_step(step: Step, part: str, where: str) -> None:
    values = step.values
    if step.kind == "resize":
        if len(values) < 2:
            raise SpecError(f"{part!r} {where}: a resize chain needs at least two sizes, e.g. resize:768-512")
        if any(v < 1 or v != int(v) for v in values):
            raise SpecError(f"{part!r} {where}: resize sizes must be whole numbers of pixels >= 1")
        return
    if step.kind == "scale":
        if any(v <= 0 for v in values):
            raise SpecError(f"{part!r} {where}: scale factors must be positive")
        return
    if len(values) != 1:
        raise SpecError(f"{part!r} {where}: {step.kind} takes one value, e.g. {_example(step.kind)}")
    value = values[0]
    if step.kind in ("jpeg", "webp") and not (1 <= value <= 100 and value == int(value)):
        raise SpecError(f"{part!r} {where}: quality must be a whole number from 1 to 100")
    if step.kind in ("blur", "noise") and value < 0:
        raise SpecError(f"{part!r} {where}: sigma must be >= 0")
    if step.kind == "crop" and not 0 < value <= 1:
        raise SpecError(f"{part!r} {where}: the kept fraction must be in (0, 1]")


# ----------------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------------


def perturb(
    pixels: np.ndarray, spec: str | Perturbation, *, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """Apply `spec` to an (H, W, 3) uint8 image and return a new array (the input is never modified)."""
    _check_pixels(pixels)
    perturbation = parse_spec(spec)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = pixels
    for step in perturbation.steps:
        out = _apply_step(out, step, rng)
    return out.copy() if out is pixels else out


def _apply_step(pixels: np.ndarray, step: Step, rng: np.random.Generator) -> np.ndarray:
    value = step.values[0]
    if step.kind in ("resize", "scale"):
        for height, width in chain_sizes(pixels.shape[:2], step)[1:]:
            pixels = resize(pixels, height, width)
        return pixels
    if step.kind == "jpeg":
        return decode(encode_jpeg(pixels, int(value)))
    if step.kind == "webp":
        return decode(encode_webp(pixels, int(value)))
    if step.kind == "blur":
        return gaussian_blur(pixels, value)
    if step.kind == "noise":
        return gaussian_noise(pixels, value, rng)
    if step.kind == "crop":
        return random_crop(pixels, value, rng)
    raise AssertionError(step.kind)  # parse_spec admits no other kind


def _chain_factors(step: Step) -> list[float]:
    """Each link's scale factor: resize:512-1024-512 -> [2.0, 0.5]; scale:2-0.5 -> [2.0, 0.5]."""
    if step.kind == "scale":
        return list(step.values)
    sizes = step.values
    return [b / a for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def chain_sizes(shape: tuple[int, int], step: Step | str) -> list[tuple[int, int]]:
    """(height, width) after each link of a resize/scale chain, starting with `shape` itself.

    Each link resizes the shorter side to round(start * cumulative factor) and keeps the aspect ratio;
    sizes are computed from the original shape (not link by link), so 512-1024-512 returns to 512 exactly.
    """
    if isinstance(step, str):
        parsed = parse_spec(step)
        if len(parsed.steps) != 1 or parsed.steps[0].kind not in ("resize", "scale"):
            raise SpecError(f"{step!r} is not a single resize or scale chain")
        step = parsed.steps[0]
    height, width = shape
    sizes = [(height, width)]
    factor = 1.0
    for link in _chain_factors(step):
        factor *= link
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
        if max(new_h, new_w) > MAX_SIDE:
            raise SpecError(
                f"resize chain would make a {new_w}x{new_h} image (more than {MAX_SIDE} px a side)"
            )
        sizes.append((new_h, new_w))
    return sizes


def perturbed_shape(shape: tuple[int, int], spec: str | Perturbation) -> tuple[int, int] | None:
    """(height, width) of `perturb`'s output for an image of `shape`; None when a crop step draws it."""
    height, width = shape
    for step in parse_spec(spec).steps:
        if step.kind == "crop":
            return None
        if step.kind in ("resize", "scale"):
            height, width = chain_sizes((height, width), step)[-1]
    return height, width


# Context perturbed around a patch by `perturb_patch`: more than blur's reach (4 sigma: 6 px at the
# augmenter's strongest 1.5), the bicubic filter's support and the JPEG decoder's chroma upsampling. Windows
# start on the 16 px grid of 4:2:0 JPEG blocks, as the whole image's blocks do.
PATCH_CONTEXT = 32
_JPEG_GRID = 16


def perturb_patch(
    pixels: np.ndarray,
    spec: str | Perturbation,
    top: int,
    left: int,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The size x size patch at (top, left) of `perturb(pixels, spec)`'s output, perturbing only the patch's
    neighbourhood: a training patch of a large image then costs what its neighbourhood costs, not the whole
    image (a 64 px patch of a 512 px image: about a tenth).

    Blur and JPEG give exactly the whole image's pixels; noise the same distribution (other draws); resizing
    the same up to a sub-pixel shift of the sampling grid; WebP, whose encoder predicts from its neighbours
    and adapts its quantiser to the whole frame, artefacts of the same kind but not the same pixels. Not for
    crop steps (their window is drawn at random): perturb the whole image, a crop is only a slice.
    """
    perturbation = parse_spec(spec)
    height, width = pixels.shape[:2]
    shape = perturbed_shape((height, width), perturbation)
    if shape is None:
        raise ValueError(f"{perturbation.spec!r} crops at random: perturb the whole image instead")
    if not (0 <= top <= shape[0] - size and 0 <= left <= shape[1] - size):
        raise ValueError(
            f"a {size} px patch at ({top}, {left}) does not fit the {shape[1]}x{shape[0]} output"
        )
    rows = _neighbourhood(top, size, shape[0] / height, height)
    cols = _neighbourhood(left, size, shape[1] / width, width)
    window = pixels[rows, cols]
    out = perturb(window, perturbation, seed=rng)
    # where the patch's source position lands in the perturbed window (whose scale may differ by rounding)
    y = round((top * height / shape[0] - rows.start) * out.shape[0] / window.shape[0])
    x = round((left * width / shape[1] - cols.start) * out.shape[1] / window.shape[1])
    y, x = min(max(y, 0), out.shape[0] - size), min(max(x, 0), out.shape[1] - size)
    return out[y : y + size, x : x + size].copy()


def _neighbourhood(start: int, size: int, scale: float, limit: int) -> slice:
    """The source rows (or columns) that output span [start, start + size) is made from, with PATCH_CONTEXT
    on both sides, widened to the JPEG grid and kept inside [0, limit)."""
    low = max(math.floor(start / scale) - PATCH_CONTEXT, 0) // _JPEG_GRID * _JPEG_GRID
    high = math.ceil((start + size) / scale) + PATCH_CONTEXT
    return slice(low, min(-(-high // _JPEG_GRID) * _JPEG_GRID, limit))


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    if (height, width) == pixels.shape[:2]:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG at PIL `quality` (libjpeg's scaled Annex K tables), default 4:2:0 subsampling."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_webp(pixels: np.ndarray, quality: int, method: int = 4) -> bytes:
    """Lossy WebP at `quality`. `method` is libwebp's effort (0 fastest .. 6 slowest); 4, its default and
    cwebp's, for the perturbations and training augmentation (changing it would change their pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="WEBP", quality=quality, lossless=False, method=method)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def gaussian_blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return pixels
    blurred = gaussian_filter(pixels.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def gaussian_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        return pixels
    noisy = pixels.astype(np.float32) + rng.normal(0.0, sigma, size=pixels.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def random_crop(pixels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return pixels[top : top + crop_h, left : left + crop_w].copy()


def _check_pixels(pixels: np.ndarray) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {getattr(pixels, 'shape', type(pixels))}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")


# ----------------------------------------------------------------------------------------------
# Random augmentation for training
# ----------------------------------------------------------------------------------------------

AUGMENT_KINDS = ("resize", "jpeg", "webp", "blur", "noise", "crop")
DEFAULT_AUGMENT_P = 0.5
_AUGMENT_HELP = f"comma-separated kinds from {', '.join(AUGMENT_KINDS)} (or 'all'), optionally p=0.5"


@dataclass(frozen=True)
class Augmenter:
    """With probability `p` per image, one kind from `kinds` (uniformly) at a random strength.

    Strengths span the evaluation ladder: resize = a chain x f -> x 1/f (f log-uniform in [1/2, 2]) or a
    one-way scale f in [1/2, 2]; jpeg quality 30-95; webp quality 50-95; blur sigma 0.2-1.5; noise sigma
    0.5-6; crop fraction 0.6-1.0. Downscales and crops are bounded so the result keeps a shorter side of at
    least `min_side` (the model's view size), so the centre crop still fits.
    """

    kinds: tuple[str, ...]
    p: float = DEFAULT_AUGMENT_P
    min_side: int = 1

    def sample(self, shape: tuple[int, int], rng: np.random.Generator) -> Perturbation:
        """The perturbation for one image (the identity with probability 1 - p)."""
        if not self.kinds or rng.random() >= self.p:
            return Perturbation("none", ())
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        room = min(shape) / max(self.min_side, 1)  # how far the image may shrink and still give a view
        if room < 1:
            # Too small for the view already: left as it is, so it is skipped as without augmentation (an
            # upscale would rescue it by resampling; a crop fraction above 1 cannot be drawn).
            return Perturbation("none", ())
        if kind == "resize":
            low = max(0.5, 1.0 / room)
            high = min(2.0, (MAX_SIDE - 1) / max(shape))  # a large image may not grow past MAX_SIDE
            if high < low:
                return Perturbation("none", ())
            factor = math.exp(rng.uniform(math.log(low), math.log(high)))
            spec = f"scale:{factor:.4f}-{1 / factor:.4f}" if rng.random() < 0.5 else f"scale:{factor:.4f}"
        elif kind == "jpeg":
            spec = f"jpeg:{int(rng.integers(30, 96))}"
        elif kind == "webp":
            spec = f"webp:{int(rng.integers(50, 96))}"
        elif kind == "blur":
            spec = f"blur:{rng.uniform(0.2, 1.5):.3f}"
        elif kind == "noise":
            spec = f"noise:{rng.uniform(0.5, 6.0):.3f}"
        else:
            spec = f"crop:{rng.uniform(max(0.6, 1.0 / room), 1.0):.4f}"
        return parse_spec(spec)

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return perturb(pixels, self.sample(pixels.shape[:2], rng), seed=rng)


def parse_augment(spec: str, *, min_side: int = 1) -> Augmenter | None:
    """'resize,jpeg,p=0.3' -> Augmenter; '' or 'none' -> None (no augmentation)."""
    text = spec.strip().lower()
    if text in ("", "none"):
        return None
    kinds: list[str] = []
    p = DEFAULT_AUGMENT_P
    for item in (part.strip() for part in text.split(",")):
        if item.startswith("p="):
            try:
                p = float(item[2:])
            except ValueError:
                raise SpecError(f"augment {spec!r}: {item!r} is not a probability") from None
            if not 0.0 <= p <= 1.0:
                raise SpecError(f"augment {spec!r}: p must be in [0, 1], got {p}")
        elif item == "all":
            kinds.extend(AUGMENT_KINDS)
        elif item in AUGMENT_KINDS:
            kinds.append(item)
        else:
            raise SpecError(f"augment {spec!r}: unknown kind {item!r}; expected {_AUGMENT_HELP}")
    if not kinds:
        raise SpecError(f"augment {spec!r}: no kinds given; expected {_AUGMENT_HELP}")
    return Augmenter(tuple(dict.fromkeys(kinds)), p=p, min_side=min_side)
