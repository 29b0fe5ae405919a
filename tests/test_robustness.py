"""`animeprov robustness` end to end on a tiny run; augmentation only on the train split, reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_split
from PIL import Image
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from animeprov import train as train_module
from animeprov.cli import app
from animeprov.data.dataset import ImageDataset, read_split_rows
from animeprov.engine import make_loader
from animeprov.evaluation.robustness import combine, jpeg_grid_score
from animeprov.perturb import Augmenter, parse_spec, perturb
from animeprov.train import TrainConfig, train

CLASSES = ["gen-a", "gen-b", "human"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run shared by this module's tests (only read by them)."""
    root = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(
        data=str(write_tiny_split(root / "data")), size=16, epochs=1, batch_size=8, calibrate=False
    )
    train(config, root / "run")
    return root / "run"


def test_robustness_cli_writes_table_and_plot(tiny_run: Path, tiny_split: Path, tmp_path: Path):
    out = tmp_path / "robust"
    result = CliRunner().invoke(
        app,
        [
            "robustness",
            str(tiny_run),
            "--data",
            str(tiny_split),
            "--out",
            str(out),
            "--ladder",
            "jpeg:75,resize:32-64-32,noise:2,resize:32-8",
            "--chain",
            "x2,x0.5",
            "--equalize",
            "jpeg:90",
        ],
    )
    assert result.exit_code == 0, result.output
    table = json.loads((out / "robustness.json").read_text())
    rows = table["rows"]
    assert [r["perturbation"] for r in rows] == [
        "none",
        "jpeg:75",
        "resize:32-64-32",
        "noise:2",
        "resize:32-8",
        "scale:2-0.5",
    ]
    assert [r["applied"] for r in rows][:2] == ["jpeg:90", "jpeg:90+jpeg:75"]
    assert table["equalize"] == "jpeg:90" and table["classes"] == CLASSES
    assert rows[2]["sizes"] == "32x32 -> 64x64 -> 32x32"
    for row in rows[:4] + rows[5:]:
        assert row["n"] == 6 and row["skipped"] == 0  # 2 test images per class
        assert set(row["per_class_accuracy"]) == set(CLASSES)
        assert 0.0 <= row["attribution_accuracy"] <= 1.0 and 0.0 <= row["detection_accuracy"] <= 1.0
    # 32 px -> 8 px is smaller than the 16 px view: skipped, never resized back.
    assert rows[4]["n"] == 0 and rows[4]["skipped"] == 6 and rows[4]["attribution_accuracy"] is None
    markdown = (out / "robustness.md").read_text()
    assert "| resize:32-64-32 (32x32 -> 64x64 -> 32x32) | 6 | 0 |" in markdown
    assert "re-encoded with `jpeg:90`" in markdown
    with Image.open(out / "robustness.png") as figure:
        assert figure.format == "PNG" and figure.width > 400


def test_robustness_cli_refuses_bad_specs_before_predicting(tiny_run: Path, tiny_split: Path, tmp_path: Path):
    out = tmp_path / "robust"
    result = CliRunner().invoke(
        app,
        ["robustness", str(tiny_run), "--data", str(tiny_split), "--out", str(out), "--ladder", "jpeg:200"],
    )
    assert result.exit_code == 2
    assert "quality must be a whole number from 1 to 100" in " ".join(result.output.split())
    assert not out.exists()


def test_robustness_is_reproducible(tiny_run: Path, tiny_split: Path, tmp_path: Path):
    from animeprov.evaluation.robustness import robustness_run

    first = robustness_run(tiny_run, tiny_split, tmp_path / "a", ladder=["noise:20", "crop:0.7"], seed=3)
    second = robustness_run(tiny_run, tiny_split, tmp_path / "b", ladder=["noise:20", "crop:0.7"], seed=3)
    assert first["rows"] == second["rows"]


