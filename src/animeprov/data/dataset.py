"""Torch dataset over a split/manifest CSV: decodes through `animeprov.io`, never resizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from animeprov.data.manifest import image_path, read_rows
from animeprov.io import ImageError, LoadRules, load_image, make_views

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
    rows = list(read_rows(csv_path))
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


class ImageDataset(Dataset):
    """One centre-crop view per file, as float (3, size, size) in [0, 1].

    A file that fails to load is not fatal: the sample comes back with its error and the collate
    function drops it, so a long run never stops on one bad file.

    `augment` (e.g. `animeprov.perturb.Augmenter`, or a fixed perturbation for robustness tests) is applied
    to the decoded pixels before the view, with a generator seeded by (augment_seed, epoch, index): the
    same sample gets the same perturbation in any worker process, and a new one after `set_epoch`.
    """

    def __init__(
        self,
        csv_path: str | Path,
        rows: list[dict],
        classes: list[str],
        size: int,
        *,
        view: str = "crop",
        rules: LoadRules = LoadRules(),
        augment: Augment | None = None,
        augment_seed: int = 0,
    ) -> None:
        unknown = sorted({row["class"] for row in rows} - set(classes))
        if unknown:
            raise ValueError(f"{csv_path}: classes {unknown} are not among the model's classes {classes}")
        self.paths = [image_path(csv_path, row) for row in rows]
        self.labels = [classes.index(row["class"]) for row in rows]
        self.classes = classes
        self.size = size
        self.view = view
        self.rules = rules
        self.augment = augment
        self.augment_seed = augment_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for the next epoch (call before building that epoch's loader)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        try:
            pixels = load_image(path, self.rules).pixels
            if self.augment is not None:
                pixels = self.augment(pixels, np.random.default_rng([self.augment_seed, self.epoch, index]))
            view = make_views(pixels, self.size, self.view, path=str(path))[0]
        except ImageError as error:
            return None, self.labels[index], index, (error.path, error.reason)
        return view, self.labels[index], index, None


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
