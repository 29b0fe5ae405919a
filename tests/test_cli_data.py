"""`animeprov --version`, and `animeprov data synth | index | split` end to end through the Typer app."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.data.manifest import MANIFEST_COLUMNS, image_path, read_columns, read_rows

runner = CliRunner()


def test_version_and_help_without_a_command() -> None:
    from animeprov import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"animeprov {__version__}\n"
    bare = runner.invoke(app, [])
    assert "Usage" in bare.output and "predict" in bare.output  # no command: the help, not an error trace


def test_training_on_a_manifest_without_classes_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label,split\na.png,x,train\n")
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "no 'class' column; columns are path, label, split" in result.output


def make_tree(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("human", "ai"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((48, 48), Image.Resampling.BICUBIC).save(root / cls / f"{i}.png")
    return root


def test_synth_index_split_end_to_end(tmp_path: Path) -> None:
    synth_dir, work = tmp_path / "synth", tmp_path / "work"
    result = runner.invoke(
        app, ["data", "synth", str(synth_dir), "--per-class", "3", "--size", "64", "--seed", "1", "--classes",
              "human,transposed-conv"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (synth_dir / "manifest.csv").is_file()
    synth_rows = list(read_rows(synth_dir / "manifest.csv"))
    assert Counter(row["class"] for row in synth_rows) == {"human": 3, "transposed-conv": 3}

    manifest = work / "manifest.csv"
    result = runner.invoke(app, ["data", "index", str(synth_dir), "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "human" in result.stdout and "groups" in result.stdout
    columns = read_columns(manifest)
    assert columns[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert "seed" in columns  # carried over from the synthetic set's own manifest
    assert (work / "manifest.skipped.csv").is_file()

    split_csv = tmp_path / "elsewhere" / "split.csv"
    result = runner.invoke(
        app, ["data", "split", str(manifest), "--out", str(split_csv), "--ratios", "1:1:1", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    rows = list(read_rows(split_csv))
    assert len(rows) == 6 and {row["split"] for row in rows} <= {"train", "val", "test"}
    assert all(image_path(split_csv, row).is_file() for row in rows)  # rebased to its own folder
    assert "train" in result.stdout and "human" in result.stdout


def test_index_reports_skipped_files_and_still_succeeds(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "set", per_class=2)
    (root / "human" / "broken.jpg").write_text("not an image")
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["data", "index", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stderr and "m.skipped.csv" in result.stderr
    assert len(list(read_rows(out))) == 4


def test_index_fails_clearly_without_any_readable_image(tmp_path: Path) -> None:
    (tmp_path / "set" / "human").mkdir(parents=True)
    (tmp_path / "set" / "human" / "empty.png").write_bytes(b"")
    result = runner.invoke(app, ["data", "index", str(tmp_path / "set"), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    assert "no readable image" in result.output

    missing = ["data", "index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.csv")]
    result = runner.invoke(app, missing, env={"COLUMNS": "300"})  # keep Typer's error box on one line
    assert result.exit_code == 2 and "does not exist" in result.output


def test_index_group_by_unknown_column_is_a_usage_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "set", per_class=1)
    result = runner.invoke(
        app, ["data", "index", str(root), "--out", str(tmp_path / "m.csv"), "--group-by", "artist"]
    )
    assert result.exit_code == 2 and "artist" in result.output


@pytest.mark.parametrize("ratios", ["8:1", "8:-1:1", "a:b:c", "0:0:0", "nan:1:1"])
def test_split_refuses_bad_ratios(tmp_path: Path, ratios: str) -> None:
    root = make_tree(tmp_path / "set", per_class=3)
    manifest = tmp_path / "m.csv"
    assert runner.invoke(app, ["data", "index", str(root), "--out", str(manifest)]).exit_code == 0
    result = runner.invoke(app, ["data", "split", str(manifest), "--ratios", ratios])
    assert result.exit_code == 2 and "--ratios" in result.output


def test_split_warns_about_small_classes_and_bad_columns(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "set", per_class=4)
    manifest = tmp_path / "m.csv"
    assert runner.invoke(app, ["data", "index", str(root), "--out", str(manifest)]).exit_code == 0
    out = tmp_path / "split.csv"
    result = runner.invoke(app, ["data", "split", str(manifest), "--out", str(out), "--per-class", "10"])
    assert result.exit_code == 0, result.output
    assert "below 10 per class (class too small)" in result.stderr
    assert "no test images" in result.stderr  # 4 images at 8:1:1 give 3 train, 1 val, 0 test
    assert len(list(read_rows(out))) == 8

    result = runner.invoke(app, ["data", "split", str(manifest), "--per-class", "-3"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["data", "split", str(manifest), "--group-column", "artist"])
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "has no 'artist' column" in said
    assert "name another column with --group-column (e.g. source" in said
    # a `file` column (read as `path`) can group too, under either name
    (tmp_path / "files.csv").write_text(manifest.read_text().replace("path,", "file,", 1))
    for name in ("file", "path"):
        out = tmp_path / f"by-{name}.csv"
        result = runner.invoke(app, ["data", "split", str(tmp_path / "files.csv"), "--out", str(out),
                                     "--group-column", name])  # fmt: skip
        assert result.exit_code == 0 and len(list(read_rows(out))) == 8, result.output


def test_split_by_source_holds_out_whole_sources(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    lines = ["path,class,group,source"]
    for source, cls, n in (("h1", "human", 6), ("h2", "human", 4), ("h3", "human", 3), ("a1", "ai", 5),
                           ("a2", "ai", 4), ("a3", "ai", 3)):  # fmt: skip
        lines += [f"{source}/{i}.png,{cls},,{source}" for i in range(n)]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "split.csv"
    result = runner.invoke(app, ["data", "split", str(manifest), "--by", "source", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(read_rows(out))
    assert len(rows) == 25  # no class cap
    by_split = {name: {r["source"] for r in rows if r["split"] == name} for name in ("train", "val", "test")}
    assert not by_split["train"] & (by_split["val"] | by_split["test"])
    assert f"test: {len(by_split['test'])} source value(s) held out" in result.stdout

    result = runner.invoke(app, ["data", "split", str(manifest), "--by", "source", "--per-class", "3"])
    assert result.exit_code == 2 and "--by keeps every image" in result.output
    result = runner.invoke(app, ["data", "split", str(manifest), "--by", "origin"])
    assert result.exit_code == 2 and "'origin'" in result.output
    manifest.write_text(manifest.read_text().replace(",h2\n", ",\n", 1))  # one row without a source
    result = runner.invoke(app, ["data", "split", str(manifest), "--by", "source"])
    assert result.exit_code == 2 and "without a 'source' value" in result.output