def test_every_class_gets_the_same_perturbation(tmp_path: Path):
    """Identical pixels filed under different classes come out identical: the class plays no part."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    rows = []
    for name in CLASSES:
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "same.png")
        rows.append({"path": f"{name}/same.png", "class": name})
    csv_path = tmp_path / "manifest.csv"
    for spec in ("jpeg:75", "resize:512-1024-512", "blur:1", "webp:75"):
        dataset = ImageDataset(csv_path, rows, CLASSES, 16, augment=parse_spec(spec))
        views = [dataset[i][0] for i in range(len(rows))]
        assert all(np.array_equal(v, views[0]) for v in views), spec
    # Random steps draw from (seed, index) only: relabelling every row leaves each image's noise unchanged.
    noisy = ImageDataset(csv_path, rows, CLASSES, 16, augment=parse_spec("noise:5"), augment_seed=1)
    relabelled_rows = [{**row, "class": "human"} for row in rows]
    relabelled = ImageDataset(
        csv_path, relabelled_rows, CLASSES, 16, augment=parse_spec("noise:5"), augment_seed=1
    )
    for i in range(len(rows)):
        assert np.array_equal(noisy[i][0], relabelled[i][0])


def test_combine_puts_equalize_first():
    equalize, step = parse_spec("jpeg:90"), parse_spec("blur:1")
    assert combine(equalize, step).spec == "jpeg:90+blur:1"
    assert combine(equalize, parse_spec("none")).spec == "jpeg:90"
    assert combine(None, step) is step


def test_augment_only_on_the_train_split(tiny_split: Path, tmp_path: Path, monkeypatch):
    built: list[tuple[set[str], object]] = []

    class RecordingDataset(ImageDataset):
        def __init__(self, csv_path, rows, *args, **kwargs):
            super().__init__(csv_path, rows, *args, **kwargs)
            built.append(({row["split"] for row in rows}, self.augment))

    monkeypatch.setattr(train_module, "ImageDataset", RecordingDataset)
    config = TrainConfig(
        data=str(tiny_split), size=16, epochs=1, batch_size=8, calibrate=False, augment="jpeg,p=1"
    )
    train(config, tmp_path / "run")
    assert [splits for splits, _ in built] == [{"train"}, {"val"}]
    assert built[0][1] == Augmenter(("jpeg",), p=1.0, min_side=16)
    assert built[1][1] is None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment"] == "jpeg,p=1"


def test_augmentation_is_reproducible_per_epoch_and_across_workers(tiny_split: Path):
    rows = read_split_rows(tiny_split, "train")
    augmenter = Augmenter(("noise", "crop", "jpeg"), p=1.0, min_side=16)
    dataset = ImageDataset(tiny_split, rows, CLASSES, 16, augment=augmenter, augment_seed=5)
    clean = ImageDataset(tiny_split, rows, CLASSES, 16)
    dataset.set_epoch(1)
    epoch_one = [dataset[i][0] for i in range(len(dataset))]
    assert all(np.array_equal(a, dataset[i][0]) for i, a in enumerate(epoch_one))  # same sample, same draw
    assert sum(not np.array_equal(a, clean[i][0]) for i, a in enumerate(epoch_one)) >= len(dataset) - 1
    dataset.set_epoch(2)
    assert sum(not np.array_equal(a, dataset[i][0]) for i, a in enumerate(epoch_one)) >= len(dataset) // 2
    # Two worker processes give the same pixels per index as the main process.
    dataset.set_epoch(1)
    batches = list(make_loader(dataset, 4, shuffle=True, seed=9, workers=2))
    for batch in batches:
        for image, index in zip(batch.images, batch.indices.tolist(), strict=True):
            expected = epoch_one[index]
            assert np.array_equal((image.permute(1, 2, 0) * 255).round().byte().numpy(), expected)


def test_jpeg_grid_score_sees_a_jpeg_history_even_after_a_shifted_crop():
    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.normal(128, 50, size=(128, 128, 3)), sigma=(2, 2, 0)) * 3 - 256
    pixels = np.clip(smooth, 0, 255).astype(np.uint8)
    clean_score = jpeg_grid_score(pixels)
    jpeg_score = jpeg_grid_score(perturb(pixels, "jpeg:75")[3:, 5:])  # grid no longer at the origin
    assert clean_score < 1.08
    assert jpeg_score > clean_score + 0.1
    with pytest.raises(ValueError):
        jpeg_grid_score(np.zeros((8, 8, 3), np.uint8))


def test_an_image_a_chain_would_make_too_large_is_skipped_not_fatal(
    tiny_run: Path, tiny_split: Path, tmp_path
):
    from animeprov.evaluation.robustness import robustness_run
    from animeprov.perturb import MAX_SIDE

    n = len(read_split_rows(tiny_split, "test"))
    factor = MAX_SIDE // 16 + 1  # every test image is at least 16 px a side: each would pass MAX_SIDE
    table = robustness_run(tiny_run, tiny_split, tmp_path / "r", ladder=[f"scale:{factor}"])
    clean, scaled = table["rows"]
    assert (clean["n"], clean["skipped"]) == (n, 0)
    assert (scaled["n"], scaled["skipped"], scaled["attribution_accuracy"]) == (0, n, None)
