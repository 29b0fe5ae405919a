"""Spectral fingerprints: the mean log|DCT| of each class's images (the paper's Figs. 10-15).

A generator's upsampling leaves periodic traces that show up as bright points or lines in the average
DCT spectrum of its images (Frank et al., ICML 2020). For every class we average, over all its images,

    log(|DCT-II_ortho(plane)| + LOG_EPS)

for the R, G, B planes and for the luminance Y (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, as PIL's "L"
mode and JPEG use), on pixel values in [0, 1] with the same LOG_EPS as the model's DCT stem, so a
fingerprint is on the same scale as the model's input before its per-coefficient normalisation.

Images are never resized: each contributes one centre crop of `size` x `size` (images smaller than that
are skipped and counted). Crops are transformed in batches with `scipy.fft.dctn` and folded into a
float64 running mean (`RunningMeanStd`), so memory stays steady whatever the number of images.

Coefficient (0, 0) (top left) is the DC term; the row index is the vertical frequency, the column index
the horizontal one; a cosine cos(pi * k * (2n + 1) / (2N)) along the columns puts its energy at column k.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
import torch
from PIL import Image

from animeprov.config import DEFAULT_HUMAN_CLASS, LOG_EPS
from animeprov.data.dataset import read_split_rows
from animeprov.data.manifest import image_path
from animeprov.io import ImageError, LoadRules, iter_image_files, load_image, make_views
from animeprov.perturb import parse_spec, perturb
from animeprov.transforms.stats import RunningMeanStd

# The planes averaged per class, in this order; each is saved as DIR/<class>/<plane>.npy and .png.
PLANES = ("red", "green", "blue", "luminance")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
INDEX_FILE = "index.json"
DIFFERENCE_FILE = "difference_from_human"  # .npy / .png: luminance fingerprint minus the human class's
PAPER_VIEW_FILE = "paper_view.png"
RESIZE_PANEL_FILE = "resize_panel.png"
DEFAULT_RESIZE_CHAIN = "resize:512-1024-512"  # the paper's Fig. 15; on other sizes: x2, then x0.5
MAX_LISTED_SKIPS = 20  # skipped files named in index.json per class; the count is always complete


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------


def log_dct_planes(crops: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 crops -> (N, 4, S, S) float32 log|DCT| of the R, G, B and luminance planes."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) pixels, got shape {crops.shape}")
    # float64 DCT: float32 would leave ~1e-3 errors in the log of the smallest coefficients.
    rgb = crops.astype(np.float64) / 255.0
    luminance = rgb @ LUMA_WEIGHTS
    planes = np.concatenate([rgb.transpose(0, 3, 1, 2), luminance[:, None]], axis=1)
    coefficients = scipy.fft.dctn(planes, type=2, axes=(-2, -1), norm="ortho", workers=workers or 1)
    return np.log(np.abs(coefficients) + LOG_EPS).astype(np.float32)


def luminance_log_dct(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> HxW float32 log(|DCT| + LOG_EPS) of the BT.601 luminance on [0, 1]."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) pixels, got shape {pixels.shape}")
    return log_dct_planes(pixels[None])[0, PLANES.index("luminance")]


# ----------------------------------------------------------------------------------------------
# Streaming accumulation
# ----------------------------------------------------------------------------------------------


@dataclass
class ClassFingerprint:
    """Running statistics of one class: the mean (and spread) of log|DCT| per plane."""

    size: int
    stats: RunningMeanStd = field(init=False)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stats = RunningMeanStd((len(PLANES), self.size, self.size))

    @property
    def count(self) -> int:
        return self.stats.count

    def add(self, crops: np.ndarray) -> None:
        if len(crops):
            self.stats.update(torch.from_numpy(log_dct_planes(crops)))

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < MAX_LISTED_SKIPS:
            self.skipped_examples.append(reason)

    def mean(self, plane: str = "luminance") -> np.ndarray:
        return self.stats.mean[PLANES.index(plane)].numpy().astype(np.float32)


def labelled_images(
    data: str | os.PathLike, *, split: str | None = None, classes: Iterable[str] | None = None
) -> Iterator[tuple[str, Path]]:
    """(class, file) pairs from a manifest/split CSV (rows of `split` only, when given) or an ImageFolder
    (each sub-folder of `data` is a class; files found recursively by extension)."""
    data = Path(data)
    wanted = set(classes) if classes is not None else None
    if data.is_file():
        for row in read_split_rows(data, split):
            if wanted is None or row["class"] in wanted:
                yield row["class"], image_path(data, row)
        return
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such manifest CSV or image folder")
    if split is not None:
        raise ValueError(f"{data}: --split needs a split CSV, not an image folder")
    class_dirs = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{data}: an ImageFolder needs one sub-folder per class; found none")
    for class_dir in class_dirs:
        if wanted is None or class_dir.name in wanted:
            for file in sorted(iter_image_files([class_dir])):
                yield class_dir.name, file


def _limited(items: Iterable[tuple[str, Path]], per_class: int | None) -> Iterator[tuple[str, Path]]:
    taken: dict[str, int] = {}
    for cls, path in items:
        if per_class is None or taken.get(cls, 0) < per_class:
            taken[cls] = taken.get(cls, 0) + 1
            yield cls, path


def _crops(
    items: Iterable[tuple[str, Path]], size: int | None, rules: LoadRules, on_skip
) -> Iterator[tuple[str, np.ndarray]]:
    """(class, centre crop) for every usable image; `size` None takes the first image's shorter side."""
    for cls, path in items:
        try:
            pixels = load_image(path, rules).pixels
            if size is None:
                size = min(pixels.shape[:2])
            yield cls, make_views(pixels, size, "crop", path=str(path))[0]
        except ImageError as error:
            on_skip(cls, str(error))


