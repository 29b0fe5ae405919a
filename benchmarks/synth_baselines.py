"""How separable is the synthetic benchmark by trivial statistics, and by its spectral fingerprints?

Generates a small synthetic set (in a temporary folder unless --dir is given), fits simple classifiers on
a stratified split and prints their test accuracies as JSON on stdout:

- colour histogram (8x8x8 RGB) + logistic regression, and + random forest;
- pixels: logistic regression on 32x32 area-downscaled pixels, and on the raw pixels;
- scalar image statistics (brightness, contrast, sharpness, colour count) + random forest;
- for contrast, logistic regression on the per-coefficient standardised log|DCT| of the luminance
  (Frank et al., ICML 2020), which sees the upsampling fingerprints.

    .venv/bin/python benchmarks/synth_baselines.py --per-class 200 --size 128
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from animeprov.config import LOG_EPS
from animeprov.data.synth import DEFAULT_CLASSES, generate_synthetic

LUMA = np.array([0.299, 0.587, 0.114])


def load_set(manifest: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, H, W, 3) uint8 and integer labels, in manifest order; class names in first-seen order."""
    with manifest.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = list(dict.fromkeys(row["class"] for row in rows))
    images = np.stack([np.asarray(Image.open(manifest.parent / row["path"]).convert("RGB")) for row in rows])
    labels = np.array([names.index(row["class"]) for row in rows])
    return images, labels, names


def colour_histograms(images: np.ndarray) -> np.ndarray:
    cells = (images // 32).astype(np.int64)
    index = (cells[..., 0] * 64 + cells[..., 1] * 8 + cells[..., 2]).reshape(len(images), -1)
    counts = np.stack([np.bincount(row, minlength=512) for row in index])
    return counts / index.shape[1]


def downscaled_pixels(images: np.ndarray, side: int = 32) -> np.ndarray:
    n, h, w, c = images.shape
    blocks = images.reshape(n, side, h // side, side, w // side, c).mean(axis=(2, 4))
    return blocks.reshape(n, -1) / 255.0


def scalar_statistics(images: np.ndarray) -> np.ndarray:
    """Per image: channel means and stds, mean |gradient|, Laplacian variance, distinct colours."""
    pixels = images.astype(np.float32)
    luma = pixels @ LUMA.astype(np.float32)
    gradient = np.abs(np.diff(luma, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(luma, axis=2)).mean(
        axis=(1, 2)
    )
    laplacian = (
        luma[:, 1:-1, 1:-1] * 4
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    packed = images[..., 0].astype(np.int64) * 65536 + images[..., 1].astype(np.int64) * 256 + images[..., 2]
    colours = np.array([len(np.unique(p)) for p in packed])
    return np.column_stack(
        [pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2)), gradient, laplacian.var(axis=(1, 2)), colours]
    )


def log_dct(images: np.ndarray) -> np.ndarray:
    """log(|DCT-II ortho| + LOG_EPS) of the luminance, (N, H, W)."""
    luma = images.astype(np.float64) @ LUMA
    return np.log(np.abs(dctn(luma, axes=(1, 2), norm="ortho")) + LOG_EPS)


def evaluate(model, features: np.ndarray, labels: np.ndarray, seed: int, test_fraction: float) -> dict:
    """Test accuracy and per-class recall (in class order) on a stratified split."""
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    model.fit(x_train, y_train)
    correct = model.predict(x_test) == y_test
    recall = [round(float(correct[y_test == k].mean()), 2) for k in np.unique(labels)]
    return {"accuracy": round(float(correct.mean()), 4), "recall": recall}


def logistic() -> object:
    # Features standardised with training statistics (for the DCT: the paper's per-coefficient normalisation).
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.01))


def forest(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--dir", type=Path, default=None, help="keep the images here (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.dir or Path(scratch)
        started = time.perf_counter()
        manifest = generate_synthetic(
            folder, args.per_class, args.size, args.seed, args.classes, args.workers
        )
        generated = time.perf_counter() - started
        images, labels, names = load_set(manifest)

    split = dict(seed=args.seed, test_fraction=args.test_fraction)
    hist = colour_histograms(images)
    results = {
        "colour_histogram_logreg": evaluate(logistic(), hist, labels, **split),
        "colour_histogram_forest": evaluate(forest(args.seed), hist, labels, **split),
        "pixels_32px_logreg": evaluate(logistic(), downscaled_pixels(images), labels, **split),
        "pixels_raw_logreg": evaluate(logistic(), images.reshape(len(images), -1) / 255.0, labels, **split),
        "scalar_stats_forest": evaluate(forest(args.seed), scalar_statistics(images), labels, **split),
        "log_dct_logreg": evaluate(logistic(), log_dct(images).reshape(len(images), -1), labels, **split),
    }
    report = {
        "classes": names,
        "per_class": args.per_class,
        "size": args.size,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "chance": round(1 / len(names), 4),
        "generation_seconds": round(generated, 1),
        "test": results,
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
