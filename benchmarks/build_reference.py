"""Build the reference model shipped in the package (src/animeprov/reference/), or check the shipped one.

    # the real build: every visible real set, default recipe, seed 0, calibrated on held-out sources
    python benchmarks/build_reference.py ../shared/data/anime-{real,more,sd1-postproc,vn}-256/manifest.csv \\
        --description "visible real sets of ../shared/data" --work runs/reference
    # the synthetic stand-in (`animeprov data synth`), which exercises every code path
    python benchmarks/build_reference.py --synthetic 100 --work runs/reference
    # rebuild with the settings the shipped bundle records and compare with its SHA256SUMS
    python benchmarks/build_reference.py --check --work runs/reference-check
    # after a change to calibration (not to training): keep runs/reference's trained model, redo the rest
    python benchmarks/build_reference.py --recalibrate --work runs/reference

Steps (each one the library call its CLI command makes): combine the manifests (`crossval.combine_manifests`:
absolute paths, a `dataset` column, groups kept per manifest), hold out about 15% of the sources, human and
AI, as the val split (`crossval.fold_split`, as in each cross-validation fold; `--val-by group`: 8:1:1 with
groups whole, `data.split.split_manifest`), train `recipe.train_config(DEFAULT_RECIPE, data=split, seed=...)`
on the CPU with one thread (train calibrates on the val split and fits the familiarity check), evaluate on
the test split if there is one (`--val-by group`: the random-split figures), compute the class
fingerprints of the train split, then write the bundle: the run's config.json (made portable: no machine
paths), model.safetensors, calibration.json, familiarity.safetensors, fingerprints/ (index.json and each
class's luminance.npy), training-data.csv, reference.json, model-card.md (a copy of docs/model-card.md) and
SHA256SUMS. Run it from the repository root.

The same data, seed, recipe, library versions and CPU give the same bytes. Another CPU (other SIMD paths in
oneDNN/OpenBLAS) or another torch/numpy/scipy changes float rounding, so the weights differ in their last
bits and everything derived from them with them; `--check` then names what differs between the two builds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch starts its thread pools

import numpy as np  # noqa: E402
import torch  # noqa: E402

from animeprov import reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "animeprov" / "reference"
CARD_SOURCE = ROOT / "docs" / "model-card.md"
# Columns of training-data.csv: enough to know which image the model saw, and under which licence.
DATA_COLUMNS = ("dataset", "source", "class", "license", "name", "sha256", "split")
# Files whose bytes say nothing about the model: excluded from the rebuild comparison.
NOT_COMPARED = {reference.INFO_FILE}
WORK_MARKER = ".build_reference"  # marks --work as this script's, so that a rebuild may delete it
LICENCES_FILE = "LICENCES.md"  # named in pyproject.toml's license-files: the wheel's metadata carries it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifests", nargs="*", help="manifest CSVs (from `animeprov data index`)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="build from N synthetic images per class")
    parser.add_argument(
        "--synthetic-size", type=int, help="synthetic image size (default: the recipe's size)"
    )
    parser.add_argument("--description", help="what the data is, for the card (default: the manifests)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the bundle folder to write")
    parser.add_argument(
        "--work", type=Path, help="scratch folder (default runs/reference, with --check runs/reference-check)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", help="training recipe (default: recipe.DEFAULT_RECIPE)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override")
    parser.add_argument(
        "--val-by",
        choices=("source", "group"),
        help="source (default with manifests): validate and calibrate on whole sources held out from "
        "training, as each fold of `crossval` does, and keep no test split; group (default with "
        "--synthetic, which has no sources): split by --ratios with groups whole",
    )
    parser.add_argument("--val-share", type=float, default=0.15, help="with --val-by source: share held out")
    parser.add_argument("--ratios", default="8:1:1", help="train:val:test (with --val-by group)")
    parser.add_argument("--per-class", type=int, help="cap every class at this many images (default: none)")
    parser.add_argument("--group-column", default="group", help="rows sharing a value stay in one split")
    parser.add_argument("--device", default="cpu", help="cpu (default: the reproducible choice), cuda, auto")
    parser.add_argument(
        "--check", action="store_true", help="rebuild with the settings --out records and compare its sha256"
    )
    parser.add_argument(
        "--tables", action="store_true", help="print the model card's tables from --out's reference.json"
    )
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="keep --work's finished training (settings from --out's reference.json), refit what follows "
        "it with this code (calibration, familiarity, evaluation, fingerprints) and rewrite --out",
    )
    args = parser.parse_args(argv)
    args.work = args.work or ROOT / "runs" / ("reference-check" if args.check else "reference")
    if args.check:
        return check(args)
    if args.recalibrate:
        info = reference.bundle_info(args.out)
        if info is None:
            raise SystemExit(f"{args.out}: no {reference.INFO_FILE}, no settings to recalibrate with")
        build(info["build"]["args"], args.out, args.work, keep_training=True)
        return 0
    if args.tables:
        info = reference.bundle_info(args.out)
        if info is None:
            raise SystemExit(f"{args.out}: no {reference.INFO_FILE}")
        print(card_tables(info))
        return 0
    settings = settings_from(args)
    build(settings, args.out, args.work)
    return 0


# ----------------------------------------------------------------------------------------------------
# Settings


def settings_from(args: argparse.Namespace) -> dict:
    """The build's settings as recorded in reference.json (what `--check` rebuilds with)."""
    from animeprov.recipe import DEFAULT_RECIPE, parse_settings

    if bool(args.manifests) == bool(args.synthetic):
        raise SystemExit("give manifests or --synthetic N (one of the two)")
    return {
        "manifests": [_portable(Path(m)) for m in args.manifests],
        "synthetic": args.synthetic,
        "synthetic_size": args.synthetic_size,
        "description": args.description,
        "seed": args.seed,
        "recipe": args.recipe or DEFAULT_RECIPE,
        "overrides": parse_settings(args.set),
        "val_by": args.val_by or ("group" if args.synthetic else "source"),
        "val_share": args.val_share,
        "ratios": [float(r) for r in args.ratios.split(":")],
        "per_class": args.per_class,
        "group_column": args.group_column,
        "device": args.device,
    }


