"""`animeprov enroll`: a class from a few images; frozen backbone, a new run, the old one untouched."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from animeprov.checkpoint import load_model, read_config
from animeprov.cli import app
from animeprov.enroll import ENROLLMENT_FILE, EnrollError, HeadFit, enroll
from animeprov.predict import Predictor

runner = CliRunner()
CLASSES = ("human", "gen-a", "gen-b", "gen-c")


def write_periodic_split(root: Path, per_class: int = 20, size: int = 32, seed: int = 3) -> Path:
    """Smooth random drawings; each generator class adds its own periodic ripple (a spectral peak, as an
    upsampling decoder leaves), so a few seconds of training give features that tell the classes apart."""
    rng = np.random.default_rng(seed)
    ripples = {"human": None, "gen-a": (8, 0), "gen-b": (0, 8), "gen-c": (8, 8)}
    y, x = np.mgrid[0:size, 0:size]
    rows, splits = [], ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for name, ripple in ripples.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = Image.fromarray(rng.integers(30, 220, (4, 4, 3), dtype=np.uint8))
            pixels = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
            pixels = pixels + rng.normal(0, 4, pixels.shape)
            if ripple:
                pixels += 12 * np.cos(2 * np.pi * (ripple[0] * x + ripple[1] * y) / size)[..., None]
            path = root / name / f"{i:03d}.png"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
            rows.append(
                {
                    "path": f"{name}/{path.name}",
                    "class": name,
                    "group": f"{name}-{i}",
                    "split": splits[i % 10],
                }
            )
    with open(root / "split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "split.csv"


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run trained on human, gen-a, gen-b; gen-c's 20 images are left out to be enrolled."""
    from animeprov.train import TrainConfig, train

    root = tmp_path_factory.mktemp("enroll")
    split = write_periodic_split(root / "data")
    with open(split, newline="") as handle:
        rows = list(csv.DictReader(handle))
    old = root / "data" / "old.csv"
    with open(old, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for row in rows if row["class"] != "gen-c")
    config = TrainConfig(data=str(old), variant="cnn-dct-mask", size=32, epochs=6, batch_size=8, seed=0)
    train(config, root / "run")
    new_images = sorted((root / "data" / "gen-c").glob("*.png"))
    return root, root / "run", new_images


@pytest.fixture(scope="module")
def enrolled(setup):
    root, run, images = setup
    before = folder_digest(run)
    result = enroll(run, "gen-c", images[:10], root / "new-run")
    return result, before


