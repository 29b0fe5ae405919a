"""Torch dataset over a split/manifest CSV: decodes through `animeprov.io`, never resizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from animeprov.config import DEFAULT_MAX_TILES
from animeprov.data.manifest import image_path, read_labelled_rows
from animeprov.io import ImageError, LoadRules, load_image, make_views, tile_grid
from animeprov.perturb import PATCH_CONTEXT, Augmenter, perturb, perturb_patch, perturbed_shape

# (view (size, size, 3) uint8 or None, label, row index, (path, reason) when loading failed)
Sample = tuple[np.ndarray | None, int, int, tuple[str, str] | None]

# (decoded pixels, the sample's own generator) -> pixels: a perturbation applied before the view is cut.
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class Batch:
    images: torch.Tensor  # (N, 3, size, size) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    indices: torch.Tensor  # (N,) row index in the dataset, to map predictions back to files
    errors: list[tuple[str, str]]  # (path, reason) for samples that could not be loaded


def read_split_rows(csv_path: str | Path, split: str | None) -> list[dict]:
    """Rows of a split CSV (or a plain manifest when `split` is None)."""
    rows = read_labelled_rows(csv_path)
    if split is None:
        return rows
    if rows and "split" not in rows[0]:
        raise ValueError(f"{csv_path}: has no 'split' column; make one with `animeprov data split`")
    selected = [row for row in rows if row["split"] == split]
    if not selected:
        raise ValueError(f"{csv_path}: no rows in split {split!r}")
    return selected


def class_names_of(rows: list[dict]) -> list[str]:
    return sorted({row["class"] for row in rows})


DATASET_VIEWS = ("crop", "tiles", "random")

# A patch is "flat" when more than this share of its pixels equal their right-hand neighbour exactly: pure
# fills such as the white a transparent cut-out was composited on (most visible human art, none of the AI).
FLAT_SHARE = 0.5
FLAT_RETRIES = 8  # random offsets tried before a flat patch is accepted as it is

# A random patch of an image with more than this many times the pixels of the largest neighbourhood a patch
# needs (its side doubled by the augmenter's strongest downscale, plus context) is augmented on that
# neighbourhood alone (`perturb.perturb_patch`): for 64 px patches of a 512 px image about a tenth of the
# pixels. Smaller images are augmented whole as before: the neighbourhood path for 256 px images too (ratio
# 1) trained the default recipe 1.27x faster but ranked unseen sources worse in a 3-seed cross-validation
# (docs/results/generalisation.md, "Augmenting the neighbourhood of 256 px images").
NEIGHBOURHOOD_AREA_RATIO = 4


def is_flat(patch: np.ndarray, share: float = FLAT_SHARE) -> bool:
    """True when more than `share` of the (H, W, 3) patch's pixels equal their right neighbour exactly."""
    same = (patch[:, 1:] == patch[:, :-1]).all(axis=2)
    return bool(same.mean() > share)


class _DecodedImages(dict):
    """Decoded pixels by (path, load rules), shared by the datasets of one process (e.g. every fold of a
    cross-validation reads the same files). Files are assumed unchanged while the process runs."""

    bytes = 0

    def put(self, key: tuple[Path, LoadRules], pixels: np.ndarray) -> None:
        self[key] = pixels
        self.bytes += pixels.nbytes


_DECODED = _DecodedImages()


