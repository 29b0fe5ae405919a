"""benchmarks/train_throughput.py: one step per optimizer runs, and rounds are summarised by their median."""

from __future__ import annotations

from conftest import load_benchmark

train_throughput = load_benchmark("train_throughput")


def test_a_fused_and_a_foreach_step_both_run_and_report():
    for optimizer in ("fused", "foreach"):
        row = train_throughput.measure(
            "cnn-pixel", 32, 2, "channels_last", "fp32", optimizer, warmup=1, repeats=1
        )
        assert row["images_per_s"] > 0 and len(row["step_ms_all"]) == 1, optimizer


def test_rounds_report_the_median_round_and_the_target():
    def run(rate):
        return {
            "variant": "xception-dct-mask",
            "size": 128,
            "precision": "bf16",
            "warmup": 2,
            "images_per_s": rate,
            "achieved_gflops_per_s": rate * 10,
            "step_gflops_per_image": 10.0,
        }

    rounds = [run(29.0), {"error": "killed", "warmup": 2}, run(31.0), run(30.5)]
    row = train_throughput.summarise(rounds, {"bf16": 400.0})
    assert row["images_per_s"] == 30.5 and row["images_per_s_rounds"] == [29.0, None, 31.0, 30.5]
    assert row["meets_target"] and row["target_images_per_s"] == 30 and "warmup" not in row
    assert row["images_per_s_at_matmul_rate"] == 40.0 and row["share_of_matmul_rate"] == 0.76
    failed = train_throughput.summarise([{"error": "killed", "warmup": 2}], {"bf16": 400.0})
    assert failed == {"error": "killed"}
