"""Train and evaluate several variants on one split; print a JSON table (and write table.md).

Synthetic benchmark, all six variants (the docs/results table):
    python benchmarks/variant_table.py --synth-per-class 500 --synth-size 256 --out runs/six
Real data (an existing split CSV):
    python benchmarks/variant_table.py --split runs/real/split.csv --variants cnn-dct-mask,cnn-pixel \
        --out runs/real
Re-running resumes: finished runs are reused, unfinished ones continue.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from animeprov.config import VARIANTS
from animeprov.demo import prepare_synthetic_split
from animeprov.evaluation.evaluate import evaluate_run
from animeprov.reports.tables import markdown_table
from animeprov.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", type=Path, help="existing split CSV (else a synthetic set is generated)")
    parser.add_argument("--synth-per-class", type=int, default=500)
    parser.add_argument("--synth-size", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--size", type=int, default=256, help="input size of the CNN variants")
    parser.add_argument("--xception-size", type=int, default=128, help="input size of the Xception variants")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--xception-epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weighted-loss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    split_csv = args.split or prepare_synthetic_split(
        args.out, per_class=args.synth_per_class, size=args.synth_size, seed=args.seed
    )

    results = []
    for variant in args.variants.split(","):
        is_xception = VARIANTS[variant].backbone == "xception"
        size = args.xception_size if is_xception else args.size
        epochs = args.xception_epochs if is_xception else args.epochs
        run = args.out / "runs" / variant
        config = TrainConfig(
            data=str(split_csv),
            variant=variant,
            size=size,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=max(3, epochs // 3),
            seed=args.seed,
            weighted_loss=args.weighted_loss,
        )
        start = time.perf_counter()
        summary = train(config, run, resume=True)
        train_seconds = time.perf_counter() - start
        report = evaluate_run(run, split_csv, args.out / "eval" / variant, split="test")
        detection = report["detection"] or {}  # None for class sets without a human class
        results.append(
            {
                "variant": variant,
                "size": size,
                "epochs_done": summary["epochs_done"],
                "best_epoch": summary["best_epoch"],
                "val_accuracy": summary["best_val_accuracy"],
                "attribution_accuracy": report["attribution_accuracy"],
                "macro_f1": report["macro_f1"],
                "detection_accuracy": detection.get("accuracy"),
                "detection_ap": detection.get("average_precision"),
                "detection_auc": detection.get("roc_auc"),
                "ece": report["calibration"]["ece"],
                "test_images": report["n"],
                "train_seconds_this_call": round(train_seconds, 1),
            }
        )

    headers = [
        "variant",
        "size",
        "attribution acc",
        "macro-F1",
        "detection acc",
        "detection AP",
        "ROC-AUC",
        "ECE",
        "test images",
        "best epoch",
    ]
    table = markdown_table(
        headers,
        [
            [
                r["variant"],
                r["size"],
                r["attribution_accuracy"],
                r["macro_f1"],
                r["detection_accuracy"],
                r["detection_ap"],
                r["detection_auc"],
                r["ece"],
                r["test_images"],
                r["best_epoch"],
            ]
            for r in results
        ],
    )
    (args.out / "table.md").write_text(table + "\n")
    print(json.dumps({"split": str(split_csv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
