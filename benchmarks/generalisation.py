"""The generalisation ablation: training recipes compared under leave-source-out cross-validation.

Each row is one `animeprov crossval` run (a recipe plus overrides) over the same manifests, folds and seeds;
the script runs the rows it is asked for (resumable: finished folds are kept) and prints one JSON table of
the pooled figures (mean and sd over seeds) and writes it as Markdown next to the runs.

    .venv/bin/python benchmarks/generalisation.py --work runs/gen --rows all \
        --manifests runs/data/anime-real-256.csv runs/data/anime-more-256.csv \
                    runs/data/anime-sd1-postproc-256.csv

(make the manifests with `animeprov data index ../shared/data/<set> --out runs/data/<set>.csv`).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from animeprov.crossval import CrossvalConfig, run_crossval

PATCHES = {
    "size": 64,
    "view": "random",
    "views_per_image": 4,
    "eval_view": "tiles",
    "epochs": 8,
    "patience": 8,
}
EQUAL_AUGMENT = {"augment": "jpeg,webp,blur,noise,resize,p=0.5", "skip_flat": True}
BALANCED = {"sampling": "source", "binary_weight": 1.0}

# name -> (recipe, overrides). Later rows add to the best stem of the rows before them.
ROWS: dict[str, tuple[str, dict]] = {
    "paper cnn-dct-mask (256 crop)": ("paper", {"epochs": 8}),
    "paper cnn-dct (256 crop)": ("paper", {"variant": "cnn-dct", "epochs": 8}),
    "paper cnn-pixel (256 crop)": ("paper", {"variant": "cnn-pixel", "epochs": 8}),
    "patches cnn-dct-mask": ("paper", {**PATCHES}),
    "patches pooled-pixel": ("paper", {**PATCHES, "variant": "pooled-pixel"}),
    "patches pooled-npr": ("paper", {**PATCHES, "variant": "pooled-npr"}),
    "patches pooled-highpass": ("paper", {**PATCHES, "variant": "pooled-highpass"}),
    "patches cnn-npr-dct": ("paper", {**PATCHES, "variant": "cnn-npr-dct"}),
}


# An ImageNet-pretrained backbone (EfficientNet-Lite0) with the best ladder settings; a lower learning rate,
# as usual when fine-tuning pretrained weights. Listed after the ladder, whose settings they build on.
PRETRAINED = {**PATCHES, **EQUAL_AUGMENT, **BALANCED, "init": "imagenet", "lr": 3e-4}
PRETRAINED_ROWS: dict[str, tuple[str, dict]] = {
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel"},
    ),
    "effnet-npr, ImageNet init, equal augmentation, source sampling, binary loss": (
        "paper",
        {**PRETRAINED, "variant": "effnet-npr"},
    ),
    # EfficientNet-Lite0 reduces 32x: a 64 px patch leaves it a 2x2 feature map, a 128 px one 4x4.
    # Two views per image instead of four: twice the pixels per epoch of the 64 px rows, not four times.
    "effnet-pixel, 128 px patches (2 per image), ImageNet init, equal augmentation, source sampling, "
    "binary loss": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "size": 128, "views_per_image": 2},
    ),
    # The saved model is the mean of the weights after epochs 3..8 (validation ROC-AUC levels off by
    # epoch 3 in most folds) instead of the best epoch.
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss, weights averaged "
    "from epoch 3": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "average_from": 3},
    ),
    # Decoder-trace pairs on the pretrained network: every human training image also enters as its taef2
    # reconstruction, a generated twin with the same content (the ladder's last step, on the new base).
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss, taef2 decoder pairs": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "pairs": "taef2"},
    ),
    # The ImageNet weights fine-tuned at a tenth of the new classifier's learning rate (discriminative
    # fine-tuning: fine-tuning distorts pretrained features, which can cost more out of distribution than
    # in it; Kumar et al., ICLR 2022).
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss, pretrained weights at "
    "0.1x learning rate": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "pretrained_lr_scale": 0.1},
    ),
    # The other way: every weight at twice the default's learning rate.
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss, learning rate 6e-4": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "lr": 6e-4},
    ),
    # The human-vs-generated loss term weighted 4 instead of 1 beside the per-class loss: detection, the
    # question asked of unseen sources, over telling the training generators apart.
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss weighted 4": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "binary_weight": 4.0},
    ),
    # Smaller patches: 128 px ranked worse than 64 px; 32 px (the network's smallest input, a 1x1 feature
    # map) with 16 per image sees as many pixels per epoch as 64 px with 4.
    "effnet-pixel, 32 px patches (16 per image), ImageNet init, equal augmentation, source sampling, "
    "binary loss": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "size": 32, "views_per_image": 16},
    ),
    # LP-FT (Kumar et al., ICLR 2022): the new classifier first learns on the ImageNet features as loaded
    # (2 of the 8 epochs), then every weight fine-tunes: the random classifier's first gradients no longer
    # reach the pretrained features.
    "effnet-pixel, ImageNet init, equal augmentation, source sampling, binary loss, 2 epochs linear probe "
    "first": (
        "paper",
        {**PRETRAINED, "variant": "effnet-pixel", "probe_epochs": 2},
    ),
}


def add_ladder(stem_variant: str) -> None:
    """Rows that add one idea at a time to the patch recipe with `stem_variant`."""
    base = {**PATCHES, "variant": stem_variant}
    ROWS[f"{stem_variant} + equal augmentation, flat skip"] = ("paper", {**base, **EQUAL_AUGMENT})
    ROWS[f"{stem_variant} + source sampling, binary loss"] = ("paper", {**base, **EQUAL_AUGMENT, **BALANCED})
    ROWS[f"{stem_variant} + best epoch on val detection AUC"] = (
        "paper",
        {**base, **EQUAL_AUGMENT, **BALANCED, "select_on": "detection_auc"},
    )
    ROWS[f"{stem_variant} + taef2 decoder pairs"] = (
        "paper",
        {**base, **EQUAL_AUGMENT, **BALANCED, "pairs": "taef2"},
    )
    ROWS.update(PRETRAINED_ROWS)


def slug(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name)).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--manifests", nargs="+", required=True)
    parser.add_argument("--rows", default="all", help="Comma-separated row names or slugs, or 'all'.")
    parser.add_argument("--ladder", default="pooled-npr", help="Variant the ladder rows build on.")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--list", action="store_true", help="List the rows and exit.")
    parser.add_argument(
        "--table", action="store_true", help="Only rewrite WORK/ablation.md from the reports."
    )
    args = parser.parse_args()
    add_ladder(args.ladder)
    if args.table:
        write_table(args.work)
        print((args.work / "ablation.md").read_text())
        return
    if args.list:
        for name, (recipe, overrides) in ROWS.items():
            print(f"{slug(name)}: {recipe} {json.dumps(overrides)}")
        return
    wanted = list(ROWS) if args.rows == "all" else [r.strip() for r in args.rows.split(",")]
    by_slug = {slug(name): name for name in ROWS}
    unknown = [w for w in wanted if w not in ROWS and w not in by_slug]
    if unknown:
        parser.error(f"unknown rows {unknown}; see --list")
    names = [w if w in ROWS else by_slug[w] for w in wanted]  # in the order asked for
    seeds = tuple(int(s) for s in args.seeds.split(","))
    table = []
    for name in names:
        recipe, overrides = ROWS[name]
        config = CrossvalConfig(
            manifests=tuple(args.manifests), recipe=recipe, overrides=overrides, folds=args.folds, seeds=seeds
        )
        start = time.perf_counter()
        report = run_crossval(config, args.work / slug(name))
        table.append(
            {
                "row": name,
                "seconds_this_call": round(time.perf_counter() - start, 1),
                **{key: report["pooled"][key] for key in report["pooled"]},
            }
        )
        print(json.dumps(table[-1]), flush=True)
    write_table(args.work)
    print(json.dumps(table, indent=1))


def write_table(work: Path) -> None:
    """ablation.md from every row's report.json in `work` (runs of other calls included), in ROWS order,
    with the calibration format its predictions were made under and, from the stored probabilities
    (crossval_uncalibrated.py), the ROC-AUC of the models' own P(generated) and calibration format 2's
    balanced accuracy at 0.5, comparable across formats."""
    from crossval_uncalibrated import folder_figures

    from animeprov.crossval import format_stat as cell

    keys = [
        "roc_auc",
        "balanced_accuracy",
        "fpr_at_ai_threshold",
        "ai_recall_at_ai_threshold",
        "coverage",
        "committed_accuracy",
        "attribution_accuracy",
    ]
    own = ["roc_auc_raw", "balanced_accuracy_at_0.5"]
    lines = [
        "| recipe | calibration format | " + " | ".join(keys + own) + " |",
        "| :--- | :---: |" + " ---: |" * (len(keys) + len(own)),
    ]
    for name in ROWS:
        report = work / slug(name) / "report.json"
        if not report.exists():
            continue
        data = json.loads(report.read_text())
        seeds = ",".join(map(str, data["config"]["seeds"]))
        figures = folder_figures(work / slug(name))
        formats = ",".join(map(str, figures["calibration_formats"]))
        cells = [cell(data["pooled"][k]) for k in keys] + [cell(figures["mean_sd"][k]) for k in own]
        lines.append(f"| {name} (seeds {seeds}) | {formats} | " + " | ".join(cells) + " |")
    (work / "ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
