"""What `predict --stability` buys on sources never seen, from a crossval folder judged with the checks;
JSON on stdout.

The checks (JPEG 90, WebP 90, a 4 px shift; `predict.STABILITY_CHECKS`) only ever turn a committed verdict
(artist or ai) into `unsure`; they never change a probability. So a folder predicted with them (`crossval
--stability`, or any folder made before the checks were off by default) also gives the verdicts without
them: an image that is `unsure` for the sole reason `unstable` has the verdict its reason names.

Per seed (pooled over the folds), then mean and sd over seeds, with and without the checks: false
accusations (human images judged `ai`, over the human images), AI recall at the ai threshold, coverage
(verdicts not `unsure`) and the share of committed verdicts that are right. Then, for each committed
verdict kind, how many verdicts the checks made `unsure` and how many of those were wrong, against the
same number of that kind's least confident verdicts (smallest margin beyond their fold's threshold, in
logits of P(generated)): what abstaining on as many verdicts would remove without any extra model pass.

    .venv/bin/python benchmarks/stability_value.py runs/gen-vn/default-cap
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from animeprov.crossval import mean_sd
from animeprov.predict import reason_kinds


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def judged(folder: Path) -> list[dict]:
    """Each held-out prediction with its seed, its verdict without the checks and its margin."""
    rows = []
    for path in sorted(folder.glob("fold-*/seed-*/predictions.jsonl")):
        calibration = json.loads((path.parent / "run" / "calibration.json").read_text())
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["error"] is not None:
                continue
            unstable_only = reason_kinds(row["reason"]) == ["unstable"]
            # "unstable: ai (P 0.91) but ...": the verdict the checks held back
            plain = row["reason"].split("unstable: ")[1].split(" ")[0] if unstable_only else row["verdict"]
            detection = logit(row["p_generated"])
            margin = {
                "ai": detection - logit(calibration["ai_threshold"]),
                "artist": logit(calibration["artist_threshold"]) - detection,
            }.get(plain)
            rows.append(
                {
                    "seed": path.parent.name,
                    "human": row["class"] == calibration["human_class"],
                    "checked": row["verdict"],
                    "plain": plain,
                    "held_back": unstable_only,
                    "margin": margin,
                }
            )
    return rows


def figures(rows: list[dict], verdict_key: str) -> dict:
    humans = [r for r in rows if r["human"]]
    generated = [r for r in rows if not r["human"]]
    committed = [r for r in rows if r[verdict_key] in ("artist", "ai")]
    return {
        "false_accusations": sum(r[verdict_key] == "ai" for r in humans) / len(humans),
        "ai_recall": sum(r[verdict_key] == "ai" for r in generated) / len(generated),
        "coverage": len(committed) / len(rows),
        "committed_right": sum((r[verdict_key] == "artist") == r["human"] for r in committed)
        / len(committed),
    }


def held_back_against_least_confident(rows: list[dict], verdict: str) -> dict:
    kind = [r for r in rows if r["plain"] == verdict]

    def wrong(row: dict) -> bool:
        return (verdict == "ai") == row["human"]

    held = [r for r in kind if r["held_back"]]
    least_confident = sorted(kind, key=lambda r: r["margin"])[: len(held)]
    return {
        "verdicts": len(kind),
        "wrong": sum(map(wrong, kind)),
        "held_back_by_the_checks": len(held),
        "of_which_wrong": sum(map(wrong, held)),
        "least_confident_as_many_of_which_wrong": sum(map(wrong, least_confident)),
        "median_margin_held_back": sorted(r["margin"] for r in held)[len(held) // 2] if held else None,
        "median_margin_kept": sorted(r["margin"] for r in kind if not r["held_back"])[
            (len(kind) - len(held)) // 2
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a crossval folder predicted with the stability checks")
    args = parser.parse_args()
    rows = judged(args.folder)
    if not any(r["held_back"] for r in rows):
        raise SystemExit(f"{args.folder}: no verdict held back by the checks; was it run with --stability?")
    per_seed = defaultdict(list)
    for row in rows:
        per_seed[row["seed"]].append(row)
    report = {"folder": str(args.folder), "predictions": len(rows), "seeds": sorted(per_seed)}
    for name, key in (("with_checks", "checked"), ("without_checks", "plain")):
        seeds = [figures(seed_rows, key) for seed_rows in per_seed.values()]
        report[name] = {
            **{metric: mean_sd([s[metric] for s in seeds]) for metric in seeds[0]},
            "per_seed": seeds,
        }
    report["what_the_checks_hold_back"] = {
        verdict: held_back_against_least_confident(rows, verdict) for verdict in ("ai", "artist")
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
