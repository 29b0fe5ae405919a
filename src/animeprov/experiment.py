"""Declarative experiment grids: variants x training sets x test sets (the paper's Tables 2 and 3).

A TOML config names the variants, the training sets (split CSVs with train/val rows) and the test sets
(CSVs, a split or every row); `run_experiment` trains every (variant, training set) cell, evaluates it on
every test set and writes the paper's tables. Everything is resumable: a finished training or evaluation
is recorded next to its output and skipped on the next run (with the same settings), and a training that
was killed continues from its last finished epoch (`train(..., resume=True)`).

Test sets may hold classes a model never saw (a new generator). Such images
- count for detection: an image of an unseen class is generated, so judging it generated is right;
- are left out of attribution accuracy, which is computed over the images of the model's own classes
  only; they are reported separately (share judged generated, and to which known class they went).

See docs/experiments.md for the config format, configs/paper.toml and configs/synth.toml for examples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_HUMAN_CLASS, get_variant
from animeprov.data.dataset import ImageDataset, read_split_rows
from animeprov.data.manifest import SPLIT_COLUMN, file_digest, read_columns, read_rows, write_rows
from animeprov.data.split import split_manifest
from animeprov.data.synth import EXTRA_CLASSES, MANIFEST_NAME, SYNTH_CLASSES, generate_synthetic
from animeprov.engine import make_loader, predict, prepare_model, select_device
from animeprov.evaluation.metrics import classification_report, detection_metrics
from animeprov.progress import console, labelled, progress_bar
from animeprov.reports.figures import plot_confusion
from animeprov.reports.tables import markdown_table, write_json
from animeprov.train import TrainConfig, train

SYNTHETIC_PLACEHOLDER = "{synthetic}"
CELL_FILE = "experiment-cell.json"  # written into a run / evaluation folder once that cell is finished
SYNTHETIC_SPEC_FILE = "synthetic.json"  # the [synthetic] settings the data folder was made with
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # set names become folder names
_GRID_OWNED = ("data", "variant", "human_class")  # TrainConfig fields the grid sets itself
_TOP_KEYS = {
    "name",
    "human_class",
    "variants",
    "train",
    "variant_train",
    "evaluate",
    "synthetic",
    "train_sets",
    "test_sets",
}
_EVALUATE_DEFAULTS = {"batch_size": 64, "workers": 0, "threshold": 0.5}


class ConfigError(ValueError):
    """An experiment config that cannot be run, with the file and what is wrong."""


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSpec:
    """Synthetic "random" and "curated" sets plus held-out generators, made from the embedded benchmark.

    A pool of `pool_per_class` images per class is generated; per class, `per_class` images drawn at random
    form the "random" set, and the `per_class` highest-`quality` images of the rest form the "curated" set
    (disjoint, so training on one and testing on the other never reuses an image). Each is split 8:1:1.
    Each held-out class gets `held_out_per_class` images in its own manifest (no split: a test set).
    """

    size: int = 128
    per_class: int = 100
    pool_per_class: int = 250
    classes: tuple[str, ...] = ("human", "nearest-conv", "transposed-conv", "bilinear-conv", "pixel-shuffle")
    held_out: tuple[str, ...] = EXTRA_CLASSES
    held_out_per_class: int = 50
    seed: int = 0
    workers: int = 0
    folder: str = "data"  # relative to the experiment's --out folder


@dataclass(frozen=True)
class DataSet:
    name: str
    csv: Path
    split: str | None  # None: every row of the CSV


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    variants: tuple[str, ...]
    train_sets: tuple[DataSet, ...]
    test_sets: tuple[DataSet, ...]
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every cell
    variant_train: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-variant overrides
    evaluate: dict[str, Any] = field(default_factory=lambda: dict(_EVALUATE_DEFAULTS))
    human_class: str = DEFAULT_HUMAN_CLASS
    synthetic: SyntheticSpec | None = None
    source: str = ""

    def train_config(self, variant: str, train_set: DataSet) -> TrainConfig:
        fields = {**self.train, **self.variant_train.get(variant, {})}
        return TrainConfig(data=str(train_set.csv), variant=variant, human_class=self.human_class, **fields)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def load_experiment_config(path: str | os.PathLike, out: str | os.PathLike) -> ExperimentConfig:
    """Read and validate a TOML grid. Relative paths are relative to the config file's folder;
    "{synthetic}" stands for the synthetic data folder inside `out`. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_experiment_config(raw, base=path.parent, out=Path(out), source=str(path))


