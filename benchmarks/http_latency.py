"""HTTP latency of `animeprov serve`: single 512 px uploads from concurrent local clients; JSON on stdout.

For each model in `--models`, starts a real server (`python -m animeprov serve [RUN]` in a subprocess,
uvicorn on 127.0.0.1), waits for /healthz, and for each upload sends a few warm-up requests, measures
sequential latency with one client, then runs a bounded load test: `--clients` threads, each with its own
HTTP connection, together send `--requests` POST /v1/predict uploads of the same image. Reports median and
95th-percentile latency, requests per second, and the ratios to the baseline model measured in the same run.

Models:
- `reference`: what `animeprov serve` serves without a run or options: the bundled reference model (its
  variant is printed; 64 px tiles, at most 16 of a 512 px upload's 64) with its calibration and familiarity
  check, in onnxruntime when it is installed (`--backend auto`), no stability checks;
- `reference_torch` (`--backend torch`), `reference_stability` (`--stability`: JPEG 90, WebP 90 and a 4 px
  shift, three more model passes, run only when the verdict would otherwise be committed, so the cost of
  a request depends on the image: hence two uploads, below);
- `previous_default`: what `serve` served by default until 2026-12-05: every tile, the stability checks,
  PyTorch;
- `baseline`: what this benchmark measured first (docs/serve.md): a throwaway run written first,
  `--variant` (cnn-dct-mask) at `--size`, RANDOM-INITIALISED weights with the DCT stem statistics fitted on
  a few noise images, no calibration (so no checks), in PyTorch. Its verdicts mean nothing; its cost per
  request is that of a trained model of the same variant and size.
- `--run PATH`: also an existing run folder.

Uploads:
- `synthetic_png`: a smooth picture with mild noise, a PNG (the reference model finds it "unsure": no checks);
- `committed_jpeg`: the first of a few 512 px JPEG mosaics of ../shared/data/anime-real-256 crops (as in
  predict_throughput.py) whose reference verdict is committed, so the stability checks run for it when
  asked for (left out when that data is missing or no candidate qualifies). Each result says whether the
  checks ran.

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
MODELS = ("reference", "reference_torch", "reference_stability", "previous_default", "baseline")
# `serve` options of each model beyond its run (see the module's docstring)
SERVE_OPTIONS = {
    "reference_torch": ["--backend", "torch"],
    "reference_stability": ["--stability"],
    "previous_default": ["--max-tiles", "0", "--stability", "--backend", "torch"],
    "baseline": ["--backend", "torch"],
}


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


def committed_jpeg(size: int, candidates: int = 12) -> tuple[bytes, str] | None:
    """(bytes, name) of the first mosaic JPEG whose reference-model verdict is committed (artist or ai), so
    the stability checks run for it when asked for; None without ../shared data or when none qualifies."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict_throughput import SHARED_CROPS, make_jpegs

    from animeprov.predict import STABILITY_CHECKS, Predictor

    if not SHARED_CROPS.is_dir():
        return None
    predictor = Predictor.reference(device="cpu", checks=STABILITY_CHECKS)
    with tempfile.TemporaryDirectory(prefix="animeprov-http-bench-jpegs-") as folder:
        for path in make_jpegs(Path(folder), candidates, size, seed=1):
            if any(name != "familiarity" for name in predictor.predict(path).checks):
                return path.read_bytes(), f"mosaic {path.name} of {SHARED_CROPS.name} crops, seed 1"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    run: Path | None,
    port: int,
    max_concurrent: int,
    max_waiting: int,
    env: dict[str, str] | None = None,
    options: list[str] | None = None,
) -> subprocess.Popen:
    """`serve RUN [OPTIONS]`, or `serve [OPTIONS]` (the reference model) when `run` is None."""
    command = [
        sys.executable,
        "-m",
        "animeprov",
        "serve",
        *([] if run is None else [str(run)]),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-concurrent",
        str(max_concurrent),
        "--max-waiting",
        str(max_waiting),
        *(options or []),
    ]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
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


def post(client: httpx.Client, url: str, data: bytes, answer: dict | None = None) -> float:
    """Seconds for one upload; `answer`, when given, receives the response's JSON."""
    started = time.perf_counter()
    response = client.post(url, files={"file": ("bench-upload", data, "application/octet-stream")})
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    if answer is not None:
        answer.update(response.json())
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


