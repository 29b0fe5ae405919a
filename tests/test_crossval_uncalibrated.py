"""benchmarks/crossval_uncalibrated.py: the model's own P(generated) recovered from stored predictions of
either calibration format."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark

from animeprov.evaluation.calibration import apply_temperature, calibrated_probabilities

CLASSES = ("gen-a", "gen-b", "human")


@pytest.fixture(scope="module")
def script():
    return load_benchmark("crossval_uncalibrated")


@pytest.mark.parametrize("raw", [[0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.01, 0.01, 0.98]])
def test_own_p_generated_is_recovered_from_either_format(script, raw):
    raw = np.array([raw])
    # format 1 stored softmax(log p / T); format 2 stored P(generated) with the detection temperature
    format_1 = dict(zip(CLASSES, apply_temperature(raw, 2.5)[0], strict=True))
    row_1 = {"probabilities": format_1, "p_generated": 1 - format_1["human"]}
    calibration_1 = {"format": 1, "human_class": "human", "temperature": 2.5}
    format_2 = calibrated_probabilities(raw, 2, 0.7, 1.8)[0]
    row_2 = {"probabilities": dict(zip(CLASSES, format_2, strict=True)), "p_generated": 1 - format_2[2]}
    calibration_2 = {"format": 2, "human_class": "human", "temperature": 0.7, "detection_temperature": 1.8}
    assert script.raw_p_generated(row_1, calibration_1) == pytest.approx(1 - raw[0, 2], abs=1e-9)
    assert script.raw_p_generated(row_2, calibration_2) == pytest.approx(1 - raw[0, 2], abs=1e-9)
    # and the format-1 value itself was pushed towards 2/3 by T = 2.5: what the script undoes
    assert abs(row_1["p_generated"] - 2 / 3) < abs((1 - raw[0, 2]) - 2 / 3)
