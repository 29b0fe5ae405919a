"""The page of `animeprov serve` in Debian's chromium: upload an image, see the verdict and the bars."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import write_tiny_split
from PIL import Image
from playwright.sync_api import expect

from animeprov.fingerprint import compute_fingerprints, labelled_images, write_fingerprints
from animeprov.predict import Predictor
from animeprov.serve import create_app
from animeprov.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-browser")
    split = write_tiny_split(root / "data")
    train(
        TrainConfig(data=str(split), variant="cnn-dct-mask", size=32, epochs=1, batch_size=8, seed=2),
        root / "run",
    )
    write_fingerprints(
        compute_fingerprints(labelled_images(root / "data"), size=32), root / "run" / "fingerprints"
    )
    return root / "run"


@pytest.fixture
def site(run, live_server, page):
    """The page of a live server, with every console error and uncaught exception recorded."""
    url = live_server(create_app(run, predictor=Predictor.from_checkpoint(run, device="cpu")))
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url)
    expect(page.locator("#model-info")).to_contain_text("cnn-dct-mask")
    return url, page, problems


def test_upload_shows_verdict_bars_spectrum_heatmap_and_evidence(site, tmp_path):
    url, page, problems = site
    path = tmp_path / "drawing.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    expected = httpx.post(f"{url}/v1/predict", files={"file": ("drawing.png", path.read_bytes())}).json()

    page.set_input_files("#file-input", str(path))

    result = page.locator(".result").first
    expect(result.locator(".file-name")).to_have_text("drawing.png")
    verdict = result.locator(".verdict")
    expect(verdict).to_be_visible()
    assert verdict.get_attribute("data-verdict") == expected["verdict"]
    expect(verdict).to_have_text(re.compile(r"^(Drawn by a person|Unsure|Generated.*)$"))

    bars = result.locator(".bar")
    expect(bars).to_have_count(3)
    top_class = max(expected["probabilities"], key=expected["probabilities"].get)
    assert bars.first.get_attribute("data-class") == top_class  # sorted, most likely first
    shown = [float(text.rstrip("%")) for text in result.locator(".bar-value").all_inner_texts()]
    assert sum(shown) == pytest.approx(100, abs=0.3)
    assert shown[0] == pytest.approx(100 * expected["probabilities"][top_class], abs=0.06)

    evidence = result.locator(".evidence")
    expect(evidence).to_contain_text("separate from the verdict")
    expect(evidence.locator(".caveat")).to_contain_text("stripped or forged")

    pictures = result.locator(".spectrum img")  # this image's spectrum beside the class fingerprint
    expect(pictures).to_have_count(2)
    result.locator(".heatmap-button").click()  # on request only: it is hundreds of model passes
    heatmap = result.locator(".heatmap img")
    expect(heatmap).to_be_visible(timeout=20_000)
    for picture in [*pictures.all(), heatmap]:
        assert picture.evaluate("img => img.complete && img.naturalWidth > 0")  # loaded: CSP allows it
    assert problems == []


def test_a_file_that_is_not_an_image_shows_the_servers_message(site, tmp_path):
    _, page, problems = site
    path = tmp_path / "notes.png"
    path.write_text("just some text pretending to be a picture\n")

    page.set_input_files("#file-input", str(path))

    status = page.locator(".result .status.error")
    expect(status).to_contain_text("HTTP 415")
    expect(status).to_contain_text("not a recognised image")
    # The failed upload is the only console error (the browser logs the 415 itself).
    assert all("415" in problem for problem in problems)


def test_a_too_small_image_names_the_pages_own_option(site, tmp_path):
    _, page, problems = site
    path = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10), (200, 30, 30)).save(path)

    page.set_input_files("#file-input", str(path))

    status = page.locator(".result .status.error")
    expect(status).to_contain_text("HTTP 422")
    expect(status).to_contain_text("On this page: choose “one centre crop; smaller images padded”")
    page.select_option("#view-select", "pad")
    page.set_input_files("#file-input", str(path))
    expect(page.locator(".result").first.locator(".verdict")).to_be_visible()
    assert all("422" in problem for problem in problems)
