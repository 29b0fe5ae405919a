"""Throughput and memory of the synthetic benchmark generator; JSON on stdout.

A small setting is generated several times (median reported), then the full default set once
(500 per class at 512 px = 2,500 images, the size the paper used), each into a fresh temporary folder.

    .venv/bin/python benchmarks/synth_speed.py --workers 2
    .venv/bin/python benchmarks/synth_speed.py --workers 2 --per-class 100   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from animeprov.data.synth import DEFAULT_CLASSES, generate_synthetic


def timed_run(per_class: int, size: int, workers: int, classes: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        generate_synthetic(Path(folder), per_class, size, seed=0, classes=classes, workers=workers)
        seconds = time.perf_counter() - started
        megabytes = sum(p.stat().st_size for p in Path(folder).rglob("*.png")) / 2**20
    images = per_class * len(classes)
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "png_mb": round(megabytes, 1),
    }


def peak_rss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES))
    parser.add_argument("--small-per-class", type=int, default=20)
    parser.add_argument("--small-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    load_before = os.getloadavg()
    small = [
        timed_run(args.small_per_class, args.small_size, args.workers, args.classes)
        for _ in range(args.repeats)
    ]
    full = timed_run(args.per_class, args.size, args.workers, args.classes)
    report = {
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in load_before],
        "small": {
            "per_class": args.small_per_class,
            "size": args.small_size,
            "runs": args.repeats,
            "median_seconds": statistics.median(run["seconds"] for run in small),
            "median_images_per_s": statistics.median(run["images_per_s"] for run in small),
        },
        "full": {"per_class": args.per_class, "size": args.size, **full},
        # The parent's peak and the largest peak of any one worker process.
        "peak_rss_mb": {
            "main": peak_rss_mb(resource.RUSAGE_SELF),
            "worker": peak_rss_mb(resource.RUSAGE_CHILDREN),
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
