"""Experiment grids: config validation, a tiny grid end to end, resuming, unseen classes, synthetic sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_split
from typer.testing import CliRunner

from animeprov import experiment
from animeprov.cli import app
from animeprov.data.manifest import read_rows
from animeprov.experiment import (
    ConfigError,
    SyntheticSpec,
    cell_report,
    load_experiment_config,
    prepare_synthetic_sets,
)

TINY_GRID = """
name = "tiny"
variants = ["cnn-pixel", "cnn-dct"]

[train]
size = 32
epochs = 1
batch_size = 8
calibrate = false

[train_sets]
first = "data/split.csv"
second = "data2/split.csv"

[test_sets]
first = "data/split.csv"
second = { csv = "data2/split.csv", split = "test" }
unseen = { csv = "unseen/split.csv", split = "" }
"""


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """A config in tmp_path with two training sets and a test set holding an unseen class (gen-c)."""
    write_tiny_split(tmp_path / "data", seed=0)
    write_tiny_split(tmp_path / "data2", seed=1)
    write_tiny_split(tmp_path / "unseen", classes=("human", "gen-c"), per_class=4, seed=2)
    path = tmp_path / "grid.toml"
    path.write_text(TINY_GRID)
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_tiny_grid_runs_end_to_end_resumes_and_reports_unseen_classes(grid, tmp_path, monkeypatch):
    out = tmp_path / "out"
    result = run_cli("experiment", grid, "--out", out)
    assert result.exit_code == 0, result.output

    table2 = json.loads((out / "table2_attribution.json").read_text())
    table3 = json.loads((out / "table3_detection.json").read_text())
    assert table2["headers"] == ["variant", "trained on", "first", "second", "unseen"]
    assert [row[:2] for row in table2["rows"]] == [
        ["cnn-pixel", "first"],
        ["cnn-dct", "first"],
        ["cnn-pixel", "second"],
        ["cnn-dct", "second"],
    ]
    for row in table2["rows"] + table3["rows"]:
        assert all(0.0 <= value <= 1.0 for value in row[2:])
    assert "Table 2" in (out / "tables.md").read_text() and (out / "table3_detection.md").is_file()

    # The unseen test set: 4 human images (known) and 4 gen-c images (never trained on).
    report = json.loads((out / "eval" / "first" / "cnn-dct" / "unseen" / "report.json").read_text())
    assert (report["n"], report["n_known"], report["n_unseen"]) == (8, 4, 4)
    assert report["attribution"]["n"] == 4  # attribution over the known class's images only
    assert report["attribution_accuracy"] == report["attribution"]["per_class"]["human"]["accuracy"]
    assert report["detection"]["n_generated"] == 4 and report["detection"]["n_human"] == 4
    assert sum(report["unseen"]["gen-c"]["assigned"].values()) == 4
    assert np.asarray(report["confusion_matrix"]).shape == (4, 4)  # human, gen-a, gen-b, gen-c
    assert (out / "eval" / "second" / "cnn-pixel" / "first" / "confusion.png").is_file()
    unseen_table = json.loads((out / "unseen.json").read_text())
    assert len(unseen_table["rows"]) == 4 and {row[3] for row in unseen_table["rows"]} == {"gen-c"}

    # A second run skips every finished cell: neither training nor evaluation may run again.
    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(experiment, "train", must_not_run)
    monkeypatch.setattr(experiment, "evaluate_cell", must_not_run)
    tables = (out / "tables.md").read_text()
    assert run_cli("experiment", grid, "--out", out).exit_code == 0
    assert (out / "tables.md").read_text() == tables

    # A training without its "finished" marker (killed mid-run) is continued with resume=True.
    calls = []
    monkeypatch.setattr(
        experiment,
        "train",
        lambda config, run, resume: calls.append((run, resume)) or {"best_val_accuracy": 0.0},
    )
    # Its evaluations are redone (weights trained now make earlier results stale, e.g. after the run folder
    # was deleted to redo it); the other cells' are still read back.
    evaluated = []

    def evaluate_again(run, test_set, folder, **kwargs):
        evaluated.append((run, test_set.name))
        return json.loads((folder / "report.json").read_text())

    monkeypatch.setattr(experiment, "evaluate_cell", evaluate_again)
    (out / "runs" / "second" / "cnn-dct" / experiment.CELL_FILE).unlink()
    experiment.run_experiment(load_experiment_config(grid, out), out)
    assert calls == [(out / "runs" / "second" / "cnn-dct", True)]
    assert evaluated == [
        (out / "runs" / "second" / "cnn-dct", name) for name in ("first", "second", "unseen")
    ]

    # Finished cells made with other settings are never silently mixed into the tables.
    grid.write_text(TINY_GRID.replace("batch_size = 8", "batch_size = 4"))
    result = run_cli("experiment", grid, "--out", out)
    assert result.exit_code == 2
    assert "other settings (batch_size 8 -> 4;" in " ".join(result.output.split())


def test_cell_report_counts_unseen_classes_for_detection_only():
    classes, unseen = ["human", "a"], ["c"]
    labels = np.array([0, 1, 1, 2, 2, 2])
    probs = np.array(
        [
            [0.9, 0.1],  # human, right
            [0.2, 0.8],  # a, right
            [0.7, 0.3],  # a judged human: wrong for attribution and detection
            [0.1, 0.9],  # c: judged generated (as "a")
            [0.3, 0.7],  # c: judged generated (as "a")
            [0.6, 0.4],  # c: judged human
        ]
    )
    report = cell_report(labels, probs, classes, unseen, human_class="human")
    assert report["attribution_accuracy"] == pytest.approx(2 / 3)  # over the 3 known images
    assert report["detection"]["accuracy"] == pytest.approx(4 / 6)  # over all 6
    assert report["detection"]["accuracy_generated"] == pytest.approx(3 / 5)
    assert report["unseen"]["c"] == {
        "n": 3,
        "judged_generated": pytest.approx(2 / 3),
        "assigned": {"human": 1, "a": 2},
    }
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [1, 2, 0]]

    only_unseen = cell_report(labels[3:], probs[3:], classes, unseen, human_class="human")
    assert only_unseen["attribution_accuracy"] is None and only_unseen["attribution"] is None
    assert only_unseen["detection"]["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"cnn-dct"]', '"cnn-dtc"]'), "unknown variant 'cnn-dtc'"),
        (lambda t: t.replace("data2/split.csv", "missing/split.csv", 1), "file not found"),
        (lambda t: "colour = 1\n" + t, "unknown key(s) colour in top level"),
        (lambda t: t.replace("epochs = 1", "epoch = 1"), "unknown key(s) epoch in [train]"),
        (lambda t: t.replace("epochs = 1", 'epochs = "1"'), "train.epochs must be int"),
        (lambda t: t.replace("epochs = 1", 'data = "x.csv"'), "may not set data"),
        (
            lambda t: t.replace(
                'first = "data/split.csv"\nsecond', 'first = "{synthetic}/random.csv"\nsecond'
            ),
            "no [synthetic]",
        ),
        (
            lambda t: t.replace('split = ""', 'split = "test", seed = 1'),
            "unknown key(s) seed in [test_sets.unseen]",
        ),
        (lambda t: t.replace("[test_sets]", "[test_sets]\n'bad name' = 'data/split.csv'"), "names may hold"),
        (lambda t: t + "\n[synthetic]\nper_class = 100\npool_per_class = 200\n", "at least 3 x per_class"),
        (lambda t: t + "\n[synthetic]\nheld_out = ['no-such-gen']\n", "unknown class(es) ['no-such-gen']"),
        (lambda t: t.replace("variants = [", "variants = 3 #"), "non-empty list"),
        (lambda t: t.replace("[train]", "[train"), "not valid TOML"),
    ],
)
def test_config_errors_are_clear(grid, tmp_path, edit, message):
    grid.write_text(edit(TINY_GRID))
    with pytest.raises(ConfigError) as error:
        load_experiment_config(grid, tmp_path / "out")
    assert message in str(error.value)
    assert str(grid) in str(error.value)  # every error names the config file


def test_test_set_without_split_column_needs_split_all_rows(grid, tmp_path):
    manifest = tmp_path / "data" / "manifest.csv"
    rows = list(read_rows(tmp_path / "data" / "split.csv"))
    manifest.write_text("path,class\n" + "".join(f"{r['path']},{r['class']}\n" for r in rows))
    grid.write_text(
        TINY_GRID.replace('unseen = { csv = "unseen/split.csv", split = "" }', 'm = "data/manifest.csv"')
    )
    with pytest.raises(ConfigError, match="no 'split' column"):
        load_experiment_config(grid, tmp_path / "out")
    grid.write_text(TINY_GRID.replace('csv = "unseen/split.csv"', 'csv = "data/manifest.csv"'))
    config = load_experiment_config(grid, tmp_path / "out")
    assert config.test_sets[-1].split is None and config.test_sets[0].split == "test"


def test_cli_check_validates_without_running(grid, tmp_path):
    result = run_cli("experiment", grid, "--out", tmp_path / "out", "--check")
    assert result.exit_code == 0 and "2 variants x 2 training sets x 3 test sets" in result.output
    assert not (tmp_path / "out").exists()
    grid.write_text(TINY_GRID.replace('"cnn-dct"]', '"resnet"]'))
    result = run_cli("experiment", grid, "--out", tmp_path / "out", "--check")
    assert result.exit_code == 2 and "unknown variant" in result.output


def test_synthetic_random_and_curated_sets_are_disjoint_and_curated_by_quality(tmp_path):
    spec = SyntheticSpec(
        size=16,
        per_class=3,
        pool_per_class=9,
        classes=("human", "nearest-conv"),
        held_out=("nearest-conv-b",),
        held_out_per_class=2,
    )
    outputs = prepare_synthetic_sets(spec, tmp_path / "data")
    random_rows = list(read_rows(outputs["random"]))
    curated_rows = list(read_rows(outputs["curated"]))
    pool = {
        row["path"]: float(row["quality"]) for row in read_rows(tmp_path / "data" / "pool" / "manifest.csv")
    }
    assert len(random_rows) == len(curated_rows) == 6
    assert not {r["path"] for r in random_rows} & {r["path"] for r in curated_rows}
    assert {r["split"] for r in random_rows} <= {"train", "val", "test"}
    for cls in spec.classes:
        chosen = {Path(r["path"]).name for r in curated_rows if r["class"] == cls}
        randoms = {Path(r["path"]).name for r in random_rows if r["class"] == cls}
        others = sorted((q, Path(p).name) for p, q in pool.items() if Path(p).parent.name == cls)
        left = [(q, name) for q, name in others if name not in randoms]
        assert chosen == {name for _, name in sorted(left, reverse=True)[:3]}  # the best of the rest
    held = list(read_rows(outputs["held-out-nearest-conv-b"]))
    assert len(held) == 2 and {r["class"] for r in held} == {"nearest-conv-b"}
    assert all((outputs["random"].parent / r["path"]).is_file() for r in random_rows + held)
    # The same folder with other [synthetic] settings is refused, not silently reused.
    with pytest.raises(ConfigError, match="other \\[synthetic\\] settings"):
        prepare_synthetic_sets(dataclasses.replace(spec, per_class=2), tmp_path / "data")
