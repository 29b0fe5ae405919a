"""End-to-end `animeprov predict` throughput and memory on JPEG files, default model against the old baseline;
prints JSON.

    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/predict_throughput.py \
        --work runs/bench-predict --files 20000 --pipelines default,baseline

1. Inputs: `--unique` 512x512 JPEGs (quality 90), each a mosaic of four 256 px crops from
   ../shared/data/anime-real-256 beside the checkout (random pixels if that is missing), hard-linked under
   `--files` names in folders of 1000, so the long run reads many distinct paths without their disk space.
2. Pipelines (`PIPELINES`), measured in the same run so that their ratios survive a noisy machine:
   - `default`: what `animeprov predict FOLDER` does: the bundled reference model (its variant is printed;
     64 px tiles, at most 16 of a 512 px image's 64) with its calibration and familiarity check, in
     onnxruntime when it is installed (`--backend auto`);
   - `default_torch` (`--backend torch`), `default_bf16` (PyTorch, `--precision bf16`),
     `default_stability` (`--stability`: JPEG 90, WebP 90 and 4 px shift checks, run only for a verdict
     that would otherwise be committed), `default_every_tile` (`--max-tiles 0`);
   - `previous_default`: what the command did by default until 2026-12-05: every tile, the stability checks,
     PyTorch;
   - `baseline`: the pipeline this benchmark measured first (README's 49.9 images/s): an untrained
     cnn-dct-mask at `--size` (512: one crop per image) with random DCT statistics and a calibration.json,
     in PyTorch, no checks. Throughput does not depend on the weights' values.
   In process, each pipeline's predictions are compared with another's (`COMPARED_WITH`): the largest
   P(generated) difference and the share of verdicts and of 0.5 decisions that differ.
3. In one process on the first `--in-process-files` files: reading, decoding, evidence and views alone
   (`prepare`), then `predict_many` of each pipeline at 1 and at the default number of threads, in
   `--rounds` interleaved rounds (median images/s), with the share of images whose stability checks ran.
4. The command itself, `python -m animeprov predict [RUN] FOLDER --out OUT.jsonl`, in a subprocess over all
   the files for each pipeline in `--pipelines` (start-up, walking, decoding, evidence, model, checks, JSON
   writing included), with the resident memory (RSS) of it and its worker processes and the number of
   rows written sampled every `--every` seconds; the share of rows whose checks ran is read from OUT.
Ratios are against `baseline` (> 1: faster than it). The long run and the other pipelines, as measured
for docs/predict.md:

    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/predict_throughput.py \
        --work runs/bench-predict --files 20000 --pipelines default,baseline
    flock /tmp/animeprov-heavy.lock .venv/bin/python benchmarks/predict_throughput.py \
        --work runs/bench-predict --files 1000 --skip-in-process \
        --pipelines default,default_torch,default_bf16,default_stability,default_every_tile,previous_default
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


def make_jpegs(
    folder: Path, count: int, size: int, crops_folder: Path = SHARED_CROPS, seed: int = 0
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    rng = np.random.default_rng(seed)
    crops = sorted(crops_folder.rglob("*.png")) if crops_folder.is_dir() else []
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
    calibration = Calibration(tuple(classes), "human", 1.2, 1.0, 0.9, 0.2, 0.5, 0.01, 0.05, 0.95)
    save_calibration(folder, calibration)
    return folder


# Each pipeline as `predict` options (the baseline's also name its run). `default` is `animeprov predict
# FOLDER` as it is now: at most 16 tiles, no stability checks, onnxruntime where installed (backend auto);
# `previous_default` is what that command did until 2026-12-05: every tile, the checks, PyTorch.
PIPELINES = {
    "default": [],
    "default_torch": ["--backend", "torch"],
    "default_bf16": ["--backend", "torch", "--precision", "bf16"],
    "default_stability": ["--stability"],
    "default_every_tile": ["--max-tiles", "0"],
    "previous_default": ["--max-tiles", "0", "--stability", "--backend", "torch"],
    "baseline": ["--backend", "torch"],
}
# Whose predictions each pipeline's are compared with in process (how many verdicts the change moves).
COMPARED_WITH = {
    "default": "previous_default",
    "default_torch": "default",
    "default_bf16": "default_torch",
    "default_stability": "default",
    "default_every_tile": "default",
}


def pipeline_args(name: str, baseline_run: Path) -> list[str]:
    """The `predict` arguments (before the paths) of a pipeline."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose among {', '.join(PIPELINES)}")
    return ([str(baseline_run)] if name == "baseline" else []) + PIPELINES[name]


