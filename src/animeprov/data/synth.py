"""Synthetic fingerprint benchmark: cartoon drawings made "by hand" or "by a generator".

Every image starts from ONE procedural distribution of cartoon drawings (gradient backgrounds, flat,
cel-shaded and gradient fills, dark outlines of varying width, strokes, simple anime faces), rendered 2x
supersampled and box-reduced. The classes differ only in how that drawing reaches its pixels:

- `human`: natively, with no upsampling anywhere. Its brush is made as soft as the generators' output
  (a non-periodic binomial blur standing in for the detail a generator does not reproduce).
- a generator class: the drawing becomes a latent pyramid (an area-downsampled coarse image plus the
  detail lost at each halving) that the class's stack of x2 upsampling layers decodes (nearest + conv,
  transposed conv, bilinear + conv, pixel shuffle). With the reference half-pixel bilinear upsampler and
  all detail kept, a stack would return the drawing exactly. Each class deviates from that in FIXED ways
  (kernels seeded by the class name, never per image), so each leaves its own consistent periodic
  spectral fingerprint (Frank et al., ICML 2020): its last stage reproduces only DETAIL_KEPT of the finest
  detail, its kernels deviate from the reference in the ways its layer type allows, and the noise in
  its latent is shaped by every stage after it.

Sharpness and noise level vary per image over the same ranges for every class, so neither is a cue.
docs/synthetic.md shows that colour histograms and pixels do not separate the classes, and the DCT does.
"""

from __future__ import annotations

import colorsys
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from animeprov.config import DEFAULT_HUMAN_CLASS

# Bump whenever the pixels made for a (seed, class, index, size) change: resuming reuses only images
# written by the same version.
SYNTH_VERSION = 1

MANIFEST_NAME = "manifest.csv"
JOURNAL_NAME = ".synth-journal.jsonl"  # rows of finished images, so that an interrupted run can resume
MANIFEST_COLUMNS = (
    "path",
    "class",
    "sha256",
    "width",
    "height",
    "format",
    "group",
    "seed",
    "architecture",
    "quality",
)
PNG_COMPRESS_LEVEL = 1  # speed over size
MIN_SIZE = 16

SUPERSAMPLE = 2  # drawings are rendered at 2x and box-reduced: anti-aliased edges
# Per-image brush softness (std of a Gaussian blur, px) and grain (std, grey levels), the same ranges for
# every class: a fixed edge width or noise floor would let a classifier tell "a few grey levels of added
# high frequencies" from "none" without looking at where in the spectrum they are.
SOFTNESS_RANGE = (0.0, 0.7)
GRAIN_SIGMA_RANGE = (0.5, 2.0)
# Generators: share of the grain variance that enters the latent (shaped by the decoder; the rest is
# added at the output), and share of the finest detail band their last stage reproduces.
LATENT_NOISE_SHARE = 0.5
DETAIL_KEPT = 0.25
# Human grain is smoothed by [a, 1-2a, a] per axis, so its neighbour correlation is close to that of the
# generators' partly decoded noise.
HUMAN_GRAIN_SMOOTHING = 0.15
# Fixed per-class kernel deviations, relative to a reference kernel of Frobenius norm 1.25: one that
# leaves flat areas, gain and position alone (edges only), and one between the 4 output phases (a faint
# checkerboard on flat areas; transposed conv and pixel shuffle only).
EDGE_DEVIATION = 0.15
PHASE_IMBALANCE = 0.008


@dataclass(frozen=True)
class Architecture:
    """How one class turns a drawing into pixels: `stages` x2 upsampling layers of one `layer` type."""

    layer: str  # "native" (human) | "nearest" | "bilinear" | "transposed4" | "transposed3" | "pixelshuffle"
    stages: int
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    DEFAULT_HUMAN_CLASS: Architecture("native", 0, "native drawing; 2x supersampled; no upsampling"),
    "nearest-conv": Architecture("nearest", 3, "3 x [nearest-neighbour x2 -> 3x3 conv]"),
    "transposed-conv": Architecture("transposed4", 2, "2 x [transposed conv 4x4 stride 2]"),
    "bilinear-conv": Architecture("bilinear", 3, "3 x [bilinear x2 -> 3x3 conv]"),
    "pixel-shuffle": Architecture("pixelshuffle", 2, "2 x [3x3 conv to 4x channels -> pixel shuffle x2]"),
    # Held out of the defaults, for experiments with a generator no model was trained on: a layer type
    # no default class uses, and a default architecture with other weights (another "training run").
    "transposed-conv-k3": Architecture("transposed3", 2, "2 x [transposed conv 3x3 stride 2]"),
    "nearest-conv-b": Architecture("nearest", 3, "3 x [nearest-neighbour x2 -> 3x3 conv] (other weights)"),
}
DEFAULT_CLASSES: tuple[str, ...] = (
    DEFAULT_HUMAN_CLASS,
    "nearest-conv",
    "transposed-conv",
    "bilinear-conv",
    "pixel-shuffle",
)
EXTRA_CLASSES: tuple[str, ...] = ("transposed-conv-k3", "nearest-conv-b")
SYNTH_CLASSES: tuple[str, ...] = DEFAULT_CLASSES + EXTRA_CLASSES
SIZE_MULTIPLE = 2 ** max(arch.stages for arch in ARCHITECTURES.values())