class ImageDataset(Dataset):
    """Views of the files of a CSV, as float (3, size, size) in [0, 1]. Nothing is resized.

    `view`:
    - "crop": one centre crop per file (the paper's input).
    - "tiles": the tiles of `io.tile_grid`, at most `config.DEFAULT_MAX_TILES` spread over the image (the
      views `predict` judges an image by); needs the files' `width`/`height` columns (as `data index`
      writes them) or reads the image headers.
    - "random": `views_per_image` patches per file at random offsets, new ones every epoch (`set_epoch`);
      with `skip_flat`, up to FLAT_RETRIES offsets are tried to find a patch that is not mostly a flat fill.

    Each item is one view; its sample carries the index of its ROW, so predictions of several views of one
    file can be pooled (`engine.Predictions.pool_by_row`). A file that fails to load is not fatal: the sample
    comes back with its error and the collate function drops it, so a long run never stops on one bad file.

    `augment` (e.g. `animeprov.perturb.Augmenter`) perturbs the decoded pixels before the view is cut (for
    a random patch of a large image, only the patch's neighbourhood: see NEIGHBOURHOOD_AREA_RATIO), and
    random offsets are drawn, from a generator seeded by (augment_seed, epoch, key, view): one sample gets
    the same draw in any worker process, and a new one after `set_epoch`. The key is the row index unless
    `pair_keys` gives rows a shared key: rows with one key (an image and its decoder reconstruction) get the
    same perturbation and the same patch offsets.
    """

    def __init__(
        self,
        csv_path: str | Path,
        rows: list[dict],
        classes: list[str],
        size: int,
        *,
        view: str = "crop",
        views_per_image: int = 1,
        skip_flat: bool = False,
        rules: LoadRules = LoadRules(),
        augment: Augment | None = None,
        augment_seed: int = 0,
        pair_keys: list[int] | None = None,
        cache_bytes: int = 0,
    ) -> None:
        unknown = sorted({row["class"] for row in rows} - set(classes))
        if unknown:
            raise ValueError(f"{csv_path}: classes {unknown} are not among the model's classes {classes}")
        if view not in DATASET_VIEWS:
            raise ValueError(f"unknown dataset view {view!r}; choose one of {', '.join(DATASET_VIEWS)}")
        if views_per_image < 1:
            raise ValueError(f"views_per_image must be at least 1, got {views_per_image}")
        self.paths = [image_path(csv_path, row) for row in rows]
        self.labels = [classes.index(row["class"]) for row in rows]
        self.classes = classes
        self.size = size
        self.view = view
        self.skip_flat = skip_flat
        self.rules = rules
        self.augment = augment
        self.augment_seed = augment_seed
        self.keys = list(range(len(rows))) if pair_keys is None else list(pair_keys)
        self.epoch = 0
        # (row, view number, (top, left) or None) per item
        self.items: list[tuple[int, int, tuple[int, int] | None]] = []
        for row_index, row in enumerate(rows):
            if view == "tiles":
                # predict's tile budget, so that validation and calibration judge as `predict` does
                shape = self._shape(row_index, row)
                corners = tile_grid(*shape, size, DEFAULT_MAX_TILES) or [None]  # None: too small, error
                self.items.extend((row_index, j, corner) for j, corner in enumerate(corners))
            else:
                count = views_per_image if view == "random" else 1
                self.items.extend((row_index, j, None) for j in range(count))
        # Decoded images kept for later views, epochs and datasets of this process (`_DECODED`), up to
        # `cache_bytes` in all (0: only the last image: the views of one file come one after another when not
        # shuffled).
        self.cache_bytes = cache_bytes
        self._last: tuple[Path | None, np.ndarray | None] = (None, None)

    def _shape(self, index: int, row: dict) -> tuple[int, int]:
        try:
            return int(row["height"]), int(row["width"])
        except (KeyError, TypeError, ValueError):
            try:  # the header only; EXIF orientations 5-8 turn the image a quarter, as load_image does
                with Image.open(self.paths[index]) as image:
                    turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
                    return (image.width, image.height) if turned else (image.height, image.width)
            except (OSError, Image.DecompressionBombError):
                return 0, 0  # not readable: __getitem__ reports it through load_image

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for the next epoch (call before building that epoch's loader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def item_rows(self) -> list[int]:
        return [row for row, _, _ in self.items]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def _pixels(self, path: Path) -> np.ndarray:
        if path == self._last[0]:
            return self._last[1]
        key = (path, self.rules)
        pixels = _DECODED.get(key) if self.cache_bytes else None
        if pixels is None:
            pixels = load_image(path, self.rules).pixels
            pixels.flags.writeable = False  # shared by later views: augmentations copy, never edit
            if _DECODED.bytes + pixels.nbytes <= self.cache_bytes:
                _DECODED.put(key, pixels)
        self._last = (path, pixels)
        return pixels

    def __getitem__(self, index: int) -> Sample:
        row, view_number, corner = self.items[index]
        path = self.paths[row]
        try:
            pixels = self._pixels(path)
            rng = np.random.default_rng([self.augment_seed, self.epoch, self.keys[row], view_number])
            if self.view == "random" and self._augments_neighbourhood(pixels.shape[:2]):
                return self._augmented_random_patch(pixels, rng, str(path)), self.labels[row], row, None
            if self.augment is not None:
                pixels = self.augment(pixels, rng)
            if self.view == "random":
                view = self._random_patch(pixels, rng, str(path))
            elif corner is not None:
                top, left = corner
                view = pixels[top : top + self.size, left : left + self.size].copy()
                if view.shape[:2] != (self.size, self.size):
                    raise ImageError(
                        str(path),
                        f"{pixels.shape[1]}x{pixels.shape[0]} image does not match its "
                        "manifest's width/height (changed since indexed?)",
                    )
            else:
                view = make_views(pixels, self.size, "crop", path=str(path))[0]
        except ImageError as error:
            return None, self.labels[row], row, (error.path, error.reason)
        return view, self.labels[row], row, None

    def _augments_neighbourhood(self, shape: tuple[int, int]) -> bool:
        largest_neighbourhood = 2 * self.size + 2 * PATCH_CONTEXT
        return isinstance(self.augment, Augmenter) and (
            shape[0] * shape[1] > NEIGHBOURHOOD_AREA_RATIO * largest_neighbourhood**2
        )

    def _augmented_random_patch(self, pixels: np.ndarray, rng: np.random.Generator, path: str) -> np.ndarray:
        """`augment` then `_random_patch`, from the same draws of the perturbation and the offsets, with only
        each tried patch's neighbourhood perturbed."""
        perturbation = self.augment.sample(pixels.shape[:2], rng)
        shape = perturbed_shape(pixels.shape[:2], perturbation)
        if shape is None or min(shape) < self.size:
            # a crop draws its window at random (and is only a slice); too small raises the usual error
            return self._random_patch(perturb(pixels, perturbation, seed=rng), rng, path)
        return self._unflat_patch(
            shape, rng, lambda top, left: perturb_patch(pixels, perturbation, top, left, self.size, rng)
        )

    def _random_patch(self, pixels: np.ndarray, rng: np.random.Generator, path: str) -> np.ndarray:
        height, width = pixels.shape[:2]
        if height < self.size or width < self.size:
            return make_views(pixels, self.size, "crop", path=path)[0]  # raises the "too small" ImageError
        size = self.size
        patch = self._unflat_patch(
            (height, width), rng, lambda top, left: pixels[top : top + size, left : left + size]
        )
        return patch.copy()

    def _unflat_patch(
        self,
        shape: tuple[int, int],
        rng: np.random.Generator,
        cut: Callable[[int, int], np.ndarray],
    ) -> np.ndarray:
        """The patch `cut(top, left)` at a random offset into an image of `shape`; with `skip_flat`, up to
        FLAT_RETRIES offsets until one is not mostly a flat fill (else the last is kept)."""
        for _ in range(FLAT_RETRIES if self.skip_flat else 1):
            top = int(rng.integers(0, shape[0] - self.size + 1))
            left = int(rng.integers(0, shape[1] - self.size + 1))
            patch = cut(top, left)
            if not (self.skip_flat and is_flat(patch)):
                break
        return patch


def collate_samples(samples: list[Sample]) -> Batch:
    good = [s for s in samples if s[0] is not None]
    errors = [s[3] for s in samples if s[3] is not None]
    if good:
        pixels = torch.from_numpy(np.stack([s[0] for s in good]))
        images = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    else:
        images = torch.empty(0, 3, 0, 0)
    return Batch(
        images=images,
        labels=torch.tensor([s[1] for s in good], dtype=torch.long),
        indices=torch.tensor([s[2] for s in good], dtype=torch.long),
        errors=errors,
    )


def source_balanced_weights(sources: list[str], generated: list[bool]) -> torch.Tensor:
    """Sampling weight per item so that human and generated items are drawn equally often overall, and
    within each half every source equally often: a large source cannot dominate what the model learns,
    and an item of a small source is seen as often as the whole of a big one over an epoch.

    A half with no items leaves its mass to the other."""
    counts = Counter(zip(generated, sources, strict=True))
    sources_per_half = Counter(half for half, _ in counts)
    halves = len(sources_per_half)
    return torch.tensor(
        [
            1.0 / (halves * sources_per_half[half] * counts[(half, source)])
            for half, source in zip(generated, sources, strict=True)
        ],
        dtype=torch.float64,
    )
