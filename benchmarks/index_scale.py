"""Throughput and memory of `build_index` on many tiny files, and of the near-duplicate search alone.

    .venv/bin/python benchmarks/index_scale.py --files 5000 --size 64
    .venv/bin/python benchmarks/index_scale.py --hashes 100000      # near-duplicate search only

Reports images/s and the process's peak RSS. Run it twice with different --files to see how memory
grows with the number of files (it should grow by a small record per file, not by pixels).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from animeprov.data.index import _near_pairs, build_index


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_tree(root: Path, files: int, size: int, classes: int = 5) -> None:
    """Smooth random pictures; every 50th file repeats an earlier one (exact duplicates)."""
    rng = np.random.default_rng(0)
    for cls in range(classes):
        (root / f"class{cls}").mkdir(parents=True)
    previous = None
    for index in range(files):
        target = root / f"class{index % classes}" / f"{index:06d}.png"
        if index % 50 == 49 and previous is not None:
            target.write_bytes(previous.read_bytes())
            continue
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(target, compress_level=1)
        previous = target


def bench_index(files: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        make_tree(root, files, size)
        rss_before = peak_rss_mib()
        start = time.perf_counter()
        result = build_index(root, Path(tmp) / "manifest.csv")
        seconds = time.perf_counter() - start
    print(
        f"index: {result.rows} files of {size}x{size} in {seconds:.1f} s "
        f"= {result.rows / seconds:.0f} images/s; "
        f"{result.groups} groups; peak RSS {rss_before:.0f} MiB before, {peak_rss_mib():.0f} MiB after"
    )


def bench_near_pairs(n: int, bits: int) -> None:
    hashes = np.random.default_rng(0).integers(0, 2**63, size=(n, 1), dtype=np.uint64)
    start = time.perf_counter()
    pairs = sum(1 for _ in _near_pairs(hashes, bits))
    seconds = time.perf_counter() - start
    print(
        f"near-duplicate search: {n} distinct 64-bit hashes, <= {bits} bits: {seconds:.1f} s, "
        f"{pairs} pairs; peak RSS {peak_rss_mib():.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=0, help="index this many generated files")
    parser.add_argument("--size", type=int, default=64, help="side of the generated images")
    parser.add_argument("--hashes", type=int, default=0, help="time the near-duplicate search on n hashes")
    parser.add_argument("--bits", type=int, default=6)
    args = parser.parse_args()
    if args.files:
        bench_index(args.files, args.size)
    if args.hashes:
        bench_near_pairs(args.hashes, args.bits)


if __name__ == "__main__":
    main()
