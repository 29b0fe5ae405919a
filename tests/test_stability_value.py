"""benchmarks/stability_value.py: a crossval folder's verdicts with and without the stability checks."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

stability_value = load_benchmark("stability_value")


def row(cls: str, p: float, verdict: str, reason: str | None = None) -> dict:
    return {"class": cls, "error": None, "p_generated": p, "verdict": verdict, "reason": reason}


def write_fold(folder, rows: list[dict]) -> None:
    (folder / "run").mkdir(parents=True)
    calibration = {"human_class": "human", "ai_threshold": 0.8, "artist_threshold": 0.2}
    (folder / "run" / "calibration.json").write_text(json.dumps(calibration))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_unstable_verdict_is_the_one_its_reason_names_and_is_compared_with_the_least_confident(tmp_path):
    unstable = "unstable: ai (P 0.95) but jpeg:90 gives unsure (P 0.70)"
    write_fold(
        tmp_path / "fold-00" / "seed-0",
        [
            row("human", 0.95, "unsure", unstable),  # a false accusation the checks held back
            row("human", 0.81, "ai"),  # a false accusation just past the threshold, kept
            row("human", 0.10, "artist"),
            row("gen", 0.99, "ai"),
            row("gen", 0.50, "unsure", "between the thresholds: P(generated) 0.50 is above ..."),
            row("gen", 0.90, "unsure", f"unfamiliar: unlike the training images; {unstable}"),
        ],
    )
    rows = stability_value.judged(tmp_path)
    assert [r["plain"] for r in rows] == ["ai", "ai", "artist", "ai", "unsure", "unsure"]
    with_checks = stability_value.figures(rows, "checked")
    without = stability_value.figures(rows, "plain")
    assert with_checks["false_accusations"] == pytest.approx(1 / 3)
    assert without["false_accusations"] == pytest.approx(2 / 3)
    assert (with_checks["coverage"], without["coverage"]) == (pytest.approx(3 / 6), pytest.approx(4 / 6))
    held = stability_value.held_back_against_least_confident(rows, "ai")
    assert (held["verdicts"], held["wrong"], held["held_back_by_the_checks"], held["of_which_wrong"]) == (
        3,
        2,
        1,
        1,
    )
    # the least confident `ai` verdict is the 0.81 human image: also wrong
    assert held["least_confident_as_many_of_which_wrong"] == 1
