"""Leave-one-source-out evaluation: train on every source but one, judge the one never seen.

A random split keeps every source on both sides, so it measures how well a model remembers its sources
(their content, backgrounds, file history), not whether it finds generator traces. Here the unit is the
source (a manifest column, `source` by default): each fold holds out whole sources, trains the recipe on
the rest (validation and calibration on sources held out from training too, by default) and predicts the
held-out images with the fold's own calibrated `Predictor`, exactly as a user would get them.

- `folds=0`: one fold per source (LOSO). `folds=K`: sources dealt into K folds, human and AI sources
  separately and largest first to the lightest fold, so every fold holds both kinds when there are enough.
- Several manifests combine into one data set (`combine_manifests`); paths become absolute.
- AI classes a fold no longer trains on still count for detection (a generated image judged generated
  is right) and are left out of attribution accuracy, as in `experiment`.
- Every fold x seed is resumable: a finished training is continued (`train(resume=True)`) and a finished
  prediction file is kept (redone, training kept, when an older calibration format made it); the report is
  recomputed from the prediction files.

Outputs: `report.json`, `report.md`, `sources.png` (per-source bars) and `risk_coverage.png` in `out`.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit

from animeprov.checkpoint import atomic_write_text
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.manifest import SPLIT_COLUMN, image_path, read_labelled_rows, write_rows
from animeprov.data.split import MAX_HELD_OUT_CLASS_SHARE, pick_sources, source_kinds
from animeprov.evaluation.calibration import CALIBRATION_FORMAT
from animeprov.progress import console, counted

PREDICTIONS_FILE = "predictions.jsonl"
DONE_FILE = "crossval-done.json"


@dataclass(frozen=True)
class CrossvalConfig:
    manifests: tuple[str, ...]
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)
    by: str = "source"  # the column whose values are held out
    folds: int = 0  # 0: one fold per source
    seeds: tuple[int, ...] = (0, 1, 2)
    val_by: str = (
        "source"  # "source": validate/calibrate on training sources held out; "group": random groups
    )
    val_share: float = 0.15
    # val sources take at most this share of a class's images (folders made before it recorded none: 1.0)
    max_val_class_share: float = MAX_HELD_OUT_CLASS_SHARE
    stability: bool = False  # the held-out images judged with predict's stability checks
    human_class: str = DEFAULT_HUMAN_CLASS
    only: tuple[str, ...] = ()  # run just the folds that hold out one of these values (e.g. one external set)
    workers: int = 0
    device: str = "auto"


# ---------------------------------------------------------------------------------------------------
# Data and folds


def combine_manifests(manifests: Sequence[str | Path], out_csv: Path, by: str) -> list[dict]:
    """One CSV of every row of `manifests` with absolute paths, a `dataset` column (the CSV's stem, which
    `by` may name) and groups prefixed by it.

    Raises ValueError when a manifest lacks the `by` column or a row has no value in it."""
    rows: list[dict] = []
    columns: list[str] = []
    for manifest in manifests:
        part = read_labelled_rows(manifest)
        if not part:
            raise ValueError(f"{manifest}: no rows")
        if by not in (*part[0], "dataset"):
            raise ValueError(f"{manifest}: no {by!r} column to hold out by (columns: {', '.join(part[0])})")
        for row in part:
            row = {**row, "path": str(image_path(manifest, row).resolve()), "dataset": Path(manifest).stem}
            if not row[by]:
                raise ValueError(f"{manifest}: row {row['path']} has no {by!r} value")
            if row.get("group"):  # group ids are per manifest (g00001...): keep them apart
                row["group"] = f"{row['dataset']}:{row['group']}"
            row.pop(SPLIT_COLUMN, None)
            rows.append(row)
        columns += [c for c in [*part[0], "dataset"] if c not in columns and c != SPLIT_COLUMN]
    write_rows(out_csv, rows, columns)
    return rows


def assign_folds(rows: list[dict], by: str, folds: int, human_class: str) -> list[list[str]]:
    """The held-out sources of each fold. folds=0: one per source. Else human and AI sources are dealt
    separately, largest first, each to the fold with the fewest images of its kind so far (ties: lowest
    fold): deterministic, balanced in images, and every fold gets both kinds when there are >= K of each."""
    sizes = Counter(row[by] for row in rows)
    kinds = source_kinds(rows, by, human_class)
    if folds == 0:
        return [[name] for name in sorted(sizes)]
    if folds < 2:
        raise ValueError(f"folds must be 0 (one per source) or at least 2, got {folds}")
    if folds > len(sizes):
        raise ValueError(f"{folds} folds for only {len(sizes)} sources")
    held: list[list[str]] = [[] for _ in range(folds)]
    for kind in ("human", "ai"):
        load = [0] * folds
        for name in sorted((n for n in sizes if kinds[n] == kind), key=lambda n: (-sizes[n], n)):
            target = min(range(folds), key=lambda k: (load[k], k))
            held[target].append(name)
            load[target] += sizes[name]
    return [sorted(names) for names in held]


def fold_split(
    rows: list[dict],
    held_out: list[str],
    by: str,
    human_class: str,
    *,
    val_by: str,
    val_share: float,
    seed: int,
    max_class_share: float = 1.0,
) -> list[dict]:
    """Rows with a `split` column: test = the held-out sources; val = about `val_share` of the rest, whole
    values of the column `val_by` (default "source": a human and an AI share, so calibration sees sources
    it did not train on; falls back to `by` when rows have no such column) or whole groups per class
    (val_by="group"); train = the remainder. Val sources are picked by `data.split.pick_sources`, at most
    `max_class_share` of each class's images."""
    rng = random.Random(seed)
    test = set(held_out)
    rest = [row for row in rows if row[by] not in test]
    val_keys: set[str] = set()
    if val_by != "group":
        key = val_by if rest and val_by in rest[0] else by
        val_keys = pick_sources(rest, key, human_class, val_share, rng, max_class_share)
    else:
        key = "group" if rest and "group" in rest[0] else "path"
        by_class: dict[str, list[str]] = defaultdict(list)
        for row in rest:
            if row[key] not in by_class[row["class"]]:
                by_class[row["class"]].append(row[key])
        for groups in by_class.values():
            groups.sort()
            rng.shuffle(groups)
            val_keys.update(groups[: max(1, round(val_share * len(groups)))] if len(groups) > 1 else [])
    out = []
    for row in rows:
        split = "test" if row[by] in test else "val" if row[key] in val_keys else "train"
        out.append({**row, SPLIT_COLUMN: split})
    return out


