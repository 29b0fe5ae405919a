"""Shared fixtures: tiny image trees built inside each test, never real data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_tiny_split(
    root: Path, classes=("human", "gen-a", "gen-b"), per_class: int = 10, size: int = 32, seed: int = 0
) -> Path:
    """An ImageFolder of class-dependent images plus a split CSV (6 train / 2 val / 2 test per class).

    Each class adds a different periodic pattern to random content, so a model can learn something.
    """
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 200, size=(size, size, 3)).astype(np.int32)
            if label:
                base[:: label + 1, :: label + 1] += 55
            path = root / name / f"{i:03d}.png"
            Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
            rows.append(
                {
                    "path": f"{name}/{path.name}",
                    "class": name,
                    "sha256": "",
                    "width": size,
                    "height": size,
                    "format": "PNG",
                    "group": f"{name}-{i}",
                    "split": splits[i % len(splits)],
                }
            )
    csv_path = root / "split.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


@pytest.fixture
def tiny_split(tmp_path: Path) -> Path:
    return write_tiny_split(tmp_path / "data")
