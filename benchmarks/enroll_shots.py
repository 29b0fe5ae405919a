"""Accuracy of `animeprov enroll` against the number of shots, new class and old classes (JSON + a table).

    python benchmarks/enroll_shots.py synth --work /work/runs/enroll/synth
    python benchmarks/enroll_shots.py real --work /work/runs/enroll/real --data-root /work/shared/data

synth: trains cnn-dct-mask (128 px) on the standard synthetic classes, then enrols each held-out
generator (transposed-conv-k3, nearest-conv-b) from 5, 10, 20, 50, 100 shots drawn from a pool of 100
images, and tests on 100 other images of it and on the old classes' test split.
real: trains on anime-real-256 + anime-more-256 without sdxl-family, then enrols sdxl-family (43 images:
20 kept for testing, shots drawn from the other 23, so 5, 10, 20 shots only).

Every data step runs the `animeprov` command (printed); enrolment calls `animeprov.enroll.enroll`, what the
command calls. Accuracy is attribution (argmax) through `Predictor.predict_many`, as `animeprov predict`
judges: tiles for images larger than the model input. Each shot count is repeated over --seeds draws.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ANIMEPROV = str(Path(sys.executable).with_name("animeprov"))


def sh(*args: object) -> None:
    command = [ANIMEPROV, *map(str, args)]
    print("$ animeprov " + shlex.join(command[1:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def attribution(run: Path, files: list[Path], labels: list[str]) -> dict:
    """Per-class accuracy (argmax) and the share judged ai, through the predict path."""
    from animeprov.predict import Predictor

    predictor = Predictor.from_checkpoint(run, device="cpu")
    hits: dict[str, list[bool]] = {}
    ai: dict[str, list[bool]] = {}
    for result, label in zip(predictor.predict_many(map(str, files), batch_size=32), labels, strict=True):
        assert result.error is None, result.error
        top = max(result.probabilities, key=result.probabilities.get)
        hits.setdefault(label, []).append(top == label)
        ai.setdefault(label, []).append(result.verdict == "ai")
    return {
        "accuracy": {k: float(np.mean(v)) for k, v in hits.items()},
        "judged_ai": {k: float(np.mean(v)) for k, v in ai.items()},
        "n": {k: len(v) for k, v in hits.items()},
    }


def old_accuracy(report: dict, old_classes: list[str]) -> float:
    """Mean over old test images (not over classes): the split's own class balance."""
    n = sum(report["n"][c] for c in old_classes)
    return sum(report["accuracy"][c] * report["n"][c] for c in old_classes) / n


def shots_experiment(
    work: Path,
    base: Path,
    split_csv: Path,
    new_class: str,
    pool: list[Path],
    new_test: list[Path],
    shots: list[int],
    seeds: int,
    methods: list[str],
    l2: float = 1e-3,
) -> list[dict]:
    from animeprov.enroll import enroll

    old_rows = [row for row in read_csv(split_csv) if row["split"] == "test"]
    old_files = [split_csv.parent / row["path"] for row in old_rows]
    old_labels = [row["class"] for row in old_rows]
    old_classes = sorted(set(old_labels))
    log = work / "rows.jsonl"  # one line per finished enrolment: a rerun skips them (resumable)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    results = [
        r for r in done if r["new_class"] == new_class and r["method"] in methods and r["shots"] in shots
    ]
    results = [r for r in results if r["seed"] < seeds and r.get("l2", 1e-3) == l2]
    finished = {(r["method"], r["shots"], r["seed"]) for r in results}
    if len(finished) == len(methods) * len(shots) * seeds:
        return results
    before = attribution(base, old_files + new_test, old_labels + [new_class] * len(new_test))
    for method in methods:
        for n in shots:
            for seed in range(seeds):
                if (method, n, seed) in finished:
                    continue
                chosen = [
                    pool[i] for i in sorted(np.random.default_rng([seed, n]).permutation(len(pool))[:n])
                ]
                out = work / f"enrolled-{new_class}-{method}-{n}-{seed}"
                shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                result = enroll(base, new_class, chosen, out, data=split_csv, method=method, seed=seed, l2=l2)
                seconds = time.perf_counter() - started
                after = attribution(out, old_files + new_test, old_labels + [new_class] * len(new_test))
                row = {
                    "new_class": new_class,
                    "method": method,
                    "l2": l2,
                    "shots": n,
                    "seed": seed,
                    "new_class_accuracy": after["accuracy"][new_class],
                    "new_class_judged_ai_before": before["judged_ai"][new_class],
                    "new_class_judged_ai_after": after["judged_ai"][new_class],
                    "old_accuracy_before": old_accuracy(before, old_classes),
                    "old_accuracy_after": old_accuracy(after, old_classes),
                    "human_judged_ai_before": before["judged_ai"].get("human"),
                    "human_judged_ai_after": after["judged_ai"].get("human"),
                    "out_of_fold_accuracy": result.record["out_of_fold_accuracy_new_class"],
                    "enroll_seconds": round(seconds, 2),
                    "n_new_test": len(new_test),
                    "n_old_test": len(old_files),
                }
                print(json.dumps(row), flush=True)
                with open(log, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                results.append(row)
                shutil.rmtree(out)  # keep the disk small: the record is in the results
    return results


def _stat(group: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in group], dtype=float)


