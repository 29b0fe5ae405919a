"""Training views per second of the augmentation and patch pipeline alone (no model); prints JSON on stdout.

The default recipe's training view: `views_per_image` random 64 px patches per file, each cut from the
image after a random perturbation (`--augment`, the recipe's by default), flat patches retried. Two ways in
the same run, on the same decoded images (decoding is done once, before the clock starts):

  neighbourhood   what `ImageDataset` does: a large image's patch is perturbed on its neighbourhood alone
                  (`perturb.perturb_patch`, dataset.NEIGHBOURHOOD_AREA_RATIO)
  whole_image     the baseline: every patch perturbs the whole image first (the behaviour before it)

Reported per way: the median of --repeats passes over every view (each pass a new epoch's draws). With
--profile N, one more pass of the recipe's own way runs under cProfile and the N functions with the most
time of their own are listed with their share of the pass (which step of the augmentation costs most).

    .venv/bin/python benchmarks/augment_patch_speed.py ../shared/data/originals/manifest.csv
    .venv/bin/python benchmarks/augment_patch_speed.py ../shared/data/anime-real-256/manifest.csv --profile 8
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import time
from pathlib import Path

from PIL import Image

from animeprov.data import dataset
from animeprov.data.dataset import ImageDataset, class_names_of, read_split_rows
from animeprov.data.manifest import image_path
from animeprov.perturb import parse_augment
from animeprov.recipe import recipe_values

WAYS = {"neighbourhood": dataset.NEIGHBOURHOOD_AREA_RATIO, "whole_image": float("inf")}


def views_of(manifest: Path, rows: list[dict], recipe: dict) -> ImageDataset:
    """The recipe's training views of every row, each file decoded once (only the views are then timed)."""
    data = ImageDataset(
        manifest,
        rows,
        class_names_of(rows),
        recipe["size"],
        view=recipe["view"],
        views_per_image=recipe["views_per_image"],
        skip_flat=recipe["skip_flat"],
        augment=parse_augment(recipe["augment"], min_side=recipe["size"]),
        cache_bytes=4 * 1024**3,
    )
    for index in range(len(data)):
        data[index]
    return data


def one_pass(data: ImageDataset, epoch: int) -> None:
    data.set_epoch(epoch)
    for index in range(len(data)):
        error = data[index][3]
        if error is not None:
            raise SystemExit(f"{error[0]}: {error[1]}")


def time_views(data: ImageDataset, repeats: int) -> dict:
    rates = []
    for epoch in range(1, repeats + 1):
        start = time.perf_counter()
        one_pass(data, epoch)
        rates.append(len(data) / (time.perf_counter() - start))
    return {"views_per_second": round(statistics.median(rates), 1), "passes": [round(r, 1) for r in rates]}


def costliest_functions(data: ImageDataset, epoch: int, count: int) -> list[dict]:
    """One pass under cProfile: the `count` functions with the most time of their own, and their share."""
    profiler = cProfile.Profile()
    profiler.runcall(one_pass, data, epoch)
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, own, cumulative, _)
    total = sum(own for _, _, own, _, _ in stats.values())
    costly = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        {
            "function": name if file == "~" else f"{Path(file).name}:{line} {name}",
            "calls": calls,
            "share": round(own / total, 3),
        }
        for (file, line, name), (calls, _, own, _, _) in costly
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path, help="a manifest or split CSV (every row is used)")
    parser.add_argument("--recipe", default="pretrained", help="whose view, patch size and augmentation")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="list the N costliest functions")
    args = parser.parse_args()

    recipe = recipe_values(args.recipe)
    rows = read_split_rows(args.manifest, None)
    results = {}
    for way, ratio in WAYS.items():
        dataset.NEIGHBOURHOOD_AREA_RATIO = ratio
        try:
            results[way] = time_views(views_of(args.manifest, rows, recipe), args.repeats)
        finally:
            dataset.NEIGHBOURHOOD_AREA_RATIO = WAYS["neighbourhood"]
    if args.profile:
        data = views_of(args.manifest, rows, recipe)
        results["costliest_functions"] = costliest_functions(data, args.repeats + 1, args.profile)
    results["speedup"] = round(
        results["neighbourhood"]["views_per_second"] / results["whole_image"]["views_per_second"], 2
    )
    sides = []
    for path in (image_path(args.manifest, row) for row in rows):
        with Image.open(path) as image:
            sides.append(max(image.size))
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "manifest": str(args.manifest),
                "images": len(rows),
                "longer_side_px": {"min": min(sides), "median": statistics.median(sides), "max": max(sides)},
                "recipe": args.recipe,
                "patch_px": recipe["size"],
                "views_per_image": recipe["views_per_image"],
                "augment": recipe["augment"],
                **results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
