"""Training throughput (images/s) of the six variants on this machine's CPU; prints JSON on stdout.

One training step = forward (stem, CBAM, backbone) + cross-entropy + backward + Adam step on a batch of random
[0, 1] images; the median of --repeats timed steps after --warmup steps is reported. Each configuration runs
in its own subprocess, so its peak RSS and allocator state are its own. Dimensions measured:

  memory format  channels_last (what the engine uses) against contiguous NCHW, the baseline
  allocator      default    glibc malloc as configured by default
                 glibc-keep GLIBC_TUNABLES: never mmap, never trim, so memory freed by one step is reused
                            by the next instead of being returned to the kernel and page-faulted in again
                 mallopt-keep  the same set from inside the process (ctypes mallopt), no environment needed
                 jemalloc   LD_PRELOAD of Debian's libjemalloc2 with decay disabled (only if installed)
  precision      fp32, or bf16 (torch.autocast on CPU; the DCT stem stays float32)
  optimizer      fused  Adam as `train` builds it, one fused kernel per step
                 foreach   Adam's multi-tensor form, the baseline (PyTorch's default before `train` fused it)

Against what the cores can do at all: the machine's matrix-multiply rate (2048 x 2048, fp32 and bf16, the
same threads) and, per row, the step's FLOPs (3 x `forward_flops`: the backward pass computes gradients for
inputs and weights, each about a forward's work), the rate achieved and the images/s that the matmul rate
would allow: a target above that ceiling cannot be met by a faster pipeline, only by fewer FLOPs.

Examples:
    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --variants cnn-dct-mask --sizes 256 512 --repeats 7
    python benchmarks/train_throughput.py --variants cnn-dct-mask --mallocs default mallopt-keep \\
        --formats channels_last --precisions fp32 bf16
    python benchmarks/train_throughput.py --variants xception-dct-mask --formats channels_last \\
        --mallocs mallopt-keep --precisions bf16 --optimizers foreach fused
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
JEMALLOC_CONF = (
    "oversize_threshold:0,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
)
MALLOC_ENVS = {
    "default": {},
    "glibc-keep": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"},
    "mallopt-keep": {"ANIMEPROV_BENCH_MALLOPT": "1"},
    "jemalloc": {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": JEMALLOC_CONF},
}
# Targets, training images/s with 2 CPU threads: the brief's for cnn-dct-mask, issue "Speed"'s for xception
# and for the default recipe's network (150 source images/s at 256 px x 4 patches of 64 px = 600 patches/s,
# before any decoding or augmentation).
TARGETS = {
    ("cnn-dct-mask", 256): 100,
    ("cnn-dct-mask", 512): 25,
    ("xception-dct-mask", 128): 30,
    ("effnet-pixel", 64): 600,
}
# per backbone: the paper's sizes for cnn and xception, the recipes' 64 px patches for the others
DEFAULT_SIZES = {"cnn": [256, 512], "xception": [128]}
OTHER_SIZES = [64]


def training_step(
    variant: str, size: int, batch_size: int, memory_format: str, precision: str, optimizer: str
):
    """(step, forward FLOPs per image): `step()` runs one training step on a fixed batch of random [0, 1]
    images and returns its seconds."""
    import torch
    from torch import nn

    from animeprov.models import create_model
    from animeprov.models.registry import forward_flops
    from animeprov.transforms.stem import fit_stem_statistics

    torch.manual_seed(0)
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    model = create_model(variant, 5, size)
    flops = forward_flops(model)
    images = torch.rand(batch_size, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.randint(0, 5, (batch_size,))
    fit_stem_statistics(model.stem, [images])
    model = model.to(memory_format=fmt).train()
    adam = torch.optim.Adam(model.parameters(), lr=1e-4, fused=optimizer == "fused" or None)

    def step() -> float:
        start = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        adam.step()
        return time.perf_counter() - start

    return step, flops


def measure(
    variant: str,
    size: int,
    batch_size: int,
    memory_format: str,
    precision: str,
    optimizer: str,
    warmup: int,
    repeats: int,
) -> dict:
    """Runs in the child process: time `repeats` training steps after `warmup` steps."""
    if os.environ.get("ANIMEPROV_BENCH_MALLOPT"):
        from animeprov.engine import keep_freed_memory

        keep_freed_memory()
    step, flops = training_step(variant, size, batch_size, memory_format, precision, optimizer)
    step_flops = 3 * flops
    for _ in range(warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = [step() for _ in range(repeats)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(seconds)
    cpu_seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "images_per_s": round(batch_size / median, 1),
        "step_gflops_per_image": round(step_flops / 1e9, 3),
        "achieved_gflops_per_s": round(batch_size / median * step_flops / 1e9, 1),
        "step_ms_median": round(1000 * median, 1),
        "step_ms_all": [round(1000 * s, 1) for s in seconds],
        # CPU time / wall time: close to the thread count when the cores are ours, lower when something else
        # competes for them (then the numbers are not trustworthy).
        "cpu_utilisation": round(cpu_seconds / sum(seconds), 2),
        "kernel_time_share": round((after.ru_stime - before.ru_stime) / cpu_seconds, 2),
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) // repeats,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def matmul_gflops(precision: str, side: int = 2048, repeats: int = 7) -> float:
    """The median rate of a side x side matrix product: about the most a conv network's step can reach."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(side, side).to(dtype), torch.randn(side, side).to(dtype)
    for _ in range(2):
        a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return round(2 * side**3 / statistics.median(seconds) / 1e9, 1)


