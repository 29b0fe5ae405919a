"""benchmarks/predict_throughput.py: pipeline names -> the `predict` options they stand for."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark

throughput = load_benchmark("predict_throughput")


def test_pipeline_names_read_base_budget_precision_and_backend():
    parse = throughput.parse_pipeline
    assert parse("default") == ("default", "auto", None, "torch")
    assert parse("default_no_stability_tiles16_bf16") == ("default_no_stability", "bf16", 16, "torch")
    assert parse("default_no_stability_tiles16_onnx") == ("default_no_stability", "auto", 16, "onnx")
    with pytest.raises(ValueError, match="unknown pipeline 'default_fast'"):
        parse("default_fast")
    for name in throughput.PIPELINES:
        parse(name)


def test_pipeline_args_are_the_predict_options():
    baseline = Path("runs/baseline")
    assert throughput.pipeline_args("default", baseline) == []
    assert throughput.pipeline_args("default_no_stability_tiles16_onnx", baseline) == [
        "--no-stability",
        "--max-tiles",
        "16",
        "--backend",
        "onnx",
    ]
    assert throughput.pipeline_args("baseline_bf16", baseline) == [
        "runs/baseline",
        "--no-stability",
        "--precision",
        "bf16",
    ]
