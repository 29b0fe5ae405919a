"""ONNX export: onnxruntime agrees with PyTorch, metadata is complete, bad runs fail clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from animeprov.checkpoint import load_model, save_weights, write_config
from animeprov.cli import app
from animeprov.evaluation.calibration import Calibration, load_calibration, save_calibration
from animeprov.export import PARITY_TOLERANCE, export_onnx, parity_images, read_metadata
from animeprov.models import create_model
from animeprov.transforms.dct import dct2
from animeprov.transforms.stem import fit_stem_statistics

SIZE = 32


CLASSES = ["gen-a", "gen-b", "human"]
TEMPERATURE = 1.7
DETECTION_TEMPERATURE = 0.6
DETECTION_SHIFT = -1.3


def handmade_run(run: Path, variant: str) -> Path:
    """An untrained run (training Xception on CPU takes ~10 s a step): stem statistics fitted on noise,
    BatchNorm statistics from a few forward passes, and the head scaled so the largest |logit| on those
    images is 4: fresh models' logits are ~0.01, too small for a numerical difference to show."""
    torch.manual_seed(0)
    model = create_model(variant, len(CLASSES), SIZE)
    images = torch.rand(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    fit_stem_statistics(model.stem, [images])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images)
        model.eval()
        head = model.backbone.head[-1]
        scale = 4 / model(images).abs().max()
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    save_weights(model, run / "model.safetensors")
    write_config(run, {"variant": variant, "classes": CLASSES, "size": SIZE, "human_class": "human"})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """cnn-dct-mask with a calibration.json (temperatures 1.7, 0.6, shift -1.3) and xception-dct-mask
    without, 32 px."""
    root = tmp_path_factory.mktemp("export")
    cnn = handmade_run(root / "cnn-dct-mask", "cnn-dct-mask")
    calibration = Calibration(
        class_names=CLASSES,
        human_class="human",
        temperature=TEMPERATURE,
        detection_temperature=DETECTION_TEMPERATURE,
        detection_shift=DETECTION_SHIFT,
        ai_threshold=0.9,
        artist_threshold=0.2,
        unknown_threshold=0.5,
        target_fpr=0.01,
        target_fnr=0.05,
        known_pass_rate=0.95,
    )
    save_calibration(cnn, calibration)
    return {
        "cnn-dct-mask": cnn,
        "xception-dct-mask": handmade_run(root / "xception-dct-mask", "xception-dct-mask"),
    }


@pytest.mark.parametrize("variant", ["cnn-dct-mask", "xception-dct-mask"])
def test_onnx_matches_pytorch_and_carries_its_metadata(runs, variant, tmp_path):
    run = runs[variant]
    result = export_onnx(run, tmp_path / "model.onnx")
    parity = result.parity
    assert parity["ok"] and parity["max_abs_prob_diff"] <= PARITY_TOLERANCE
    assert parity["max_abs_logit_diff"] <= 1e-3  # the exporter alone: same mathematics on both sides
    # Against the CPU prediction path (scipy DCT) the flat parity images add the two DCTs' float32 rounding,
    # amplified by log|c| at exactly-zero coefficients (docs/export.md); noise images: 1e-4 below.
    assert parity["prediction_path_max_abs_prob_diff"] <= 1e-3
    assert parity["batches"] == [1, 7]

    # An independent check on other inputs, at a third batch size (the batch axis is dynamic).
    model, config = load_model(run)
    calibration = load_calibration(run)
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"images": images.numpy()})
    with torch.no_grad():
        expected_logits = model(images)
    assert expected_logits.abs().max() > 1, "logits this small would hide numerical differences"
    expected = torch.softmax(expected_logits.double(), dim=1).numpy()
    if calibration is not None:  # the graph computes what `animeprov predict` computes, in numpy there
        expected = calibration.probabilities(expected)
    assert logits.shape == probabilities.shape == (5, len(CLASSES))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=0, atol=1e-3)

    metadata = read_metadata(result.path)
    assert metadata == result.metadata
    assert json.loads(metadata["classes"]) == config["classes"] == CLASSES
    assert metadata["human_class"] == "human"
    assert metadata["variant"] == variant and metadata["size"] == str(SIZE)
    if variant == "cnn-dct-mask":
        assert metadata["calibrated"] == "true" and float(metadata["temperature"]) == TEMPERATURE
        assert float(metadata["detection_temperature"]) == DETECTION_TEMPERATURE
        assert float(metadata["detection_shift"]) == DETECTION_SHIFT
        assert json.loads(metadata["calibration"])["ai_threshold"] == calibration.ai_threshold
    else:
        assert calibration is None
        assert metadata["calibrated"] == "false" and metadata["temperature"] == "1.0"
        assert "calibration" not in metadata


