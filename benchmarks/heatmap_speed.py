"""Seconds per heatmap (`animeprov.heatmap.class_heatmap`) for trained runs, on CPU; also writes overlays.

For each (variant, method) case and for the first test image of every class in the split, takes one centre
crop at the run's size, predicts it, then times `--repeats` heatmap calls for the predicted class (median
reported) and one more call to check that the map is identical (deterministic). One line per case and image
on stdout; one overlay PNG per case and image in --out when given.

`--runs` is a folder holding one run folder per variant (named like the variant, as `animeprov experiment`
writes them); `--split` the split CSV those runs were trained on. docs/heatmap.md's table came from

    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/heatmap_speed.py \\
        --runs /work/runs/real/s0/runs --split /work/runs/real/split-s0.csv \\
        --out /work/runs/heatmap-export/overlays
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from animeprov.checkpoint import load_model
from animeprov.data.dataset import read_split_rows
from animeprov.data.manifest import image_path
from animeprov.heatmap import class_heatmap, overlay_heatmap
from animeprov.io import load_image, make_views

DEFAULT_CASES = ["cnn-dct-mask:occlusion", "cnn-dct:occlusion", "cnn-pixel:gradcam", "cnn-pixel:occlusion"]


def first_test_row_per_class(split_csv: Path) -> dict[str, dict]:
    picked: dict[str, dict] = {}
    for row in read_split_rows(split_csv, "test"):
        picked.setdefault(row["class"], row)
    return picked


def time_case(
    run: Path, method: str, split_csv: Path, picked: dict[str, dict], repeats: int, out: Path | None
) -> None:
    model, config = load_model(run)
    classes = config["classes"]
    for true_class, row in picked.items():
        pixels = make_views(load_image(image_path(split_csv, row)).pixels, config["size"], "crop")[0]
        images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            probabilities = torch.softmax(model(images), 1)[0]
        top = int(probabilities.argmax())
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            heat = class_heatmap(model, images, top, method=method)
            seconds.append(time.perf_counter() - started)
        again = class_heatmap(model, images, top, method=method)
        print(
            f"{run.name:13s} {method:9s} true={true_class:10s} top={classes[top]:10s} "
            f"p={probabilities[top]:.3f} median {statistics.median(seconds):.2f} s "
            f"(runs {', '.join(f'{s:.2f}' for s in seconds)}) "
            f"deterministic={np.array_equal(heat, again)} mean heat {heat.mean():.3f}",
            flush=True,
        )
        if out is not None:
            overlay_heatmap(pixels, heat[0]).save(out / f"{run.name}-{method}-{true_class}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True, help="folder with one run folder per variant")
    parser.add_argument("--split", type=Path, required=True, help="split CSV; its test rows are used")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=DEFAULT_CASES,
        metavar="VARIANT:METHOD",
        help="run folder name and heatmap method (occlusion | gradcam | auto)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per image (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the overlay PNGs (optional)")
    args = parser.parse_args()

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    picked = first_test_row_per_class(args.split)
    print("torch threads", torch.get_num_threads())
    for case in args.cases:
        variant, method = case.split(":")
        time_case(args.runs / variant, method, args.split, picked, args.repeats, args.out)


if __name__ == "__main__":
    main()
