"""Out-of-source detection figures of finished `animeprov crossval` folders from each model's own softmax,
without any temperature; JSON on stdout.

Calibration format 1 took P(generated) as 1 - P(human) after the class temperature T, which drifts towards
(C - 1) / C as T grows (evaluation/calibration.py). Formats 2 and 3 divide the logit of the model's own
P(generated) by a detection temperature, which never moves an image across 0.5: so the balanced accuracy at
0.5 computed here is format 2's exactly for folders predicted under format 1 or 2, and format 3's for
folders predicted under format 3 or 4, without running a model (format 4 also shifts the logit; the shift
is undone here). (Format 3 pools an image's tiles on the
detection logit, formats 1 and 2 as the softmax of their mean log-probabilities: tiles are not stored, so
a folder predicted before format 3 keeps its pooling here.) The pooled ROC-AUC here is that of the raw
P(generated); the calibrated one differs from it only in how the folds' detection temperatures interleave
their scores.

The stored probabilities are inverted: format 1 stored softmax(log p / T), whose T-th powers renormalised
give p back; formats 2 to 4 stored P(generated) = sigmoid((logit(p_generated) - S) / D), S = 0 before
format 4.

    .venv/bin/python benchmarks/crossval_uncalibrated.py runs/gen/* runs/loso/traces
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from animeprov.crossval import mean_sd


def raw_p_generated(row: dict, calibration: dict) -> float:
    """The model's own 1 - P(human) behind one stored prediction."""
    human = calibration["human_class"]
    if calibration.get("format") == 1:
        names = list(row["probabilities"])
        log_p = calibration["temperature"] * np.log(
            np.clip([row["probabilities"][c] for c in names], 1e-300, 1)
        )
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        return float(1.0 - p[names.index(human)])
    logit = np.log(row["p_generated"]) - np.log1p(-row["p_generated"])
    raw_logit = logit * calibration["detection_temperature"] + calibration.get("detection_shift", 0.0)
    return float(1.0 / (1.0 + np.exp(-raw_logit)))


def folder_figures(out: Path) -> dict:
    seeds: dict[int, list[tuple[bool, float]]] = {}
    formats = set()
    for predictions in sorted(out.glob("fold-*/seed-*/predictions.jsonl")):
        calibration = json.loads((predictions.parent / "run" / "calibration.json").read_text())
        formats.add(calibration.get("format"))
        seed = int(predictions.parent.name.removeprefix("seed-"))
        for line in predictions.read_text().splitlines():
            row = json.loads(line)
            if row["error"] is None:
                seeds.setdefault(seed, []).append(
                    (row["class"] != calibration["human_class"], raw_p_generated(row, calibration))
                )
    per_seed = {}
    for seed, pairs in sorted(seeds.items()):
        generated = np.array([g for g, _ in pairs])
        p = np.array([q for _, q in pairs])
        tpr, tnr = float((p[generated] >= 0.5).mean()), float((p[~generated] < 0.5).mean())
        per_seed[seed] = {
            "n": len(pairs),
            "roc_auc_raw": float(roc_auc_score(generated, p)),
            "balanced_accuracy_at_0.5": (tpr + tnr) / 2,
            "human_correct_at_0.5": tnr,
            "ai_recall_at_0.5": tpr,
        }
    summary = {
        key: mean_sd([figures[key] for figures in per_seed.values()])
        for key in ("roc_auc_raw", "balanced_accuracy_at_0.5", "human_correct_at_0.5", "ai_recall_at_0.5")
    }
    return {"calibration_formats": sorted(formats), "seeds": per_seed, "mean_sd": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path, help="finished `animeprov crossval --out` folders")
    args = parser.parse_args()
    print(json.dumps({str(folder): folder_figures(folder) for folder in args.folders}, indent=1))


if __name__ == "__main__":
    main()
