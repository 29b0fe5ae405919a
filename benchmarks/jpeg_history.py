"""JPEG-history probe: how many images of each class (and source) show an 8x8 JPEG block grid.

For every image of a manifest/split CSV: `jpeg_grid_score` of the pixels as stored, and of the same pixels
after a known JPEG re-encode (the positive control: what a JPEG history looks like on this content).
Prints a Markdown table per class and per `--by` column (e.g. `source`) with the median score and the
share of images above each threshold.

    .venv/bin/python benchmarks/jpeg_history.py /work/runs/robustness/real/manifest.csv --by source
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from animeprov.data.manifest import image_path, read_rows
from animeprov.evaluation.robustness import jpeg_grid_score
from animeprov.io import load_image
from animeprov.perturb import perturb
from animeprov.reports.tables import markdown_table

THRESHOLDS = (1.06, 1.1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", help="Manifest or split CSV.")
    parser.add_argument("--by", default="", help="Extra column to group by (e.g. source), if the CSV has it.")
    parser.add_argument("--control", default="jpeg:90", help="Re-encode used as the positive control.")
    parser.add_argument("--extra-csv", default="", help="CSV with more columns (joined on sha256).")
    args = parser.parse_args()

    rows = list(read_rows(args.csv))
    extra = {}
    if args.extra_csv:
        extra = {row["sha256"]: row for row in read_rows(args.extra_csv)}
    stored: dict[str, list[float]] = defaultdict(list)
    control: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        pixels = load_image(image_path(args.csv, row)).pixels
        keys = [row["class"]]
        if args.by:
            value = row.get(args.by) or extra.get(row.get("sha256", ""), {}).get(args.by, "?")
            keys.append(f"{row['class']} / {value}")
        score, control_score = jpeg_grid_score(pixels), jpeg_grid_score(perturb(pixels, args.control))
        for key in keys:
            stored[key].append(score)
            control[key].append(control_score)

    headers = ["group", "n", "median (stored)"]
    headers += [f"> {t} (stored)" for t in THRESHOLDS]
    headers += [f"median ({args.control})", *(f"> {t} ({args.control})" for t in THRESHOLDS)]
    table = []
    for key in sorted(stored, key=lambda k: (k.split(" / ")[0], " / " in k, k)):
        s, c = np.array(stored[key]), np.array(control[key])
        table.append(
            [
                key,
                len(s),
                float(np.median(s)),
                *(float((s > t).mean()) for t in THRESHOLDS),
                float(np.median(c)),
                *(float((c > t).mean()) for t in THRESHOLDS),
            ]
        )
    print(markdown_table(headers, table))


if __name__ == "__main__":
    main()
