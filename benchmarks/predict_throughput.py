"""End-to-end `animeprov predict` throughput and memory on JPEG files; prints JSON.

    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/predict_throughput.py \
        --work runs/bench-predict --files 20000

1. Inputs: `--unique` 512x512 JPEGs (quality 90), each a mosaic of four 256 px crops from
   ../shared/data/anime-real-256 beside the checkout (random pixels if that is missing), hard-linked under
   `--files` names in folders of 1000, so the long run reads many distinct paths without their disk space.
2. A run folder: an untrained cnn-dct-mask at `--size` with random DCT statistics and a calibration.json;
   throughput does not depend on the weights' values.
3. Baselines, in one process on the first `--baseline` files: the naive loop (`Predictor.predict(path)`, one
   image at a time, decode in line) and `predict_many` with and without decoding workers.
4. The command itself, `python -m animeprov predict RUN FOLDER --out OUT.jsonl`, in a subprocess over all the
   files (start-up, walking, decoding, evidence, model, JSON writing included), with the resident memory
   (RSS) of it and its worker processes and the number of rows written sampled every `--every` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The development images, in the layout where the checkout sits beside ../shared/data.
SHARED_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "anime-real-256"


def make_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    rng = np.random.default_rng(seed)
    crops = sorted(SHARED_CROPS.rglob("*.png")) if SHARED_CROPS.is_dir() else []
    half = size // 2
    paths = []
    for i in range(count):
        canvas = np.zeros((size, size, 3), np.uint8)
        for top in (0, half):
            for left in (0, half):
                if crops:
                    with Image.open(crops[rng.integers(len(crops))]) as crop:
                        block = np.array(crop.convert("RGB"))[:half, :half]
                else:
                    block = rng.integers(0, 256, (half, half, 3), dtype=np.uint8)
                canvas[top : top + block.shape[0], left : left + block.shape[1]] = block
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(canvas).save(path, quality=90)
        paths.append(path)
    return paths


def link_files(unique: list[Path], folder: Path, count: int) -> Path:
    """`count` hard links to the unique JPEGs, 1000 per sub-folder."""
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(unique[i % len(unique)], sub / f"img{i:06d}.jpg")
    marker.touch()
    return folder


def make_run(folder: Path, size: int, classes: list[str]) -> Path:
    from animeprov import checkpoint as ckpt
    from animeprov.evaluation.calibration import Calibration, save_calibration
    from animeprov.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn-dct-mask", len(classes), size)
    model.stem.set_statistics(torch.randn(3, size, size), torch.rand(3, size, size) + 0.5)
    config = {"variant": "cnn-dct-mask", "classes": classes, "size": size, "human_class": "human"}
    ckpt.write_config(folder, config)
    ckpt.save_weights(model, folder / ckpt.BEST_WEIGHTS)
    calibration = Calibration(tuple(classes), "human", 1.2, 0.9, 0.2, 0.5, 0.01, 0.05, 0.95)
    save_calibration(folder, calibration)
    return folder


def in_process(run: Path, files: list[Path], batch_size: int) -> dict:
    """img/s of the naive loop and of predict_many with 0 or 1 decoding workers and 1 or 2 model threads."""
    from animeprov.engine import keep_freed_memory
    from animeprov.predict import Predictor, prepare_or_error

    keep_freed_memory()
    threads = torch.get_num_threads()
    predictor = Predictor.from_checkpoint(run, device="cpu")
    predictor.predict(files[0])  # warm-up: first-call allocations and library set-up
    results = {}
    start = time.perf_counter()
    for path in files:  # reading, decoding, evidence and views alone: what a decoding worker would do
        prepare_or_error(path, predictor.size, "auto", predictor.load_rules)
    results["prepare_only_read_decode_evidence_views"] = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in files:
        predictor.predict(path)
    results[f"naive_loop_predict_per_file_threads_{threads}"] = len(files) / (time.perf_counter() - start)
    for model_threads in sorted({1, threads}):
        torch.set_num_threads(model_threads)
        for workers in (0, 1):
            start = time.perf_counter()
            n = sum(1 for _ in predictor.predict_many(files, batch_size=batch_size, workers=workers))
            key = f"predict_many_batch_{batch_size}_workers_{workers}_threads_{model_threads}"
            results[key] = n / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    bf16 = Predictor.from_checkpoint(run, device="cpu", precision="bf16")
    bf16.predict(files[0])
    start = time.perf_counter()
    n = sum(1 for _ in bf16.predict_many(files, batch_size=batch_size, workers=1))
    results[f"bf16_predict_many_batch_{batch_size}_workers_1_threads_{threads}"] = n / (
        time.perf_counter() - start
    )
    return {key: round(value, 2) for key, value in results.items()}


def _memory_kb(pid: int, field: str) -> int:
    """VmRSS from /proc/PID/status, or Pss (shared pages split between the processes sharing them, so the
    forked workers' copy of the parent's libraries is not counted twice) from smaps_rollup."""
    source = "status" if field == "VmRSS" else "smaps_rollup"
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def end_to_end(run: Path, folder: Path, out: Path, total: int, args: argparse.Namespace) -> dict:
    for stale in (out, out.with_name(out.name + ".done")):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "animeprov", "predict", str(run), str(folder), "--out", str(out)]
    command += ["--device", "cpu"]
    if args.workers is not None:  # else the command's defaults
        command += ["--workers", str(args.workers)]
    if args.cli_batch_size is not None:
        command += ["--batch-size", str(args.cli_batch_size)]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    samples = []
    start = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    while process.poll() is None:
        time.sleep(args.every)
        children = _children(process.pid)
        sample = {
            "t": round(time.perf_counter() - start, 1),
            "cpu_s": round(sum(_cpu_seconds(p) for p in [process.pid, *children]), 1),
            "load1": float(Path("/proc/loadavg").read_text().split()[0]),
            "rows": _lines(out),
            "main_rss_mb": round(_memory_kb(process.pid, "VmRSS") / 1024, 1),
            "workers_rss_mb": round(sum(_memory_kb(c, "VmRSS") for c in children) / 1024, 1),
            "all_pss_mb": round(sum(_memory_kb(p, "Pss") for p in [process.pid, *children]) / 1024, 1),
        }
        if process.poll() is not None:  # it ended while we read: its numbers are gone
            break
        samples.append(sample)
    seconds = time.perf_counter() - start
    rows = _lines(out)
    if process.returncode != 0:
        raise RuntimeError(f"predict failed with exit code {process.returncode}")
    steady = [s for s in samples if 0.1 * total <= s["rows"] <= 0.9 * total]
    steady_rate = (
        (steady[-1]["rows"] - steady[0]["rows"]) / (steady[-1]["t"] - steady[0]["t"])
        if len(steady) >= 2 and steady[-1]["t"] > steady[0]["t"]
        else None
    )
    totals = [s["all_pss_mb"] for s in samples]
    # Other users of the machine show as the command getting less than all CPUs: rows per CPU-second of
    # the command, and its share of the CPUs, tell a slow machine from a slow program.
    cpu_share = samples[-1]["cpu_s"] / (samples[-1]["t"] * (os.cpu_count() or 1)) if samples else None
    quarter = max(len(samples) // 4, 1)
    return {
        "command": ("" if not args.threads else f"OMP_NUM_THREADS={args.threads} ") + " ".join(command),
        "files": total,
        "rows_written": rows,
        "seconds": round(seconds, 1),
        "images_per_second_end_to_end": round(rows / seconds, 2),
        "images_per_second_steady": round(steady_rate, 2) if steady_rate else None,
        "command_cpu_share": round(cpu_share, 3) if cpu_share else None,
        "images_per_cpu_second": round(rows / samples[-1]["cpu_s"], 2) if samples else None,
        "rss_mb_peak_main": max((s["main_rss_mb"] for s in samples), default=None),
        "pss_mb_peak_all_processes": max(totals, default=None),
        "pss_mb_max_first_quarter": max(totals[:quarter], default=None),
        "pss_mb_max_last_quarter": max(totals[-quarter:], default=None),
        "samples": samples[:: max(len(samples) // 40, 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-predict"))
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--unique", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--baseline", type=int, default=200, help="Files for the in-process baselines.")
    parser.add_argument("--batch-size", type=int, default=16, help="Batch size of the in-process runs.")
    parser.add_argument(
        "--workers", type=int, default=None, help="--workers of the command (default: its own)."
    )
    parser.add_argument("--cli-batch-size", type=int, default=None, help="--batch-size of the command.")
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for the command (0: default)."
    )
    parser.add_argument("--every", type=float, default=2.0, help="Seconds between memory samples.")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()

    classes = ["human", "novelai", "sd1-merges", "gen-c", "gen-d"]  # 5 classes, as in the paper
    unique = make_jpegs(args.work / "unique", args.unique, args.size)
    folder = link_files(unique, args.work / "files", args.files)
    run = make_run(args.work / f"run-{args.size}", args.size, classes)
    files = sorted(folder.rglob("*.jpg"))
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
        },
        "model": {"variant": "cnn-dct-mask", "size": args.size, "classes": len(classes)},
        "inputs": {
            "unique_jpegs": len(unique),
            "files": len(files),
            "mean_bytes": int(np.mean([p.stat().st_size for p in unique])),
        },
    }
    if not args.skip_baselines:
        report["in_process_images_per_second"] = in_process(run, files[: args.baseline], args.batch_size)
    report["end_to_end"] = end_to_end(run, folder, args.work / "out.jsonl", len(files), args)
    text = json.dumps(report, indent=2)
    (args.work / f"result-{args.files}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