def test_new_run_has_the_class_records_it_and_leaves_the_old_run_alone(setup, enrolled):
    root, run, images = setup
    result, before = enrolled
    assert folder_digest(run) == before  # not a byte of the old run changed
    config = read_config(result.run)
    assert config["classes"] == [*read_config(run)["classes"], "gen-c"]
    record = json.loads((result.run / ENROLLMENT_FILE).read_text())["enrollments"][-1]
    assert record["class"] == "gen-c" and record["enrolled_at"].endswith("+00:00")
    assert [f["sha256"] for f in record["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in images[:10]
    ]
    assert (
        record["from_weights_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    )
    calibration = json.loads((result.run / "calibration.json").read_text())
    assert calibration["class_names"] == config["classes"]

    # "row": the old classes' rows of the head and the whole backbone are exactly the old ones.
    old_model, _ = load_model(run)
    new_model, _ = load_model(result.run)
    old_state, new_state = old_model.state_dict(), new_model.state_dict()
    for key, value in old_state.items():
        if key.startswith("backbone.head"):
            assert torch.equal(new_state[key][: len(value)], value)
        else:
            assert torch.equal(new_state[key], value), key


def test_predict_uses_the_grown_head_as_enroll_fitted_it(setup, enrolled, tmp_path):
    """Predict's attributions of the enrolled images equal enroll's own fit (same views, same tile rule):
    the head written to disk is the one fitted. (How well a class is learned is measured on real models
    in docs/results/enroll.md; this run trains for seconds, and HeadFit's learning is tested on toy
    features below.)"""
    root, run, images = setup
    result, _ = enrolled
    # Enroll's fit accuracy is the argmax of the model's own softmax; calibration moves P(human) with the
    # detection temperature, so compare on a copy of the run without calibration.json.
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(result.run, uncalibrated)
    (uncalibrated / "calibration.json").unlink()
    raw = list(Predictor.from_checkpoint(uncalibrated, device="cpu").predict_many(map(str, images[:10])))
    share = np.mean([max(p.probabilities, key=p.probabilities.get) == "gen-c" for p in raw])
    assert share == pytest.approx(result.record["fit_accuracy_new_class"]) and share >= 0.8
    predictor = Predictor.from_checkpoint(result.run, device="cpu")
    fitted = list(predictor.predict_many(map(str, images[:10])))
    assert all(p.verdict in ("ai", "unsure", "artist") for p in fitted)  # calibrated: verdicts, not None
    assert predictor.familiarity is not None and len(predictor.familiarity.means) == 4  # refitted, not stale
    calibration = json.loads((result.run / "calibration.json").read_text())
    assert calibration["source"]["enrolled_class"] == "gen-c"
    assert calibration["measured"]["n_images"] == 3 * 4 + 10  # old val split (4 per class) + 10 out-of-fold


def test_enrolled_run_is_served_and_exported(setup, enrolled, tmp_path):
    from animeprov.export import export_onnx
    from animeprov.serve import create_app

    result, _ = enrolled
    with TestClient(create_app(result.run, device="cpu")) as client:
        model = client.get("/v1/model").json()
        assert model["classes"][-1] == "gen-c"
        buffer = io.BytesIO()
        Image.open(setup[2][12]).save(buffer, format="PNG")
        answer = client.post("/v1/predict", files={"file": ("x.png", buffer.getvalue(), "image/png")})
        assert answer.status_code == 200 and set(answer.json()["probabilities"]) == set(CLASSES)
    exported = export_onnx(result.run, tmp_path / "enrolled.onnx")
    assert exported.parity["ok"] and "gen-c" in json.dumps(exported.metadata)

    # ... and the command line's predict takes it.
    out = runner.invoke(
        app, ["predict", str(result.run), str(setup[2][15]), "--format", "jsonl", "--device", "cpu"]
    )
    assert out.exit_code == 0 and '"gen-c"' in out.stdout


def test_head_method_moves_old_rows_but_keeps_the_backbone(setup, tmp_path):
    root, run, images = setup
    result = enroll(run, "gen-c", images[:6], tmp_path / "head", method="head")
    old, _ = load_model(run)
    new, _ = load_model(result.run)
    new_state = new.state_dict()
    for key, value in old.state_dict().items():
        if not key.startswith("backbone.head"):
            assert torch.equal(new_state[key], value), key  # stem statistics, CBAM, convolutions
    assert not torch.equal(old.backbone.head[-1].weight, new.backbone.head[-1].weight[:3])


def test_fit_separates_a_new_cluster_and_keeps_old_rows():
    """HeadFit on toy features: a new class with its own direction is learned; old rows stay put."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 50)) * 3
    labels = np.repeat([0, 1, 2, 3], [40, 40, 40, 6])
    features = torch.tensor(centres[labels] + rng.normal(size=(len(labels), 50)), dtype=torch.float32)
    weight = torch.tensor(centres[:3], dtype=torch.float32) / 3
    bias = torch.zeros(3)
    fit = HeadFit(weight, bias, features, n_reference=120)
    new_w, new_b = fit.fit(torch.tensor(labels))
    assert torch.allclose(new_w[:3], weight, atol=1e-5) and torch.allclose(new_b[:3], bias, atol=1e-5)
    test = torch.tensor(centres[3] + rng.normal(size=(20, 50)), dtype=torch.float32)
    assert ((test @ new_w.T + new_b).argmax(1) == 3).float().mean() >= 0.9


@pytest.mark.parametrize(
    ("name", "count", "message"),
    [
        ("gen-c", 4, "too few images: 4 distinct; enrolling a class needs at least 5"),
        ("gen-a", 6, "the run already has this class"),
        ("GEN-B", 6, "the run already has this class"),
        ("unknown", 6, "reserved for the 'unknown generator' outcome"),
        ("a/b", 6, "use 1-64 letters"),
    ],
)
def test_bad_names_and_counts_are_refused(setup, tmp_path, name, count, message):
    root, run, images = setup
    with pytest.raises(EnrollError, match=message.replace("(", r"\(").replace(")", r"\)")):
        enroll(run, name, images[:count], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicates_count_once_and_unreadable_files_are_named(setup, tmp_path):
    root, run, images = setup
    with pytest.raises(EnrollError, match=r"too few images: 4 distinct \(2 exact duplicate\(s\) dropped\)"):
        enroll(run, "gen-c", [*images[:4], images[0], images[1]], tmp_path / "out")
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:100])
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(EnrollError) as caught:
        enroll(run, "gen-c", [*images[:6], broken, text, tmp_path / "missing.png"], tmp_path / "out")
    message = str(caught.value)
    assert "3 unreadable image(s)" in message
    for path in (broken, text, tmp_path / "missing.png"):
        assert str(path) in message
    assert not (tmp_path / "out").exists()


def test_output_folder_and_reference_data_are_checked(setup, tmp_path):
    root, run, images = setup
    with pytest.raises(EnrollError, match="--out must differ from RUN"):
        enroll(run, "gen-c", images[:6], run)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(EnrollError, match="already exists and is not empty"):
        enroll(run, "gen-c", images[:6], busy)
    with pytest.raises(EnrollError, match="--data .*: no such file"):
        enroll(run, "gen-c", images[:6], tmp_path / "o", data=tmp_path / "none.csv")
    moved = tmp_path / "moved-run"
    moved.mkdir()
    for name in ("config.json", "model.safetensors"):
        (moved / name).write_bytes((run / name).read_bytes())
    config = json.loads((moved / "config.json").read_text())
    config["data"] = str(tmp_path / "gone" / "split.csv")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(EnrollError, match="which is not here: pass --data SPLIT.csv"):
        enroll(moved, "gen-c", images[:6], tmp_path / "o")


def test_cli_enrolls_and_reports_errors(setup, tmp_path):
    root, run, images = setup
    out = tmp_path / "cli-run"
    result = runner.invoke(
        app, ["enroll", str(run), *map(str, images[:5]), "--class", "gen-c", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "enrolled 'gen-c' from 5 images" in " ".join(result.output.split())
    assert read_config(out)["classes"][-1] == "gen-c"
    bad = runner.invoke(
        app, ["enroll", str(run), *map(str, images[:5]), "--class", "gen-a", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "already has this class" in " ".join(bad.output.split())