def make_predictor(name: str, baseline_run: Path):
    """The Predictor that `predict` builds from the pipeline's options."""
    from animeprov.config import DEFAULT_MAX_TILES
    from animeprov.predict import STABILITY_CHECKS, Predictor

    options = PIPELINES[name]
    value = {flag: options[i + 1] for i, flag in enumerate(options[:-1])}  # each flag's value: the next word
    return Predictor.from_checkpoint(
        baseline_run if name == "baseline" else "reference",
        device="cpu",
        checks=STABILITY_CHECKS if "--stability" in options else (),
        precision=value.get("--precision", "auto"),
        max_tiles=int(value.get("--max-tiles", DEFAULT_MAX_TILES)) or None,
        backend=value.get("--backend", "auto"),
    )


def checks_ran(prediction) -> bool:
    """Whether the stability checks ran for this image (its `checks` has more than the familiarity)."""
    return any(name != "familiarity" for name in prediction.get("checks", {}))


def in_process(baseline_run: Path, files: list[Path], args: argparse.Namespace) -> dict:
    """images/s of `prepare` alone and of each pipeline's predict_many (decode in line, the default batch
    size unless --batch-size) at 1 and the default number of threads, median of interleaved rounds."""
    from animeprov.engine import keep_freed_memory
    from animeprov.predict import default_batch_size, prepare_or_error

    keep_freed_memory()
    threads = torch.get_num_threads()
    predictors = {name: make_predictor(name, baseline_run) for name in PIPELINES}
    for predictor in predictors.values():  # warm-up: first-call allocations and library set-up
        list(predictor.predict_many(files[:2], batch_size=args.batch_size))
    results: dict = {"files": len(files), "rounds": args.rounds}
    start = time.perf_counter()
    for path in files:  # reading, decoding, evidence and views alone: what a decoding worker would do
        prepare_or_error(path, predictors["default"].size, "auto", predictors["default"].load_rules)
    results["prepare_only_read_decode_evidence_views"] = round(len(files) / (time.perf_counter() - start), 2)
    rates: dict[str, list[float]] = {}
    checked: dict[str, float] = {}
    last: dict[str, list] = {}
    for model_threads in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(model_threads)
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                if predictor.backend == "onnx" and model_threads != threads:
                    continue  # an onnxruntime session keeps the threads it was made with
                start = time.perf_counter()
                predictions = list(predictor.predict_many(files, batch_size=args.batch_size))
                rate = len(predictions) / (time.perf_counter() - start)
                rates.setdefault(f"{name}_threads_{model_threads}", []).append(rate)
                last[name] = predictions
                judged = [p.to_dict() for p in predictions if p.error is None]
                checked[name] = round(sum(map(checks_ran, judged)) / max(len(judged), 1), 3)
    torch.set_num_threads(threads)
    medians = {key: float(np.median(values)) for key, values in rates.items()}
    results["images_per_second_median"] = {key: round(value, 2) for key, value in medians.items()}
    results["images_per_second_all_rounds"] = {
        key: [round(v, 2) for v in values] for key, values in rates.items()
    }
    results["ratio_vs_baseline"] = {
        key: round(value / medians[f"baseline_threads_{key.rsplit('_', 1)[1]}"], 3)
        for key, value in medians.items()
    }
    results["share_of_images_checked"] = checked
    results["compared"] = {
        f"{name}_against_{other}": agreement(last[other], last[name])
        for name, other in COMPARED_WITH.items()
        if name in last and other in last
    }
    results["batch_size"] = {
        name: args.batch_size or default_batch_size(predictor.size) for name, predictor in predictors.items()
    }
    return results


def agreement(reference: list, other: list) -> dict:
    """How far `other`'s predictions of the same files are from `reference`'s: largest |P(generated)|
    difference, and the share of verdicts and of 0.5 decisions that differ."""
    pairs = [(a, b) for a, b in zip(reference, other, strict=True) if a.error is None and b.error is None]
    differences = [abs(a.p_generated - b.p_generated) for a, b in pairs]
    return {
        "images": len(pairs),
        "max_abs_p_generated_difference": round(max(differences, default=0.0), 5),
        "verdicts_changed": round(sum(a.verdict != b.verdict for a, b in pairs) / max(len(pairs), 1), 4),
        "decisions_at_0.5_changed": round(
            sum((a.p_generated >= 0.5) != (b.p_generated >= 0.5) for a, b in pairs) / max(len(pairs), 1), 4
        ),
    }


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