def _architecture(class_name: str) -> Architecture:
    try:
        return ARCHITECTURES[class_name]
    except KeyError:
        known = ", ".join(SYNTH_CLASSES)
        raise ValueError(f"unknown synthetic class {class_name!r}; choose from {known}") from None


# ---------------------------------------------------------------------------------------------------------
# Seeds


def _stable_key(text: str) -> int:
    """A 32-bit key that, unlike hash(), is the same in every process and Python version."""
    return zlib.crc32(text.encode("utf-8"))


def image_seed(seed: int, class_name: str, index: int) -> int:
    """The seed of one image: any image can be regenerated alone, in any process, in any order."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(_stable_key(class_name), index))
    return int(sequence.generate_state(1, np.uint64)[0]) & (2**63 - 1)


# ---------------------------------------------------------------------------------------------------------
# Content: one distribution of cartoon drawings for every class


def _hsv(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb) * 255.0


def _ink(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(np.rint(colour), 0, 255))
    return r, g, b


def _points(points: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in points.tolist()]


def _background(rng: np.random.Generator, n: int) -> Image.Image:
    """A linear or radial gradient between two pastel colours.

    The gradient position is computed on a coarse grid and bilinearly enlarged (exact for a linear ramp,
    far below a grey level off for a radial one), then mapped to colours by per-channel lookup tables:
    full-resolution float arithmetic would cost more than all the rest of the drawing.
    """
    start = _hsv(rng, (0.05, 0.5), (0.7, 1.0))
    end = _hsv(rng, (0.05, 0.5), (0.55, 1.0))
    coarse = max(8, n // 8)
    axis = (np.arange(coarse, dtype=np.float32) + 0.5) / coarse
    if rng.random() < 0.7:
        angle = rng.uniform(0, 2 * math.pi)
        t = axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle)
    else:
        cx, cy = rng.uniform(0.0, 1.0, size=2)
        t = np.sqrt((axis[None, :] - cx) ** 2 + (axis[:, None] - cy) ** 2)
    t = 255.0 * (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    ramp = Image.fromarray(np.rint(t).astype(np.uint8), "L").resize((n, n), Image.Resampling.BILINEAR)
    levels = np.arange(256) / 255.0
    lookup = [np.clip(np.rint(start[c] + levels * (end[c] - start[c])), 0, 255).astype(int) for c in range(3)]
    return Image.merge("RGB", [ramp.point(table.tolist()) for table in lookup])


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Polygon points (k, 2) of a wobbly rotated ellipse or of a few-sided polygon."""
    if rng.random() < 0.3:
        count = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, count))
        radii = radius * rng.uniform(0.6, 1.0, count)
    else:
        count = 64
        angles = np.linspace(0, 2 * math.pi, count, endpoint=False)
        radii = np.full(count, radius)
        for harmonic in (2, 3, 4):
            amplitude = rng.uniform(0, 0.12) if rng.random() < 0.6 else 0.0
            radii *= 1 + amplitude * np.cos(harmonic * angles + rng.uniform(0, 2 * math.pi))
    aspect = rng.uniform(0.5, 1.0)
    rotation = rng.uniform(0, math.pi)
    x, y = radii * np.cos(angles), aspect * radii * np.sin(angles)
    c, s = math.cos(rotation), math.sin(rotation)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, count: int = 40) -> np.ndarray:
    angles = np.linspace(0, 2 * math.pi, count, endpoint=False)
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def _stroke(rng: np.random.Generator, start: np.ndarray, length: float) -> list[tuple[float, float]]:
    """A cubic Bezier curve sampled as a polyline."""
    direction = rng.uniform(0, 2 * math.pi)
    end = start + length * np.array([math.cos(direction), math.sin(direction)])
    c1 = start + rng.normal(0, length * 0.4, 2) + (end - start) / 3
    c2 = start + rng.normal(0, length * 0.4, 2) + 2 * (end - start) / 3
    t = np.linspace(0, 1, 20)[:, None]
    curve = (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
    return _points(curve)


def _box(points: np.ndarray, n: int) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    box = (max(int(x0), 0), max(int(y0), 0), min(int(x1), n), min(int(y1), n))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _mask(points: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """Binary mask of a polygon, cropped to `box` (drawing only the box keeps big canvases cheap)."""
    mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
    ImageDraw.Draw(mask).polygon(_points(points - np.array(box[:2])), fill=255)
    return mask


@dataclass(frozen=True)
class _Style:
    """What stays the same across one drawing, as it would for one artist."""

    light: np.ndarray  # unit vector towards the light
    line_width: float  # canvas pixels
    line_colour: np.ndarray


def _paint_shape(
    canvas: Image.Image,
    rng: np.random.Generator,
    style: _Style,
    points: np.ndarray,
    colour: np.ndarray,
    line_width: float,
    fill: str | None = None,
) -> None:
    """Fill a polygon flat, cel-shaded (a shadow crescent away from the light) or with a gradient."""
    box = _box(points, canvas.size[0])
    if box is None:
        return
    radius = float(np.ptp(points, axis=0).max()) / 2
    blob = _mask(points, box)
    fill = fill or str(rng.choice(["flat", "cel", "gradient"], p=[0.5, 0.38, 0.12]))
    if fill == "gradient":
        t = np.linspace(0, 1, box[3] - box[1], dtype=np.float32)[:, None, None]
        ramp = colour + t * (colour * rng.uniform(0.55, 0.85) - colour)
        ramp = np.broadcast_to(np.rint(ramp).astype(np.uint8), (box[3] - box[1], box[2] - box[0], 3))
        canvas.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), box, blob)
    else:
        canvas.paste(_ink(colour), box, blob)
    if fill == "cel":
        shadow = colour * rng.uniform(0.55, 0.8) * np.array([0.9, 0.9, 1.0])
        lit = _mask(points + style.light * radius * rng.uniform(0.15, 0.45), box)
        canvas.paste(_ink(shadow), box, ImageChops.subtract(blob, lit))
        if rng.random() < 0.35:  # a small highlight on the lit side
            centre = points.mean(axis=0) + style.light * radius * 0.45
            spot = _blob(rng, float(centre[0]), float(centre[1]), radius * rng.uniform(0.08, 0.2))
            spot_box = _box(spot, canvas.size[0])
            if spot_box is not None:
                canvas.paste(_ink(colour + (255 - colour) * 0.6), spot_box, _mask(spot, spot_box))
    if line_width > 0:
        outline = _points(points)
        width = max(1, round(line_width))
        ImageDraw.Draw(canvas).line(
            outline + outline[:2], fill=_ink(style.line_colour), width=width, joint="curve"
        )