def test_parity_inputs_include_flat_images_whose_dct_is_mostly_zeros():
    images = parity_images(SIZE)
    assert len(images) == 8 and images.min() >= 0 and images.max() <= 1
    near_zero = (dct2(images, "scipy").abs() < 1e-5).float().mean(dim=(1, 2, 3))
    assert (near_zero[:4] < 0.01).all() and (near_zero[4:] > 0.2).all()


def test_export_leaves_the_dct_cache_usable(runs, tmp_path):
    # The export traces the matrix DCT; a tracer tensor left in the matrix cache would break this call.
    export_onnx(runs["cnn-dct-mask"], tmp_path / "model.onnx", check=False)
    x = torch.rand(1, 3, SIZE, SIZE, requires_grad=True)
    dct2(x, "matrix").sum().backward()
    assert type(x.grad) is torch.Tensor


def test_cli_exports_prints_parity_and_refuses_bad_runs(runs, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    shutil.copytree(runs["cnn-dct-mask"], run)
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(run), "--onnx", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity onnxruntime vs PyTorch on 8 images" in result.output
    assert "max |probability diff|" in result.output and "CPU prediction path (scipy DCT)" in result.output
    assert read_metadata(out)["temperature"] == str(TEMPERATURE)
    pixel = handmade_run(tmp_path / "pixel", "cnn-pixel")  # no DCT: nothing computes one differently
    printed = runner.invoke(app, ["export", str(pixel), "--onnx", str(tmp_path / "pixel.onnx")]).output
    assert "CPU prediction path:" in printed and "scipy" not in printed

    def refused(run_folder: Path, onnx_name: str) -> str:
        outcome = runner.invoke(app, ["export", str(run_folder), "--onnx", str(tmp_path / onnx_name)])
        assert outcome.exit_code == 2 and "error:" in outcome.output
        assert not (tmp_path / onnx_name).exists()
        return " ".join(outcome.output.split())

    assert "not a run folder" in refused(tmp_path / "nowhere", "a.onnx")
    stale = json.loads((run / "calibration.json").read_text())
    stale["class_names"] = ["gen-a", "gen-c", "human"]
    (run / "calibration.json").write_text(json.dumps(stale))
    assert "run `animeprov calibrate` again" in refused(run, "b.onnx")
    (run / "model.safetensors").unlink()
    assert "no such checkpoint file" in refused(run, "c.onnx")


def test_calibration_fitted_for_other_weights_is_refused(runs, tmp_path):
    """Its temperature and thresholds belong to other weights: exporting them with these would be wrong."""
    from animeprov.evaluation.calibration import StaleCalibrationError
    from animeprov.io import sha256_file

    run = tmp_path / "run"
    shutil.copytree(runs["cnn-dct-mask"], run)
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["source"] = {
        "weights": "model.safetensors",
        "weights_sha256": sha256_file(run / "model.safetensors"),
    }
    (run / "calibration.json").write_text(json.dumps(calibration))
    shutil.copy(run / "model.safetensors", run / "other.safetensors")
    with pytest.raises(StaleCalibrationError, match="fitted for model.safetensors"):
        export_onnx(run, tmp_path / "other.onnx", weights="other.safetensors", check=False)
    assert not (tmp_path / "other.onnx").exists()