def compute_fingerprints(
    items: Iterable[tuple[str, str | os.PathLike]],
    *,
    size: int | None = None,
    batch_size: int = 16,
    per_class: int | None = None,
    rules: LoadRules = LoadRules(),
    on_image=None,
) -> dict[str, ClassFingerprint]:
    """Stream (class, file) pairs into per-class running means of log|DCT|.

    Each file contributes one centre crop of `size` (default: the first readable image's shorter side);
    smaller or unreadable files are skipped and counted. `per_class` caps the files read per class.
    `on_image(class)` is called after each file (for progress bars). Memory: one batch per class.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    result: dict[str, ClassFingerprint] = {}
    pending: dict[str, list[np.ndarray]] = {}
    skipped: dict[str, ClassFingerprint] = {}  # skip counts and examples, merged once sizes are known

    def on_skip(cls: str, reason: str) -> None:
        skipped.setdefault(cls, ClassFingerprint(1)).skip(reason)
        if on_image:
            on_image(cls)

    for cls, crop in _crops(_limited(((c, Path(p)) for c, p in items), per_class), size, rules, on_skip):
        if cls not in result:
            result[cls] = ClassFingerprint(crop.shape[0])
        batch = pending.setdefault(cls, [])
        batch.append(crop)
        if len(batch) >= batch_size:
            result[cls].add(np.stack(batch))
            batch.clear()
        if on_image:
            on_image(cls)
    for cls, batch in pending.items():
        if batch:
            result[cls].add(np.stack(batch))
    for cls, failures in skipped.items():
        # A class whose every file failed stays in the result (count 0), so the report names it.
        target = result.setdefault(cls, failures)
        if target is not failures:
            target.skipped, target.skipped_examples = failures.skipped, failures.skipped_examples
    return dict(sorted(result.items()))


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def spectrum_image(
    spectrum: np.ndarray, *, diverging: bool = False, percentiles: tuple[float, float] = (1.0, 99.0)
) -> Image.Image:
    """A contrast-stretched, colour-mapped picture of a 2-D spectrum (one pixel per coefficient).

    Values are clipped to the given percentiles and mapped through "inferno"; with `diverging`, the
    scale is symmetric around 0 (clipped at the upper percentile of |value|) and mapped through "RdBu_r",
    so white means "no difference". Pure array -> image: no pyplot, no GUI.
    """
    from matplotlib import colormaps

    values = np.asarray(spectrum, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D spectrum, got shape {values.shape}")
    finite = values[np.isfinite(values)]
    if diverging:
        limit = float(np.percentile(np.abs(finite), percentiles[1])) if finite.size else 0.0
        low, high = -limit, limit
    else:
        low, high = (float(v) for v in np.percentile(finite, percentiles)) if finite.size else (0.0, 0.0)
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.full_like(values, 0.5)
    scaled = np.nan_to_num(scaled, nan=0.5)
    rgba = colormaps["RdBu_r" if diverging else "inferno"](scaled, bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), mode="RGB")


def paper_view(spectrum: np.ndarray) -> Image.Image:
    """The paper's style of figure: the average log spectrum in grey, contrast refined by histogram
    equalisation so that faint periodic peaks stand out against the smooth 1/f falloff."""
    values = np.asarray(spectrum, dtype=np.float64)
    ranks = np.argsort(np.argsort(values, axis=None), axis=None).reshape(values.shape)
    grey = (ranks * (255.0 / max(values.size - 1, 1))).astype(np.uint8)
    return Image.fromarray(grey, mode="L")


# ----------------------------------------------------------------------------------------------
# Writing and reading a fingerprint folder
# ----------------------------------------------------------------------------------------------


def write_fingerprints(
    fingerprints: dict[str, ClassFingerprint],
    out_dir: str | os.PathLike,
    *,
    human_class: str = DEFAULT_HUMAN_CLASS,
    source: dict | None = None,
) -> Path:
    """Write DIR/<class>/{red,green,blue,luminance}.{npy,png}, paper_view.png, the difference from the
    human class (when there is one), an overview figure and DIR/index.json; return the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = {cls: fp for cls, fp in fingerprints.items() if fp.count}
    human = usable.get(human_class)
    index: dict = {
        "description": "mean log(|DCT-II ortho| + eps) per class over centre crops of pixels in [0, 1]",
        "eps": LOG_EPS,
        "luminance": "ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B",
        "planes": list(PLANES),
        "size": next(iter(usable.values())).size if usable else None,
        "human_class": human_class if human is not None else None,
        "source": source or {},
        "classes": {},
    }
    for cls, fp in fingerprints.items():
        entry: dict = {"images": fp.count, "skipped": fp.skipped, "skipped_examples": fp.skipped_examples}
        index["classes"][cls] = entry
        if not fp.count:
            continue
        class_dir = out_dir / cls
        class_dir.mkdir(parents=True, exist_ok=True)
        for plane in PLANES:
            np.save(class_dir / f"{plane}.npy", fp.mean(plane))
            spectrum_image(fp.mean(plane)).save(class_dir / f"{plane}.png")
        paper_view(fp.mean()).save(class_dir / PAPER_VIEW_FILE)
        entry["files"] = [f"{cls}/{plane}.npy" for plane in PLANES]
        if human is not None and cls != human_class:
            if human.size != fp.size:
                raise ValueError(f"class {cls!r} has size {fp.size}, human class {human.size}")
            difference = fp.mean() - human.mean()
            np.save(class_dir / f"{DIFFERENCE_FILE}.npy", difference)
            spectrum_image(difference, diverging=True).save(class_dir / f"{DIFFERENCE_FILE}.png")
            entry["difference_from_human"] = f"{cls}/{DIFFERENCE_FILE}.npy"
    if usable:
        plot_overview(usable, out_dir / "overview.png", human_class=human_class)
    index_path = out_dir / INDEX_FILE
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index_path


