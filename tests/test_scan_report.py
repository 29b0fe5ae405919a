"""`animeprov report` / `animeprov scan`: the HTML report of a predictions file, without a browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_split
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.reports.scan import heatmap_file, render_report

runner = CliRunner()


def said(result) -> str:
    """The command's output on one line (the console wraps long lines)."""
    return " ".join(result.output.split())


def prediction_row(source: str, p: float, verdict: str | None, generator: str | None = None, **extra) -> dict:
    return {
        "source": source,
        "probabilities": {"human": 1 - p, "gen-a": p},
        "p_generated": p,
        "verdict": verdict,
        "generator": generator,
        "view": "crop",
        "n_views": 1,
        "evidence": {"items": [], "named_generators": [], "indicates_ai": None, "caveat": "..."},
        "notes": [],
        "error": None,
        **extra,
    }


def failed_row(source: str, reason: str) -> dict:
    return {
        **prediction_row(source, 0.0, None),
        "probabilities": {},
        "view": "",
        "n_views": 0,
        "error": reason,
    }


def embedded_rows(page: str) -> list[dict]:
    block = re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S)
    return json.loads(block[1])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img-{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_report_counts_rows_thumbnails_and_lists_unreadable_files(tmp_path, images):
    rows = [
        prediction_row(str(images[0]), 0.97, "ai", "gen-a"),
        prediction_row(str(images[1]), 0.05, "artist"),
        prediction_row(str(images[2]), 0.5, "unsure", reason="between the thresholds"),
        failed_row(str(tmp_path / "broken.png"), f"{tmp_path / 'broken.png'}: truncated image data"),
    ]
    out = tmp_path / "report" / "scan.html"
    summary = render_report(write_jsonl(tmp_path / "preds.jsonl", rows), out)

    assert summary.rows == 4 and summary.unreadable == 1 and summary.thumbnails == 3
    assert dict(summary.verdicts) == {"ai": 1, "artist": 1, "unsure": 1, "unreadable": 1}
    assert dict(summary.generators) == {"gen-a": 1}
    assert sum(summary.histogram) == 3 and summary.histogram[-1] == 1 and summary.histogram[1] == 1
    page = out.read_text()
    embedded = embedded_rows(page)
    assert [row["name"] for row in embedded] == ["img-0.png", "img-1.png", "img-2.png", "broken.png"]
    assert embedded[0]["thumb"].startswith("data:image/webp;base64,")
    assert embedded[2]["reason"] == "between the thresholds"
    assert embedded[3]["verdict"] == "unreadable" and "truncated image data" in embedded[3]["error"]
    unreadable = re.search(r'<section id="unreadable">(.*?)</section>', page, re.S)[1]
    assert "broken.png" in unreadable and "truncated image data" in unreadable
    assert unreadable.count("broken.png") == 1  # the file named once, then the reason
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing to fetch from anywhere
    assert not list(out.parent.glob(".report-*"))  # the scratch folder is gone


def test_file_names_cannot_break_out_of_the_page(tmp_path):
    evil = "</script><script>alert(1)</script><b>.png"
    out = tmp_path / "scan.html"
    render_report(write_jsonl(tmp_path / "p.jsonl", [failed_row(evil, f"{evil}: no such file")]), out)
    page = out.read_text()
    assert "<script>alert(1)" not in page
    assert embedded_rows(page)[0]["source"] == evil  # still the exact name once parsed


def test_bad_lines_are_reported_not_fatal_and_heatmaps_are_embedded(tmp_path, images):
    heat = tmp_path / "heat"
    heat.mkdir()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(heatmap_file(heat, str(images[0])))
    preds = tmp_path / "p.jsonl"
    preds.write_text(
        json.dumps(prediction_row(str(images[0]), 0.9, "ai", "gen-a"))
        + "\nnot json\n"
        + json.dumps({"no": "source"})
        + "\n"
        + json.dumps(prediction_row(str(images[1]), 0.1, "artist"))[:30]  # a kill cut it short
    )
    out = tmp_path / "scan.html"
    summary = render_report(preds, out, heatmaps=heat, thumb_size=0)
    assert summary.rows == 1 and len(summary.bad_lines) == 3 and summary.heatmaps == 1
    (row,) = embedded_rows(out.read_text())
    assert row["heatmap"].startswith("data:image/webp") and "thumb" not in row
    assert "p.jsonl:2" in out.read_text()


def test_memory_does_not_hold_rows(tmp_path, images):
    """The renderer keeps no per-row state: every row goes to the scratch file as it is read."""
    rows = [prediction_row(f"{images[0].parent}/missing-{i}.png", i / 500, "ai", "gen-a") for i in range(500)]
    out = tmp_path / "scan.html"
    summary = render_report(write_jsonl(tmp_path / "p.jsonl", rows), out, thumb_size=0)
    assert summary.rows == 500 and sum(summary.histogram) == 500 and summary.bad_lines == []
    assert len(embedded_rows(out.read_text())) == 500


def test_report_command_errors(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "none.jsonl: no such predictions file" in said(result)
    preds = write_jsonl(tmp_path / "p.jsonl", [failed_row("x.png", "x.png: gone")])
    result = runner.invoke(
        app, ["report", str(preds), "--out", str(tmp_path / "r.html"), "--run", str(tmp_path)]
    )
    assert result.exit_code == 2 and "not a run folder" in said(result)


def test_report_refuses_a_run_whose_classes_are_not_the_predictions(tmp_path, tiny_run):
    # tiny_run's classes are not prediction_row's (human, gen-a): its card would describe another model
    preds = write_jsonl(tmp_path / "p.jsonl", [prediction_row("a.png", 0.9, "ai", "gen-a")])
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(preds), "--out", str(out), "--run", str(tiny_run)])
    assert result.exit_code == 2 and "the predictions come from another model" in said(result)
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from animeprov.train import TrainConfig, train

    root = tmp_path_factory.mktemp("scan-run")
    split = write_tiny_split(root / "data")
    train(
        TrainConfig(data=str(split), variant="cnn-dct-mask", size=32, epochs=1, batch_size=8, seed=1),
        root / "run",
    )
    return root / "run"


