"""PNG figures for evaluation and training: confusion matrix (like the paper's Fig. 8) and learning curves.

Figures are built on `matplotlib.figure.Figure` directly rather than pyplot, so no global backend or
figure state is touched and nothing needs closing (safe in servers, tests and threads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_confusion(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
    normalize: bool = True,
) -> Path:
    """Save a confusion matrix as PNG: rows are the true label, columns the predicted label.

    With `normalize` the colours show row-normalised fractions (each row's recall split) and every cell
    reads "count\\nfraction"; without it the colours and cells show counts.
    """
    counts = np.asarray(matrix)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {counts.shape} but there are {k} class names")
    if np.any(counts < 0):
        raise ValueError("confusion matrix contains negative counts")

    row_totals = counts.sum(axis=1, keepdims=True)
    # A class with no images has no fractions; show its row as 0 rather than NaN.
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)
    shown = fractions if normalize else counts.astype(float)
    top = 1.0 if normalize else max(float(shown.max()), 1.0)

    side = 2.0 + 1.1 * k  # inches: room for k cells with two-line annotations plus labels and colour bar
    fig = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=top)
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalize else "images")

    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title if title is not None else "Confusion matrix")

    for row in range(k):
        for column in range(k):
            count = int(counts[row, column])
            text = f"{count}\n{fractions[row, column]:.2f}" if normalize else str(count)
            # Dark text on light cells, white on dark ones.
            colour = "white" if shown[row, column] > 0.5 * top else "black"
            ax.text(column, row, text, ha="center", va="center", color=colour, fontsize=9)

    return _save(fig, out_path)


def plot_training_curves(metrics_rows: list[dict], out_path: str | os.PathLike) -> Path:
    """Save loss and accuracy per epoch (train and validation) as a two-panel PNG.

    Rows have keys epoch, train_loss, train_accuracy, val_loss, val_accuracy; a missing or None value
    (e.g. an epoch without validation) is left out of that curve.
    """
    if not metrics_rows:
        raise ValueError("no metrics rows to plot")
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    loss_ax, accuracy_ax = fig.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "Loss"), (accuracy_ax, "accuracy", "Accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            points = [
                (row["epoch"], row[f"{split}_{metric}"])
                for row in metrics_rows
                if row.get(f"{split}_{metric}") is not None
            ]
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, style, label="train" if split == "train" else "validation")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    accuracy_ax.set_ylim(0.0, 1.02)  # room for markers at 1.0
    return _save(fig, out_path)


def _save(fig: Figure, out_path: str | os.PathLike) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