# ---------------------------------------------------------------------------------------------------
# Running


def run_crossval(config: CrossvalConfig, out: str | Path) -> dict[str, Any]:
    """Train and predict every fold x seed (resumable), then write and return the report."""
    from animeprov.recipe import train_config
    from animeprov.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_csv = out / "data.csv"
    rows = combine_manifests(config.manifests, data_csv, config.by)
    _check_settings(out, config, data_digest(rows, config.by))
    held = assign_folds(rows, config.by, config.folds, config.human_class)
    if config.only:
        missing = sorted(set(config.only) - {name for names in held for name in names})
        if missing:
            raise ValueError(f"--only: no {config.by!r} value {', '.join(missing)} in the manifests")
    # fold number -> held-out values; numbers stay those of the full list, so --only runs share its folders
    folds = {k: names for k, names in enumerate(held) if not config.only or set(names) & set(config.only)}
    kinds = source_kinds(rows, config.by, config.human_class)
    for k, sources in folds.items():
        for seed in config.seeds:
            folder = out / f"fold-{k:02d}" / f"seed-{seed}"
            if _finished(folder, k, seed):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            console.print(f"fold {k + 1}/{len(held)} seed {seed}: holding out {', '.join(sources)}")
            split_rows = fold_split(
                rows,
                sources,
                config.by,
                config.human_class,
                val_by=config.val_by,
                val_share=config.val_share,
                seed=seed,
                max_class_share=config.max_val_class_share,
            )
            _check_fold_has_both_kinds(split_rows, config, sources)
            split_csv = folder / "split.csv"
            if not split_csv.exists():
                write_rows(split_csv, split_rows, list(split_rows[0]))
            trained = train_config(
                config.recipe,
                overrides=config.overrides,
                data=str(split_csv),
                seed=seed,
                human_class=config.human_class,
                workers=config.workers,
                device=config.device,
            )
            train(trained, folder / "run", resume=(folder / "run" / "config.json").exists())
            _predict_fold(folder, split_rows, config)
            done = {"held_out": sources, "calibration_format": CALIBRATION_FORMAT}
            atomic_write_text(folder / DONE_FILE, json.dumps(done) + "\n")
    report = build_report(out, folds, kinds, config)
    write_report(report, out)
    return report


