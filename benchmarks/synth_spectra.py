"""Mean DCT spectrum of every synthetic class, and its difference to `human`, as a figure.

Each panel is the mean over images of log(|DCT-II ortho| + LOG_EPS) of the luminance (Frank et al.,
ICML 2020): coefficient (0, 0) top left, the highest frequencies bottom right. Upsampling leaves peaks
and folded copies of the spectrum at fractions of the sampling rate; the human class has none.

    .venv/bin/python benchmarks/synth_spectra.py --per-class 100 --size 256 \
        --out docs/results/synth/mean_spectra.png --samples docs/results/synth/samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from synth_baselines import load_set, log_dct

from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.synth import SYNTH_CLASSES, generate_synthetic, image_seed, synthesize


def spectra_figure(
    spectra: np.ndarray, labels: np.ndarray, names: list[str], path: Path
) -> dict[str, np.ndarray]:
    """Draw the figure; return the mean spectrum of each class."""
    means = {name: spectra[labels == k].mean(axis=0) for k, name in enumerate(names)}
    human = spectra[labels == names.index(DEFAULT_HUMAN_CLASS)]
    differences = {name: mean - means[DEFAULT_HUMAN_CLASS] for name, mean in means.items()}
    # Control: the difference between two halves of the human set, i.e. what "no fingerprint" looks like.
    half = len(human) // 2
    differences[DEFAULT_HUMAN_CLASS] = human[:half].mean(axis=0) - human[half : 2 * half].mean(axis=0)
    low, high = np.percentile(np.stack(list(means.values())), [1, 99.5])
    # Clip the difference scale at the 99.5th percentile, so that a few strong peaks do not hide the rest.
    limit = float(np.percentile(np.abs(np.stack(list(differences.values()))), 99.5))
    fig = Figure(figsize=(2.3 * len(names) + 1.0, 5.2), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    for k, name in enumerate(names):
        top = axes[0, k].imshow(means[name], cmap="viridis", vmin=low, vmax=high)
        axes[0, k].set_title(name, fontsize=9)
        bottom = axes[1, k].imshow(differences[name], cmap="RdBu_r", vmin=-limit, vmax=limit)
        label = "human half A - half B" if name == DEFAULT_HUMAN_CLASS else f"{name} - human"
        axes[1, k].set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(top, ax=axes[0].tolist(), shrink=0.9, label="mean log|DCT|")
    fig.colorbar(bottom, ax=axes[1].tolist(), shrink=0.9, label="difference")
    fig.suptitle(f"Mean log|DCT-II| of the luminance, {int(np.bincount(labels).min())} images per class")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return means


def samples_figure(names: list[str], size: int, path: Path, candidates: int = 20) -> None:
    """One drawing through every class and a 4x zoom into its busiest patch.

    The same per-image seed gives every class the same picture; of the first `candidates` human seeds the
    one with the highest content quality is drawn.
    """
    seeds = [image_seed(0, DEFAULT_HUMAN_CLASS, i) for i in range(candidates)]
    best = max(seeds, key=lambda seed: synthesize(DEFAULT_HUMAN_CLASS, seed, 64)[1])
    images = [synthesize(name, best, size)[0] for name in names]
    crop = size // 8
    luma = images[0].astype(np.float32).mean(axis=2)
    edges = np.abs(np.diff(luma, axis=0))[:, :-1] + np.abs(np.diff(luma, axis=1))[:-1, :]
    grid = [(y, x) for y in range(0, size - crop, crop // 2) for x in range(0, size - crop, crop // 2)]
    top, left = max(grid, key=lambda yx: edges[yx[0] : yx[0] + crop, yx[1] : yx[1] + crop].sum())
    fig = Figure(figsize=(2.3 * len(names), 4.8), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    for k, (name, image) in enumerate(zip(names, images, strict=True)):
        axes[0, k].imshow(image)
        axes[0, k].set_title(name, fontsize=9)
        axes[1, k].imshow(image[top : top + crop, left : left + crop], interpolation="nearest")
        axes[1, k].set_title(f"{crop}x{crop} px at ({left}, {top})", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=list(SYNTH_CLASSES))
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/synth/mean_spectra.png"))
    parser.add_argument(
        "--samples", type=Path, default=None, help="also draw one picture through every class"
    )
    args = parser.parse_args()
    if DEFAULT_HUMAN_CLASS not in args.classes:
        parser.error(f"the differences are taken to {DEFAULT_HUMAN_CLASS!r}: include it")

    with tempfile.TemporaryDirectory() as folder:
        manifest = generate_synthetic(
            Path(folder), args.per_class, args.size, args.seed, args.classes, args.workers
        )
        images, labels, names = load_set(manifest)
    means = spectra_figure(log_dct(images), labels, names, args.out)
    n = args.size
    # Mean log magnitude at the checkerboard coefficient and at the centre (a period-4 pattern) per class.
    summary = {
        name: {"corner": round(float(m[n - 1, n - 1]), 2), "centre": round(float(m[n // 2, n // 2]), 2)}
        for name, m in means.items()
    }
    if args.samples is not None:
        samples_figure(names, args.size, args.samples)
    json.dump(
        {"figure": str(args.out), "size": n, "per_class": args.per_class, "peaks": summary},
        sys.stdout,
        indent=2,
    )
    print()


if __name__ == "__main__":
    main()
