"""A finished `animeprov crossval` folder's pooled figures over the images of some sources only; JSON out.

A cross-validation over more data (say all four visible sets) judges more images than one over fewer; to
compare the two on the same images, restrict the larger one's held-out predictions to the sources of the
smaller one's manifests. Per seed, pooled over folds as the report pools (`crossval.pooled_metrics`), plus
the best balanced accuracy any single threshold on the calibrated P(generated) would give (a ceiling, not
a result); then mean and sd over seeds, and the seeds' models together (`crossval.ensemble_metrics`).

    .venv/bin/python benchmarks/crossval_subset.py runs/gen-vn/pretrained --sources-of \
        runs/data/anime-real-256.csv runs/data/anime-more-256.csv runs/data/anime-sd1-postproc-256.csv
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from animeprov.crossval import PREDICTIONS_FILE, ensemble_metrics, mean_sd, pooled_metrics

FIGURES = (
    "roc_auc",
    "balanced_accuracy",
    "human_correct_at_0.5",
    "ai_recall_at_0.5",
    "fpr_at_ai_threshold",
    "coverage",
    "committed_accuracy",
)


def best_threshold_balanced_accuracy(rows: list[dict], human_class: str) -> float:
    generated = np.array([row["class"] != human_class for row in rows])
    fpr, tpr, _ = roc_curve(generated, [row["p_generated"] for row in rows])
    return float(((tpr + 1 - fpr) / 2).max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--sources-of", nargs="*", default=[], help="manifests whose sources to keep (all if none)"
    )
    parser.add_argument("--human-class", default="human")
    args = parser.parse_args()
    keep = {row["source"] for manifest in args.sources_of for row in csv.DictReader(open(manifest))}

    by_seed: dict[int, list[dict]] = {}
    for path in sorted(args.folder.glob(f"fold-*/seed-*/{PREDICTIONS_FILE}")):
        if not (path.parent / "crossval-done.json").exists():
            continue
        seed = int(path.parent.name.removeprefix("seed-"))
        fold = int(path.parent.parent.name.removeprefix("fold-"))
        for line in path.read_text().splitlines():
            row = {**json.loads(line), "fold": fold}
            if row["error"] is None and (not keep or row["source"] in keep):
                by_seed.setdefault(seed, []).append(row)

    per_seed = {}
    for seed, rows in sorted(by_seed.items()):
        figures = pooled_metrics(rows, args.human_class, {})
        per_seed[seed] = {key: figures[key] for key in ("n", *FIGURES)}
        per_seed[seed]["best_threshold_balanced_accuracy"] = best_threshold_balanced_accuracy(
            rows, args.human_class
        )
    names = (*FIGURES, "best_threshold_balanced_accuracy")
    report = {
        "folder": str(args.folder),
        "sources_of": args.sources_of,
        "per_seed": per_seed,
        "mean_sd": {key: mean_sd([figures[key] for figures in per_seed.values()]) for key in names},
        "seed_ensemble": ensemble_metrics(by_seed, args.human_class) if len(by_seed) > 1 else None,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