def load_fingerprints(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """class -> (S, S) float32 mean luminance log|DCT| from a folder written by `animeprov fingerprint`.

    Reads the classes listed in DIR/index.json, or every DIR/<class>/luminance.npy when there is no index.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no fingerprint folder")
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        classes = json.loads(index_path.read_text(encoding="utf-8")).get("classes", {})
        names = [cls for cls, entry in classes.items() if entry.get("images")]
    else:
        names = sorted(p.parent.name for p in folder.glob("*/luminance.npy"))
    return {cls: np.load(folder / cls / "luminance.npy", allow_pickle=False) for cls in names}


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def plot_overview(
    fingerprints: dict[str, ClassFingerprint],
    out_path: str | os.PathLike,
    *,
    human_class: str,
    max_columns: int = 6,
) -> Path:
    """Every class's paper-style view, each with its difference from the human class below it (when there
    is a human class); wrapped after `max_columns` classes."""
    from matplotlib.figure import Figure

    human = fingerprints.get(human_class)
    if human is not None:  # the reference first
        fingerprints = {human_class: human, **fingerprints}
    per_class = 2 if human is not None else 1
    columns = min(len(fingerprints), max_columns)
    blocks = -(-len(fingerprints) // columns)
    fig = Figure(figsize=(2.4 * columns, 2.6 * per_class * blocks), layout="constrained")
    axes = fig.subplots(per_class * blocks, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for position, (cls, fp) in enumerate(fingerprints.items()):
        row, column = per_class * (position // columns), position % columns
        axes[row, column].imshow(paper_view(fp.mean()), cmap="gray")
        axes[row, column].set_title(f"{cls} (n={fp.count})", fontsize=8)
        if human is not None and cls != human_class:
            axes[row + 1, column].imshow(spectrum_image(fp.mean() - human.mean(), diverging=True))
            axes[row + 1, column].set_title(f"{cls} minus {human_class}", fontsize=7)
    out_path = Path(out_path)
    fig.savefig(out_path, format="png", dpi=100)
    return out_path


def resize_comparison(
    items: Iterable[tuple[str, str | os.PathLike]],
    *,
    size: int | None = None,
    chain: str = DEFAULT_RESIZE_CHAIN,
    batch_size: int = 16,
    per_class: int | None = None,
    rules: LoadRules = LoadRules(),
) -> tuple[ClassFingerprint, ClassFingerprint]:
    """Fingerprints of the same centre crops before and after `chain`, an `animeprov.perturb` spec.

    The default, the paper's 512 -> 1024 -> 512, keeps its ratios on other sizes (x2 then x0.5), so the
    crop comes back at its own size. `items` should hold one class."""
    perturbation = parse_spec(chain)
    before: ClassFingerprint | None = None
    after: ClassFingerprint | None = None
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            changed = [perturb(crop, perturbation) for crop in batch]
            if any(c.shape != batch[0].shape for c in changed):
                raise ValueError(f"{chain!r} changes the image size; the panel needs a round trip")
            before.add(np.stack(batch))
            after.add(np.stack(changed))
            batch.clear()

    for _cls, crop in _crops(_limited(((c, Path(p)) for c, p in items), per_class), size, rules, _ignore):
        if before is None:
            before, after = ClassFingerprint(crop.shape[0]), ClassFingerprint(crop.shape[0])
        batch.append(crop)
        if len(batch) >= batch_size:
            flush()
    if before is None:
        raise ValueError("no usable image for the resize comparison")
    flush()
    return before, after


def _ignore(_cls: str, _reason: str) -> None:
    pass


def plot_resize_panel(
    before: ClassFingerprint,
    after: ClassFingerprint,
    out_path: str | os.PathLike,
    *,
    label: str,
    chain: str = DEFAULT_RESIZE_CHAIN,
) -> Path:
    """Fig. 15: the class fingerprint before and after resizing, and what the resize changed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (paper_view(before.mean()), f"{label}: original crops"),
        (paper_view(after.mean()), f"after {chain}"),
        (spectrum_image(after.mean() - before.mean(), diverging=True), "after minus original"),
    ]
    for ax, (picture, title) in zip(axes, panels, strict=True):
        ax.imshow(picture, cmap="gray")
        ax.set_title(f"{title} (n={before.count})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=100)
    return out_path
