"""benchmarks/train_step_profile.py: operators fall in their group; a profiled step's shares add up."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

train_step_profile = load_benchmark("train_step_profile")


@pytest.mark.parametrize(
    ("name", "shapes", "group"),
    [
        ("aten::convolution_backward", [[2, 8, 4, 4], [2, 8, 4, 4], [8, 1, 3, 3]], "depthwise_backward"),
        ("aten::convolution_backward", [[2, 8, 4, 4], [2, 4, 4, 4], [8, 4, 1, 1]], "conv_backward"),
        ("aten::mkldnn_convolution", [[2, 8, 4, 4], [8, 1, 5, 5]], "depthwise_forward"),
        ("aten::mkldnn_convolution", [[2, 3, 4, 4], [1, 3, 3, 3]], "conv_forward"),  # one filter, 3 channels
        ("aten::native_batch_norm_backward", [[2, 8, 4, 4]], "batchnorm"),
        ("aten::threshold_backward", [[2, 8]], "activation"),
        ("aten::clamp", [[2, 8]], "activation"),
        ("aten::max_pool2d_with_indices_backward", [[2, 8]], "pooling"),
        ("aten::_fused_adam_", [], "optimizer"),
        ("aten::copy_", [[2, 8], [2, 8]], "copy_and_cast"),
        ("aten::to", [[2, 8]], "copy_and_cast"),
        ("aten::addmm", [[8], [2, 4], [4, 8]], "other"),
        ("aten::stack", [[2, 8]], "other"),
    ],
)
def test_group_of(name, shapes, group):
    assert train_step_profile.group_of(name, shapes) == group


def test_a_small_cnn_step_is_profiled_and_its_shares_add_up():
    report = train_step_profile.profile_step("cnn-pixel", 32, 4, "fp32", warmup=1, steps=2, top=3)
    shares = report["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    assert shares["conv_backward"] > 0 and shares["conv_forward"] > 0
    assert shares.get("depthwise_backward", 0) == 0  # the small CNN has no depthwise convolutions
    assert len(report["costliest_operators"]) == 3 and report["step_ms_median_without_profiler"] > 0
    assert all(operator["calls_per_step"] >= 1 for operator in report["costliest_operators"])
