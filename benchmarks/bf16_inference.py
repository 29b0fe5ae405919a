"""Does bfloat16 inference cost accuracy on sources never seen? JSON on stdout.

Takes a finished `animeprov crossval` folder and judges every fold's held-out images again with each fold's
own calibrated `Predictor` (stability checks on, as `predict` does), once in float32 and once with
`--precision bf16` (bfloat16 autocast), in the same process. Reports, per precision, the out-of-source
figures pooled over folds (`animeprov.crossval.pooled_metrics`: ROC-AUC, balanced accuracy, false
accusations, coverage...) as mean ± sd over the seeds, and how far bf16 is from fp32 image by image
(largest |P(generated)| difference, share of verdicts changed), with each precision's images/s.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bf16_inference.py \\
        runs/gen/effnet-pixel-ImageNet-init-equal-augmentation-source-sampling-binary-loss
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch

from animeprov.crossval import mean_sd, pooled_metrics
from animeprov.data.manifest import SPLIT_COLUMN
from animeprov.predict import Predictor

PRECISIONS = ("fp32", "bf16")


def judge_fold(folder: Path, precision: str) -> tuple[list[dict], float]:
    """The fold's held-out rows with their predictions at `precision`, and the seconds it took."""
    with open(folder / "split.csv", newline="") as handle:
        test = [row for row in csv.DictReader(handle) if row[SPLIT_COLUMN] == "test"]
    predictor = Predictor.from_checkpoint(folder / "run", device="cpu", precision=precision)
    start = time.perf_counter()
    results = list(predictor.predict_many([row["path"] for row in test]))
    seconds = time.perf_counter() - start
    rows = [
        {
            "path": row["path"],
            "class": row["class"],
            "error": result.error,
            "p_generated": result.p_generated,
            "verdict": result.verdict,
            "probabilities": result.probabilities,
        }
        for row, result in zip(test, results, strict=True)
    ]
    return rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("crossval", type=Path, help="a finished `animeprov crossval --out` folder")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    settings = json.loads((args.crossval / "crossval.json").read_text())
    human = settings["human_class"]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    folds = sorted(args.crossval.glob("fold-*"))

    per_seed: dict[str, list[dict]] = {precision: [] for precision in PRECISIONS}
    seconds = {precision: 0.0 for precision in PRECISIONS}
    differences: list[float] = []
    changed = compared = 0
    for seed in seeds:
        rows = {precision: [] for precision in PRECISIONS}
        trained: dict[int, set[str]] = {}
        for k, fold in enumerate(folds):
            folder = fold / f"seed-{seed}"
            trained[k] = set(json.loads((folder / "run" / "config.json").read_text())["classes"])
            judged = {}
            for precision in PRECISIONS:
                judged[precision], took = judge_fold(folder, precision)
                seconds[precision] += took
                rows[precision] += [{**row, "fold": k} for row in judged[precision]]
            for a, b in zip(judged["fp32"], judged["bf16"], strict=True):
                if a["error"] is None and b["error"] is None:
                    differences.append(abs(a["p_generated"] - b["p_generated"]))
                    changed += a["verdict"] != b["verdict"]
                    compared += 1
        for precision in PRECISIONS:
            per_seed[precision].append(pooled_metrics(rows[precision], human, trained))

    keys = [key for key in per_seed["fp32"][0] if not key.startswith("n")]
    images = sum(metrics["n"] for metrics in per_seed["fp32"])
    report = {
        "crossval": str(args.crossval),
        "recipe": settings["recipe"],
        "seeds": seeds,
        "folds": len(folds),
        "torch_threads": torch.get_num_threads(),
        "images_judged_per_precision": images,
        "images_per_second": {p: round(images / seconds[p], 2) for p in PRECISIONS},
        "pooled": {p: {key: mean_sd([m[key] for m in per_seed[p]]) for key in keys} for p in PRECISIONS},
        "bf16_against_fp32": {
            "images": compared,
            "max_abs_p_generated_difference": max(differences, default=0.0),
            "median_abs_p_generated_difference": statistics.median(differences) if differences else 0.0,
            "verdicts_changed": changed / max(compared, 1),
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
