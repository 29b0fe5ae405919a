"""How an image's tiles are pooled, and what `--max-tiles` costs, on sources never seen; JSON on stdout.

For each fold and seed of a finished `animeprov crossval` folder, every held-out image is cut into all its
tiles once and each tile judged once by that fold's model; the image's P(generated) (the model's own,
before calibration: the ranking and the 0.5 decision that calibration keeps) is then pooled over the
sub-grid `--max-tiles K` keeps (`io.tile_grid`) for each K in `--budgets`, and over every tile, as
`predict` pools (`engine.pool_views`). For comparison, every tile is also pooled as before calibration
format 3 (`every_tile_pooled_per_class`: the softmax of the mean log-probabilities), and the seeds' models
are pooled together (`seed_ensemble`: the mean of each seed's pooled detection logit, every tile judged by
every model: the cost of three models). `dealt_seed_ensemble_every_tile` and `..._max_tiles_K` have the
seeds' models share the work of one: the tiles a budget keeps are dealt out in turn (the first to seed 0's
model, the second to seed 1's, ...), each judged by one model, and all of them pooled as one image's views.
Pooled over folds, per seed: ROC-AUC, balanced accuracy at 0.5 and the best balanced accuracy any one
threshold would give on these images (a ceiling, not a result); then mean and sd over seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tile_budget.py \
        runs/gen/effnet-pixel-ImageNet-init-equal-augmentation-source-sampling-binary-loss \
        --budgets 12,9,8,4,2,1

The development sets are 256 px crops: with the default recipe's 64 px tiles, 16 tiles per image, so a
budget of 4 keeps a quarter of them, as 16 would of a 512 px image's 64. `--mosaic` judges 512 px images
instead: each is four held-out images of one source (same fold and seed, in path order; a source's last
one to three images are left out) side by side, 2x2, whose 64 tiles are exactly those four images' tiles,
so their log-probabilities are reused; budgets then apply to the 8x8 grid, as `predict --max-tiles` does to
a 512 px file:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tile_budget.py runs/gen-vn/default-cap \
        --mosaic --budgets 32,16,8
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit, logit, softmax
from sklearn.metrics import roc_auc_score, roc_curve

from animeprov.checkpoint import load_model
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.crossval import mean_sd
from animeprov.engine import pool_views
from animeprov.io import tile_grid
from animeprov.predict import Predictor, prepare


def judged_tiles(folder: Path) -> list[dict]:
    """Per held-out image and seed: whether it is generated, its tiles' corners and log-probabilities."""
    images = []
    for predictions in sorted(folder.glob("fold-*/seed-*/predictions.jsonl")):
        # the model's own probabilities: its calibration (of whatever format) is not needed
        model, config = load_model(predictions.parent / "run")
        predictor = Predictor(
            model,
            classes=config["classes"],
            size=config["size"],
            variant=config["variant"],
            human_class=config.get("human_class", DEFAULT_HUMAN_CLASS),
            checks=(),
        )
        human = predictor.classes.index(predictor.human_class)
        seed = int(predictions.parent.name.removeprefix("seed-"))
        fold = predictions.parent.parent.name
        for line in predictions.read_text().splitlines():
            row = json.loads(line)
            if row["error"] is not None:
                continue
            prepared = prepare(row["path"], predictor.size, "tiles", predictor.load_rules)
            images.append(
                {
                    "seed": seed,
                    "fold": fold,
                    "source": row["source"],
                    "path": row["path"],
                    "generated": row["class"] != predictor.human_class,
                    "human": human,
                    "shape": prepared.shape,
                    "size": predictor.size,
                    "corners": prepared.corners,
                    "log_probs": predictor.log_probs(prepared.views),
                }
            )
    return images


def mosaics(images: list[dict]) -> list[dict]:
    """2x2 mosaics of four same-size images of one source, fold and seed: a 4x larger image whose tiles
    are theirs, each image's corners offset to its quarter. Only images whose sides are whole tiles (the
    mosaic's tile grid is then the union of theirs)."""
    groups = defaultdict(list)
    for image in images:
        if not any(side % image["size"] for side in image["shape"]):
            groups[image["seed"], image["fold"], image["source"], image["shape"]].append(image)
    made = []
    for (*_, (height, width)), members in sorted(groups.items(), key=lambda item: str(item[0])):
        members.sort(key=lambda image: image["path"])
        for start in range(0, len(members) - 3, 4):
            quarter = members[start : start + 4]
            offsets = [(0, 0), (0, width), (height, 0), (height, width)]
            made.append(
                {
                    **{key: quarter[0][key] for key in ("seed", "generated", "human", "size")},
                    "path": "+".join(image["path"] for image in quarter),
                    "shape": (2 * height, 2 * width),
                    "corners": [
                        (top + dy, left + dx)
                        for image, (dy, dx) in zip(quarter, offsets, strict=True)
                        for top, left in image["corners"]
                    ],
                    "log_probs": np.concatenate([image["log_probs"] for image in quarter]),
                }
            )
    return made