def _paint_face(canvas: Image.Image, rng: np.random.Generator, style: _Style) -> None:
    """A simple anime face: head, two big eyes (iris, pupil, highlight, lash line), mouth, hair strands."""
    n = canvas.size[0]
    r = n * rng.uniform(0.12, 0.3)
    cx, cy = rng.uniform(0.2, 0.8, 2) * n
    ink, width = _ink(style.line_colour), style.line_width
    skin = np.array(colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.1, 0.35), 1.0)) * 255
    _paint_shape(canvas, rng, style, _ellipse(cx, cy, r * 0.85, r), skin, width, "cel")
    iris = _hsv(rng, (0.5, 0.95), (0.35, 0.85))
    draw = ImageDraw.Draw(canvas)
    for side in (-1, 1):
        ex, ey, rx, ry = cx + side * r * 0.35, cy + r * 0.1, r * 0.16, r * 0.22
        _paint_shape(canvas, rng, style, _ellipse(ex, ey, rx, ry), np.full(3, 250.0), width, "flat")
        _paint_shape(canvas, rng, style, _ellipse(ex, ey + ry * 0.1, rx * 0.75, ry * 0.8), iris, 0, "cel")
        _paint_shape(
            canvas, rng, style, _ellipse(ex, ey + ry * 0.15, rx * 0.35, ry * 0.4), np.full(3, 20.0), 0, "flat"
        )
        hx, hy, hr = ex - rx * 0.3, ey - ry * 0.25, rx * 0.2
        draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(255, 255, 255))
        lash = _ellipse(ex, ey, rx * 1.1, ry * 1.05)[21:40]  # the upper half: anime eyes' thick top line
        draw.line(_points(lash), fill=ink, width=max(1, round(width * 2)))
    draw.line(
        _points(_ellipse(cx, cy + r * 0.5, r * 0.12, r * 0.06)[2:18]), fill=ink, width=max(1, round(width))
    )
    hair = _ink(_hsv(rng, (0.3, 0.9), (0.25, 0.9)))
    for _ in range(int(rng.integers(3, 9))):
        start = np.array([cx, cy - r * 0.8]) + rng.normal(0, r * 0.3, 2)
        strand = _stroke(rng, start, r * rng.uniform(0.4, 1.0))
        draw.line(strand, fill=hair, width=max(1, round(width * rng.uniform(1.5, 4))), joint="curve")


