"""The bundled reference model: its files and sha256, resolution by name or path, `predict` without a run,
serve's card, and benchmarks/build_reference.py (build and --check) on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark
from PIL import Image
from test_predict import make_run, write_image
from typer.testing import CliRunner

import animeprov.engine
from animeprov import reference
from animeprov.cli import app
from animeprov.config import VARIANTS
from animeprov.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = reference.bundled_models()[reference.REFERENCE]
SCRIPT = ROOT / "benchmarks" / "build_reference.py"


@pytest.fixture(autouse=True)
def _no_global_malloc_settings(monkeypatch):
    # `predict` tunes glibc malloc for the whole process; not for the test process.
    monkeypatch.setattr(animeprov.engine, "keep_freed_memory", lambda: None)


def invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    result.said = " ".join(result.output.split())
    return result


def fixed_image(path: Path, size: int) -> Path:
    """A fixed generated image: seeded noise over a smooth gradient, the model's size."""
    rng = np.random.default_rng(13)
    ramp = np.linspace(0, 180, size, dtype=np.float64)[None, :, None]
    pixels = (ramp + rng.integers(0, 60, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# ----------------------------------------------------------------------------------------------------
# The bundle as shipped


def test_bundled_files_match_their_sha256_and_load_offline():
    sums = reference.read_sums(BUNDLE)
    # SHA256SUMS covers every file of the bundle (but the card, which may be corrected without retraining)
    assert sorted(sums) == reference.bundle_files(BUNDLE)
    for name in (
        "config.json",
        "model.safetensors",
        "calibration.json",
        "reference.json",
        "training-data.csv",
    ):
        assert name in sums
    reference.verify_bundle(BUNDLE)  # raises on any difference
    predictor = Predictor.reference(device="cpu")
    assert Path(predictor.run) == BUNDLE
    assert predictor.calibration is not None  # verdicts, not just probabilities
    info = reference.bundle_info(BUNDLE)
    assert predictor.classes == info["classes"] and predictor.human_class in predictor.classes
    assert predictor.info()["model_card"]["name"] == "reference"
    config = json.loads((BUNDLE / "config.json").read_text())
    assert config["data"] == reference.DATA_FILE and "environment" not in config  # no machine paths
    assert info["built_from"]  # says which data built it


def test_the_bundled_card_is_docs_model_card():
    assert (BUNDLE / reference.CARD_FILE).read_text() == (ROOT / "docs" / "model-card.md").read_text(), (
        "copy docs/model-card.md to src/animeprov/reference/model-card.md"
    )


def test_package_data_globs_cover_the_bundle():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "reference/**/*" in globs["animeprov"]
    licence_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license-files"]
    for name in licence_files:
        assert (ROOT / name).is_file(), name


def test_a_modified_or_incomplete_bundle_is_refused(tmp_path):
    copy = shutil.copytree(BUNDLE, tmp_path / "bundle")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(reference.BundleError, match=r"model\.safetensors: modified"):
        Predictor.from_checkpoint(copy)
    (copy / "calibration.json").unlink()
    with pytest.raises(reference.BundleError, match=r"calibration\.json: missing"):
        reference.resolve_run(copy)


def test_a_prediction_with_the_reference_model_is_deterministic(tmp_path):
    first = Predictor.reference(device="cpu")
    image = fixed_image(tmp_path / "fixed.png", first.size)
    a = first.predict(image)
    b = Predictor.from_checkpoint("reference", device="cpu").predict(image.read_bytes(), name=str(image))
    assert a.to_dict() == b.to_dict()
    assert a.verdict in ("artist", "ai", "unsure")
    assert abs(sum(a.probabilities.values()) - 1) < 1e-9


# ----------------------------------------------------------------------------------------------------
# Choosing the model on the command line


def test_run_and_paths_tells_a_run_folder_from_images(tmp_path):
    run = make_run(tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    assert reference.run_and_paths(None, [str(run), "a.png"]) == (str(run), ["a.png"])
    assert reference.run_and_paths(None, [str(images), "a.png"]) == ("reference", [str(images), "a.png"])
    assert reference.run_and_paths(str(run), ["a.png"]) == (str(run), ["a.png"])
    assert reference.run_and_paths(None, ["reference", "a.png"]) == ("reference", ["a.png"])
    with pytest.raises(ValueError, match="give one"):
        reference.run_and_paths("reference", [str(run), "a.png"])
    with pytest.raises(ValueError, match="no image paths"):
        reference.run_and_paths(None, [str(run)])


def test_predict_without_a_run_uses_the_reference_model(tmp_path):
    predictor = Predictor.reference(device="cpu")
    image = fixed_image(tmp_path / "fixed.png", predictor.size)
    expected = predictor.predict(image).p_generated
    for args in ([], ["--model", "reference"], ["--model", str(BUNDLE)]):
        out = tmp_path / f"out{len(args)}.jsonl"
        result = invoke("predict", image, *args, "--out", out, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert "model: reference" in result.said
        (row,) = [json.loads(line) for line in out.read_text().splitlines()]
        assert row["p_generated"] == pytest.approx(expected, abs=1e-9)


def test_predict_run_paths_still_works(tmp_path):
    run = make_run(tmp_path / "run", calibration={})
    image = write_image(tmp_path / "a.png", 32, 32)
    result = invoke("predict", run, image, "--format", "jsonl", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"model: run {run}" in result.said
    row = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    assert set(row["probabilities"]) == {"gen-a", "gen-b", "human"}
    assert invoke("predict", run, image, "--model", "reference").exit_code == 2


def test_models_lists_the_reference_model():
    result = invoke("models", "--size", "32")
    assert result.exit_code == 0
    # every variant's whole name and every recipe value as one types them, nothing cut at 80 columns
    listed = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert set(VARIANTS) <= listed
    assert "…" not in result.output and "pretrained_lr_scale" in result.output
    assert "bundled models" in result.said and "reference (sha256 verified)" in result.said
    assert reference.bundle_info(BUNDLE)["built_from"] in result.said
    # what it was calibrated on, counted from the bundle's training-data.csv
    with open(BUNDLE / "training-data.csv", newline="") as handle:
        val = [row for row in csv.DictReader(handle) if row["split"] == "val"]
    held_out = "sources held out of training"
    assert (
        f"calibrated on: {len(val)} images of {len({row['source'] for row in val})} sources, {held_out}"
        in (result.said)
    )


# ----------------------------------------------------------------------------------------------------
# serve: which model answered, and its card


def test_serve_says_which_model_answered_and_serves_its_card(tmp_path):
    from fastapi.testclient import TestClient

    from animeprov.serve import create_app

    client = TestClient(create_app("reference", device="cpu"))
    info = client.get("/v1/model").json()
    assert info["run"] == "reference" and info["card_url"] == "/model-card"
    assert info["model_card"]["data"] == reference.bundle_info(BUNDLE)["built_from"]
    card = client.get("/model-card")
    assert card.status_code == 200 and card.headers["content-type"].startswith("text/markdown")
    assert "Intended use" in card.text
    # its links lead into the repository's docs/, which the package does not ship: named, not linked
    assert "](" not in card.text.replace("](http", "")
    assert "predict.md (docs/predict.md#throughput-and-memory)" in card.text
    assert "the README (README.md)" in card.text
    page_script = client.get("/static/app.js").text
    assert "model-card" in page_script and "judged by" in page_script

    plain = TestClient(create_app(make_run(tmp_path / "run", calibration={}), device="cpu"))
    assert plain.get("/v1/model").json()["card_url"] is None
    assert plain.get("/model-card").status_code == 404


# ----------------------------------------------------------------------------------------------------
# benchmarks/build_reference.py on tiny synthetic data


def run_script(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_build_script_builds_a_bundle_that_its_check_reproduces(tmp_path):
    bundle = tmp_path / "bundle"
    tiny = ["--set", "epochs=1", "--set", "size=32", "--set", "batch_size=8"]
    built = run_script("--synthetic", 10, *tiny, "--work", tmp_path / "work", "--out", bundle)
    assert built.returncode == 0, built.stderr[-3000:]
    reference.verify_bundle(bundle)
    info = reference.bundle_info(bundle)
    assert info["synthetic"] and "SYNTHETIC" in info["built_from"]
    assert info["build"]["args"]["overrides"]["size"] == 32
    assert (
        "--synthetic 10 --seed 0" in info["build"]["command"] and "--set size=32" in info["build"]["command"]
    )
    predictor = Predictor.from_checkpoint(bundle, device="cpu")  # a usable, calibrated run
    assert predictor.calibration is not None and predictor.size == 32
    assert (bundle / "fingerprints" / "index.json").is_file()
    # the default recipe fine-tunes ImageNet weights: their licence is named beside the model's
    assert "Apache License 2.0" in (bundle / "LICENCES.md").read_text()
    assert info["licences"]["model"].startswith("Apache-2.0")  # what `models` and /v1/model say

    checked = run_script("--check", "--out", bundle, "--work", tmp_path / "work-check")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "OK: the rebuilt bundle matches" in checked.stdout

    # the card's figures come from this command
    tables = run_script("--tables", "--out", bundle)
    assert tables.returncode == 0, tables.stderr
    test = info["test"]
    assert f"| reference | {test['n']} | {test['attribution_accuracy']:.3f} |" in tables.stdout
    assert "| synthetic | human | human |" in tables.stdout


def test_the_real_build_validates_on_sources_it_does_not_train_on():
    module = load_benchmark("build_reference")
    spec = {"h1": ("human", 30), "h2": ("human", 8), "h3": ("human", 6), "n1": ("novelai", 40)}
    spec |= {"n2": ("novelai", 3), "s1": ("sd", 10), "s2": ("sd", 6)}
    rows = [
        {"path": f"{source}/{i}.png", "class": cls, "source": source, "group": ""}
        for source, (cls, n) in spec.items()
        for i in range(n)
    ]
    settings = {"val_by": "source", "val_share": 0.15, "seed": 0, "synthetic": None, "manifests": ["m.csv"]}
    settings |= {"description": None, "recipe": "pretrained", "overrides": {}, "ratios": [8, 1, 1]}
    settings |= {"per_class": None, "group_column": "group", "device": "cpu"}
    split = module.split_rows_for(rows, settings)
    sources = {name: {r["source"] for r in split if r["split"] == name} for name in ("train", "val", "test")}
    assert sources["val"] and not sources["test"] and not sources["val"] & sources["train"]
    assert {"h1", "h2", "h3"} & sources["val"]  # human sources are validated on too
    for seed in range(10):  # n1 holds most of novelai: the model must train on it
        split = module.split_rows_for(rows, {**settings, "seed": seed})
        assert "n1" not in {r["source"] for r in split if r["split"] == "val"}
    assert "--val-by source --val-share 0.15" in module.build_command(settings)
    assert "--ratios" not in module.build_command(settings)
    with pytest.raises(SystemExit, match="needs a `source` value"):
        module.split_rows_for([{**row, "source": ""} for row in rows], settings)
    # bundles built before --val-by record no val_by: --check rebuilds them with the random split
    old = {key: value for key, value in settings.items() if key not in ("val_by", "val_share")}
    assert "--ratios 8:1:1" in module.build_command(old)
    assert {r["split"] for r in module.split_rows_for(rows, old)} == {"train", "val", "test"}


def test_check_explains_a_mismatch_by_what_differs(tmp_path):
    module = load_benchmark("build_reference")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps({"epochs": 1 if folder == "a" else 2}))
    shipped = {"build": {"environment": {"torch": "2.13.0+cpu", "cpu": "A"}}}
    rebuilt = {"build": {"environment": {"torch": "2.13.0+cpu", "cpu": "B"}}}
    lines = module.explain(shipped, rebuilt, ["model.safetensors"], tmp_path / "a", tmp_path / "b")
    assert any("cpu A -> B" in line and "rounds floats differently" in line for line in lines)
    lines = module.explain(shipped, shipped, ["config.json"], tmp_path / "a", tmp_path / "b")
    assert any("settings differ (config.json: epochs)" in line for line in lines)
    other_code = {"build": {"environment": {**shipped["build"]["environment"], "code_sha256": "x"}}}
    lines = module.explain(shipped, other_code, ["model.safetensors"], tmp_path / "a", tmp_path / "b")
    assert any("the code differs" in line for line in lines)
    assert not any("nondeterminism" in line for line in lines)
    lines = module.explain(shipped, shipped, ["model.safetensors"], tmp_path / "a", tmp_path / "b")
    assert any("nondeterminism" in line for line in lines)  # nothing else differs


def test_the_demo_ends_with_the_reference_model_on_its_images(tiny_split):
    from animeprov.demo import _reference_markdown

    text = _reference_markdown(tiny_split)
    assert "## The reference model on a few of these images" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and ".png" in line]
    assert [row.split(" | ")[1] for row in rows] == ["gen-a", "gen-b", "human"]  # one test image per class
    assert all(row.split(" | ")[2] in ("artist", "ai", "unsure") for row in rows)
    assert "--view pad" in text  # 32 px images are smaller than the reference model's input: padded


def test_export_without_a_run_exports_the_reference_model(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "reference.onnx"
    result = invoke("export", "--onnx", out, "--no-check")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    assert invoke("export", make_run(tmp_path / "run"), "--model", "reference", "--onnx", out).exit_code == 2


def test_the_page_names_the_reference_model_and_links_its_card(live_server, page, tmp_path):
    from playwright.sync_api import expect

    from animeprov.serve import create_app

    url = live_server(create_app("reference", device="cpu"))
    page.goto(url)
    info = page.locator("#model-info")
    expect(info).to_contain_text("model reference (")
    link = info.get_by_role("link", name="model card")
    expect(link).to_have_attribute("href", "/model-card")
    size = Predictor.reference(device="cpu").size
    page.set_input_files("#file-input", str(fixed_image(tmp_path / "fixed.png", size)))
    expect(page.locator("#results")).to_contain_text("judged by reference")
    # the card opens beside the page: the results stay
    with page.context.expect_page() as opened:
        link.click()
    expect(opened.value.locator("body")).to_contain_text("Intended use")
    expect(page.locator("#results")).to_contain_text("judged by reference")
    # on a phone, nothing widens the page past the screen (the view menu's long options did)
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_a_build_without_its_data_says_which_manifest_is_missing(tmp_path):
    module = load_benchmark("build_reference")
    settings = {**reference.bundle_info(BUNDLE)["build"]["args"], "manifests": ["no-such-set/manifest.csv"]}
    with pytest.raises(SystemExit, match=r"no such manifest: no-such-set/manifest.csv .*--check needs them"):
        module.build(settings, tmp_path / "bundle", tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "bundle").exists()  # nothing written


def test_build_script_never_deletes_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    result = run_script("--synthetic", 10, "--work", precious, "--out", tmp_path / "bundle")
    assert result.returncode != 0 and "not written by this script" in result.stderr
    assert (precious / "notes.txt").read_text() == "mine"
    result = run_script("--synthetic", 10, "--work", tmp_path / "work", "--out", precious)
    assert result.returncode != 0 and (precious / "notes.txt").is_file()