def measure(
    run: Path | None,
    uploads: dict[str, bytes],
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
    options: list[str] | None = None,
) -> dict:
    """One server: per upload, warm-up, sequential latency, then the concurrent load test."""
    port = free_port()
    server = start_server(run, port, args.max_concurrent, args.max_waiting, env, options)
    url = f"http://127.0.0.1:{port}/v1/predict"
    results = {}
    try:
        for name, data in uploads.items():
            answer: dict = {}
            with httpx.Client(timeout=120) as client:
                for _ in range(args.warmup):
                    post(client, url, data, answer)
                sequential = [post(client, url, data) for _ in range(args.sequential)]
            latencies, wall, errors = load_test(url, data, args.clients, args.requests)
            results[name] = {
                "verdict": answer.get("verdict"),
                "checks_ran": any(check != "familiarity" for check in answer.get("checks", {})),
                "n_views": answer.get("n_views"),
                "sequential_1_client": {"requests": len(sequential), **summary(sequential)},
                "concurrent": {
                    "clients": args.clients,
                    "requests": args.requests,
                    "ok": len(latencies),
                    "errors": len(errors),
                    "error_examples": errors[:3],
                    **(summary(latencies) if latencies else {}),
                    "requests_per_s": round(len(latencies) / wall, 2),
                    "wall_s": round(wall, 2),
                },
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def ratios(results: dict, baseline: str = "baseline") -> dict:
    """Per model and upload: its concurrent median / p95 latency and requests/s over the baseline's for the
    same upload (latency ratios < 1 and a throughput ratio > 1: better than the baseline)."""
    if baseline not in results:
        return {}
    out = {}
    for model, per_upload in results.items():
        out[model] = {}
        for upload, result in per_upload.items():
            base, this = results[baseline].get(upload), result["concurrent"]
            if not base or "p95_ms" not in this or "p95_ms" not in base["concurrent"]:
                continue
            base = base["concurrent"]
            out[model][upload] = {
                "median": round(this["median_ms"] / base["median_ms"], 3),
                "p95": round(this["p95_ms"] / base["p95_ms"], 3),
                "requests_per_s": round(this["requests_per_s"] / base["requests_per_s"], 3),
            }
    return out


def reference_model() -> str:
    """ "VARIANT, SIZE px tiles" of the bundled reference model (its reference.json)."""
    from animeprov.reference import bundle_info, resolve_run

    info = bundle_info(resolve_run("reference"))
    return f"{info['variant']}, {info['size']} px tiles"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"Comma-separated models to serve, of {', '.join(MODELS)} (default: all).",
    )
    parser.add_argument("--run", type=Path, help="Also serve this existing run folder.")
    parser.add_argument("--variant", default="cnn-dct-mask", help="The baseline's variant.")
    parser.add_argument("--size", type=int, default=512, help="Upload size and the baseline's input (px).")
    parser.add_argument(
        "--uploads",
        default="synthetic_png,committed_jpeg",
        help="Comma-separated uploads: synthetic_png, committed_jpeg.",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=160, help="Uploads in the load test, all clients.")
    parser.add_argument("--sequential", type=int, default=20, help="Uploads from one client, one at a time.")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2, help="The server's --max-concurrent.")
    parser.add_argument("--max-waiting", type=int, default=16, help="The server's --max-waiting.")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="Also serve each model with OMP_WAIT_POLICY=PASSIVE (results named MODEL+omp_passive): "
        "OpenMP threads that sleep instead of spinning while they wait, see docs/predict.md.",
    )
    args = parser.parse_args()
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")

    wanted = [name.strip() for name in args.uploads.split(",") if name.strip()]
    uploads: dict[str, bytes] = {}
    described: dict[str, str] = {}
    if "synthetic_png" in wanted:
        uploads["synthetic_png"] = test_image(args.size)
        described["synthetic_png"] = f"{args.size}x{args.size} PNG, {len(uploads['synthetic_png']):,} bytes"
    if "committed_jpeg" in wanted:
        found = committed_jpeg(args.size)
        if found is None:
            described["committed_jpeg"] = (
                "left out: no ../shared crops, or no candidate with a committed verdict"
            )
        else:
            uploads["committed_jpeg"] = found[0]
            described["committed_jpeg"] = (
                f"{args.size}x{args.size} JPEG q90, {len(found[0]):,} bytes, {found[1]}"
            )

    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    model_names: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="animeprov-http-bench-") as scratch:
        for name in models:
            if name != "baseline":
                model_names[name] = (
                    f"the bundled reference model (`serve` without a run): {reference_model()}"
                    + "".join(f" {option}" for option in SERVE_OPTIONS.get(name, []))
                )
                results[name] = measure(None, uploads, args, options=SERVE_OPTIONS.get(name))
            else:
                run = write_throwaway_run(Path(scratch) / name, args.variant, args.size)
                model_names[name] = (
                    f"{args.variant} at {args.size} px, random-initialised, DCT stem fitted on 16 noise "
                    "images"
                )
                results[name] = measure(run, uploads, args, options=SERVE_OPTIONS[name])
            if args.omp_passive:
                model_names[f"{name}+omp_passive"] = model_names[name] + ", OMP_WAIT_POLICY=PASSIVE"
                results[f"{name}+omp_passive"] = measure(
                    None if name != "baseline" else run,
                    uploads,
                    args,
                    {"OMP_WAIT_POLICY": "PASSIVE"},
                    SERVE_OPTIONS.get(name),
                )
        if args.run is not None:
            config = ckpt.read_config(args.run)
            model_names["run"] = f"{config['variant']} at {config['size']} px from {args.run}"
            results["run"] = measure(args.run, uploads, args)

    result = {
        "benchmark": "http_latency",
        "models": model_names,
        "uploads": described,
        "server": {"max_concurrent": args.max_concurrent, "max_waiting": args.max_waiting, "device": "cpu"},
        "results": results,
        "ratio_vs_baseline": ratios(results),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
