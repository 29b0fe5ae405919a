"""Attribution, detection and calibration metrics computed from one softmax over classes.

A model outputs probabilities over `class_names`; one of them is the human class. Attribution is the
argmax class. Detection (human vs generated) is derived from the same output: P(generated) = 1 - P(human),
and an image is judged generated when P(generated) >= threshold. Note that the two can disagree: with
P = (human 0.4, a 0.3, b 0.3) the argmax says "human" while detection at 0.5 says "generated".

Everything returned is plain Python (int, float, None, list, dict) so it can go straight to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from animeprov.config import DEFAULT_HUMAN_CLASS

# Rows of `probs` must sum to 1 within this tolerance: catches logits passed by mistake, yet accepts
# float32 softmax output.
_PROB_SUM_TOLERANCE = 1e-3

# Floor for the probability of the true class in the NLL: a hard zero would make the mean infinite (and
# not JSON-serialisable); with this floor one such image contributes -log(1e-12) ~ 27.6.
_NLL_PROB_FLOOR = 1e-12

DEFAULT_ECE_BINS = 15


def _validate(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as int64 (n,), probs as float64 (n, k)) or raise ValueError saying what is wrong.

    `n_classes` None accepts any number of columns.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (n_images, n_classes), got shape {probs.shape}")
    n, k = probs.shape
    if n_classes is not None and k != n_classes:
        raise ValueError(f"probs has {k} columns but there are {n_classes} class names")
    if n == 0:
        raise ValueError("no images to evaluate (probs has 0 rows)")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")
    if np.any(probs < 0):
        raise ValueError("probs contains negative values; pass softmax probabilities, not logits")
    row_sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > _PROB_SUM_TOLERANCE:
        raise ValueError(
            f"probs rows must sum to 1 (row {worst} sums to {row_sums[worst]:.6g}); "
            "pass softmax probabilities, not logits"
        )

    labels = np.asarray(y_true)
    if labels.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"y_true has {labels.shape[0]} labels but probs has {n} rows")
    if labels.dtype == bool or not (
        np.issubdtype(labels.dtype, np.integer)
        or (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))
    ):
        raise ValueError(f"y_true must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= k)
    if np.any(bad):
        raise ValueError(f"label {int(labels[bad][0])} out of range: class indices must be in [0, {k - 1}]")
    return labels, probs


def expected_calibration_error(
    probs: np.ndarray, y_true: Sequence[int] | np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """Expected calibration error of the top-class probability (Guo et al. 2017).

    Confidences are grouped into `n_bins` equal-width bins (lo, hi] over [0, 1]; ECE is the average over
    bins of |accuracy - mean confidence|, weighted by the fraction of images in the bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    labels, probs = _validate(y_true, probs, None)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Right-closed bins: confidence c goes to bin ceil(c * n_bins) - 1, so 1.0 lands in the last bin.
    bin_index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bin_index):
        in_bin = bin_index == b
        gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
        ece += in_bin.mean() * gap
    return float(ece)


def _ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when the denominator is zero (the quantity is undefined)."""
    return float(numerator / denominator) if denominator > 0 else None


def detection_metrics(labels: np.ndarray, probs: np.ndarray, human_index: int, threshold: float) -> dict:
    is_generated = labels != human_index
    p_generated = 1.0 - probs[:, human_index]
    judged_generated = p_generated >= threshold
    correct = judged_generated == is_generated
    n_generated = int(is_generated.sum())
    n_human = int((~is_generated).sum())
    # AP and ROC-AUC need both a positive and a negative example; say "undefined" instead of warning.
    both_present = n_human > 0 and n_generated > 0
    return {
        "threshold": float(threshold),
        "accuracy": float(correct.mean()),
        "accuracy_human": _ratio(int(correct[~is_generated].sum()), n_human),
        "accuracy_generated": _ratio(int(correct[is_generated].sum()), n_generated),
        "average_precision": float(average_precision_score(is_generated, p_generated))
        if both_present
        else None,
        "roc_auc": float(roc_auc_score(is_generated, p_generated)) if both_present else None,
        "n_human": n_human,
        "n_generated": n_generated,
    }


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    human_class: str | None = DEFAULT_HUMAN_CLASS,
    threshold: float = 0.5,
) -> dict:
    """All evaluation numbers for one set of predictions, as a JSON-serialisable dict.

    Per-class precision is None for a class that is never predicted, per-class accuracy (recall) is None
    for a class with no images, and F1 is None for a class absent from both; macro-F1 averages the classes
    that occur in the labels or the predictions. Detection AP/ROC-AUC are None when only humans or only
    generated images are present. `human_class=None` (a class set with no human class, e.g. GANs only)
    gives `detection: None`.
    """
    class_names = [str(name) for name in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be unique, got {class_names}")
    if human_class is not None and human_class not in class_names:
        raise ValueError(f"human class {human_class!r} is not among the class names {class_names}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    labels, probs = _validate(y_true, probs, len(class_names))
    k = len(class_names)
    predicted = probs.argmax(axis=1)

    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    hits = np.diag(confusion)

    present = np.flatnonzero((true_counts > 0) | (predicted_counts > 0))
    present_set = set(present.tolist())
    f1_all = f1_score(labels, predicted, labels=np.arange(k), average=None, zero_division=0.0)
    per_class = {
        name: {
            "n": int(true_counts[i]),
            "accuracy": _ratio(int(hits[i]), int(true_counts[i])),
            "precision": _ratio(int(hits[i]), int(predicted_counts[i])),
            "f1": float(f1_all[i]) if i in present_set else None,
        }
        for i, name in enumerate(class_names)
    }
    macro_f1 = f1_score(labels, predicted, labels=present, average="macro", zero_division=0.0)

    p_true = probs[np.arange(len(labels)), labels]
    nll = -np.mean(np.log(np.maximum(p_true, _NLL_PROB_FLOOR)))

    return {
        "n": int(len(labels)),
        "class_names": class_names,
        "attribution_accuracy": float(hits.sum() / len(labels)),
        "macro_f1": float(macro_f1),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "detection": None
        if human_class is None
        else detection_metrics(labels, probs, class_names.index(human_class), threshold),
        "calibration": {
            "ece": expected_calibration_error(probs, labels, n_bins=DEFAULT_ECE_BINS),
            "n_bins": DEFAULT_ECE_BINS,
            "nll": float(nll),
        },
        "counts": {name: int(true_counts[i]) for i, name in enumerate(class_names)},
    }