def parse_experiment_config(
    raw: dict[str, Any], *, base: Path, out: Path, source: str = "<config>"
) -> ExperimentConfig:
    """Validate a parsed TOML document (see `load_experiment_config`)."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{source}: {message}")

    _no_unknown_keys(raw, _TOP_KEYS, "top level", fail)
    variants = raw.get("variants")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise fail('"variants" must be a non-empty list of variant names')
    for variant in variants:
        try:
            get_variant(variant)
        except ValueError as error:
            raise fail(str(error)) from None
    if len(set(variants)) != len(variants):
        raise fail(f"variants are repeated: {variants}")

    train_fields = _train_fields(raw.get("train", {}), "train", fail)
    variant_train = raw.get("variant_train", {})
    if not isinstance(variant_train, dict):
        raise fail('"variant_train" must be a table of per-variant [variant_train.NAME] tables')
    for variant, overrides in variant_train.items():
        if variant not in variants:
            raise fail(f"[variant_train.{variant}]: {variant!r} is not among the grid's variants {variants}")
        variant_train[variant] = _train_fields(overrides, f"variant_train.{variant}", fail)

    evaluate = raw.get("evaluate", {})
    _no_unknown_keys(evaluate, set(_EVALUATE_DEFAULTS), "[evaluate]", fail)
    evaluate = {**_EVALUATE_DEFAULTS, **evaluate}
    for key, default in _EVALUATE_DEFAULTS.items():
        _check_type(evaluate[key], default, f"evaluate.{key}", fail)

    synthetic = _synthetic_spec(raw["synthetic"], fail) if "synthetic" in raw else None
    synthetic_dir = out / synthetic.folder if synthetic else None
    train_sets = _data_sets(raw.get("train_sets"), "train_sets", base, synthetic_dir, fail)
    test_sets = _data_sets(raw.get("test_sets"), "test_sets", base, synthetic_dir, fail)

    human_class = raw.get("human_class", DEFAULT_HUMAN_CLASS)
    name = raw.get("name", Path(source).stem)
    for key, value in (("human_class", human_class), ("name", name)):
        if not isinstance(value, str) or not value:
            raise fail(f'"{key}" must be a non-empty string')
    return ExperimentConfig(
        name=name,
        variants=tuple(variants),
        train_sets=train_sets,
        test_sets=test_sets,
        train=train_fields,
        variant_train=variant_train,
        evaluate=evaluate,
        human_class=human_class,
        synthetic=synthetic,
        source=source,
    )


def _no_unknown_keys(table: Any, allowed: set[str], where: str, fail) -> None:
    if not isinstance(table, dict):
        raise fail(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}")


def _check_type(value: Any, default: Any, where: str, fail) -> None:
    expected = type(default)
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise fail(f"{where} must be {expected.__name__}, got {value!r}")


def _train_fields(table: Any, where: str, fail) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if isinstance(table, dict):
        owned = sorted(set(table) & set(_GRID_OWNED))
        if owned:
            raise fail(f"[{where}] may not set {', '.join(owned)}: the grid sets it (human_class: top level)")
    _no_unknown_keys(table, set(defaults) - set(_GRID_OWNED), f"[{where}]", fail)
    for key, value in table.items():
        _check_type(value, defaults[key], f"{where}.{key}", fail)
    return dict(table)


def _synthetic_spec(table: Any, fail) -> SyntheticSpec:
    defaults = SyntheticSpec()
    _no_unknown_keys(table, {f.name for f in dataclasses.fields(SyntheticSpec)}, "[synthetic]", fail)
    values = {}
    for key, value in table.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(f"synthetic.{key} must be a list of class names")
            unknown = sorted(set(value) - set(SYNTH_CLASSES))
            if unknown:
                raise fail(f"synthetic.{key}: unknown class(es) {unknown}; choose from {list(SYNTH_CLASSES)}")
            value = tuple(value)
        else:
            _check_type(value, default, f"synthetic.{key}", fail)
        values[key] = value
    spec = SyntheticSpec(**values)
    if set(spec.classes) & set(spec.held_out):
        raise fail(
            "synthetic.held_out classes must not be among synthetic.classes (no model may train on them)"
        )
    if spec.pool_per_class < 3 * spec.per_class:
        # random takes per_class; curated keeps the best per_class of the rest, at most half of it.
        raise fail(
            "synthetic.pool_per_class must be at least 3 x per_class, so that 'curated' is a selection"
        )
    if min(spec.per_class, spec.held_out_per_class) < 1 or spec.workers < 0:
        raise fail("synthetic.per_class and held_out_per_class must be >= 1, workers >= 0")
    return spec


def _data_sets(table: Any, where: str, base: Path, synthetic_dir: Path | None, fail) -> tuple[DataSet, ...]:
    """Entries: `name = "file.csv"` or `name = {csv = "file.csv", split = "test"}`."""
    if not isinstance(table, dict) or not table:
        raise fail(f'[{where}] must be a table with at least one NAME = "file.csv" entry')
    is_train = where == "train_sets"
    sets = []
    for name, entry in table.items():
        if not _NAME_PATTERN.match(name):
            raise fail(f"{where}.{name}: names may hold letters, digits, '.', '_' and '-' only")
        if isinstance(entry, str):
            entry = {"csv": entry}
        _no_unknown_keys(entry, {"csv"} if is_train else {"csv", "split"}, f"[{where}.{name}]", fail)
        if not isinstance(entry.get("csv"), str):
            raise fail(f'{where}.{name}: needs csv = "path/to/file.csv"')
        text = entry["csv"]
        if SYNTHETIC_PLACEHOLDER in text:
            if synthetic_dir is None:
                raise fail(f"{where}.{name}: uses {SYNTHETIC_PLACEHOLDER} but the config has no [synthetic]")
            csv_path = Path(text.replace(SYNTHETIC_PLACEHOLDER, str(synthetic_dir)))
        else:
            csv_path = Path(text) if Path(text).is_absolute() else base / text
            _check_csv(csv_path, is_train, entry.get("split", "test"), f"{where}.{name}", fail)
        split = entry.get("split", "test")
        if not isinstance(split, str):
            raise fail(f'{where}.{name}: split must be a string ("" for every row)')
        sets.append(DataSet(name, csv_path, None if is_train else (split or None)))
    return tuple(sets)


def _check_csv(csv_path: Path, is_train: bool, split: str, where: str, fail) -> None:
    if not csv_path.is_file():
        raise fail(f"{where}: file not found: {csv_path}")
    try:
        columns = read_columns(csv_path)
    except ValueError as error:
        raise fail(f"{where}: {error}") from None
    if (is_train or split) and SPLIT_COLUMN not in columns:
        need = "train and val rows" if is_train else f'split {split!r} (use split = "" for every row)'
        raise fail(f"{where}: {csv_path} has no '{SPLIT_COLUMN}' column but needs {need}")


# ----------------------------------------------------------------------------------------------
# Synthetic data
# ----------------------------------------------------------------------------------------------


def prepare_synthetic_sets(spec: SyntheticSpec, folder: Path) -> dict[str, Path]:
    """Generate (or reuse) the synthetic pool and write random.csv, curated.csv and
    held-out-<class>.csv into `folder`; return name -> CSV path."""
    folder = Path(folder)
    outputs = {"random": folder / "random.csv", "curated": folder / "curated.csv"}
    outputs.update({f"held-out-{cls}": folder / f"held-out-{cls}.csv" for cls in spec.held_out})
    recorded = folder / SYNTHETIC_SPEC_FILE
    wanted = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(spec))).items() if k != "workers"}
    if recorded.exists():
        if json.loads(recorded.read_text(encoding="utf-8")) != wanted:
            raise ConfigError(
                f"{folder} holds synthetic data made with other [synthetic] settings ({recorded}); "
                "use another --out"
            )
        if all(p.exists() for p in outputs.values()):
            return outputs
    write_json(wanted, recorded)
    pool_manifest = _generate(folder / "pool", spec.classes, spec.pool_per_class, spec)
    pool = list(read_rows(pool_manifest))
    random_rows, curated_rows = [], []
    for cls in spec.classes:
        rows = sorted((row for row in pool if row["class"] == cls), key=lambda row: row["path"])
        random.Random(f"{spec.seed}/{cls}").shuffle(rows)
        random_rows += rows[: spec.per_class]
        rest = sorted(rows[spec.per_class :], key=lambda row: (-float(row["quality"]), row["path"]))
        curated_rows += rest[: spec.per_class]
    for name, rows in (("random", random_rows), ("curated", curated_rows)):
        split = split_manifest(rows, ratios=(8, 1, 1), seed=spec.seed)
        write_rows(outputs[name], split, list(split[0]), source_csv=pool_manifest)
    if spec.held_out:
        held_manifest = _generate(folder / "held-out", spec.held_out, spec.held_out_per_class, spec)
        held = list(read_rows(held_manifest))
        for cls in spec.held_out:
            rows = [row for row in held if row["class"] == cls]
            write_rows(outputs[f"held-out-{cls}"], rows, list(rows[0]), source_csv=held_manifest)
    return outputs


def _generate(folder: Path, classes: tuple[str, ...], per_class: int, spec: SyntheticSpec) -> Path:
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        return manifest
    console.print(f"generating {per_class} images per class ({', '.join(classes)}) at {spec.size}px")
    with progress_bar() as bar:
        task = bar.add_task("synthesising", total=per_class * len(classes), info="")
        return generate_synthetic(
            folder,
            per_class,
            size=spec.size,
            seed=spec.seed,
            classes=list(classes),
            workers=spec.workers,
            on_progress=lambda n: bar.update(task, advance=n),
        )


# ----------------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------------


def cell_report(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    unseen: list[str],
    *,
    human_class: str | None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics of one model on one test set whose labels index `classes + unseen`.

    Attribution: over the images of known classes only (`attribution` is their classification_report).
    Detection: over every image; an unseen class counts as generated. Unseen classes: per class, the share
    judged generated and the known classes their images were assigned to (argmax).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    known = labels < k
    has_human = human_class is not None and human_class in classes
    attribution = (
        classification_report(
            labels[known],
            probs[known],
            classes,
            human_class=human_class if has_human else None,
            threshold=threshold,
        )
        if known.any()
        else None
    )
    detection = (
        detection_metrics(labels, probs, classes.index(human_class), threshold)
        if has_human and len(labels)
        else None
    )
    predicted = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    names = classes + unseen
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)  # unseen columns stay 0: never predicted
    np.add.at(confusion, (labels, predicted), 1)
    unseen_report = {}
    for offset, name in enumerate(unseen):
        mine = labels == k + offset
        assigned = Counter(classes[i] for i in predicted[mine])
        unseen_report[name] = {
            "n": int(mine.sum()),
            "judged_generated": float((1.0 - probs[mine, classes.index(human_class)] >= threshold).mean())
            if has_human and mine.any()
            else None,
            "assigned": {cls: assigned.get(cls, 0) for cls in classes},
        }
    return {
        "n": int(len(labels)),
        "n_known": int(known.sum()),
        "n_unseen": int((~known).sum()),
        "classes": classes,
        "unseen_classes": unseen,
        "attribution_accuracy": attribution["attribution_accuracy"] if attribution else None,
        "macro_f1": attribution["macro_f1"] if attribution else None,
        "attribution": attribution,
        "detection": detection,
        "unseen": unseen_report,
        "confusion_class_names": names,
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_cell(
    run: Path,
    test_set: DataSet,
    out: Path,
    *,
    human_class: str,
    threshold: float,
    batch_size: int,
    workers: int,
    device: str,
) -> dict[str, Any]:
    """The run's best weights on one test set (which may hold unseen classes); writes report.json and
    confusion.png into `out`."""
    model, config = ckpt.load_model(run)
    torch_device = select_device(device)
    prepare_model(model, torch_device)
    classes = list(config["classes"])
    rows = read_split_rows(test_set.csv, test_set.split)
    unseen = sorted({row["class"] for row in rows} - set(classes))
    dataset = ImageDataset(test_set.csv, rows, classes + unseen, config["size"])
    predictions = predict(
        model, make_loader(dataset, batch_size, workers=workers, device=torch_device), torch_device
    )
    report = cell_report(
        predictions.labels, predictions.probs, classes, unseen, human_class=human_class, threshold=threshold
    )
    report.update(
        run=str(run),
        variant=config["variant"],
        test_set=test_set.name,
        data=str(test_set.csv),
        split=test_set.split,
        skipped=[{"path": path, "reason": reason} for path, reason in predictions.errors],
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "report.json")
    plot_confusion(
        report["confusion_matrix"],
        classes + [f"{name} (unseen)" for name in unseen],
        out / "confusion.png",
        title=f"{config['variant']} on {test_set.name}",
    )
    return report


def _done(folder: Path, settings: dict[str, Any]) -> bool:
    """True when `folder` holds a finished cell with the same settings; an error when the settings differ."""
    marker = folder / CELL_FILE
    if not marker.is_file():
        return False
    previous = json.loads(marker.read_text(encoding="utf-8"))
    before = previous.get("settings") or {}
    if before != settings:
        changed = ", ".join(
            f"{key} {before.get(key)!r} -> {settings.get(key)!r}"
            for key in sorted(before.keys() | settings.keys())
            if before.get(key) != settings.get(key)
        )
        raise ConfigError(
            f"{folder} was run with other settings ({changed}; {marker}); "
            "use another --out, or delete that folder to redo it"
        )
    return True


def _mark_done(folder: Path, settings: dict[str, Any], seconds: float) -> None:
    write_json({"settings": settings, "seconds": round(seconds, 2)}, folder / CELL_FILE)


# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------


def run_experiment(
    config: ExperimentConfig, out: str | os.PathLike, *, device: str | None = None
) -> dict[str, Any]:
    """Run (or resume) every cell of the grid and write the tables into `out`; return results.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_json(config.to_dict(), out / "experiment.json")
    if config.synthetic is not None:
        prepare_synthetic_sets(config.synthetic, out / config.synthetic.folder)
    _check_ready(config)

    cells = []
    n_cells = len(config.train_sets) * len(config.variants)
    for train_set in config.train_sets:
        for variant in config.variants:
            train_config = config.train_config(variant, train_set)
            if device is not None:
                train_config = dataclasses.replace(train_config, device=device)
            run = out / "runs" / train_set.name / variant
            settings = {
                k: v for k, v in dataclasses.asdict(train_config).items() if k not in ("device", "workers")
            }
            settings["data_sha256"] = file_digest(train_set.csv)  # other data under the same name: redo
            cell = {"variant": variant, "train_set": train_set.name, "run": str(run), "tests": {}}
            console.print(
                labelled(
                    f"cell {len(cells) + 1}/{n_cells}:", f"{variant} trained on {train_set.name}", "bold"
                )
            )
            trained_earlier = _done(run, settings)
            if trained_earlier:
                cell["train_seconds"] = 0.0
                console.print("  training: finished earlier, skipped")
            else:
                began = time.perf_counter()
                summary = train(train_config, run, resume=True)
                cell["train_seconds"] = time.perf_counter() - began
                _mark_done(run, settings, cell["train_seconds"])
                console.print(
                    f"  trained: best val acc {summary['best_val_accuracy']:.3f} "
                    f"in {cell['train_seconds']:.0f}s"
                )
            for test_set in config.test_sets:
                # Weights trained in this call (e.g. the run folder was deleted to redo it) make any earlier
                # evaluation of this cell stale: it is redone, never read back.
                cell["tests"][test_set.name] = _evaluate(
                    config, run, train_set, variant, test_set, out, device, redo=not trained_earlier
                )
            cells.append(cell)

    results = {
        "name": config.name,
        "config": config.source,
        "human_class": config.human_class,
        "threshold": config.evaluate["threshold"],
        "variants": list(config.variants),
        "train_sets": [s.name for s in config.train_sets],
        "test_sets": [s.name for s in config.test_sets],
        "cells": cells,
        "seconds_this_call": round(time.perf_counter() - start, 1),
    }
    write_tables(results, out)
    return results


