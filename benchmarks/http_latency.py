"""HTTP latency of `animeprov serve`: single 512 px uploads from concurrent local clients; JSON on stdout.

Starts a real server (`python -m animeprov serve RUN` in a subprocess, uvicorn on 127.0.0.1), waits for
/healthz, sends a few warm-up requests, measures sequential latency with one client, then runs a bounded load
test: `--clients` threads, each with its own HTTP connection, together send `--requests` POST /v1/predict
uploads of the same PNG. Reports median and 95th-percentile latency and requests per second.

Without --run, a throwaway run is written first: cnn-dct-mask at --size, RANDOM-INITIALISED weights with the
DCT stem statistics fitted on a few noise images. Its verdicts mean nothing; its cost per request is that of a
trained model of the same variant and size (same architecture, same operations).

    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/http_latency.py --clients 8 --requests 160
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.models import create_model
from animeprov.transforms.stem import fit_stem_statistics

CLASSES = [DEFAULT_HUMAN_CLASS, "gen-a", "gen-b", "gen-c", "gen-d"]  # five, as in the paper


def write_throwaway_run(folder: Path, variant: str, size: int, seed: int = 0) -> Path:
    """A run folder with random weights and stem statistics fitted on 16 noise images."""
    torch.manual_seed(seed)
    model = create_model(variant, len(CLASSES), size)
    noise = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(seed))
    fit_stem_statistics(model.stem, [noise[i : i + 8] for i in range(0, 16, 8)])
    ckpt.write_config(
        folder,
        {
            "variant": variant,
            "classes": CLASSES,
            "size": size,
            "human_class": DEFAULT_HUMAN_CLASS,
            "seed": seed,
        },
    )
    ckpt.save_weights(model, folder / ckpt.BEST_WEIGHTS)
    return folder


def test_image(size: int, seed: int = 0) -> bytes:
    """A smooth picture with mild noise (a PNG of the size of a real drawing, not of pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: Path, port: int, max_concurrent: int, max_waiting: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "animeprov",
        "serve",
        str(run),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-concurrent",
        str(max_concurrent),
        "--max-waiting",
        str(max_waiting),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("server did not answer /healthz within 120 s")


def post(client: httpx.Client, url: str, data: bytes) -> float:
    started = time.perf_counter()
    response = client.post(url, files={"file": ("bench.png", data, "image/png")})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return seconds


def load_test(url: str, data: bytes, clients: int, requests: int) -> tuple[list[float], float, list[str]]:
    """`clients` threads share a counter of `requests` uploads; returns latencies, wall seconds, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    remaining = [requests]
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                try:
                    seconds = post(client, url, data)
                except (RuntimeError, httpx.HTTPError) as error:
                    with lock:
                        errors.append(str(error))
                    continue
                with lock:
                    latencies.append(seconds)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started, errors


def summary(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "median_ms": round(float(np.median(ms)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, help="An existing run folder (default: a throwaway random model)."
    )
    parser.add_argument("--variant", default="cnn-dct-mask")
    parser.add_argument("--size", type=int, default=512, help="Model input and upload size (pixels).")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="Uploads in the load test, all clients.")
    parser.add_argument("--sequential", type=int, default=20, help="Uploads from one client, one at a time.")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2, help="The server's --max-concurrent.")
    parser.add_argument("--max-waiting", type=int, default=16, help="The server's --max-waiting.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="animeprov-http-bench-") as scratch:
        if args.run is None:
            run = write_throwaway_run(Path(scratch), args.variant, args.size)
            model = (
                f"{args.variant} at {args.size} px, random-initialised, DCT stem fitted on 16 noise images"
            )
        else:
            run = args.run
            config = ckpt.read_config(run)
            model = f"{config['variant']} at {config['size']} px from {run}"
        data = test_image(args.size)
        port = free_port()
        load_before = os.getloadavg()
        server = start_server(run, port, args.max_concurrent, args.max_waiting)
        url = f"http://127.0.0.1:{port}/v1/predict"
        try:
            with httpx.Client(timeout=120) as client:
                for _ in range(args.warmup):
                    post(client, url, data)
                sequential = [post(client, url, data) for _ in range(args.sequential)]
            latencies, wall, errors = load_test(url, data, args.clients, args.requests)
        finally:
            server.terminate()
            server.wait(timeout=30)

    result = {
        "benchmark": "http_latency",
        "model": model,
        "upload": f"{args.size}x{args.size} PNG, {len(data):,} bytes",
        "server": {"max_concurrent": args.max_concurrent, "max_waiting": args.max_waiting, "device": "cpu"},
        "sequential_1_client": {"requests": len(sequential), **summary(sequential)},
        "concurrent": {
            "clients": args.clients,
            "requests": args.requests,
            "ok": len(latencies),
            "errors": len(errors),
            "error_examples": errors[:3],
            **summary(latencies),
            "requests_per_s": round(len(latencies) / wall, 2),
            "wall_s": round(wall, 2),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
