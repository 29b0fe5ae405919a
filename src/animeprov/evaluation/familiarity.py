"""Familiarity: is an image like anything the model was trained on? If not, its verdict is "unsure".

A detector that has never seen a kind of picture (a new art style, a new generator, a screenshot) gives it a
probability all the same, often an extreme one. Distances in the model's own feature space (the input of its
final linear layer, `Classifier.embed`) tell such images apart: per training class the mean feature, one
shared per-dimension variance, and the score of an image is its standardised distance to the nearest class
mean, root-mean-square over dimensions (so it does not grow with the feature width). The threshold is a
high quantile of the scores of the validation images, which the model did not train on: an image further
from every class than `quantile` of those is "unfamiliar".

Stored beside the model as `familiarity.safetensors` (means, variance; threshold and the weights' sha256 in
its metadata), fitted by `train` after calibration and by `animeprov calibrate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from animeprov.io import sha256_file

FAMILIARITY_FILE = "familiarity.safetensors"
DEFAULT_QUANTILE = 0.99
_MIN_VAR = 1e-6  # features that never vary in training (dead units) must not divide by zero


@dataclass(frozen=True)
class Familiarity:
    means: np.ndarray  # (classes, D)
    var: np.ndarray  # (D,)
    threshold: float  # scores above it are "unfamiliar"
    quantile: float
    weights_sha256: str = ""

    def scores(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N,) distance to the nearest class mean (standardised, RMS over dimensions)."""
        features = np.asarray(features, dtype=np.float64)
        diff = (features[:, None, :] - self.means[None]) ** 2 / self.var
        return np.sqrt(diff.mean(axis=2)).min(axis=1)

    def is_familiar(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features) <= self.threshold


def fit_familiarity(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
) -> Familiarity:
    """Class means and shared variance on the training features; threshold at `quantile` of the validation
    features' scores. Raises ValueError on empty inputs or a quantile outside (0, 1]."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    train_features = np.asarray(train_features, dtype=np.float64)
    train_labels = np.asarray(train_labels)
    if len(train_features) == 0 or len(val_features) == 0:
        raise ValueError("familiarity needs training and validation features")
    classes = np.unique(train_labels)
    means = np.stack([train_features[train_labels == c].mean(axis=0) for c in classes])
    centred = train_features - means[np.searchsorted(classes, train_labels)]
    var = np.maximum(centred.var(axis=0), _MIN_VAR)
    partial = Familiarity(means, var, float("inf"), quantile)
    threshold = float(np.quantile(partial.scores(val_features), quantile))
    return Familiarity(means, var, threshold, quantile)


def save_familiarity(run: str | Path, familiarity: Familiarity, weights: str) -> Path:
    from animeprov.checkpoint import _atomic_save_tensors

    path = Path(run) / FAMILIARITY_FILE
    metadata = {
        "threshold": json.dumps(familiarity.threshold),
        "quantile": json.dumps(familiarity.quantile),
        "weights": weights,
        "weights_sha256": sha256_file(Path(run) / weights),
    }
    tensors = {"means": torch.from_numpy(familiarity.means), "var": torch.from_numpy(familiarity.var)}
    _atomic_save_tensors(tensors, path, metadata)
    return path


def load_familiarity(run: str | Path, weights: str) -> Familiarity | None:
    """The run's familiarity model, or None when it has none or it was fitted for other weights (a stale
    check is dropped, never applied: the verdicts then simply go without it)."""
    path = Path(run) / FAMILIARITY_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("weights") != weights or metadata.get("weights_sha256") != sha256_file(
        Path(run) / weights
    ):
        return None
    tensors = load_file(str(path))
    return Familiarity(
        tensors["means"].numpy(),
        tensors["var"].numpy(),
        float(json.loads(metadata["threshold"])),
        float(json.loads(metadata["quantile"])),
        metadata["weights_sha256"],
    )


@torch.no_grad()
def split_features(
    run: str | Path, data: str | Path, split: str, *, weights: str, batch_size: int = 64, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(features pooled per image over its views, labels) of one split, views as the run evaluates."""
    from animeprov import checkpoint as ckpt
    from animeprov.data.dataset import ImageDataset, read_split_rows
    from animeprov.engine import make_loader, prepare_model, select_device

    torch_device = select_device(device)
    model, config = ckpt.load_model(run, weights=weights)
    prepare_model(model, torch_device).eval()
    dataset = ImageDataset(
        data,
        read_split_rows(data, split),
        config["classes"],
        config["size"],
        view=config.get("eval_view", "crop"),
    )
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    labels: dict[int, int] = {}
    for batch in make_loader(dataset, batch_size, device=torch_device):
        if len(batch.labels) == 0:
            continue
        images = batch.images.to(torch_device).contiguous(memory_format=torch.channels_last)
        features = model.embed(images).float().cpu().numpy()
        for row, label, feature in zip(batch.indices.tolist(), batch.labels.tolist(), features, strict=True):
            sums[row] = sums.get(row, 0) + feature
            counts[row] = counts.get(row, 0) + 1
            labels[row] = label
    rows = sorted(sums)
    return np.stack([sums[r] / counts[r] for r in rows]), np.array([labels[r] for r in rows])


def fit_run_familiarity(
    run: str | Path,
    data: str | Path,
    *,
    weights: str,
    quantile: float = DEFAULT_QUANTILE,
    device: str = "auto",
    val_split: str = "val",
) -> Familiarity:
    """Fit on the train split and the `val_split` of `data`, and save beside the model."""
    train_features, train_labels = split_features(run, data, "train", weights=weights, device=device)
    val_features, _ = split_features(run, data, val_split, weights=weights, device=device)
    familiarity = fit_familiarity(train_features, train_labels, val_features, quantile=quantile)
    save_familiarity(run, familiarity, weights)
    return familiarity
