"""End-to-end training throughput of whole recipes (source images per second); prints JSON on stdout.

`train_throughput.py` times bare training steps on random tensors of the model size. A recipe's cost also
lies around the step: decoding, random patches, JPEG/WebP/blur augmentation, source-balanced sampling, the
detection loss. This script runs `animeprov.train.train` itself, in a subprocess per (recipe, image size),
on a split of JPEG images of that size, and reads metrics.jsonl:

  images_per_second   SOURCE images per second of training (views per second / views_per_image): the
                      figure that says how long an epoch over a data set takes, comparable across recipes
                      whose model input differs (the default recipe trains on 64 px patches of each image,
                      the paper's on one crop of the model size)
  first_epoch         epoch 1 includes decoding every image (later epochs reuse the decoded images)
  later_epochs        median over epochs 2.. (what most of a run costs)

Baselines in the same run: the paper's recipe (cnn-dct-mask on one centre crop of the image size), and
`pretrained+whole-augment`, the default recipe augmenting the whole image for every patch as it did before
large images were augmented on each patch's neighbourhood alone (dataset.NEIGHBOURHOOD_AREA_RATIO; the
same for 256 px images). `+FIELD=VALUE` suffixes override recipe fields (`pretrained+variant=effnet-pixel`).
A `+neighbourhood-augment` suffix tries the other way: every image larger than a
patch's neighbourhood augmented on it alone, 256 px ones too (tried on held-out sources and not adopted:
docs/results/generalisation.md). Targets (issue "Speed"): default recipe >= 150 images/s at 256 px and >= 45
at 512 px on 2 cores.

    .venv/bin/python benchmarks/train_recipe_throughput.py --work runs/bench-train --sizes 256 512
    python benchmarks/train_recipe_throughput.py --work /tmp/bt --device cuda --precision auto --workers 6
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The development crops, where the checkout sits beside ../shared/data (random pixels otherwise).
SHARED_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "anime-real-256"
CLASSES = ("human", "gen-a", "gen-b")
SOURCES_PER_CLASS = 3
# issue "Speed": the default recipe's goals (it was `traces` when they were set)
TARGETS = {(name, size): goal for name in ("traces", "pretrained") for size, goal in ((256, 150), (512, 45))}
WHOLE_AUGMENT = "+whole-augment"  # a recipe name's suffix: augment whole images, as before
# recipe name suffix -> dataset.NEIGHBOURHOOD_AREA_RATIO for that run
AUGMENT_PATHS = {WHOLE_AUGMENT: float("inf"), "+neighbourhood-augment": 1.0}


def make_split(folder: Path, size: int, count: int, seed: int = 0) -> Path:
    """`count` JPEGs of size x size (mosaics of development crops), classes and sources dealt in turn."""
    split = folder / "split.csv"
    if split.exists():
        return split
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    crops = sorted(SHARED_CROPS.rglob("*.png")) if SHARED_CROPS.is_dir() else []
    rows = []
    for i in range(count):
        canvas = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for top in range(0, size, 256):
            for left in range(0, size, 256):
                if crops:
                    with Image.open(crops[rng.integers(len(crops))]) as crop:
                        block = np.asarray(crop.convert("RGB"))[: size - top, : size - left]
                    canvas[top : top + block.shape[0], left : left + block.shape[1]] = block
        name = CLASSES[i % len(CLASSES)]
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(canvas).save(path, quality=92)
        rows.append(
            {
                "path": path.name,
                "class": name,
                "source": f"{name}-{(i // len(CLASSES)) % SOURCES_PER_CLASS}",
                "group": str(i),
                "split": "val" if i % 10 == 0 else "train",
            }
        )
    with open(split, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return split


def child(args: argparse.Namespace) -> None:
    """One training run; prints {"views_per_image", "epochs": [...], "peak_rss_mb"}."""
    from animeprov.data import dataset
    from animeprov.recipe import parse_settings, train_config
    from animeprov.train import train

    recipe = args.recipe
    for suffix, ratio in AUGMENT_PATHS.items():
        if recipe.endswith(suffix):
            recipe = recipe.removesuffix(suffix)
            dataset.NEIGHBOURHOOD_AREA_RATIO = ratio
    recipe, *settings = recipe.split("+")  # e.g. pretrained+variant=effnet-pixel
    overrides = {**parse_settings(settings), "epochs": args.epochs, "patience": args.epochs}
    if recipe == "paper":
        overrides["size"] = args.size  # the paper's recipe: one crop of the whole image size
    config = train_config(
        recipe,
        overrides=overrides,
        data=args.data,
        seed=0,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        calibrate=False,
    )
    train(config, Path(args.run))
    rows = [json.loads(line) for line in (Path(args.run) / "metrics.jsonl").read_text().splitlines()]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"views_per_image": config.views_per_image, "epochs": rows, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="folder for the images and runs (required)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument(
        "--recipes", nargs="+", default=["pretrained", f"pretrained{WHOLE_AUGMENT}", "traces", "paper"]
    )
    parser.add_argument("--images", type=int, default=300, help="images per size (90%% train)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "auto"], help="auto: fp16 AMP on CUDA"
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.work is None:
        parser.error("--work is required")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results = []
    for size in args.sizes:
        split = make_split(args.work / f"data-{size}", size, args.images)
        for recipe in args.recipes:
            run = args.work / f"run-{recipe}-{size}"
            shutil.rmtree(run, ignore_errors=True)
            command = [sys.executable, __file__, "--child", "--recipe", recipe, "--size", str(size)]
            command += ["--data", str(split), "--run", str(run), "--epochs", str(args.epochs)]
            command += [
                "--workers",
                str(args.workers),
                "--precision",
                args.precision,
                "--device",
                args.device,
            ]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{recipe} at {size} px failed:\n{done.stderr[-3000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            rates = [row["images_per_second"] / measured["views_per_image"] for row in measured["epochs"]]
            results.append(
                {
                    "recipe": recipe,
                    "image_size": size,
                    "first_epoch_images_per_second": round(rates[0], 1),
                    "later_epochs_images_per_second": round(statistics.median(rates[1:] or rates), 1),
                    "views_per_image": measured["views_per_image"],
                    "peak_rss_mb": round(measured["peak_rss_mb"]),
                    "target": TARGETS.get((recipe, size)),  # none for the suffixed ways
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    rates = {(r["recipe"], r["image_size"]): r["later_epochs_images_per_second"] for r in results}
    for row in results:
        size = row["image_size"]
        if rates.get(("paper", size)):
            row["ratio_to_paper_recipe"] = round(
                row["later_epochs_images_per_second"] / rates["paper", size], 2
            )
        if rates.get((row["recipe"] + WHOLE_AUGMENT, size)):
            row["ratio_to_whole_image_augmentation"] = round(
                row["later_epochs_images_per_second"] / rates[row["recipe"] + WHOLE_AUGMENT, size], 2
            )
    print(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "threads": args.threads,
                    "python": platform.python_version(),
                },
                "images_per_size": args.images,
                "epochs": args.epochs,
                "workers": args.workers,
                "precision": args.precision,
                "device": args.device,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
