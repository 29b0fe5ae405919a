"""Average `benchmarks/robust_training.py` results over several seeds (one OUT folder per seed).

    .venv/bin/python benchmarks/robustness_seeds.py /work/runs/robustness/real /work/runs/robustness/real-s1 \
        /work/runs/robustness/real-s2 --suffix=-last

Prints, per perturbation, attribution and detection accuracy of the plain and the augmented model (mean
over seeds, and the per-seed values), and detection accuracy on human and on generated images separately.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from animeprov.reports.tables import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outs", nargs="+", type=Path)
    parser.add_argument("--suffix", default="", help="Evaluation folder suffix, e.g. -jpeg90, -last.")
    args = parser.parse_args()

    tables = {
        name: [
            json.loads((out / "eval" / f"{name}{args.suffix}" / "robustness.json").read_text())
            for out in args.outs
        ]
        for name in ("plain", "augmented")
    }
    steps = [row["perturbation"] for row in tables["plain"][0]["rows"]]

    def values(name: str, key: str, i: int) -> list[float]:
        return [t["rows"][i][key] for t in tables[name]]

    def cell(name: str, key: str, i: int) -> str:
        v = values(name, key, i)
        return f"{np.mean(v):.3f} ({' / '.join(f'{x:.2f}' for x in v)})"

    rows = [
        [
            step,
            cell("plain", "attribution_accuracy", i),
            cell("augmented", "attribution_accuracy", i),
            cell("plain", "detection_accuracy", i),
            cell("augmented", "detection_accuracy", i),
            f"{np.mean(values('plain', 'detection_accuracy_human', i)):.3f}",
            f"{np.mean(values('plain', 'detection_accuracy_generated', i)):.3f}",
            f"{np.mean(values('augmented', 'detection_accuracy_human', i)):.3f}",
            f"{np.mean(values('augmented', 'detection_accuracy_generated', i)):.3f}",
        ]
        for i, step in enumerate(steps)
    ]
    headers = [
        "perturbation",
        "attr plain",
        "attr augmented",
        "det plain",
        "det augmented",
        "plain: human judged human",
        "plain: generated judged generated",
        "aug: human judged human",
        "aug: generated judged generated",
    ]
    print(markdown_table(headers, rows, align=["left"] * len(headers)))
    for name in ("plain", "augmented"):
        drops = []
        for table in tables[name]:
            clean = table["rows"][0]
            drops.append(
                (
                    np.mean(
                        [clean["attribution_accuracy"] - r["attribution_accuracy"] for r in table["rows"][1:]]
                    ),
                    np.mean(
                        [clean["detection_accuracy"] - r["detection_accuracy"] for r in table["rows"][1:]]
                    ),
                )
            )
        attr, det = np.mean(drops, axis=0)
        print(
            f"\n{name}: mean drop over the ladder, averaged over seeds: "
            f"attribution {attr:.3f}, detection {det:.3f}"
        )


if __name__ == "__main__":
    main()