def run_child(config: dict, threads: int, malloc: str) -> dict:
    env = {**os.environ, **MALLOC_ENVS[malloc], "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", json.dumps(config), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {done.returncode}"}
    return json.loads(done.stdout)


def summarise(runs: list[dict], peak: dict[str, float]) -> dict:
    """One configuration's row: its median round, every round's images/s, the share of the matmul rate and
    the target where one is set."""
    done = sorted((run for run in runs if "images_per_s" in run), key=lambda run: run["images_per_s"])
    row = {**(done[(len(done) - 1) // 2] if done else runs[-1])}
    del row["warmup"]
    if not done:
        return row
    row["images_per_s_rounds"] = [run.get("images_per_s") for run in runs]
    row["share_of_matmul_rate"] = round(row["achieved_gflops_per_s"] / peak[row["precision"]], 2)
    row["images_per_s_at_matmul_rate"] = round(peak[row["precision"]] / row["step_gflops_per_image"], 1)
    target = TARGETS.get((row["variant"], row["size"]))
    if target is not None:
        row["target_images_per_s"] = target
        row["meets_target"] = row["images_per_s"] >= target
    return row


def main() -> None:
    from animeprov.config import VARIANTS, get_variant

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        help="these sizes for every variant (default: cnn 256 and 512, xception 128)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed steps per configuration (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every configuration, interleaved (median reported)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["channels_last", "contiguous"],
        choices=["channels_last", "contiguous"],
    )
    parser.add_argument("--mallocs", nargs="+", default=["default"], choices=list(MALLOC_ENVS))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--optimizers", nargs="+", default=["fused"], choices=["fused", "foreach"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return

    mallocs = [m for m in args.mallocs if m != "jemalloc" or JEMALLOC.exists()]
    peak = {precision: matmul_gflops(precision) for precision in args.precisions}
    grid = [
        (variant, size, malloc, precision, optimizer, memory_format)
        for variant in args.variants
        for size in args.sizes or DEFAULT_SIZES.get(get_variant(variant).backbone, OTHER_SIZES)
        for malloc, precision, optimizer, memory_format in itertools.product(
            mallocs, args.precisions, args.optimizers, args.formats
        )
    ]
    # Every configuration once per round, rounds one after another: a slow spell of a noisy machine then
    # touches every configuration alike, and the median round is reported.
    rounds: dict[tuple, list[dict]] = {key: [] for key in grid}
    for _ in range(args.rounds):
        for key in grid:
            variant, size, malloc, precision, optimizer, memory_format = key
            config = dict(
                variant=variant,
                size=size,
                batch_size=args.batch_size,
                memory_format=memory_format,
                precision=precision,
                optimizer=optimizer,
                warmup=args.warmup,
                repeats=args.repeats,
            )
            run = {**config, "malloc": malloc, **run_child(config, args.threads, malloc)}
            print(json.dumps(run), file=sys.stderr, flush=True)  # progress
            rounds[key].append(run)
    results = [summarise(runs, peak) for runs in rounds.values()]

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": args.threads,
            "matmul_gflops_per_s": peak,
            "jemalloc_available": JEMALLOC.exists(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
