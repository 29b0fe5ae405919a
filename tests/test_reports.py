from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hand_case import CLASSES, HAND_LABELS, HAND_PROBS
from PIL import Image

from animeprov.evaluation.metrics import classification_report
from animeprov.reports.figures import plot_confusion, plot_training_curves
from animeprov.reports.tables import markdown_table, report_markdown, write_json


def _assert_png(path: Path, min_side: int = 200, max_side: int = 3000) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        # A blank canvas would be one colour; a drawn figure has many.
        assert np.unique(np.asarray(image.convert("L"))).size > 10
    assert min_side <= width <= max_side and min_side <= height <= max_side
    return width, height


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_writes_a_png(tmp_path: Path, normalize: bool) -> None:
    matrix = [[40, 3, 7], [2, 45, 3], [0, 5, 45]]
    out = plot_confusion(
        matrix, CLASSES, tmp_path / "figs" / "confusion.png", title="test", normalize=normalize
    )
    assert out == tmp_path / "figs" / "confusion.png"
    _assert_png(out)


def test_plot_confusion_grows_with_the_number_of_classes(tmp_path: Path) -> None:
    small = _assert_png(plot_confusion(np.eye(2, dtype=int), ["human", "a"], tmp_path / "small.png"))
    names = ["human", "classic-anim-diffusion", "mo-di-diffusion", "novelai", "waifu-diffusion"]
    large = _assert_png(plot_confusion(np.eye(5, dtype=int) * 10, names, tmp_path / "large.png"))
    assert large[0] > small[0] and large[1] > small[1]


def test_plot_confusion_handles_an_empty_row(tmp_path: Path) -> None:
    _assert_png(plot_confusion([[3, 1], [0, 0]], ["human", "gen"], tmp_path / "c.png"))


def test_plot_confusion_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 class names"):
        plot_confusion([[1, 0], [0, 1]], CLASSES, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_plot_training_curves(tmp_path: Path) -> None:
    rows = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_accuracy": 0.5 + 0.1 * e,
            "val_loss": 1.2 / e,
            "val_accuracy": 0.4,
        }
        for e in range(1, 5)
    ]
    rows.append(
        {"epoch": 5, "train_loss": 0.2, "train_accuracy": 0.95, "val_loss": None, "val_accuracy": None}
    )
    _assert_png(plot_training_curves(rows, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="no metrics rows"):
        plot_training_curves([], tmp_path / "empty.png")


def test_markdown_table_formats_cells_and_aligns_numbers() -> None:
    table = markdown_table(
        ["name", "n", "score"],
        [("a|b", 3, 0.12345), ("c", np.int64(10), None), ("d", 0, np.float32(1.0))],
    )
    assert table.splitlines() == [
        "| name | n | score |",
        "| :--- | ---: | ---: |",
        "| a\\|b | 3 | 0.123 |",
        "| c | 10 | n/a |",
        "| d | 0 | 1.000 |",
    ]
    centred = markdown_table(["x"], [[1.5]], align=["center"], digits=1)
    assert centred == "| x |\n| :---: |\n| 1.5 |"


def test_markdown_table_rejects_ragged_rows_and_bad_alignment() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        markdown_table(["a", "b"], [(1, 2), (3,)])
    with pytest.raises(ValueError, match="unknown alignment"):
        markdown_table(["a"], [(1,)], align=["middle"])


def test_report_markdown_contains_the_numbers() -> None:
    report = classification_report(HAND_LABELS, HAND_PROBS, CLASSES)
    text = report_markdown(report, title="CNN-DCT-Mask on toy data", model_info={"variant": "cnn-dct-mask"})
    lines = text.splitlines()
    assert lines[0] == "# CNN-DCT-Mask on toy data"
    assert "| variant | cnn-dct-mask |" in lines
    # Headline numbers.
    assert "| attribution accuracy | 0.667 |" in lines
    assert "| macro-F1 | 0.656 |" in lines
    assert "| detection accuracy (threshold 0.500) | 0.667 |" in lines
    assert "| detection average precision | 0.950 |" in lines
    assert "| detection ROC-AUC | 0.875 |" in lines
    assert any(line.startswith("| expected calibration error (15 bins) | 0.") for line in lines)
    # Per-class table: n, accuracy (recall), precision, F1.
    assert "| human | 2 | 1.000 | 0.667 | 0.800 |" in lines
    assert "| gen_a | 2 | 0.500 | 1.000 | 0.667 |" in lines
    assert "| gen_b | 2 | 0.500 | 0.500 | 0.500 |" in lines
    # Confusion matrix with true classes as rows.
    assert "| true \\ predicted | human | gen_a | gen_b |" in lines
    assert "| human | 2 | 0 | 0 |" in lines
    assert "| gen_a | 0 | 1 | 1 |" in lines
    assert "| gen_b | 1 | 0 | 1 |" in lines
    # Detection split into human and generated.
    assert "| human (judged human) | 2 | 0.500 |" in lines
    assert "| generated (judged generated) | 4 | 0.750 |" in lines
    assert text.endswith("\n")


def test_report_markdown_shows_undefined_numbers_as_na() -> None:
    report = classification_report([0, 0], np.array([[0.9, 0.1], [0.7, 0.3]]), ["human", "gen"])
    lines = report_markdown(report, title="t").splitlines()
    assert "| detection ROC-AUC | n/a |" in lines
    assert "| generated (judged generated) | 0 | n/a |" in lines
    assert "| gen | 0 | n/a | n/a | n/a |" in lines


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    report = classification_report(HAND_LABELS, HAND_PROBS, CLASSES)
    path = tmp_path / "out" / "report.json"
    write_json(report, path)
    assert json.loads(path.read_text()) == report
    # Overwrite atomically with numpy values, keeping key order.
    write_json({"b": np.float32(0.5), "a": np.arange(3), "p": Path("x/y")}, path)
    text = path.read_text()
    assert json.loads(text) == {"b": 0.5, "a": [0, 1, 2], "p": "x/y"}
    assert text.index('"b"') < text.index('"a"')
    assert text.startswith('{\n  "b"')
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_json_refuses_nan_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json({"ok": 1}, path)
    with pytest.raises(ValueError):
        write_json({"loss": math.nan}, path)
    with pytest.raises(TypeError):
        write_json({"thing": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
