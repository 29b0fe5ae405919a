"""benchmarks/gpu_check.py: its CPU smoke path, its no-GPU answer, and that its DCT check can fail."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from animeprov.transforms.dct import dct2


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def _run(gpu_check, monkeypatch, capsys, *args: str) -> tuple[int, dict]:
    monkeypatch.setattr("sys.argv", ["gpu_check.py", *args])
    status = gpu_check.main()
    return status, json.loads(capsys.readouterr().out)


def test_without_a_gpu_it_says_so_and_succeeds(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"cuda": False}
    assert "no CUDA device" in captured.err


def test_cpu_smoke_run_trains_every_requested_variant(gpu_check, monkeypatch, capsys):
    variants = ["cnn-pixel", "cnn-dct-mask"]
    status, report = _run(
        gpu_check,
        monkeypatch,
        capsys,
        "--device=cpu",
        "--size=64",
        "--steps=2",
        "--batch-size=2",
        "--variants",
        *variants,
    )
    assert status == 0 and report["ok"] and report["cuda"] is False
    assert report["amp_dtype"] == "torch.float32" and report["torch"] == torch.__version__
    assert [row["variant"] for row in report["variants"]] == variants
    for row in report["variants"]:
        assert len(row["losses"]) == 2 and np.isfinite(row["losses"]).all()
        assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
    assert report["dct"]["stem_in_training_precision"]["backend"] == "matrix"


def test_stem_keeps_float32_under_reduced_precision_autocast(gpu_check):
    cpu = torch.device("cpu")
    full = gpu_check.check_dct(cpu, 64, "fp32")
    assert full["dct_fp32"]["ok"] and full["dct_fp32"]["max_relative_error"] < 1e-6
    assert full["stem_in_training_precision"]["ok"]
    # Inside bfloat16 autocast (what AMP does on CUDA) the stem opts out and still matches scipy ...
    reduced = gpu_check.check_dct(cpu, 64, "bf16")
    assert reduced["stem_in_training_precision"]["ok"]
    assert reduced["stem_in_training_precision"]["max_deviation_in_std"] < 0.2
    # ... while the bare matrix DCT under that autocast really is degraded, so the check has teeth.
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        degraded = dct2(x, "matrix").float()
    assert (degraded - dct2(x, "scipy")).abs().max() > 1e-3
    error = gpu_check.relative_error(degraded.double().numpy(), dct2(x, "scipy").double().numpy())
    assert error > gpu_check.DCT_FP32_TOLERANCE