def render_content(rng: np.random.Generator, size: int) -> np.ndarray:
    """One cartoon drawing, (size, size, 3) uint8: what every class starts from."""
    n = size * SUPERSAMPLE
    canvas = _background(rng, n)
    light_angle = rng.uniform(0, 2 * math.pi)
    style = _Style(
        light=np.array([math.cos(light_angle), math.sin(light_angle)]),
        line_width=n * rng.uniform(0.002, 0.01),
        line_colour=_hsv(rng, (0.0, 0.6), (0.0, 0.25)),
    )
    if rng.random() < 0.4:  # ground: a big shape across the lower part
        ground = _blob(rng, n * rng.uniform(0.3, 0.7), n * rng.uniform(1.0, 1.3), n * rng.uniform(0.6, 0.9))
        _paint_shape(canvas, rng, style, ground, _hsv(rng, (0.2, 0.7), (0.4, 0.9)), 0)
    count = int(rng.integers(4, 12))
    radii = np.sort(n * np.exp(rng.uniform(math.log(0.04), math.log(0.35), count)))[::-1]
    for radius in radii:  # big shapes first, small ones on top
        cx, cy = rng.uniform(-0.1, 1.1, 2) * n
        line_width = style.line_width * rng.uniform(0.6, 1.5) if rng.random() < 0.8 else 0.0
        colour = _hsv(rng, (0.2, 0.9), (0.45, 1.0))
        _paint_shape(canvas, rng, style, _blob(rng, cx, cy, float(radius)), colour, line_width)
    if rng.random() < 0.5:
        _paint_face(canvas, rng, style)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 10))):
        ink = style.line_colour if rng.random() < 0.6 else _hsv(rng, (0.3, 1.0), (0.2, 1.0))
        stroke = _stroke(rng, rng.uniform(0, 1, 2) * n, n * rng.uniform(0.05, 0.4))
        width = max(1, round(style.line_width * rng.uniform(0.5, 2.5)))
        draw.line(stroke, fill=_ink(ink), width=width, joint="curve")
    return np.asarray(canvas.reduce(SUPERSAMPLE))