def _check_ready(config: ExperimentConfig) -> None:
    """After synthetic data exists: every CSV must be there (a typo in a {synthetic} name shows here)."""
    for data_set in (*config.train_sets, *config.test_sets):
        if not data_set.csv.is_file():
            raise ConfigError(f"{config.source}: {data_set.name}: file not found: {data_set.csv}")


def _evaluate(
    config: ExperimentConfig,
    run: Path,
    train_set: DataSet,
    variant: str,
    test_set: DataSet,
    out: Path,
    device,
    *,
    redo: bool = False,
) -> dict[str, Any]:
    folder = out / "eval" / train_set.name / variant / test_set.name
    settings = {
        "data": str(test_set.csv),
        "data_sha256": file_digest(test_set.csv),
        "split": test_set.split,
        "threshold": config.evaluate["threshold"],
        "human_class": config.human_class,
    }
    if not redo and _done(folder, settings):
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    else:
        began = time.perf_counter()
        report = evaluate_cell(
            run,
            test_set,
            folder,
            human_class=config.human_class,
            threshold=config.evaluate["threshold"],
            batch_size=config.evaluate["batch_size"],
            workers=config.evaluate["workers"],
            device=device or config.train.get("device", "auto"),
        )
        _mark_done(folder, settings, time.perf_counter() - began)
    detection = report["detection"] or {}
    return {
        "folder": str(folder),
        "n": report["n"],
        "n_known": report["n_known"],
        "n_unseen": report["n_unseen"],
        "attribution_accuracy": report["attribution_accuracy"],
        "macro_f1": report["macro_f1"],
        "detection_accuracy": detection.get("accuracy"),
        "detection_ap": detection.get("average_precision"),
        "unseen": report["unseen"],
    }


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def grid_table(results: dict[str, Any], metric: str) -> tuple[list[str], list[list[Any]]]:
    """The paper's layout: one row per (variant, training set), one column per test set."""
    headers = ["variant", "trained on", *results["test_sets"]]
    rows = [
        [cell["variant"], cell["train_set"], *(cell["tests"][name][metric] for name in results["test_sets"])]
        for cell in results["cells"]
    ]
    return headers, rows