def kept_rows(image: dict, max_tiles: int | None) -> list[int]:
    """The rows of `image["log_probs"]` of the tiles `--max-tiles` keeps, in `io.tile_grid`'s order."""
    row = {corner: i for i, corner in enumerate(image["corners"])}
    return [row[corner] for corner in tile_grid(*image["shape"], image["size"], max_tiles)]


def pooled_p_generated(log_probs: np.ndarray, human: int) -> float:
    """One image's P(generated) from its views' log-probabilities, as `predict` pools them."""
    return float(1.0 - pool_views(log_probs, np.zeros(len(log_probs), dtype=np.intp), human)[0, human])


def p_generated(image: dict, max_tiles: int | None, per_class: bool = False) -> float:
    log_probs = image["log_probs"][sorted(kept_rows(image, max_tiles))]
    if per_class:
        return float(1.0 - softmax(log_probs.mean(axis=0))[image["human"]])
    return pooled_p_generated(log_probs, image["human"])


def detection_figures(generated: np.ndarray, p: np.ndarray) -> dict:
    """ROC-AUC, balanced accuracy at 0.5, and the best balanced accuracy any one threshold chosen on these
    very images would give (a ceiling for re-thresholding: what ranking allows, not a result)."""
    balanced = ((p[generated] >= 0.5).mean() + (p[~generated] < 0.5).mean()) / 2
    fpr, tpr, _ = roc_curve(generated, p)
    return {
        "roc_auc": float(roc_auc_score(generated, p)),
        "balanced_accuracy": float(balanced),
        "best_threshold_balanced_accuracy": float(((tpr + 1 - fpr) / 2).max()),
    }


def figures(images: list[dict], max_tiles: int | None, per_class: bool = False) -> dict:
    per_seed = {}
    for seed in sorted({image["seed"] for image in images}):
        chosen = [image for image in images if image["seed"] == seed]
        generated = np.array([image["generated"] for image in chosen])
        p = np.array([p_generated(image, max_tiles, per_class) for image in chosen])
        per_seed[seed] = detection_figures(generated, p)
    return {
        "tiles_per_image": sorted({len(tile_grid(*i["shape"], i["size"], max_tiles)) for i in images}),
        **{key: mean_sd([s[key] for s in per_seed.values()]) for key in per_seed[min(per_seed)]},
        "per_seed": per_seed,
    }


def seed_ensemble(images: list[dict]) -> dict:
    """Every tile, each image's pooled detection logit averaged over the seeds' models."""
    logits, generated = defaultdict(list), {}
    for image in images:
        logits[image["path"]].append(logit(np.clip(p_generated(image, None), 1e-12, 1 - 1e-12)))
        generated[image["path"]] = image["generated"]
    seeds = len({image["seed"] for image in images})
    paths = [path for path, values in logits.items() if len(values) == seeds]
    p = expit(np.array([np.mean(logits[path]) for path in paths]))
    return {"seeds": seeds, "n": len(paths), **detection_figures(np.array([generated[x] for x in paths]), p)}


def dealt_seed_ensemble(images: list[dict], max_tiles: int | None) -> dict:
    """The seeds' models at the cost of one: each kept tile judged by one model, dealt out in turn."""
    by_path = defaultdict(dict)
    for image in images:
        by_path[image["path"]][image["seed"]] = image
    seeds = sorted({image["seed"] for image in images})
    p, generated = [], []
    for judged in by_path.values():
        if len(judged) < len(seeds):
            continue
        first = judged[seeds[0]]  # the same image and tiles under every seed
        kept = kept_rows(first, max_tiles)
        log_probs = np.concatenate(
            [judged[seed]["log_probs"][kept[turn :: len(seeds)]] for turn, seed in enumerate(seeds)]
        )
        p.append(pooled_p_generated(log_probs, first["human"]))
        generated.append(first["generated"])
    return {"seeds": len(seeds), "n": len(p), **detection_figures(np.array(generated), np.array(p))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a finished `animeprov crossval --out` folder")
    parser.add_argument("--budgets", default="16,8,4,2,1", help="comma-separated --max-tiles values")
    parser.add_argument(
        "--mosaic", action="store_true", help="judge 2x2 mosaics of four images of one source (see above)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = judged_tiles(args.folder)
    if args.mosaic:
        images = mosaics(images)
    report = {
        "folder": str(args.folder),
        "mosaic": args.mosaic,
        "images": len(images),
        "every_tile": figures(images, None),
        "every_tile_pooled_per_class": figures(images, None, per_class=True),
        "seed_ensemble": seed_ensemble(images),
    }
    report["dealt_seed_ensemble_every_tile"] = dealt_seed_ensemble(images, None)
    for budget in (int(b) for b in args.budgets.split(",")):
        report[f"max_tiles_{budget}"] = figures(images, budget)
        report[f"dealt_seed_ensemble_max_tiles_{budget}"] = dealt_seed_ensemble(images, budget)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