def _checked_share(out: Path) -> float | None:
    """Share of the judged rows in OUT whose stability checks ran."""
    judged = checked = 0
    with open(out, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if not row.get("error"):
                judged += 1
                checked += checks_ran(row)
    return round(checked / judged, 3) if judged else None


def end_to_end(
    name: str,
    baseline_run: Path,
    folder: Path,
    out: Path,
    total: int,
    args: argparse.Namespace,
    extra_env: dict[str, str] | None = None,
) -> dict:
    for stale in (out, out.with_name(out.name + ".done")):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "animeprov", "predict", *pipeline_args(name, baseline_run)]
    command += [str(folder), "--out", str(out), "--device", args.device]
    if args.workers is not None:  # else the command's defaults
        command += ["--workers", str(args.workers)]
    if args.cli_batch_size is not None:
        command += ["--batch-size", str(args.cli_batch_size)]
    settings = {**({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}), **(extra_env or {})}
    env = {**os.environ, **settings}
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
        "command": "".join(f"{key}={value} " for key, value in settings.items()) + " ".join(command),
        "files": total,
        "rows_written": rows,
        "share_of_images_checked": _checked_share(out),
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


def ratios(end: dict) -> dict:
    """Each pipeline's end-to-end images/s over the baseline's (None without a baseline run)."""
    base = end.get("baseline", {}).get("images_per_second_end_to_end")
    return {
        name: round(run["images_per_second_end_to_end"] / base, 3) if base else None
        for name, run in end.items()
    }


def reference_model() -> str:
    """ "VARIANT, SIZE px tiles" of the bundled reference model (its reference.json)."""
    from animeprov.reference import bundle_info, resolve_run

    info = bundle_info(resolve_run("reference"))
    return f"{info['variant']}, {info['size']} px tiles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-predict"))
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--unique", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="The baseline model's input size.")
    parser.add_argument(
        "--in-process-files",
        "--baseline",
        dest="in_process_files",
        type=int,
        default=160,
        help="Files for the in-process runs.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the in-process runs.")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="Batch size of the in-process runs (default: theirs)."
    )
    parser.add_argument(
        "--pipelines",
        default="default,baseline",
        help=f"Comma-separated pipelines to run end to end (of {', '.join(PIPELINES)}).",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="--workers of the command (default: its own)."
    )
    parser.add_argument("--cli-batch-size", type=int, default=None, help="--batch-size of the command.")
    parser.add_argument(
        "--threads", type=int, default=0, help="OMP_NUM_THREADS for the command (0: default)."
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="--device of the command (cuda on a GPU machine; in-process runs: cpu)",
    )
    parser.add_argument(
        "--crops",
        type=Path,
        default=SHARED_CROPS,
        help="PNG crops for the mosaics (random pixels if missing).",
    )
    parser.add_argument("--every", type=float, default=2.0, help="Seconds between memory samples.")
    parser.add_argument("--skip-in-process", "--skip-baselines", dest="skip_in_process", action="store_true")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="Also run each pipeline end to end with OMP_WAIT_POLICY=PASSIVE (NAME+omp_passive): OpenMP "
        "threads that sleep instead of spinning while they wait, see docs/predict.md.",
    )
    args = parser.parse_args()
    pipelines = [name.strip() for name in args.pipelines.split(",") if name.strip()]
    for name in pipelines:
        pipeline_args(name, Path())  # fails fast on a typo

    classes = ["human", "novelai", "sd1-merges", "gen-c", "gen-d"]  # 5 classes, as in the paper
    unique = make_jpegs(args.work / "unique", args.unique, 512, args.crops)
    folder = link_files(unique, args.work / "files", args.files)
    baseline_run = make_run(args.work / f"run-{args.size}", args.size, classes)
    files = sorted(folder.rglob("*.jpg"))
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ld_preload": os.environ.get("LD_PRELOAD", ""),
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
        },
        "pipelines": {
            "reference_model": reference_model(),
            "baseline_model": f"untrained cnn-dct-mask at {args.size} px, {len(classes)} classes",
            "predict_options": PIPELINES,
        },
        "inputs": {
            "unique_jpegs": len(unique),
            "files": len(files),
            "mean_bytes": int(np.mean([p.stat().st_size for p in unique])),
        },
    }
    if not args.skip_in_process:
        report["in_process"] = in_process(baseline_run, files[: args.in_process_files], args)
    end = {}
    for name in pipelines:
        out = args.work / f"out-{name}.jsonl"
        end[name] = end_to_end(name, baseline_run, folder, out, len(files), args)
        if args.omp_passive:
            passive = {"OMP_WAIT_POLICY": "PASSIVE"}
            out = args.work / f"out-{name}-omp-passive.jsonl"
            end[f"{name}+omp_passive"] = end_to_end(
                name, baseline_run, folder, out, len(files), args, passive
            )
    report["end_to_end"] = end
    report["end_to_end_ratio_vs_baseline"] = ratios(end)
    report["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    (args.work / f"result-{args.files}.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