def test_scan_predicts_resumes_and_renders(tmp_path, tiny_run):
    folder = tmp_path / "uploads"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"u{i}.png")
    (folder / "fake.png").write_bytes(b"not an image at all")
    report = tmp_path / "out" / "scan.html"

    result = runner.invoke(
        app, ["scan", str(tiny_run), str(folder), "--report", str(report), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    preds = report.with_suffix(".jsonl")
    assert len(preds.read_text().splitlines()) == 4
    rows = embedded_rows(report.read_text())
    assert sorted(row["name"] for row in rows) == ["fake.png", "u0.png", "u1.png", "u2.png"]
    assert [row["verdict"] for row in rows if row["name"] == "fake.png"] == ["unreadable"]
    assert "cnn-dct-mask" in report.read_text()  # the model card

    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "u3.png")
    result = runner.invoke(
        app, ["scan", str(tiny_run), str(folder), "--report", str(report), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "4 files already written are skipped" in said(result)  # predict's resume, not a second copy
    assert len(preds.read_text().splitlines()) == 5 and len(embedded_rows(report.read_text())) == 5


def test_scan_with_heatmaps_shows_them(tmp_path, tiny_run):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        folder / "a.png"
    )
    report = tmp_path / "scan.html"
    args = ["scan", str(tiny_run), str(folder), "--report", str(report), "--heatmaps", str(tmp_path / "heat")]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (row,) = embedded_rows(report.read_text())
    assert row["heatmap"].startswith("data:image/webp")  # found under predict's own file naming


def test_scan_passes_predict_errors_through(tmp_path, tiny_run):
    report = tmp_path / "scan.html"
    result = runner.invoke(app, ["scan", str(tiny_run), str(tmp_path / "nowhere"), "--report", str(report)])
    assert result.exit_code == 2 and "nowhere: no such file" in said(result) and not report.exists()


def test_scan_without_a_run_uses_the_reference_model(tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from animeprov.cli import app

    folder = tmp_path / "uploads"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    report = tmp_path / "scan.html"
    result = CliRunner().invoke(app, ["scan", str(folder), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "reference" in result.output and report.is_file()
    rows = (tmp_path / "scan.jsonl").read_text().splitlines()
    assert len(rows) == 2