def _finished(folder: Path, fold: int, seed: int) -> bool:
    """Whether the fold x seed is done with this calibration. Predictions made under an older calibration
    format (e.g. format 1's P(generated), which a multi-class temperature pushed towards "generated") are
    redone: the training is kept (resumed, nothing left to train), calibration and predictions are not."""
    path = folder / DONE_FILE
    if not path.exists():
        return False
    if json.loads(path.read_text()).get("calibration_format", 1) == CALIBRATION_FORMAT:
        return True
    console.print(
        f"fold {fold + 1} seed {seed}: predicted under an older calibration; calibrating and predicting "
        "again (training kept)"
    )
    path.unlink()
    return False


def data_digest(rows: list[dict], by: str) -> str:
    """sha256 of what decides the folds and the training: each image's path, class and held-out value
    (other manifest columns may change without invalidating finished folds)."""
    import hashlib

    lines = sorted(f"{row['path']}\t{row['class']}\t{row[by]}" for row in rows)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


# Settings that folders made before they existed did not record, at the values those folders used, and the
# flag that sets each back to that value to resume such a folder.
OLD_FOLDER_SETTINGS = {"max_val_class_share": 1.0, "stability": True}
RESUME_FLAGS = {"max_val_class_share": "--max-val-class-share 1", "stability": "--stability"}


def _check_settings(out: Path, config: CrossvalConfig, data_sha256: str) -> None:
    """A folder holds one cross-validation: refuse to mix results of other settings or data into it."""
    settings = {**asdict(config), "data_sha256": data_sha256}
    # Seeds and --only pick which folders to fill (each fold and seed has its own), and where it runs does
    # not change results: none of them is a setting that must match.
    for key in ("workers", "device", "seeds", "only"):
        settings.pop(key)
    settings = json.loads(json.dumps(settings))
    path = out / "crossval.json"
    if path.exists():
        previous = {**OLD_FOLDER_SETTINGS, **json.loads(path.read_text())}
        if previous != settings:
            changed = sorted(
                k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k)
            )
            hints = [
                RESUME_FLAGS[k]
                for k in changed
                if k in OLD_FOLDER_SETTINGS and previous[k] == OLD_FOLDER_SETTINGS[k]
            ]
            raise ValueError(
                f"{out}: holds a cross-validation with other settings ({', '.join(changed)}); "
                "choose another --out"
                + (f" (or resume it with {' '.join(hints)})" if len(hints) == len(changed) else "")
            )
        return
    atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _check_fold_has_both_kinds(rows: list[dict], config: CrossvalConfig, held: list[str]) -> None:
    for split in ("train", "val"):
        classes = {row["class"] for row in rows if row[SPLIT_COLUMN] == split}
        if config.human_class in classes and classes != {config.human_class}:
            continue
        found = f"classes there: {', '.join(sorted(classes))}" if classes else "no images there"
        if split == "train":
            advice = "use more --folds (fewer sources held out at once) or more sources"
        else:
            advice = (
                "validation takes whole sources, only of a class that keeps another source for training, "
                f"and at most --max-val-class-share ({config.max_val_class_share:g}) of its images: give "
                "each class more sources, raise that share, or use --val-by group"
            )
        raise ValueError(
            f"holding out {', '.join(held)} leaves the {split} split without human or without generated "
            f"images ({found}); {advice}"
        )