def _portable(path: Path) -> str:
    """A manifest path relative to the repository root when it is under it (the build runs from there)."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(ROOT).as_posix()
    except ValueError:
        return os.path.relpath(resolved, ROOT)


def _seed_everything(seed: int) -> None:
    torch.set_num_threads(1)  # one thread: reductions in a fixed order, so the same CPU gives the same bytes
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# Building


def build(settings: dict, out: Path, work: Path, keep_training: bool = False) -> Path:
    """Train and write the bundle to `out` (replaced as a whole); returns `out`. `keep_training`: continue
    `work`'s run instead (train's resume refuses other data or settings), which redoes only what follows
    the epochs: the same bundle a full build would give when the training code has not changed."""
    from animeprov.checkpoint import read_config
    from animeprov.data.manifest import write_rows
    from animeprov.evaluation.evaluate import evaluate_run
    from animeprov.recipe import recipe_values, train_config
    from animeprov.train import train

    missing = [m for m in settings["manifests"] if not (ROOT / m).is_file()]
    if missing:
        raise SystemExit(
            f"no such manifest: {', '.join(missing)} (paths relative to the repository root). The shipped "
            "bundle was built from the development sets of ../shared/data, which are not distributed: "
            "--check needs them at the same paths"
        )
    _seed_everything(settings["seed"])
    recipe = recipe_values(settings["recipe"], settings["overrides"])
    _check_replaceable(work, WORK_MARKER, "--work")
    _check_replaceable(out, reference.SUMS_FILE, "--out")
    if work.exists() and not keep_training:
        shutil.rmtree(work)  # a fresh build every time: resuming would not be byte-identical
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARKER).write_text(
        "scratch folder of benchmarks/build_reference.py: replaced by each build\n"
    )
    # Decoder-trace pairs (recipe `pairs`) are made in a cache of this build's own, never read from an
    # earlier run's: loading the decoder draws from torch's random generator, so whether the cache was
    # warm would change the weights' initialisation.
    os.environ["ANIMEPROV_CACHE"] = str(work / "cache")
    manifests = [ROOT / m for m in settings["manifests"]]
    if settings["synthetic"]:
        manifests = [_synthetic(work, settings, recipe["size"])]

    rows = _combine(manifests, work)
    if settings["synthetic"]:  # name the set, and its licence: the images are animeprov's own drawings
        rows = [
            {**row, "dataset": "synthetic", "license": "MIT (made by animeprov data synth)"} for row in rows
        ]
    split_rows = split_rows_for(rows, settings)
    split_csv = work / "split.csv"
    write_rows(split_csv, split_rows, list(dict.fromkeys(key for row in split_rows for key in row)))

    config = train_config(
        settings["recipe"],
        overrides=settings["overrides"],
        data=str(split_csv),
        seed=settings["seed"],
        device=settings["device"],
        workers=0,
    )
    run = work / "run"
    summary = train(config, run, resume=keep_training and (run / "config.json").is_file())
    if not (run / "calibration.json").is_file():
        raise SystemExit(f"{run}: training did not calibrate ({summary['calibration']}); no bundle written")
    test = None
    if any(row["split"] == "test" for row in split_rows):
        report = evaluate_run(run, split_csv, work / "eval", split="test", device=settings["device"])
        detection = report.get("detection") or {}
        test = {
            "n": report["n"],
            "attribution_accuracy": report["attribution_accuracy"],
            "macro_f1": report["macro_f1"],
            "detection_accuracy": detection.get("accuracy"),
            "detection_ap": detection.get("average_precision"),
            "roc_auc": detection.get("roc_auc"),
        }

    staging = out.with_name(f".{out.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    data_sha256 = _write_training_data(split_rows, staging / reference.DATA_FILE)
    _write_run_files(run, staging, data_sha256)
    _write_fingerprints(split_csv, read_config(run), staging / "fingerprints")
    info = _reference_info(settings, split_rows, read_config(run), summary, test, staging)
    (staging / reference.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    _write_licences(info, staging / LICENCES_FILE)
    if CARD_SOURCE.is_file():
        shutil.copyfile(CARD_SOURCE, staging / reference.CARD_FILE)
    reference.write_sums(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(f"bundle written: {out} ({_size_mb(out):.2f} MB)")
    return out


def split_rows_for(rows: list[dict], settings: dict) -> list[dict]:
    """The rows with their `split`. val_by "source": whole sources held out for validation and calibration
    (`crossval.fold_split` with nothing held out for test), so that the thresholds and the detection shift
    are fitted on sources the model never trained on, like every model the cross-validation measured; a
    random validation split shares its sources with training and says nothing about unseen ones.
    val_by "group" (bundles built before it, and synthetic data): train:val:test by `ratios`, groups whole."""
    from animeprov.config import DEFAULT_HUMAN_CLASS
    from animeprov.crossval import fold_split
    from animeprov.data.split import MAX_HELD_OUT_CLASS_SHARE, split_manifest

    if settings.get("val_by", "group") == "source":
        if any(not row.get("source") for row in rows):
            raise SystemExit(
                "--val-by source: every manifest row needs a `source` value (or use --val-by group)"
            )
        return fold_split(
            rows,
            [],
            "source",
            DEFAULT_HUMAN_CLASS,
            val_by="source",
            val_share=settings["val_share"],
            seed=settings["seed"],
            max_class_share=MAX_HELD_OUT_CLASS_SHARE,
        )
    group = settings["group_column"]
    if any(group not in row for row in rows):
        print(f"note: rows without a {group!r} column are groups of their own", file=sys.stderr)
        rows = [{**row, group: row.get(group, "")} for row in rows]
    largest = max(Counter(row["class"] for row in rows).values())
    return split_manifest(
        rows,
        ratios=settings["ratios"],
        per_class=settings["per_class"] or largest,  # no cap by default: every image trains or tests
        seed=settings["seed"],
        group_column=group,
    )


def _combine(manifests: list[Path], work: Path) -> list[dict]:
    """Every manifest's rows with absolute paths (`crossval.combine_manifests`), `dataset` named after the
    CSV, or after its folder for a `<set>/manifest.csv` (as in ../shared/data, where every CSV has that
    name), and groups kept apart per dataset."""
    from animeprov.crossval import combine_manifests

    rows: list[dict] = []
    for number, manifest in enumerate(manifests):
        name = manifest.parent.name if manifest.stem == "manifest" else manifest.stem
        # "class" is in every manifest: combine_manifests only insists that its `by` column is filled.
        for row in combine_manifests([manifest], work / f"data-{number}.csv", by="class"):
            row["dataset"] = name
            if row.get("group"):
                row["group"] = f"{name}:{row['group'].partition(':')[2]}"
            rows.append(row)
    return rows


def _check_replaceable(folder: Path, marker: str, option: str) -> None:
    """Refuse to delete a folder that this script did not write (it holds no `marker`) unless it is empty."""
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise SystemExit(
            f"{option} {folder}: not empty and not written by this script (no {marker}); choose another"
        )


def _synthetic(work: Path, settings: dict, recipe_size: int) -> Path:
    from animeprov.data.synth import SIZE_MULTIPLE, generate_synthetic

    size = settings["synthetic_size"] or max(recipe_size, 64)
    size = -(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return generate_synthetic(work / "synth", settings["synthetic"], size=size, seed=settings["seed"])


def _write_training_data(rows: list[dict], path: Path) -> str:
    """training-data.csv (portable: no machine paths); returns its sha256."""
    import csv

    from animeprov.io import sha256_file

    lines = []
    for row in rows:
        lines.append(
            {
                "dataset": row["dataset"],
                "source": row.get("source") or row["class"],
                "class": row["class"],
                "license": row.get("license", ""),
                "name": Path(row["path"]).name,
                "sha256": row.get("sha256") or sha256_file(row["path"]),
                "split": row["split"],
            }
        )
    lines.sort(key=lambda line: (line["dataset"], line["class"], line["name"], line["sha256"]))
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.DictWriter(handle, fieldnames=DATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(lines)
    return sha256_file(path)


def _write_run_files(run: Path, bundle: Path, data_sha256: str) -> None:
    """The run's files, with machine paths replaced by training-data.csv and its sha256; the machine's
    library versions go to reference.json (they are what a rebuild elsewhere differs in)."""
    config = json.loads((run / "config.json").read_text())
    config.pop("environment", None)
    config.update(data=reference.DATA_FILE, data_sha256=data_sha256)
    (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["source"].update(data=reference.DATA_FILE, data_sha256=data_sha256)
    (bundle / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    # model.safetensors as it is (calibration and familiarity name its sha256; its one metadata key has
    # a fixed order), familiarity.safetensors with its metadata in a fixed order.
    shutil.copyfile(run / "model.safetensors", bundle / "model.safetensors")
    if (run / "familiarity.safetensors").is_file():
        _copy_safetensors(run / "familiarity.safetensors", bundle / "familiarity.safetensors")


def _copy_safetensors(source: Path, target: Path) -> None:
    """Copy with the JSON header's keys sorted: safetensors writes metadata in hash order, which changes
    from one process to the next, so the same tensors would not give the same sha256."""
    data = source.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to 8-byte alignment
    target.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + length :])


def _write_fingerprints(split_csv: Path, config: dict, folder: Path) -> None:
    """The train split's class fingerprints at the model size: index.json and <class>/luminance.npy, what
    `serve` shows (the PNG figures of `animeprov fingerprint` are left out: size, and matplotlib's bytes)."""
    from animeprov.fingerprint import compute_fingerprints, labelled_images

    prints = compute_fingerprints(labelled_images(split_csv, split="train"), size=config["size"])
    index = {
        "description": "mean log(|DCT-II ortho| + eps) of the luminance per class, centre crops, train split",
        "size": config["size"],
        "human_class": config.get("human_class"),
        "source": {"data": reference.DATA_FILE, "split": "train"},
        "classes": {},
    }
    for name, fingerprint in sorted(prints.items()):
        index["classes"][name] = {"images": fingerprint.count}
        if fingerprint.count:
            (folder / name).mkdir(parents=True, exist_ok=True)
            np.save(folder / name / "luminance.npy", fingerprint.mean("luminance").astype(np.float32))
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _reference_info(settings, rows, config, summary, test, bundle: Path) -> dict:
    from animeprov.checkpoint import environment_info

    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "val": 0, "test": 0})
    sources: dict[tuple, dict] = {}
    for row in rows:
        counts[row["class"]][row["split"]] += 1
        key = (row["dataset"], row.get("source") or row["class"], row["class"])
        entry = sources.setdefault(
            key,
            {
                "dataset": key[0],
                "source": key[1],
                "class": key[2],
                "train": 0,
                "val": 0,
                "test": 0,
                "licence": "",
            },
        )
        entry[row["split"]] += 1
        entry["licence"] = entry["licence"] or row.get("license", "")
    calibration = json.loads((bundle / "calibration.json").read_text())
    measured = calibration.get("measured", {})
    if settings["synthetic"]:
        built_from = (
            f"SYNTHETIC STAND-IN: `animeprov data synth`, {settings['synthetic']} images per class "
            "(procedural drawings, not real images); replace with the real-data build"
        )
    else:
        built_from = settings["description"] or "manifests: " + ", ".join(settings["manifests"])
    command = build_command(settings)
    return {
        "name": reference.REFERENCE,
        "built_from": built_from,
        "synthetic": bool(settings["synthetic"]),
        "recipe": settings["recipe"],
        "overrides": settings["overrides"],
        "seed": settings["seed"],
        "variant": config["variant"],
        "size": config["size"],
        "classes": config["classes"],
        "human_class": config.get("human_class"),
        "counts": {name: counts[name] for name in sorted(counts)},
        "sources": [sources[key] for key in sorted(sources)],
        "test": test,
        "training": {
            "best_epoch": summary.get("best_epoch"),
            "best_val_accuracy": summary.get("best_val_accuracy"),
        },
        "calibration": {
            key: measured.get(key)
            for key in ("n_human", "n_generated", "fpr", "fpr_upper_95", "tpr", "unsure_rate", "ece_after")
        }
        | {"target_fpr": calibration.get("target_fpr")},
        "licences": {
            "model": _model_licence(settings)[0],
            "data": "per source in `sources` and training-data.csv; several sets are research use only",
        },
        "card": "docs/model-card.md",
        "build": {"command": command, "args": settings, "environment": _environment(environment_info())},
    }