def unseen_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for cell in results["cells"]:
        for test_name, test in cell["tests"].items():
            for cls, entry in test["unseen"].items():
                top = max(entry["assigned"].items(), key=lambda item: item[1]) if entry["n"] else ("n/a", 0)
                rows.append(
                    [
                        cell["variant"],
                        cell["train_set"],
                        test_name,
                        cls,
                        entry["n"],
                        entry["judged_generated"],
                        f"{top[0]} ({top[1] / max(entry['n'], 1):.0%})",
                    ]
                )
    return rows


def _grid_markdown(headers: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(headers, rows, align=["left", "left"] + ["right"] * (len(headers) - 2))


def write_tables(results: dict[str, Any], out: Path) -> str:
    """Write table2_attribution.{md,json}, table3_detection.{md,json}, tables.md and results.json."""
    attribution = grid_table(results, "attribution_accuracy")
    detection = grid_table(results, "detection_accuracy")
    unseen = unseen_rows(results)
    for stem, (headers, rows) in (("table2_attribution", attribution), ("table3_detection", detection)):
        write_json({"headers": headers, "rows": rows}, out / f"{stem}.json")
        (out / f"{stem}.md").write_text(_grid_markdown(headers, rows) + "\n", encoding="utf-8")
    sections = [
        f"# Experiment {results['name']}",
        "",
        "## Table 2: attribution accuracy",
        "",
        "Share of test images assigned to their true class, over the images of classes the model was trained "
        "on. Images of classes it never saw are left out here and reported below; n/a: the test set holds "
        "no known class.",
        "",
        _grid_markdown(*attribution),
        "",
        f"## Table 3: detection accuracy (P(generated) >= {results['threshold']:g})",
        "",
        f"Share of all test images judged correctly as human ({results['human_class']}) or generated; "
        "an image of an unseen generator is right when judged generated.",
        "",
        _grid_markdown(*detection),
        "",
    ]
    if unseen:
        headers = [
            "variant",
            "trained on",
            "test set",
            "unseen class",
            "images",
            "judged generated",
            "most often assigned to",
        ]
        sections += [
            "## Unseen classes",
            "",
            "Images of classes the model never trained on: share judged generated, and the known class their "
            "images were most often attributed to.",
            "",
            markdown_table(headers, unseen),
            "",
        ]
        write_json({"headers": headers, "rows": unseen}, out / "unseen.json")
    sections.append("Per-cell reports and confusion matrices: `eval/<trained on>/<variant>/<test set>/`.\n")
    text = "\n".join(sections)
    (out / "tables.md").write_text(text, encoding="utf-8")
    write_json(results, out / "results.json")
    return text
