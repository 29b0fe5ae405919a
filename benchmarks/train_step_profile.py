"""Where one training step's CPU time goes, by kind of operation; prints JSON on stdout.

The step is `train_throughput.py`'s (forward, cross-entropy, backward, fused Adam on a fixed batch of random
images, channels_last, freed memory kept as `train` keeps it). After --warmup steps, --steps steps run under
torch.profiler, and every operator's self time is put in one group:

  conv_forward / conv_backward                 convolutions other than depthwise, and their gradients
  depthwise_forward / depthwise_backward       convolutions with one input channel per filter
  batchnorm                                    BatchNorm forward and backward
  activation                                   ReLU / ReLU6 (clamp) / sigmoid and their backward
  pooling                                      max / average pooling and their backward
  optimizer                                    the Adam step
  copy_and_cast                                copies, fills, allocations, dtype casts and layout changes
  other                                        everything else (linear layers, the stems, loss, ...)

Shares are of the total self CPU time of the profiled steps (both threads' work counted once per operator,
as the profiler records it). Also the operator shapes that cost most, so that a slow kernel shows by name.

    python benchmarks/train_step_profile.py --variant effnet-pixel --size 64
    python benchmarks/train_step_profile.py --variant xception-dct-mask --size 128 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# Groups recognised by a part of the operator's name; then copies by their whole name ("to" is too short a
# part: it would catch other names).
NAME_PARTS = {
    "batchnorm": ("batch_norm",),
    "activation": ("relu", "hardtanh", "threshold", "sigmoid", "clamp", "silu"),
    "pooling": ("pool",),
    "optimizer": ("adam",),
}
COPY_AND_CAST = {"copy_", "_to_copy", "to", "fill_", "zero_", "contiguous", "clone", "empty"}
COPY_AND_CAST |= {"empty_strided", "resize_", "as_strided"}


def group_of(name: str, input_shapes: list) -> str:
    """The group of one operator (its name, e.g. aten::relu_, and its inputs' shapes)."""
    if name in ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::thnn_conv2d"):
        weight = input_shapes[2] if name == "aten::convolution_backward" else input_shapes[1]
        depthwise = len(weight) == 4 and weight[1] == 1 and weight[0] > 1
        direction = "backward" if name == "aten::convolution_backward" else "forward"
        return f"{'depthwise' if depthwise else 'conv'}_{direction}"
    short = name.removeprefix("aten::").lower()
    for group, parts in NAME_PARTS.items():
        if any(part in short for part in parts):
            return group
    return "copy_and_cast" if short in COPY_AND_CAST else "other"


def profile_step(
    variant: str, size: int, batch_size: int, precision: str, warmup: int, steps: int, top: int
) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from animeprov.engine import keep_freed_memory

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import training_step

    keep_freed_memory()
    step, _ = training_step(variant, size, batch_size, "channels_last", precision, "fused")
    for _ in range(warmup):
        step()
    unprofiled = statistics.median([step() for _ in range(steps)])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        seconds = sum(step() for _ in range(steps))
    events = profiler.key_averages(group_by_input_shape=True)
    # Self time: an operator's own, without the operators it calls (an aten::convolution is a wrapper; its
    # kernel's time is the aten::mkldnn_convolution's below it), so the groups add up to the whole.
    total = sum(event.self_cpu_time_total for event in events)
    shares: dict[str, float] = defaultdict(float)
    for event in events:
        shares[group_of(event.key, event.input_shapes)] += event.self_cpu_time_total / total
    costly = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return {
        "variant": variant,
        "size": size,
        "batch_size": batch_size,
        "precision": precision,
        "profiled_steps": steps,
        # the profiler's own cost: compare the two before trusting the shares of small operators
        "step_ms_median_without_profiler": round(1000 * unprofiled, 1),
        "step_ms_mean_under_profiler": round(1000 * seconds / steps, 1),
        "shares": {group: round(share, 3) for group, share in sorted(shares.items(), key=lambda g: -g[1])},
        "costliest_operators": [
            {
                "operator": event.key,
                "input_shapes": ["x".join(map(str, shape)) for shape in event.input_shapes if shape],
                "calls_per_step": event.count // steps,
                "ms_per_step": round(event.self_cpu_time_total / 1000 / steps, 2),
                "share": round(event.self_cpu_time_total / total, 3),
            }
            for event in costly
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="effnet-pixel", help="a variant of `animeprov models`")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--top", type=int, default=12, help="costliest operators (by shape) listed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    report = profile_step(
        args.variant, args.size, args.batch_size, args.precision, args.warmup, args.steps, args.top
    )
    machine = {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__}
    print(json.dumps({"machine": {**machine, "python": platform.python_version()}, **report}, indent=1))


if __name__ == "__main__":
    main()
