"""How much robust training narrows Table 4's drop: a plain and an augmented model on one split.

Trains the same variant twice (without and with `--augment`), evaluates both under the robustness ladder
(optionally also with every class re-encoded first: `--equalize jpeg:90`), and writes:

    OUT/runs/{plain,augmented}/                 the two runs (re-running resumes them)
    OUT/eval/{plain,augmented}[-EQ]/            robustness.json / .md / .png of each model
    OUT/comparison[-EQ].md, comparison[-EQ].png  both models in one table and one figure
    OUT/summary-{best,last}.json

With `--weights last` every evaluation folder and comparison gets a `-last` suffix.

    .venv/bin/python benchmarks/robust_training.py --split runs/six/split.csv --size 128 --epochs 6 \
        --out /work/runs/robustness/synth
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from animeprov import checkpoint as ckpt
from animeprov.evaluation.robustness import plot_robustness, robustness_run
from animeprov.perturb import DEFAULT_LADDER
from animeprov.reports.tables import markdown_table
from animeprov.train import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", required=True, help="Split CSV with train/val/test rows.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--variant", default="cnn-dct-mask")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="all,p=0.5")
    parser.add_argument("--weighted-loss", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ladder", default=",".join(DEFAULT_LADDER))
    parser.add_argument("--equalize", action="append", default=[], help="Also evaluate with this first.")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument(
        "--weights",
        choices=("best", "last"),
        default="best",
        help="Evaluate the best-validation weights or those of the last epoch (same budget for both models).",
    )
    args = parser.parse_args()

    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {}, "tables": {}}
    runs = {}
    for name, augment in (("plain", ""), ("augmented", args.augment)):
        config = TrainConfig(
            data=args.split,
            variant=args.variant,
            size=args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=args.patience,
            seed=args.seed,
            weighted_loss=args.weighted_loss,
            augment=augment,
        )
        start = time.perf_counter()
        result = train(config, args.out / "runs" / name, resume=True)
        runs[name] = result["run"]
        summary["runs"][name] = {
            "augment": augment,
            "best_epoch": result["best_epoch"],
            "best_val_accuracy": result["best_val_accuracy"],
            "train_seconds_this_call": round(time.perf_counter() - start, 1),
        }

    ladder = [spec for spec in args.ladder.split(",") if spec]
    weights = ckpt.BEST_WEIGHTS if args.weights == "best" else ckpt.LAST_STATE
    for equalize in [None, *args.equalize]:
        suffix = "" if equalize is None else "-" + equalize.replace(":", "").replace("+", "_")
        suffix += "" if args.weights == "best" else "-last"
        tables = {
            name: robustness_run(
                run,
                args.split,
                args.out / "eval" / f"{name}{suffix}",
                split=args.eval_split,
                ladder=ladder,
                equalize=equalize,
                seed=args.seed,
                weights=weights,
            )
            for name, run in runs.items()
        }
        summary["tables"][(equalize or "none") + suffix] = {name: t["rows"] for name, t in tables.items()}
        title = f"{args.variant}, {args.size} px, {args.eval_split} split, {args.weights} weights" + (
            f", every class re-encoded {equalize} first" if equalize else ""
        )
        plot_robustness(tables, args.out / f"comparison{suffix}.png", title=title)
        (args.out / f"comparison{suffix}.md").write_text(comparison_markdown(tables, title))
        print((args.out / f"comparison{suffix}.md").read_text())
    (args.out / f"summary-{args.weights}.json").write_text(json.dumps(summary, indent=2) + "\n")


def comparison_markdown(tables: dict, title: str) -> str:
    """Plain vs augmented, per perturbation: attribution and detection, and the mean drop over the ladder."""
    plain, augmented = tables["plain"]["rows"], tables["augmented"]["rows"]
    rows = []
    for p, a in zip(plain, augmented, strict=True):
        rows.append(
            [
                p["perturbation"],
                p["n"],
                p["attribution_accuracy"],
                a["attribution_accuracy"],
                p["detection_accuracy"],
                a["detection_accuracy"],
            ]
        )
    means = []
    for table in (plain, augmented):
        clean = table[0]
        drops_attr = [clean["attribution_accuracy"] - r["attribution_accuracy"] for r in table[1:]]
        drops_det = [
            clean["detection_accuracy"] - r["detection_accuracy"]
            for r in table[1:]
            if r["detection_accuracy"] is not None and clean["detection_accuracy"] is not None
        ]
        means.append(
            (
                sum(drops_attr) / len(drops_attr),
                sum(drops_det) / len(drops_det) if drops_det else None,
                min(r["attribution_accuracy"] for r in table),
            )
        )
    headers = ["perturbation", "n", "attr plain", "attr augmented", "det plain", "det augmented"]
    footer = markdown_table(
        ["model", "mean attribution drop", "mean detection drop", "worst attribution"],
        [["plain", *means[0]], ["augmented", *means[1]]],
    )
    return f"## {title}\n\n{markdown_table(headers, rows)}\n\n{footer}\n"


if __name__ == "__main__":
    main()
