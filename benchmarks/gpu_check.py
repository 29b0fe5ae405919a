"""One short check of a CUDA machine (under 5 minutes on an H100); prints JSON on stdout.

For each variant, on synthetic images (no data files): a few training steps through the engine's
own loop (`train_one_epoch`: AMP, GradScaler, channels_last, non_blocking copies from pinned memory) must give
finite losses; then training and inference images/s at --size. Also checks the DCT on the device:

  dct_fp32        `dct2` in matrix form on the device against scipy.fft.dctn (float64): max |difference|
                  of the orthonormal coefficients of [0, 1] images, over the largest |coefficient| (the DC
                  term, up to size / 2): fp32 accumulation stays near 1e-6 of it, TF32 or bf16 near 1e-3;
  stem_in_training_precision
                  the DCT stem's normalised output, computed as training computes it (the automatic backend:
                  the matrix form for CUDA tensors, inside the engine's autocast), against the same stem
                  evaluated with scipy in float64: the share of values off by more than 0.05 (in units of
                  each coefficient's standard deviation, the scale the network sees).

Without a GPU it prints a message on stderr and {"cuda": false} on stdout, and exits 0. `--device cpu` runs
everything on the CPU instead (a smoke test: `--device cpu --size 64 --steps 2`); there the stem check forces
the matrix backend, since the automatic choice on CPU is scipy itself. Exit status 1 when a check fails.

    python benchmarks/gpu_check.py > docs/results/gpu_check_h100.json
    python benchmarks/gpu_check.py --device cpu --size 64 --steps 2 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import scipy.fft
import torch
from torch import nn

from animeprov.config import VARIANTS
from animeprov.data.dataset import Batch
from animeprov.engine import autocast, predict, prepare_model, train_one_epoch
from animeprov.models import create_model
from animeprov.transforms.dct import dct2
from animeprov.transforms.stem import DCTStem, fit_stem_statistics

NUM_CLASSES = 5
# Relative to the largest coefficient. fp32 matmuls over 512 terms: ~7e-7 measured on an H200 (an absolute
# 1e-4 failed there only because the DC term reaches 256); TF32 (10-bit mantissa) would give ~1e-3.
DCT_FP32_TOLERANCE = 1e-5
STEM_DEVIATION = 0.05  # in units of a coefficient's standard deviation
STEM_MAX_SHARE = 1e-3  # at most 0.1% of stem outputs may deviate that much


def synthetic_batches(count: int, batch_size: int, size: int, pin: bool, seed: int = 0) -> list[Batch]:
    """Random 8-bit-like images with random labels, in (pinned) CPU memory like a DataLoader's batches."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        images = torch.randint(0, 256, (batch_size, 3, size, size), generator=generator).float().div_(255)
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
        indices = torch.arange(i * batch_size, (i + 1) * batch_size)
        if pin:
            images, labels = images.pin_memory(), labels.pin_memory()
        batches.append(Batch(images=images, labels=labels, indices=indices, errors=[]))
    return batches


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_variant(
    variant: str, device: torch.device, size: int, batch_size: int, steps: int, precision: str
) -> dict:
    torch.manual_seed(0)
    pin = device.type == "cuda"
    batches = synthetic_batches(max(steps, 2), batch_size, size, pin)
    model = create_model(variant, NUM_CLASSES, size)
    fit_stem_statistics(model.stem, [batch.images for batch in batches[:2]])
    prepare_model(model, device)
    # fused, as `train` builds it since 2026-12-06 (docs/results/gpu-h200.md was measured with foreach)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and precision in ("auto", "fp16"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    losses = []
    for batch in batches[:steps]:  # one step per call, to see every step's loss
        result = train_one_epoch(
            model, [batch], optimizer, loss_fn, device, precision=precision, scaler=scaler
        )
        losses.append(result.loss)
    _synchronize(device)
    timed = train_one_epoch(model, batches, optimizer, loss_fn, device, precision=precision, scaler=scaler)
    predict(model, batches[:1], device, precision=precision)  # warm-up of the eval path
    _synchronize(device)
    inference = predict(model, batches, device, precision=precision)
    row = {
        "variant": variant,
        "losses": [round(loss, 4) for loss in losses],
        "losses_finite": bool(np.isfinite(losses).all()),
        "train_images_per_s": round(timed.images_per_second, 1),
        "inference_images_per_s": round(len(inference.labels) / max(inference.seconds, 1e-9), 1),
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def check_dct(device: torch.device, size: int, precision: str) -> dict:
    """The DCT on `device` against scipy in float64 (see the module docstring)."""
    generator = torch.Generator().manual_seed(1)
    # Smooth content plus 8-bit quantisation: small high-frequency coefficients, where rounding shows first.
    images = torch.rand(4, 3, size, size, generator=generator)
    images = nn.functional.avg_pool2d(images, 9, stride=1, padding=4, count_include_pad=False)
    images = images.mul(255).round().div(255)
    reference = scipy.fft.dctn(images.double().numpy(), axes=(-2, -1), norm="ortho")

    on_device = images.to(device)
    matrix = dct2(on_device, "matrix").double().cpu().numpy()
    dct_error = relative_error(matrix, reference)

    stem = DCTStem(size)
    fit_stem_statistics(stem, [images])
    expected = (np.log(np.abs(reference) + stem.eps) - stem.mean.double().numpy()) / stem.std.double().numpy()
    stem = stem.to(device)
    # The backend training uses: "auto" (the matrix form for CUDA tensors); on CPU "auto" would be scipy.
    stem.dct_backend = "auto" if device.type == "cuda" else "matrix"
    with torch.no_grad(), autocast(device, precision):
        got = stem(on_device.contiguous(memory_format=torch.channels_last)).double().cpu().numpy()
    deviation = np.abs(got - expected)
    share = float((deviation > STEM_DEVIATION).mean())
    return {
        "dct_fp32": {
            "max_relative_error": dct_error,
            "tolerance": DCT_FP32_TOLERANCE,
            "ok": dct_error <= DCT_FP32_TOLERANCE,
        },
        "stem_in_training_precision": {
            "backend": stem.dct_backend,
            "max_deviation_in_std": float(deviation.max()),
            "median_deviation_in_std": float(np.median(deviation)),
            f"share_over_{STEM_DEVIATION}_std": share,
            "max_share": STEM_MAX_SHARE,
            "ok": share <= STEM_MAX_SHARE,
        },
    }


def relative_error(got: np.ndarray, reference: np.ndarray) -> float:
    """max |got - reference| over max |reference|."""
    return float(np.abs(got - reference).max() / np.abs(reference).max())


def amp_dtype(device: torch.device, precision: str) -> str:
    with autocast(device, precision):
        return str(torch.ones(2, 2, device=device).matmul(torch.ones(2, 2, device=device)).dtype)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:1 or cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant (timed: as many)")
    parser.add_argument(
        "--precision", default="auto", help="the engine's: auto (fp16 AMP on CUDA), bf16, fp32"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    if args.device == "auto" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; nothing checked (use --device cpu for a smoke run)",
            file=sys.stderr,
        )
        print(json.dumps({"cuda": False}))
        return 0
    device = torch.device("cuda" if args.device == "auto" else args.device)
    start = time.perf_counter()
    report: dict = {
        "cuda": device.type == "cuda",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "amp_dtype": amp_dtype(device, args.precision),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "size": args.size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "dct": check_dct(device, args.size, args.precision),
        "variants": [],
    }
    for variant in args.variants:
        row = check_variant(variant, device, args.size, args.batch_size, args.steps, args.precision)
        print(json.dumps(row), file=sys.stderr, flush=True)  # progress
        report["variants"].append(row)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = (
        all(row["losses_finite"] for row in report["variants"])
        and report["dct"]["dct_fp32"]["ok"]
        and report["dct"]["stem_in_training_precision"]["ok"]
    )
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