def build_command(settings: dict) -> str:
    """The command line that gives `settings` (what reference.json records as build.command)."""
    import shlex

    args = list(settings["manifests"])
    if settings["synthetic"]:
        args += ["--synthetic", str(settings["synthetic"])]
        if settings["synthetic_size"]:
            args += ["--synthetic-size", str(settings["synthetic_size"])]
    if settings["description"]:
        args += ["--description", settings["description"]]
    args += ["--seed", str(settings["seed"]), "--recipe", settings["recipe"]]
    for field, value in settings["overrides"].items():
        args += ["--set", f"{field}={json.dumps(value) if not isinstance(value, str) else value}"]
    val_by = settings.get("val_by", "group")
    args += ["--val-by", val_by]
    if val_by == "source":
        args += ["--val-share", f"{settings['val_share']:g}"]
    else:
        args += ["--ratios", ":".join(f"{r:g}" for r in settings["ratios"])]
    if settings["per_class"]:
        args += ["--per-class", str(settings["per_class"])]
    args += ["--group-column", settings["group_column"], "--device", settings["device"]]
    return "python benchmarks/build_reference.py " + shlex.join(args)


def _write_licences(info: dict, path: Path) -> None:
    """The model's licence and, per source, the licence of the images it was trained on."""
    lines = [
        "# Licences of the bundled reference model",
        "",
        f"Built from: {info['built_from']}.",
        "",
        *_model_licence(info)[1],
        "- The training images are NOT shipped, only their file names and sha256 (training-data.csv).",
        "  Their licences, per source, are below. Several sources are research use only, development use",
        "  only or all rights reserved: the model learnt from them under research use; check them before",
        "  any other use.",
        "",
        "| dataset | source | class | images | licence |",
        "|---|---|---|---:|---|",
    ]
    for entry in info["sources"]:
        images = entry["train"] + entry["val"] + entry["test"]
        licence = " ".join(str(entry["licence"] or "not stated").split()).replace("|", "/")
        lines.append(f"| {entry['dataset']} | {entry['source']} | {entry['class']} | {images} | {licence} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _model_licence(settings: dict) -> tuple[str, list[str]]:
    """The model's licence in short (reference.json, `animeprov models`, /v1/model) and as LICENCES.md's
    lines: ours (MIT), or fine-tuned from ImageNet weights (Apache-2.0); the taef2 decoder's licence when it
    made training pairs. `settings`: the build's (or reference.json's) recipe and overrides."""
    from animeprov.recipe import recipe_values

    recipe = recipe_values(settings["recipe"], settings["overrides"])
    if recipe["init"] == "imagenet":
        summary = (
            "Apache-2.0 (the weights: fine-tuned from EfficientNet-Lite0 ImageNet weights, "
            "animeprov/weights/efficientnet-lite0/LICENSE); the other files MIT"
        )
        lines = [
            "- model.safetensors: fine-tuned from the EfficientNet-Lite0 ImageNet weights (Copyright Google",
            "  LLC; converted by ML Illustrated), Apache License 2.0:",
            "  animeprov/weights/efficientnet-lite0/LICENSE.",
            "- The other files (calibration.json, familiarity.safetensors, fingerprints/): MIT, like",
            "  animeprov's code (LICENSE at the top of the repository).",
        ]
    else:
        summary = "MIT (the weights, like the code)"
        lines = [
            "- The model (model.safetensors, calibration.json, familiarity.safetensors, fingerprints/): MIT,",
            "  like animeprov's code (LICENSE at the top of the repository).",
        ]
    if recipe["pairs"] == "taef2":
        lines += [
            "- The taef2 decoder that made the decoder-trace training pairs (animeprov/weights/taef2): MIT,",
            "  see its LICENSE.",
        ]
    return summary, lines


def card_tables(info: dict) -> str:
    """The card's figures that the build itself measures, as Markdown: data per source, random-split test
    figures, calibration."""

    def fmt(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [f"Built from: {info['built_from']}; recipe `{info['recipe']}`, seed {info['seed']}.", ""]
    lines += [
        "| dataset | source | class | train | val | test | licence |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for e in info["sources"]:
        licence = " ".join(str(e["licence"] or "not stated").split()).replace("|", "/")
        cells = [e["dataset"], e["source"], e["class"], e["train"], e["val"], e["test"], licence]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    test = info.get("test")
    if test:  # a build validated on held-out sources (--val-by source) keeps no test split
        lines += [
            "",
            "| random split (test) | n | attribution accuracy | macro-F1 | detection accuracy | detection AP "
            "| ROC-AUC |",
            "|---|---:|---:|---:|---:|---:|---:|",
            "| "
            + " | ".join(
                [info["name"]]
                + [fmt(test.get(k)) for k in ("n", "attribution_accuracy", "macro_f1", "detection_accuracy")]
                + [fmt(test.get(k)) for k in ("detection_ap", "roc_auc")]
            )
            + " |",
        ]
    cal = info.get("calibration") or {}
    lines += [
        "",
        "| calibration (val split) | human images | generated images | target FPR | achieved FPR | "
        "FPR 95% upper bound | TPR at the ai threshold | unsure rate | ECE after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| "
        + " | ".join(
            [info["name"]]
            + [
                fmt(cal.get(k))
                for k in ("n_human", "n_generated", "target_fpr", "fpr", "fpr_upper_95", "tpr", "unsure_rate")
            ]
            + [fmt(cal.get("ece_after"))]
        )
        + " |",
    ]
    return "\n".join(lines)


def _environment(info: dict) -> dict:
    return {
        **info,
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "code_sha256": _code_sha256(),
    }


def _code_sha256() -> str:
    """One sha256 over animeprov's Python files (the code that trains): equal code, equal digest, whatever
    the git commit (committing the bundle itself moves the commit)."""
    import hashlib

    from animeprov.io import sha256_file

    package = ROOT / "src" / "animeprov"
    lines = [
        f"{path.relative_to(package).as_posix()} {sha256_file(path)}"
        for path in sorted(package.rglob("*.py"))
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


# ----------------------------------------------------------------------------------------------------
# Checking


def check(args: argparse.Namespace) -> int:
    """Rebuild with the settings the shipped bundle records and compare every file's sha256."""
    shipped = args.out
    info = reference.bundle_info(shipped)
    if info is None:
        raise SystemExit(f"{shipped}: no {reference.INFO_FILE}, nothing to check against")
    reference.verify_bundle(shipped)  # the shipped files match their own SHA256SUMS
    settings = settings_from(args) if (args.manifests or args.synthetic) else info["build"]["args"]
    rebuilt = build(settings, Path(tempfile.mkdtemp(prefix="reference-check-")) / "bundle", args.work)
    try:
        ours, theirs = reference.read_sums(shipped), reference.read_sums(rebuilt)
        names = sorted((set(ours) | set(theirs)) - NOT_COMPARED)
        differ = [name for name in names if ours.get(name) != theirs.get(name)]
        for name in names:
            mark = "differs" if name in differ else "same"
            print(
                f"{mark:8} {name}  shipped {str(ours.get(name))[:12]}  rebuilt {str(theirs.get(name))[:12]}"
            )
        if not differ:
            print(f"OK: the rebuilt bundle matches {shipped / reference.SUMS_FILE} ({len(names)} files)")
            return 0
        for line in explain(info, reference.bundle_info(rebuilt), differ, shipped, rebuilt):
            print(line)
        return 1
    finally:
        shutil.rmtree(rebuilt.parent, ignore_errors=True)


def explain(
    shipped_info: dict, rebuilt_info: dict, differ: list[str], shipped: Path, rebuilt: Path
) -> list[str]:
    """Why two builds differ, most basic cause first."""
    lines = [f"MISMATCH in {len(differ)} file(s): {', '.join(differ)}"]
    if reference.DATA_FILE in differ:
        lines.append(
            f"- the training data differs ({reference.DATA_FILE}): other images, manifests or split; "
            f"compare the two lists: diff {shipped / reference.DATA_FILE} {rebuilt / reference.DATA_FILE}"
        )
    if "config.json" in differ:
        old = json.loads((shipped / "config.json").read_text())
        new = json.loads((rebuilt / "config.json").read_text())
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        lines.append(f"- the run's settings differ (config.json: {', '.join(keys)}), e.g. a changed recipe")
    before = shipped_info.get("build", {}).get("environment", {})
    now = rebuilt_info.get("build", {}).get("environment", {})
    code = ("git_commit", "code_sha256")
    if before.get("code_sha256") != now.get("code_sha256"):
        lines.append(
            "- the code differs (sha256 of src/animeprov/**/*.py): built at commit "
            f"{before.get('git_commit')}, rebuilt at {now.get('git_commit')} (plus any uncommitted changes); "
            "a change to the training code changes the weights: rebuild the bundle with this code"
        )
    changed = [
        f"{key} {before.get(key)} -> {now.get(key)}"
        for key in sorted(before.keys() | now.keys())
        if key not in code and before.get(key) != now.get(key)
    ]
    if changed:
        lines.append(
            "- this machine differs from the build machine: " + "; ".join(changed) + ". Another CPU or "
            "library version rounds floats differently (other SIMD kernels), so the weights differ in their "
            "last bits and the calibration, familiarity check and fingerprints with them: expected, and "
            "not a sign of a broken build. Compare predictions instead."
        )
    if len(lines) == 1:
        lines.append(
            "- same data, settings, code, libraries and CPU model, yet other bytes: nondeterminism in this "
            "build (threads? a GPU device?); rerun with --device cpu and OMP_NUM_THREADS=1"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