def content_quality(drawing: np.ndarray) -> float:
    """A score in [0, 1] for how busy and colourful a drawing is, e.g. to pick a "curated" subset.

    Geometric mean of the edge density (share of pixels with a luminance step above 8% of the range,
    saturating at 15%) and the colour variety (cells of an 8x8x8 RGB histogram holding at least 0.1% of
    the pixels, saturating at 48). Computed on the drawing, so it does not depend on the class.
    """
    luma = drawing.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    step = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1, :]
    edges = float((step > 0.08 * 255).mean())
    cells = (drawing // 32).astype(np.int32)
    counts = np.bincount((cells[..., 0] * 64 + cells[..., 1] * 8 + cells[..., 2]).ravel(), minlength=512)
    colours = int((counts >= 0.001 * luma.size).sum())
    return round(math.sqrt(min(edges / 0.15, 1.0) * min(colours / 48, 1.0)), 6)


# ---------------------------------------------------------------------------------------------------------
# Decoder kernels: fixed per class
#
# Every stage is a stride-2 transposed convolution with an (L, L) kernel per channel; nearest/bilinear
# upsampling followed by a 3x3 conv, and a 3x3 conv followed by a pixel shuffle, are such kernels too.

# The half-pixel bilinear x2 upsampler (PyTorch's align_corners=False): the exact partner of the 2x2 area
# downsampling that builds the latent pyramid.
_BILINEAR_1D = np.array([0.25, 0.75, 0.75, 0.25])
_NEAREST_1D = np.array([1.0, 1.0])
# The base 3x3 convs after a fixed upsampler. After nearest: a smoothing that leaves a little of the 2x2
# blocks ([1, 2, 1] / 4 would make nearest + conv exactly bilinear). After bilinear: a mild sharpening.
_AFTER_NEAREST_1D = np.array([0.22, 0.56, 0.22])
_AFTER_BILINEAR_1D = np.array([-0.08, 1.16, -0.08])


def _outer(kernel_1d: np.ndarray) -> np.ndarray:
    return np.outer(kernel_1d, kernel_1d)


def _convolve_full(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full 2-D convolution of two small kernels: the kernel of one filter followed by the other."""
    out = np.zeros((a.shape[0] + b.shape[0] - 1, a.shape[1] + b.shape[1] - 1))
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            out[i : i + a.shape[0], j : j + a.shape[1]] += b[i, j] * a
    return out


def _tap_phases(size: int) -> np.ndarray:
    """For each tap of a 1-D transposed-conv kernel of `size` taps, the output phase (0 or 1) it feeds."""
    return (np.arange(size) - size // 2) % 2


def _project_out(kernel: np.ndarray, functionals: list[np.ndarray]) -> np.ndarray:
    """`kernel` minus its least-squares part in the span of `functionals`: each <f, kernel> becomes 0."""
    basis = np.stack([f.ravel() for f in functionals])
    coefficients = np.linalg.lstsq(basis @ basis.T, basis @ kernel.ravel(), rcond=None)[0]
    return kernel - (basis.T @ coefficients).reshape(kernel.shape)


def _moments(size: int) -> list[np.ndarray]:
    """Sum and first moments: a deviation orthogonal to them changes neither the gain nor the position."""
    centred, ones = np.arange(size) - (size - 1) / 2, np.ones(size)
    return [np.outer(ones, ones), np.outer(centred, ones), np.outer(ones, centred)]


def _phase_indicators(size: int) -> list[np.ndarray]:
    """For each of the 4 output phases, the indicator of the taps that feed it."""
    phases = _tap_phases(size)
    return [np.outer(phases == a, phases == b).astype(float) for a in (0, 1) for b in (0, 1)]


def _unit_deviation(size: int, rng: np.random.Generator, constraints: list[np.ndarray]) -> np.ndarray:
    """A random (L, L) kernel of Frobenius norm 1 orthogonal to `constraints`."""
    deviation = _project_out(rng.standard_normal((size, size)), constraints)
    return deviation / np.linalg.norm(deviation)


def _phase_imbalance(size: int, rng: np.random.Generator) -> np.ndarray:
    """A kernel whose 4 output phases sum to different values (in total 0): a checkerboard on flat areas."""
    imbalance = rng.standard_normal((2, 2))
    imbalance -= imbalance.mean()
    phases = _tap_phases(size)
    taps = np.array([[np.sum(phases == a) * np.sum(phases == b) for b in (0, 1)] for a in (0, 1)])
    return (imbalance / taps)[phases][:, phases]


def _stage_kernel(layer: str, rng: np.random.Generator) -> np.ndarray:
    """The transposed-conv kernel (L, L) of one stage and channel: a base upsampler + a fixed deviation.

    The layer type decides which deviations are possible. After nearest or bilinear upsampling, the 3x3
    conv is composed with the fixed upsampler, so every output phase sees the same total weight: flat
    areas stay flat and the fingerprint lives at edges and in the noise. A transposed conv or a pixel
    shuffle gives each output phase its own taps, so it can also leave a faint checkerboard on flat areas.
    """
    if layer in ("nearest", "bilinear"):
        upsampler, conv = (
            (_NEAREST_1D, _AFTER_NEAREST_1D) if layer == "nearest" else (_BILINEAR_1D, _AFTER_BILINEAR_1D)
        )
        learned = _outer(conv) + EDGE_DEVIATION * _unit_deviation(3, rng, _moments(3))
        return _convolve_full(_outer(upsampler), learned)
    if layer == "transposed4":
        base = _outer(_BILINEAR_1D)
    elif layer == "pixelshuffle":  # a 3x3 conv for each output phase: a 6x6 transposed-conv kernel
        base = np.pad(_outer(_BILINEAR_1D), 1)
    elif layer == "transposed3":
        # The closest 3 taps get to bilinear: one phase gets 1 tap, the other 2 (the "uneven overlap").
        base = _outer(np.array([0.75, 1.0, 0.25]))
    else:
        raise ValueError(f"unknown layer type {layer!r}")
    size = base.shape[0]
    deviation = _unit_deviation(size, rng, _moments(size) + _phase_indicators(size))
    return base + EDGE_DEVIATION * deviation + PHASE_IMBALANCE * _phase_imbalance(size, rng)


@cache
def decoder_kernels(class_name: str) -> tuple[np.ndarray, ...]:
    """The fixed kernels of a generator class: one read-only (3, L, L) float32 array per stage, coarse first.

    Seeded by the class name only, so every data set (any seed, any size) shares the same generators.
    """
    arch = _architecture(class_name)
    if arch.stages == 0:
        raise ValueError(f"class {class_name!r} is not a generator")
    rng = np.random.default_rng(_stable_key(f"animeprov-synth-kernels/{class_name}"))
    stages = []
    for _ in range(arch.stages):
        kernel = np.stack([_stage_kernel(arch.layer, rng) for _channel in range(3)]).astype(np.float32)
        kernel.setflags(write=False)
        stages.append(kernel)
    return tuple(stages)


# ---------------------------------------------------------------------------------------------------------
# Image operations on channel planes (C, H, W) float32


def upsample2(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """x2 upsampling by a stride-2 transposed convolution with a per-channel kernel (C, L, L).

    Equal to torch's conv_transpose2d with the kernel flipped, computed per output phase: output row
    2i+a reads input row i+(a+k-L//2)/2 through tap k, for every k with a+k-L//2 even; columns likewise.
    Borders are edge-replicated: zero padding would darken every generator's border, a trivial cue.
    """
    channels, h, w = x.shape
    size = kernel.shape[-1]
    centre = size // 2
    pad = centre + 1
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    out = np.empty((channels, 2 * h, 2 * w), dtype=np.float32)
    product = np.empty((h, w), dtype=np.float32)
    for a in (0, 1):
        rows = [(k, pad + (a + k - centre) // 2) for k in range(size) if (a + k - centre) % 2 == 0]
        for b in (0, 1):
            cols = [(m, pad + (b + m - centre) // 2) for m in range(size) if (b + m - centre) % 2 == 0]
            for c in range(channels):
                phase = out[c, a::2, b::2]
                phase[...] = 0.0
                for k, top in rows:
                    for m, left in cols:
                        np.multiply(padded[c, top : top + h, left : left + w], kernel[c, k, m], out=product)
                        phase += product
    return out


def bilinear_up2(x: np.ndarray) -> np.ndarray:
    """The reference x2 upsampler (half-pixel bilinear), computed separably."""
    for axis in (1, 2):
        moved = np.moveaxis(x, axis, -1)
        previous = np.concatenate([moved[..., :1], moved[..., :-1]], axis=-1)
        following = np.concatenate([moved[..., 1:], moved[..., -1:]], axis=-1)
        out = np.empty(moved.shape[:-1] + (2 * moved.shape[-1],), dtype=np.float32)
        out[..., 0::2] = 0.75 * moved + 0.25 * previous
        out[..., 1::2] = 0.75 * moved + 0.25 * following
        x = np.moveaxis(out, -1, axis)
    return x


def area_down2(x: np.ndarray) -> np.ndarray:
    """2x2 mean."""
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def blur3(x: np.ndarray, weight: float) -> np.ndarray:
    """Separable [w, 1-2w, w] blur with replicated edges (about a Gaussian of variance 2w px^2, and
    nothing periodic); a new array."""
    w = np.float32(weight)
    for axis in (1, 2):
        out = x * np.float32(1 - 2 * weight)
        source, target = [slice(None)] * 3, [slice(None)] * 3
        for src, dst in ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))):
            source[axis], target[axis] = src, dst
            out[tuple(target)] += w * x[tuple(source)]
        for border in (slice(None, 1), slice(-1, None)):  # the missing neighbour is the pixel itself
            source[axis] = border
            out[tuple(source)] += w * x[tuple(source)]
        x = out
    return x


def decode(
    content: np.ndarray, kernels: Sequence[np.ndarray], noise: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Decode a drawing (C, H, W) from its latent pyramid through one upsampling stack.

    Each stage upsamples the running image and adds the detail band of its level (the level minus the
    reference upsampling of the level below), the last stage only DETAIL_KEPT of it. `noise[s]`, if
    given, is added to the input of stage s (like StyleGAN's noise inputs, or a not quite clean diffusion
    latent), so every later stage shapes it.
    """
    pyramid = [content.astype(np.float32)]
    for _ in kernels:
        pyramid.append(area_down2(pyramid[-1]))
    x = pyramid[-1]
    for stage, kernel in enumerate(kernels):
        coarse, fine = pyramid[-1 - stage], pyramid[-2 - stage]
        if noise:
            x = x + noise[stage]
        detail = fine - bilinear_up2(coarse)
        if stage == len(kernels) - 1:
            detail *= np.float32(DETAIL_KEPT)
        x = upsample2(x, kernel) + detail
    return x


# ---------------------------------------------------------------------------------------------------------
# Noise

# Standard normal noise drawn through a table of 256 quantiles: no different from Gaussian once rounded
# to 8 bits, and several times cheaper than drawing normal variates.
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], dtype=np.float32)


def _standard_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return _NORMAL_QUANTILES[rng.integers(0, 256, shape, dtype=np.uint8)]


def _latent_noise(rng: np.random.Generator, stages: int, size: int, sigma: float) -> list[np.ndarray]:
    """Noise for the input of each stage, halving in strength per coarser level."""
    return [
        np.float32(sigma * 0.5 ** (stages - 1 - stage))
        * _standard_noise(rng, (3,) + (size >> (stages - stage),) * 2)
        for stage in range(stages)
    ]


@cache
def _latent_noise_gain(class_name: str) -> float:
    """Output std of a class's decoded latent noise per unit `sigma` (measured once, away from borders)."""
    kernels = decoder_kernels(class_name)
    size = 32 * 2 ** len(kernels)
    noise = _latent_noise(np.random.default_rng(0), len(kernels), size, 1.0)
    decoded = decode(np.zeros((3, size, size), dtype=np.float32), kernels, noise)
    return float(decoded[:, 8:-8, 8:-8].std())


def _human_grain(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    a = HUMAN_GRAIN_SMOOTHING
    return blur3(_standard_noise(rng, shape), a) * np.float32(sigma / (2 * a * a + (1 - 2 * a) ** 2))


# ---------------------------------------------------------------------------------------------------------
# One image


def synthesize(class_name: str, seed: int, size: int) -> tuple[np.ndarray, float]:
    """Pixels (size, size, 3) uint8 of one image from its per-image seed, and its content quality."""
    arch = _architecture(class_name)
    rng = np.random.default_rng(seed)
    drawing = render_content(rng, size)
    softness = rng.uniform(*SOFTNESS_RANGE)
    sigma = rng.uniform(*GRAIN_SIGMA_RANGE)
    planes = blur3(drawing.transpose(2, 0, 1).astype(np.float32), softness**2 / 2)
    if arch.stages:
        latent_sigma = sigma * math.sqrt(LATENT_NOISE_SHARE) / _latent_noise_gain(class_name)
        noise = _latent_noise(rng, arch.stages, size, latent_sigma)
        planes = decode(planes, decoder_kernels(class_name), noise)
        planes += np.float32(sigma * math.sqrt(1 - LATENT_NOISE_SHARE)) * _standard_noise(rng, planes.shape)
    else:
        # As soft as a generator that reproduces DETAIL_KEPT of the finest detail band: the rest of that
        # band comes from area-down + bilinear-up, which passes cos^4(pi f) of frequency f, about a
        # Gaussian of variance 1 px^2, here the binomial [1, 4, 6, 4, 1] / 16.
        softened = blur3(blur3(planes, 0.25), 0.25)
        planes = np.float32(DETAIL_KEPT) * planes + np.float32(1 - DETAIL_KEPT) * softened
        planes += _human_grain(rng, planes.shape, sigma)
    pixels = np.clip(np.rint(planes), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.ascontiguousarray(pixels), content_quality(drawing)


@dataclass(frozen=True)
class _Job:
    out: str
    class_name: str
    index: int
    seed: int
    size: int

    @property
    def path(self) -> str:
        return f"{self.class_name}/{self.class_name}-{self.index:05d}.png"


def _write_image(job: _Job) -> dict[str, str | int | float]:
    """Render one image and write it atomically (temporary name, then rename); return its manifest row."""
    pixels, quality = synthesize(job.class_name, job.seed, job.size)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    data = buffer.getvalue()
    target = Path(job.out) / job.path
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return {
        "path": job.path,
        "class": job.class_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": job.size,
        "height": job.size,
        "format": "PNG",
        "group": Path(job.path).stem,
        "seed": job.seed,
        "architecture": ARCHITECTURES[job.class_name].description,
        "quality": quality,
    }


def _write_chunk(jobs: list[_Job]) -> list[dict[str, str | int | float]]:
    return [_write_image(job) for job in jobs]


# ---------------------------------------------------------------------------------------------------------
# Resuming: a journal of finished images


def _journal_header(seed: int, size: int) -> dict[str, int]:
    return {"synth_version": SYNTH_VERSION, "seed": seed, "size": size}


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _reusable_rows(out: Path, header: dict[str, int], jobs: Sequence[_Job]) -> dict[str, dict]:
    """Rows of an earlier run with the same version, seed and size whose files are still intact."""
    try:
        lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
        if not lines or json.loads(lines[0]) != header:
            return {}
        rows = {row["path"]: row for row in map(json.loads, lines[1:])}
    except (OSError, ValueError, KeyError, TypeError):  # missing, foreign or torn journal: start afresh
        return {}
    reusable = {}
    for job in jobs:
        row = rows.get(job.path)
        if (
            row is not None
            and row.get("seed") == job.seed
            and _sha256_of(out / job.path) == row.get("sha256")
        ):
            reusable[job.path] = row
    return reusable


def _chunks(jobs: Sequence[_Job], size: int) -> Iterator[list[_Job]]:
    for start in range(0, len(jobs), size):
        yield list(jobs[start : start + size])


# ---------------------------------------------------------------------------------------------------------
# The data set


def generate_synthetic(
    out: Path,
    per_class: int,
    size: int = 512,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    workers: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Write the synthetic benchmark as an ImageFolder `out/<class>/<class>-<index:05d>.png` plus
    `out/manifest.csv`, and return the manifest's path.

    The bytes of an image depend only on (seed, size, class, index), never on `workers` or order.
    `workers=0` renders in this process, `workers=n>0` in n spawned processes. Images that an interrupted
    or smaller earlier run with the same seed and size wrote (recorded in `out/.synth-journal.jsonl`,
    checked by sha256) are kept, not redrawn; other files in `out` are left alone. `on_progress(n)` is
    called with the number of images just finished (kept ones included). `size` must be a multiple of
    SIZE_MULTIPLE (8).
    """
    names = tuple(DEFAULT_CLASSES if classes is None else classes)
    for name in names:
        _architecture(name)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be non-empty and distinct, got {list(names)}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if size < MIN_SIZE or size % SIZE_MULTIPLE:
        raise ValueError(f"size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, got {size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 (in this process) or a number of processes, got {workers}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        _Job(str(out), name, index, image_seed(seed, name, index), size)
        for name in names
        for index in range(per_class)
    ]
    header = _journal_header(seed, size)
    rows = _reusable_rows(out, header, jobs)
    if rows and on_progress is not None:
        on_progress(len(rows))
    todo = [job for job in jobs if job.path not in rows]

    with (out / JOURNAL_NAME).open("w", encoding="utf-8") as journal:
        for line in [header, *rows.values()]:
            journal.write(json.dumps(line) + "\n")
        journal.flush()

        def finished(new_rows: list[dict]) -> None:
            for row in new_rows:
                rows[str(row["path"])] = row
                journal.write(json.dumps(row) + "\n")
            journal.flush()
            if on_progress is not None:
                on_progress(len(new_rows))

        if workers == 0:
            for job in todo:
                finished([_write_image(job)])
        elif todo:
            # Chunks amortise inter-process overhead yet keep a progress bar lively.
            chunk_size = max(1, min(8, len(todo) // (4 * workers)))
            context = multiprocessing.get_context("spawn")  # never fork a parent that may hold threads
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(_write_chunk, chunk) for chunk in _chunks(todo, chunk_size)]
                try:
                    for future in as_completed(futures):
                        finished(future.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    manifest = out / MANIFEST_NAME
    temporary = manifest.with_name(f".{MANIFEST_NAME}.tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[job.path] for job in jobs)
    os.replace(temporary, manifest)
    return manifest
