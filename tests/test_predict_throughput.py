"""benchmarks/predict_throughput.py: pipeline names -> the `predict` options and Predictor they stand for."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark

from animeprov.predict import STABILITY_CHECKS

throughput = load_benchmark("predict_throughput")


def test_pipeline_args_are_the_predict_options():
    baseline = Path("runs/baseline")
    assert throughput.pipeline_args("default", baseline) == []
    assert throughput.pipeline_args("previous_default", baseline) == [
        "--max-tiles",
        "0",
        "--stability",
        "--backend",
        "torch",
    ]
    assert throughput.pipeline_args("baseline", baseline) == ["runs/baseline", "--backend", "torch"]
    with pytest.raises(ValueError, match="unknown pipeline 'default_fast'"):
        throughput.pipeline_args("default_fast", baseline)
    assert set(throughput.COMPARED_WITH) | set(throughput.COMPARED_WITH.values()) <= set(throughput.PIPELINES)


def test_each_pipeline_builds_the_predictor_its_options_ask_for():
    built = {name: throughput.make_predictor(name, Path()) for name in ("previous_default", "default_bf16")}
    old = built["previous_default"]
    assert (old.max_tiles, old.checks, old.backend, old.precision) == (
        None,
        STABILITY_CHECKS,
        "torch",
        "auto",
    )
    bf16 = built["default_bf16"]
    assert (bf16.max_tiles, bf16.checks, bf16.backend, bf16.precision) == (16, (), "torch", "bf16")
