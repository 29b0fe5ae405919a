"""Where training time goes: the input pipeline alone, the training step alone, and both together.

Prints JSON on stdout, one row per measurement (images/s):

  loader      DataLoader over ImageDataset: decode + centre crop + collate, nothing else, with each --workers
              count (0 = decoding in the training process itself);
  step        the engine's training step (`train_one_epoch`: host-to-device copy, stem, CBAM, backbone,
              loss, backward, optimizer) on batches already in memory: the compute ceiling;
  pipeline    `train_one_epoch` fed by the DataLoader, as `animeprov train` runs it, with each --workers.

If `pipeline` sits near `loader`, decoding is the bottleneck (add workers, or faster storage/formats); near
`step`, the model is. On CUDA the loader pins memory and copies are non_blocking (see engine.make_loader).
Images are cartoon drawings from the synthetic benchmark's renderer written as PNG (or JPEG) files of
--size pixels into a temporary folder, unless --data names a split CSV (then its --split rows are read).

    flock /tmp/animeprov-heavy.lock python benchmarks/pipeline_throughput.py --size 256 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from animeprov.data.dataset import ImageDataset, class_names_of, read_split_rows
from animeprov.data.synth import render_content
from animeprov.engine import keep_freed_memory, make_loader, prepare_model, select_device, train_one_epoch
from animeprov.models import create_model
from animeprov.transforms.stem import fit_stem_statistics

DISTINCT_DRAWINGS = 8  # rendering is slow; files repeat these drawings under different names


def write_synthetic_split(folder: Path, images: int, size: int, image_format: str) -> Path:
    rng = np.random.default_rng(0)
    drawings = [render_content(rng, size) for _ in range(DISTINCT_DRAWINGS)]
    suffix = "png" if image_format == "png" else "jpg"
    rows = []
    for i in range(images):
        name = f"img{i:05d}.{suffix}"
        Image.fromarray(drawings[i % DISTINCT_DRAWINGS]).save(folder / name, quality=90)
        rows.append({"path": name, "class": f"class{i % 2}", "split": "train"})
    csv_path = folder / "split.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "class", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def row(measure: str, workers: int | None, rates: list[float]) -> dict:
    return {
        "measure": measure,
        "workers": workers,
        "images_per_s": round(statistics.median(rates), 1),
        "images_per_s_all": [round(rate, 1) for rate in rates],
    }


def loader_rate(dataset: ImageDataset, batch_size: int, workers: int, device: torch.device) -> float:
    loader = make_loader(dataset, batch_size, shuffle=True, seed=0, workers=workers, device=device)
    start = time.perf_counter()
    seen = sum(len(batch.labels) for batch in loader)  # worker start-up included, as in every epoch
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="cnn-dct-mask")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=256, help="synthetic images (without --data)")
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--data", type=Path, help="a split CSV instead of synthetic images")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement (median reported)")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the training process (default: torch's)"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    device = select_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as `animeprov train` does
    folder = Path(tempfile.mkdtemp(prefix="animeprov-pipeline-"))
    try:
        csv_path = args.data or write_synthetic_split(folder, args.images, args.size, args.format)
        rows = read_split_rows(csv_path, args.split)
        classes = class_names_of(rows)
        dataset = ImageDataset(csv_path, rows, classes, args.size)

        torch.manual_seed(0)
        model = create_model(args.variant, len(classes), args.size)
        in_memory = list(make_loader(dataset, args.batch_size, device=device))
        fit_stem_statistics(model.stem, [batch.images for batch in in_memory])
        prepare_model(model, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(
            "cuda", enabled=device.type == "cuda" and args.precision in ("auto", "fp16")
        )

        def epoch_rate(batches) -> float:
            loss_fn = nn.CrossEntropyLoss()
            done = train_one_epoch(
                model, batches, optimizer, loss_fn, device, precision=args.precision, scaler=scaler
            )
            return done.images_per_second

        # Warm-up: first-call allocations (the kept heap grows to its peak) and kernel choices.
        epoch_rate(in_memory)
        # Each repeat measures everything once, so a disturbance (another process) hits all alike.
        rates: dict[tuple[str, int | None], list[float]] = {}
        for _ in range(args.repeats):
            for workers in args.workers:
                rate = loader_rate(dataset, args.batch_size, workers, device)
                rates.setdefault(("loader", workers), []).append(rate)
            rates.setdefault(("step", None), []).append(epoch_rate(in_memory))
            for workers in args.workers:
                loader = make_loader(
                    dataset, args.batch_size, shuffle=True, seed=1, workers=workers, device=device
                )
                rates.setdefault(("pipeline", workers), []).append(epoch_rate(loader))
        results = [row(measure, workers, values) for (measure, workers), values in rates.items()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "torch": torch.__version__,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "variant": args.variant,
            "size": args.size,
            "images": len(dataset),
            "format": "from --data" if args.data else args.format,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "repeats": args.repeats,
        },
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