def _predict_fold(folder: Path, rows: list[dict], config: CrossvalConfig) -> None:
    from animeprov.predict import STABILITY_CHECKS, Predictor

    test = [row for row in rows if row[SPLIT_COLUMN] == "test"]
    checks = STABILITY_CHECKS if config.stability else ()
    predictor = Predictor.from_checkpoint(folder / "run", device=config.device, checks=checks)
    lines = []
    results = predictor.predict_many([row["path"] for row in test], workers=config.workers)
    for row, result in zip(test, results, strict=True):
        lines.append(
            json.dumps(
                {
                    "path": row["path"],
                    "source": row[config.by],
                    "class": row["class"],
                    "error": result.error,
                    "p_generated": result.p_generated,
                    "verdict": result.verdict,
                    "generator": result.generator,
                    "reason": result.reason,
                    "checks": result.checks,
                    "probabilities": result.probabilities,
                }
            )
        )
    atomic_write_text(folder / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------------
# Metrics


def read_predictions(out: Path, folds: Sequence[int], seeds: Sequence[int]) -> dict[int, list[dict]]:
    """Per seed, the predictions of the given folds (fold number added as `fold`)."""
    found: dict[int, list[dict]] = {}
    for seed in seeds:
        rows = []
        for k in folds:
            path = out / f"fold-{k:02d}" / f"seed-{seed}" / PREDICTIONS_FILE
            if path.exists():
                for line in path.read_text().splitlines():
                    rows.append({**json.loads(line), "fold": k})
        found[seed] = rows
    return found


def pooled_metrics(
    rows: list[dict], human_class: str, trained_classes: dict[int, set[str]]
) -> dict[str, Any]:
    """Out-of-source figures of one seed's predictions pooled over folds (rows with an error left out).

    `trained_classes[fold]`: the classes that fold's model was trained on, for attribution."""
    from sklearn.metrics import roc_auc_score

    rows = [row for row in rows if row["error"] is None]
    if not rows:
        return {"n": 0}
    generated = np.array([row["class"] != human_class for row in rows])
    p = np.array([row["p_generated"] for row in rows])
    verdicts = np.array([row["verdict"] or "none" for row in rows])
    judged_ai = verdicts == "ai"
    committed = (verdicts == "ai") | (verdicts == "artist")
    correct_commit = (judged_ai & generated) | ((verdicts == "artist") & ~generated)
    # None, not the nan (and numpy's warning) of a mean over nothing, when a kind has no image here
    tpr = float((p[generated] >= 0.5).mean()) if generated.any() else None
    tnr = float((p[~generated] < 0.5).mean()) if (~generated).any() else None
    attributed = [
        row
        for row in rows
        if row["class"] != human_class and row["class"] in trained_classes.get(row["fold"], set())
    ]
    attribution = [
        max((c for c in row["probabilities"] if c != human_class), key=row["probabilities"].get)
        == row["class"]
        for row in attributed
    ]
    both = generated.any() and (~generated).any()
    return {
        "n": len(rows),
        "n_human": int((~generated).sum()),
        "n_generated": int(generated.sum()),
        "roc_auc": float(roc_auc_score(generated, p)) if both else None,
        "balanced_accuracy": (tpr + tnr) / 2 if both else None,
        "ai_recall_at_0.5": tpr,
        "human_correct_at_0.5": tnr,
        "fpr_at_ai_threshold": float(judged_ai[~generated].mean()) if (~generated).any() else None,
        "ai_recall_at_ai_threshold": float(judged_ai[generated].mean()) if generated.any() else None,
        "coverage": float(committed.mean()),
        "committed_accuracy": float(correct_commit[committed].mean()) if committed.any() else None,
        "attribution_accuracy": float(np.mean(attribution)) if attribution else None,
        "n_attribution": len(attribution),
    }


def per_source(rows: list[dict], human_class: str) -> dict[str, dict[str, Any]]:
    by_source: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["error"] is None:
            by_source[row["source"]].append(row)
    out = {}
    for source, items in sorted(by_source.items()):
        generated = np.array([row["class"] != human_class for row in items])
        p = np.array([row["p_generated"] for row in items])
        counts = Counter(row["verdict"] or "none" for row in items)
        out[source] = {
            "n": len(items),
            "classes": sorted({row["class"] for row in items}),
            "correct_at_0.5": float(((p >= 0.5) == generated).mean()),
            "mean_p_generated": float(p.mean()),
            "artist": counts.get("artist", 0),
            "unsure": counts.get("unsure", 0),
            "ai": counts.get("ai", 0),
        }
    return out


def risk_coverage(rows: list[dict], human_class: str, points: int = 21) -> list[dict[str, float]]:
    """Accuracy at 0.5 of the most confident share of images (confidence |P(generated) - 0.5|), for
    coverage 5%..100%: what abstaining on the least certain images buys."""
    rows = [row for row in rows if row["error"] is None]
    if not rows:
        return []
    generated = np.array([row["class"] != human_class for row in rows])
    p = np.array([row["p_generated"] for row in rows])
    correct = (p >= 0.5) == generated
    order = np.argsort(-np.abs(p - 0.5), kind="stable")
    curve = []
    for coverage in np.linspace(0.05, 1.0, points - 1 if points > 1 else 1):
        keep = order[: max(1, int(round(coverage * len(rows))))]
        curve.append({"coverage": float(coverage), "accuracy": float(correct[keep].mean())})
    return curve


def ensemble_metrics(predictions: dict[int, list[dict]], human_class: str) -> dict[str, Any]:
    """Detection by the seeds' models together (a small ensemble per fold): each image's P(generated) pooled
    over the seeds as tiles are pooled (`engine.pool_views`), the sigmoid of the mean logit. Threshold-free
    and 0.5 figures only: the verdicts were calibrated per model."""
    from sklearn.metrics import roc_auc_score

    by_path: dict[str, list[dict]] = defaultdict(list)
    for rows in predictions.values():
        for row in rows:
            if row["error"] is None:
                by_path[row["path"]].append(row)
    rows = [items for items in by_path.values() if len(items) == len(predictions)]
    if not rows:
        return {"n": 0}
    generated = np.array([items[0]["class"] != human_class for items in rows])
    p_seeds = np.clip([[row["p_generated"] for row in items] for items in rows], 1e-12, 1 - 1e-12)
    p = expit(logit(p_seeds).mean(axis=1))
    if generated.all() or (~generated).all():
        return {"n": len(rows)}
    tpr, tnr = float((p[generated] >= 0.5).mean()), float((p[~generated] < 0.5).mean())
    return {
        "n": len(rows),
        "seeds": len(predictions),
        "roc_auc": float(roc_auc_score(generated, p)),
        "balanced_accuracy": (tpr + tnr) / 2,
    }


def mean_sd(values: list[float | None]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n_seeds": 0}
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "n_seeds": len(values),
    }


def build_report(
    out: Path, folds: dict[int, list[str]], kinds: dict[str, str], config: CrossvalConfig
) -> dict[str, Any]:
    predictions = read_predictions(out, list(folds), config.seeds)
    trained: dict[int, set[str]] = {}
    for k in folds:
        for seed in config.seeds:
            run_config = out / f"fold-{k:02d}" / f"seed-{seed}" / "run" / "config.json"
            if run_config.exists():
                trained[k] = set(json.loads(run_config.read_text())["classes"])
    per_seed = {seed: pooled_metrics(rows, config.human_class, trained) for seed, rows in predictions.items()}
    keys = [key for key, value in next(iter(per_seed.values())).items() if not key.startswith("n")]
    pooled = {key: mean_sd([metrics.get(key) for metrics in per_seed.values()]) for key in keys}
    sources: dict[str, dict[str, Any]] = {}
    for seed, rows in predictions.items():
        for source, figures in per_source(rows, config.human_class).items():
            entry = sources.setdefault(
                source, {"n": figures["n"], "kind": kinds[source], "classes": figures["classes"], "seeds": {}}
            )
            entry["seeds"][seed] = figures
    for entry in sources.values():
        seeds = entry["seeds"].values()
        for key in ("correct_at_0.5", "mean_p_generated", "artist", "unsure", "ai"):
            entry[key] = mean_sd([s[key] for s in seeds])
    curves = {seed: risk_coverage(rows, config.human_class) for seed, rows in predictions.items()}
    return {
        "ensemble": ensemble_metrics(predictions, config.human_class) if len(predictions) > 1 else None,
        "config": json.loads(json.dumps(asdict(config))),
        "folds": [{"fold": k, "held_out": names} for k, names in folds.items()],
        "pooled": pooled,
        "per_seed": {str(seed): metrics for seed, metrics in per_seed.items()},
        "sources": sources,
        "risk_coverage": {str(seed): curve for seed, curve in curves.items()},
    }


# ---------------------------------------------------------------------------------------------------
# Writing


def format_stat(stat: dict[str, Any], digits: int = 3) -> str:
    """A `mean_sd` entry as "mean ± sd" (the mean alone for one seed, "n/a" for none)."""
    if stat["mean"] is None:
        return "n/a"
    if stat["n_seeds"] < 2:  # one seed has no spread to show
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def format_count(stat: dict[str, Any]) -> str:
    """A count's `mean_sd`: a whole number for one seed, else the mean ± sd to one decimal."""
    if stat["n_seeds"] == 1 and stat["mean"] == int(stat["mean"]):
        return str(int(stat["mean"]))
    return format_stat(stat, 1)


POOLED_LABELS = {
    "roc_auc": "ROC-AUC of P(generated)",
    "balanced_accuracy": "balanced detection accuracy at 0.5",
    "fpr_at_ai_threshold": "FPR on human sources at the calibrated ai threshold",
    "ai_recall_at_ai_threshold": "AI recall at the calibrated ai threshold",
    "coverage": "coverage (verdict not unsure)",
    "committed_accuracy": "accuracy of committed verdicts",
    "attribution_accuracy": "attribution accuracy (AI classes still trained)",
    "ai_recall_at_0.5": "AI images judged generated at 0.5",
    "human_correct_at_0.5": "human images judged human at 0.5",
}


def write_report(report: dict[str, Any], out: Path) -> None:
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    config = report["config"]
    seeds = ", ".join(map(str, config["seeds"]))
    n = next(iter(report["per_seed"].values()), {}).get("n", 0)
    design = "Leave-one-source-out" if not config.get("folds") else "Sources held out"
    lines = [
        f"# {design}: recipe `{config['recipe']}`"
        + (
            f" with {', '.join(f'{k}={v}' for k, v in config['overrides'].items())}"
            if config["overrides"]
            else ""
        ),
        "",
        f"{counted(len(report['folds']), 'fold')} over the `{config['by']}` column, seeds {seeds}, {n} test "
        f"images per seed (validation: {config['val_by']}). Mean ± sd over seeds.",
        "",
        "| metric | value |",
        "| :--- | ---: |",
        *(
            f"| {label} | {format_stat(report['pooled'][key])} |"
            for key, label in POOLED_LABELS.items()
            if key in report["pooled"]
        ),
        "",
        "## Per held-out source",
        "",
        "| source | kind | n | correct at 0.5 | mean P(generated) | artist | unsure | ai |",
        "| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in sorted(report["sources"].items(), key=lambda item: (item[1]["kind"], item[0])):
        lines.append(
            f"| {name} | {entry['kind']} | {entry['n']} | {format_stat(entry['correct_at_0.5'], 2)} | "
            f"{format_stat(entry['mean_p_generated'], 2)} | {format_count(entry['artist'])} | "
            f"{format_count(entry['unsure'])} | {format_count(entry['ai'])} |"
        )
    ensemble = report.get("ensemble")
    if ensemble and "roc_auc" in ensemble:
        at = lines.index("## Per held-out source")
        lines[at:at] = [
            f"Ensemble of the {ensemble['seeds']} seeds' models (each image's P(generated) pooled on the "
            f"logit): ROC-AUC {ensemble['roc_auc']:.3f}, balanced detection accuracy at 0.5 "
            f"{ensemble['balanced_accuracy']:.3f}.",
            "",
        ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(report, out)


def _plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted(report["sources"].items(), key=lambda item: (item[1]["kind"], item[0]))
    if sources:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(sources)), 4))
        means = [entry["correct_at_0.5"]["mean"] for _, entry in sources]
        sds = [entry["correct_at_0.5"]["sd"] for _, entry in sources]
        colours = ["tab:blue" if entry["kind"] == "human" else "tab:red" for _, entry in sources]
        ax.bar(range(len(sources)), means, yerr=sds, color=colours, capsize=2)
        ax.set_xticks(range(len(sources)))
        ax.set_xticklabels(
            [f"{name} (n={entry['n']})" for name, entry in sources], rotation=75, ha="right", fontsize=7
        )
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share judged correctly at 0.5")
        ax.set_title("held-out sources (blue: human, red: AI)")
        fig.tight_layout()
        fig.savefig(out / "sources.png", dpi=120)
        plt.close(fig)
    curves = report["risk_coverage"]
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for seed, curve in curves.items():
            ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], label=f"seed {seed}")
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("coverage (most confident share judged)")
        ax.set_ylabel("accuracy at 0.5")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "risk_coverage.png", dpi=120)
        plt.close(fig)
