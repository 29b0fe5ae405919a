"""How often does the "unknown generator" verdict fire on a generator the model never saw?

Generates the synthetic benchmark with the default classes plus the held-out EXTRA_CLASSES
(transposed-conv-k3: a layer type no default class uses; nearest-conv-b: a default architecture with
other weights), trains cnn-dct-mask on the default classes only, calibrates it on their val split, then
prints JSON on stdout:

- `known_test`: verdicts on the default classes' test split; `unknown_false_alarms` is the share of
  known-generator images called "unknown generator";
- `held_out`: per extra class (all its images: the model never saw any), the share judged "ai", "artist",
  "unsure", the share flagged "unknown generator" (of all its images, and of those judged ai), and which
  known class the argmax attributes it to.

    .venv/bin/python benchmarks/unknown_generator.py --per-class 120 --size 128 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from animeprov.checkpoint import load_model
from animeprov.data.dataset import ImageDataset, read_split_rows
from animeprov.data.manifest import read_rows, write_rows
from animeprov.data.split import split_manifest
from animeprov.data.synth import DEFAULT_CLASSES, EXTRA_CLASSES, SYNTH_CLASSES, generate_synthetic
from animeprov.engine import make_loader, predict, prepare_model, select_device
from animeprov.evaluation.calibration import UNKNOWN_GENERATOR, VERDICTS, calibrate_run, verdicts
from animeprov.train import TrainConfig, train


def shares(values: np.ndarray, keys) -> dict[str, float]:
    counts = Counter(values.tolist())
    return {key: counts[key] / max(len(values), 1) for key in keys}


def judge(probs: np.ndarray, calibration) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, generator as text: "" when none) per row."""
    judged = verdicts(probs, calibration)
    return np.array([v["verdict"] for v in judged]), np.array([v["generator"] or "" for v in judged])


def predict_rows(run: Path, csv_path: Path, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs and the true class of each loaded row. Rows of classes the model does not know get
    a placeholder label (the dataset only accepts the model's classes); their true class is kept here."""
    model, config = load_model(run)
    classes = config["classes"]
    true_classes = [row["class"] for row in rows]
    placeholder = [{**row, "class": row["class"] if row["class"] in classes else classes[0]} for row in rows]
    dataset = ImageDataset(csv_path, placeholder, classes, config["size"])
    device = select_device("cpu")
    prepare_model(model, device)
    predictions = predict(model, make_loader(dataset, 64), device)
    return predictions.probs, np.array(true_classes)[predictions.indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--known-pass-rate", type=float, default=0.95)
    parser.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temporary one).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = args.dir or Path(temporary)
        start = time.perf_counter()
        manifest = generate_synthetic(
            work / "synth", args.per_class, size=args.size, seed=args.seed, classes=SYNTH_CLASSES
        )
        rows = split_manifest(list(read_rows(manifest)), ratios=(8, 1, 1), seed=args.seed)
        known_csv = work / "split-known.csv"
        known_rows = [row for row in rows if row["class"] in DEFAULT_CLASSES]
        write_rows(known_csv, known_rows, list(rows[0]), source_csv=manifest)
        synth_seconds = time.perf_counter() - start

        run = work / "run"
        config = TrainConfig(
            data=str(known_csv),
            variant="cnn-dct-mask",
            size=args.size,
            epochs=args.epochs,
            batch_size=32,
            patience=args.epochs,
            seed=args.seed,
            device="cpu",
        )
        start = time.perf_counter()
        summary = train(config, run, resume=True)
        train_seconds = time.perf_counter() - start
        calibration = calibrate_run(
            run,
            known_csv,
            split="val",
            target_fpr=args.target_fpr,
            known_pass_rate=args.known_pass_rate,
            device="cpu",
        )

        classes, human = list(calibration.class_names), calibration.human_class
        probs, true = predict_rows(run, known_csv, read_split_rows(known_csv, "test"))
        said, generator = judge(probs, calibration)
        generated = true != human
        known_test = {
            "n_human": int((~generated).sum()),
            "n_generated": int(generated.sum()),
            "attribution_accuracy": float((np.array(classes)[probs.argmax(1)] == true).mean()),
            "human_verdicts": shares(said[~generated], VERDICTS),
            "generated_verdicts": shares(said[generated], VERDICTS),
            "unknown_false_alarms": float((generator[generated] == UNKNOWN_GENERATOR).mean()),
            "unknown_false_alarms_among_ai": float(
                (generator[generated & (said == "ai")] == UNKNOWN_GENERATOR).mean()
            ),
        }

        extra_rows = [row for row in read_rows(manifest) if row["class"] in EXTRA_CLASSES]
        probs, true = predict_rows(run, manifest, extra_rows)
        said, generator = judge(probs, calibration)
        held_out = {}
        for name in EXTRA_CLASSES:
            mine = true == name
            ai = mine & (said == "ai")
            held_out[name] = {
                "n": int(mine.sum()),
                "verdicts": shares(said[mine], VERDICTS),
                "unknown_generator": float((generator[mine] == UNKNOWN_GENERATOR).mean()),
                "unknown_among_ai": float((generator[ai] == UNKNOWN_GENERATOR).mean()) if ai.any() else None,
                "argmax_class": shares(np.array(classes)[probs[mine].argmax(1)], classes),
            }

    m = calibration.measured
    report = {
        "command": " ".join(["benchmarks/unknown_generator.py", *sys.argv[1:]]),
        "per_class": args.per_class,
        "size": args.size,
        "epochs_done": summary["epochs_done"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "seconds": {"synthesis": round(synth_seconds, 1), "training": round(train_seconds, 1)},
        "calibration": {
            "temperature": calibration.temperature,
            "ai_threshold": calibration.ai_threshold,
            "artist_threshold": calibration.artist_threshold,
            "unknown_threshold": calibration.unknown_threshold,
            **{key: m[key] for key in ("n_human", "n_generated", "ece_before", "ece_after", "fpr", "tpr")},
            "val_known_pass_rate": m["known_pass_rate"],
            "val_unknown_fit_images": m["unknown_fit_images"],
            "notes": m["notes"],
        },
        "known_test": known_test,
        "held_out": held_out,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