def summary(results: list[dict]) -> str:
    for r in results:  # the L2 penalty is named when it is not the default
        l2 = r.get("l2", 1e-3)
        r["method"] = r["method"] if l2 == 1e-3 or "l2" in r["method"] else f"{r['method']}, l2 {l2:g}"
    lines = [
        "| new class | method | shots | new-class acc | old acc before | old acc after | change | "
        "new judged ai before / after | human judged ai before / after |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted(
        {(r["new_class"], r["method"], r["shots"]) for r in results}, key=lambda k: (k[0], k[1], k[2])
    )
    for new_class, method, shots in keys:
        group = [
            r for r in results if (r["new_class"], r["method"], r["shots"]) == (new_class, method, shots)
        ]

        new, before, after = (_stat(group, key) for key in ("new_class_accuracy", "old_accuracy_before",
                                                             "old_accuracy_after"))  # fmt: skip
        ai_before, ai_after = (
            _stat(group, "new_class_judged_ai_before"),
            _stat(group, "new_class_judged_ai_after"),
        )
        human_before, human_after = (
            _stat(group, "human_judged_ai_before"),
            _stat(group, "human_judged_ai_after"),
        )
        lines.append(
            f"| {new_class} | {method} | {shots} | {new.mean():.3f} ± {new.std():.3f} "
            f"| {before.mean():.3f} | {after.mean():.3f} ± {after.std():.3f} "
            f"| {100 * (after - before).mean():+.1f} pt | {ai_before.mean():.2f} / {ai_after.mean():.2f} "
            f"| {human_before.mean():.3f} / {human_after.mean():.3f} |"
        )
    return "\n".join(lines)


def run_synth(args: argparse.Namespace) -> list[dict]:
    work = args.work
    sh("data", "synth", work / "std", "--per-class", args.per_class, "--size", args.size, "--seed", 0)
    sh(
        "data",
        "split",
        work / "std" / "manifest.csv",
        "--out",
        work / "split.csv",
        "--ratios",
        "8:1:1",
        "--seed",
        0,
    )
    held_out = ["transposed-conv-k3", "nearest-conv-b"]
    sh(
        "data",
        "synth",
        work / "new",
        "--per-class",
        200,
        "--size",
        args.size,
        "--seed",
        1,
        "--classes",
        ",".join(held_out),
    )
    if not (work / "base" / "calibration.json").is_file():
        shutil.rmtree(work / "base", ignore_errors=True)
        sh("train", "--data", work / "split.csv", "--variant", "cnn-dct-mask", "--size", args.size,
           "--epochs", args.epochs, "--out", work / "base")  # fmt: skip
    results = []
    for new_class in args.held_out or held_out:
        files = sorted((work / "new" / new_class).glob("*.png"))
        results += shots_experiment(
            work, work / "base", work / "split.csv", new_class, files[:100], files[100:200],
            args.shots, args.seeds, args.methods, args.l2,
        )  # fmt: skip
    return results


def run_real(args: argparse.Namespace) -> list[dict]:
    work, root = args.work, args.data_root
    rows = []
    for name in ("anime-real-256", "anime-more-256"):
        sh("data", "index", root / name, "--out", work / f"{name}.csv", "--group-by", "original_path")
        for row in read_csv(work / f"{name}.csv"):
            row["path"] = str((work / row["path"]).resolve())  # absolute: the rows of two sets in one CSV
            row["group"] = f"{name}/{row['group']}"
            rows.append(
                {k: row[k] for k in ("path", "class", "sha256", "width", "height", "format", "group")}
            )
    new_files = sorted(Path(r["path"]) for r in rows if r["class"] == args.new_class)
    write_csv(work / "old-manifest.csv", [r for r in rows if r["class"] != args.new_class])
    sh("data", "split", work / "old-manifest.csv", "--out", work / "split.csv", "--ratios", "8:1:1",
       "--seed", 0, "--per-class", 100000)  # fmt: skip
    if not (work / "base" / "calibration.json").is_file():
        shutil.rmtree(work / "base", ignore_errors=True)
        sh("train", "--data", work / "split.csv", "--variant", "cnn-dct-mask", "--size", args.size,
           "--epochs", args.epochs, "--weighted-loss", "--out", work / "base")  # fmt: skip
    order = np.random.default_rng(0).permutation(len(new_files))
    test = [new_files[i] for i in sorted(order[: args.real_test])]
    pool = [new_files[i] for i in sorted(order[args.real_test :])]
    shots = [n for n in args.shots if n <= len(pool)]
    return shots_experiment(
        work, work / "base", work / "split.csv", args.new_class, pool, test, shots, args.seeds, args.methods,
        args.l2,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", choices=("synth", "real"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--new-class", default="sdxl-family", help="real: the class to hold out and enrol")
    parser.add_argument(
        "--real-test", type=int, default=20, help="real: images of the new class kept for testing"
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--shots", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20, 50, 100]
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--l2", type=float, default=1e-3, help="the L2 penalty of the head fit (the first runs: 1e-3)"
    )
    parser.add_argument("--held-out", type=lambda s: s.split(","), help="synth: only these held-out classes")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=["row", "head"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run_synth(args) if args.data == "synth" else run_real(args)
    (args.work / f"results-{args.data}-l2={args.l2:g}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
