"""The demo's report: what `predict` says with and without the stability checks."""

from __future__ import annotations

from test_predict import make_run

from animeprov.demo import _stability_markdown, verdict_counts
from animeprov.predict import STABILITY_CHECKS, Predictor


def test_verdict_counts_are_predicts_verdicts_per_kind(tiny_split, tmp_path):
    run = make_run(tmp_path / "run", calibration={})
    counts = verdict_counts(run, tiny_split, ())
    predictor = Predictor.from_checkpoint(run, device="cpu", checks=())
    human = [tiny_split.parent / "human" / f"{i:03d}.png" for i in (8, 9)]  # the human test images
    expected = [result.verdict for result in predictor.predict_many(human)]
    assert sum(counts["human"][v] for v in ("artist", "unsure", "ai")) == 2
    assert sum(counts["generated"][v] for v in ("artist", "unsure", "ai")) == 4
    assert {v: counts["human"][v] for v in set(expected)} == {v: expected.count(v) for v in set(expected)}
    assert counts["human"]["unstable"] == counts["generated"]["unstable"] == 0  # no checks, none unstable


def test_the_checks_only_turn_committed_verdicts_into_unsure(tiny_split, tmp_path):
    run = make_run(tmp_path / "run", calibration={})
    plain = verdict_counts(run, tiny_split, ())
    checked = verdict_counts(run, tiny_split, STABILITY_CHECKS)
    for kind in ("human", "generated"):
        assert checked[kind]["unsure"] == plain[kind]["unsure"] + checked[kind]["unstable"]
        for verdict in ("artist", "ai"):
            assert checked[kind][verdict] <= plain[kind][verdict]


def test_the_report_table_has_a_row_per_setting_and_kind(tiny_split, tmp_path):
    text = _stability_markdown(make_run(tmp_path / "run", calibration={}), tiny_split)
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2:5] not in ("pre", ":--")]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| default", "human"],
        ["| default", "generated"],
        ["| `--stability`", "human"],
        ["| `--stability`", "generated"],
    ]
