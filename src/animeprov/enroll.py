"""Enrol a new generator class into a trained run from a few images, without retraining the backbone.

The backbone is frozen. Each image's views (model-size tiles, as `predict` cuts them) go through the stem,
the optional CBAM and `backbone.features` up to the head's last linear layer; those features are the
whole interface. Two ways to grow the head were measured (docs/results/enroll.md):

- "row" (the default): the old classes' rows stay exactly as they were; ONE new row (weights and bias) is
  fitted by class-balanced softmax cross-entropy over all classes on the frozen features of the new
  images and of reference images of the old classes (the run's own training split, or `data`), with an
  L2 penalty. Old classes can only lose images the new class now wins.
- "head": the whole last layer is fine-tuned on the same features, with an L2 pull towards the old rows.

Calibration is then refitted on what there is: the old classes' validation split, predicted by the new
head, plus the new images predicted out-of-fold (each fold's row fitted without it), so the new class
does not calibrate on images its own row was fitted on.

The new run is a copy of the old one with the grown head, a new calibration.json, the familiarity check
refitted with the new class (when the old run has one), and an `enrollment.json` that records what was
enrolled, from which files (sha256) and when. The old run is never written to.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.engine import pool_views
from animeprov.evaluation.familiarity import FAMILIARITY_FILE, fit_familiarity, save_familiarity
from animeprov.io import ImageError, LoadRules, load_image, make_views, sha256_file

MIN_SHOTS, MAX_SHOTS = 5, 100
ENROLLMENT_FILE = "enrollment.json"
METHODS = ("row", "head")
# Old-class reference images per class used to fit the new row (features are cheap, memory is not).
DEFAULT_REFERENCE_PER_CLASS = 200
DEFAULT_FOLDS = 5
# L2 penalty of the head fit (standardised features): 0.1 gave the new class 0.86 at 20 shots on the
# hardest held-out synthetic generator against 0.785 at 1e-3, for -0.3 points on the old classes
# (docs/results/enroll.md).
DEFAULT_L2 = 0.1
_CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class EnrollError(ValueError):
    """Bad input to `enroll`: the message names the file or the option and the reason."""


@dataclass
class EnrollResult:
    run: Path
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Features: everything before the head's last linear layer, frozen
# ----------------------------------------------------------------------------------------------


def last_linear(model: nn.Module) -> nn.Linear:
    head = model.backbone.head
    layer = head[-1] if isinstance(head, nn.Sequential) else head
    if not isinstance(layer, nn.Linear):
        raise EnrollError(
            f"cannot enrol into this model: its head ends in {type(layer).__name__}, not Linear"
        )
    return layer


@torch.no_grad()
def head_features(model: nn.Module, views: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, size, size, 3) uint8 views -> (N, D) float32 inputs of the head's last linear layer."""
    chunks = []
    for start in range(0, len(views), batch_size):
        pixels = torch.from_numpy(np.ascontiguousarray(views[start : start + batch_size]))
        chunks.append(model.embed(pixels.permute(0, 3, 1, 2).float().div_(255.0)).float())
    return torch.cat(chunks) if chunks else torch.zeros(0)


def image_views(path: str | Path, size: int, rules: LoadRules = LoadRules()) -> np.ndarray:
    """The views `predict` cuts (one crop at the model size, the tiles when larger), every tile: more
    examples to fit the head on than the 16 that `predict` judges by default."""
    from animeprov.predict import choose_view

    loaded = load_image(str(path), rules)
    view = choose_view(loaded.height, loaded.width, size, "auto")
    return np.stack(make_views(loaded.pixels, size, view, path=str(path)))


# ----------------------------------------------------------------------------------------------
# Fitting the head
# ----------------------------------------------------------------------------------------------


class HeadFit:
    """Grows a (C, D) linear layer to (C + 1, D) on frozen features; label C is the new class.

    Class-balanced cross-entropy (each class weighs the same however many views it has) plus an L2 penalty,
    L-BFGS, full batch. Features are standardised with the reference (old-class) statistics for
    conditioning, and the fit runs in the basis of their principal components (at most N <= ~1,100 of the
    D = 8,192 dimensions at 128 px): with an L2 penalty the optimum lies in the span of the features, so
    this is the same optimum, 8x cheaper per step. The basis is computed once and shared by the
    calibration folds. The result is mapped back to the raw features, so the head stays a plain Linear.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, n_reference: int):
        features = features.double()
        reference = features[:n_reference]
        self.mean, self.scale = reference.mean(0), reference.std(0).clamp_min(1e-6)
        standard = (features - self.mean) / self.scale
        # Old rows in standardised coordinates: w.x + b = (w * scale).z + (b + w.mean).
        self.old_w = weight.double() * self.scale
        self.old_b = bias.double() + weight.double() @ self.mean
        self.base = standard @ self.old_w.T + self.old_b  # the old classes' logits, (N, C)
        n, dim = standard.shape
        # standard = coords @ basis, basis (r, D) with orthonormal rows: from the smaller Gram matrix.
        single = standard.float()  # the Gram product in float32 (2x faster); directions below 1e-6 of the
        gram = single @ single.T if n <= dim else single.T @ single  # top variance are dropped, noise there
        values, vectors = torch.linalg.eigh(gram.double())
        keep = values > values.max() * 1e-6
        if n <= dim:
            root = values[keep].sqrt()
            self.coords = vectors[:, keep] * root
            self.basis = (standard.T @ vectors[:, keep] / root).T
        else:
            self.basis = vectors[:, keep].T
            self.coords = standard @ vectors[:, keep]

    def fit(
        self,
        labels: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        method: str = "row",
        l2: float = DEFAULT_L2,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C + 1, D), bias (C + 1)) fitted on the rows `keep` (all when None)."""
        if method not in METHODS:
            raise EnrollError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        keep = torch.ones(len(labels), dtype=torch.bool) if keep is None else keep
        coords, base, labels = self.coords[keep], self.base[keep], labels[keep]
        n_old = base.shape[1]
        counts = torch.bincount(labels, minlength=n_old + 1).double()
        sample_weight = (1.0 / counts.clamp_min(1))[labels]
        sample_weight = sample_weight / sample_weight.sum()
        rank = coords.shape[1]
        new_c = torch.zeros(rank, dtype=torch.float64, requires_grad=True)
        new_b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        # "head": each old row moves by (basis^T delta_c, delta_b) from where it was, penalised towards 0.
        delta_c = torch.zeros(n_old, rank, dtype=torch.float64, requires_grad=method == "head")
        delta_b = torch.zeros(n_old, dtype=torch.float64, requires_grad=method == "head")
        params = [new_c, new_b] + ([delta_c, delta_b] if method == "head" else [])
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            old = base + coords @ delta_c.T + delta_b
            logits = torch.cat([old, (coords @ new_c + new_b)[:, None]], dim=1)
            loss = (nn.functional.cross_entropy(logits, labels, reduction="none") * sample_weight).sum()
            loss = loss + l2 * (new_c.square().sum() + delta_c.square().sum() + delta_b.square().sum())
            loss.backward()
            return loss

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: on a busy CPU, thread hand-offs cost more than they give
        try:
            optimizer.step(closure)
        finally:
            torch.set_num_threads(threads)
        with torch.no_grad():
            w = torch.cat([self.old_w + delta_c @ self.basis, (new_c @ self.basis)[None]])
            b = torch.cat([self.old_b + delta_b, new_b])
            raw_w = w / self.scale
            raw_b = b - raw_w @ self.mean
        return raw_w.float(), raw_b.float()


def _predict_probs(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return torch.softmax(features @ weight.T + bias, dim=1)


def _per_image(features: torch.Tensor, owners: np.ndarray) -> np.ndarray:
    """(images, D) mean feature of each image's views, as the familiarity check pools them."""
    index = torch.from_numpy(np.asarray(owners, dtype=np.int64))
    sums = torch.zeros(int(index.max()) + 1, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, index, features.double())
    return (sums / torch.bincount(index)[:, None]).numpy()


def _image_probs(probs_per_view: torch.Tensor, owners: np.ndarray, human: int | None) -> np.ndarray:
    """Per image (owners number them 0..n-1): its views pooled as `predict` pools tiles (`pool_views`)."""
    log_p = np.log(np.clip(probs_per_view.double().numpy(), 1e-12, None))
    return pool_views(log_p, np.asarray(owners, dtype=np.intp), human)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def check_class_name(name: str, classes: list[str]) -> None:
    from animeprov.evaluation.calibration import UNKNOWN_GENERATOR

    if not _CLASS_NAME.fullmatch(name):
        raise EnrollError(
            f"--class {name!r}: use 1-64 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() in {c.lower() for c in classes}:
        raise EnrollError(f"--class {name!r}: the run already has this class (classes: {', '.join(classes)})")
    if name.lower() == UNKNOWN_GENERATOR:
        raise EnrollError(f"--class {name!r}: reserved for the 'unknown generator' outcome")


def read_new_images(
    paths: list[Path], size: int, rules: LoadRules
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(records [{path, sha256, views}], views (V, size, size, 3), owner image index per view).

    Every unreadable file is listed in one error; exact duplicates (same sha256) are counted once."""
    records, views, owners, problems, seen = [], [], [], [], {}
    for path in paths:
        try:
            digest = sha256_file(path) if Path(path).is_file() else None
            image = image_views(path, size, rules)
        except ImageError as error:
            problems.append(str(error))
            continue
        except OSError as error:
            problems.append(f"{path}: cannot read file ({error.strerror or error})")
            continue
        if digest in seen:
            continue  # the same bytes twice add nothing
        seen[digest] = path
        owners.extend([len(records)] * len(image))
        views.extend(image)
        records.append({"path": str(path), "sha256": digest, "views": len(image)})
    if problems:
        raise EnrollError(f"{len(problems)} unreadable image(s):\n  " + "\n  ".join(problems))
    if len(records) < MIN_SHOTS:
        duplicates = len(paths) - len(records)
        raise EnrollError(
            f"too few images: {len(records)} distinct"
            + (f" ({duplicates} exact duplicate(s) dropped)" if duplicates else "")
            + f"; enrolling a class needs at least {MIN_SHOTS}"
        )
    if len(records) > MAX_SHOTS:
        raise EnrollError(
            f"too many images: {len(records)}; enrolment is for {MIN_SHOTS}-{MAX_SHOTS} images "
            "(with more, train a model with the class: `animeprov train`)"
        )
    return records, np.stack(views), np.asarray(owners)


def reference_rows(data_csv: Path, split: str, classes: list[str], per_class: int, seed: int) -> list[dict]:
    """Up to `per_class` rows per old class of one split, a seeded sample; rows of other classes ignored."""
    from animeprov.data.dataset import read_split_rows

    rows = [row for row in read_split_rows(data_csv, split) if row["class"] in classes]
    rng = np.random.default_rng(seed)
    chosen = []
    for name in classes:
        mine = [row for row in rows if row["class"] == name]
        picks = sorted(rng.permutation(len(mine))[:per_class]) if len(mine) > per_class else range(len(mine))
        chosen.extend(mine[i] for i in picks)
    return chosen


def reference_views(
    data_csv: Path, rows: list[dict], classes: list[str], size: int, rules: LoadRules
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(views, view labels, owner image per view, skipped 'path: reason') of reference rows."""
    from animeprov.data.manifest import image_path

    views, labels, owners, skipped, views_per_image = [], [], [], [], []
    for row in rows:
        path = image_path(data_csv, row)
        try:
            image = image_views(path, size, rules)
        except ImageError as error:
            skipped.append(str(error))
            continue
        owners.extend([len(views_per_image)] * len(image))
        views_per_image.append(len(image))
        views.extend(image)
        labels.extend([classes.index(row["class"])] * len(image))
    return (
        np.stack(views) if views else np.zeros((0, size, size, 3), np.uint8),
        np.asarray(labels, dtype=np.int64),
        np.asarray(owners, dtype=np.int64),
        skipped,
    )


def _find_data(run: Path, config: dict[str, Any], data: Path | None) -> Path:
    """The CSV of old-class reference images: `data`, else the run's own training split if it is there."""
    if data is not None:
        if not Path(data).is_file():
            raise EnrollError(f"--data {data}: no such file")
        return Path(data)
    recorded = config.get("data")
    candidates = [Path(recorded)] if recorded else []
    if recorded and not Path(recorded).is_absolute():
        candidates.append(run / recorded)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise EnrollError(
        f"{run}: enrolling needs images of the old classes to keep them apart from the new one; the run was "
        f"trained on {recorded or 'an unrecorded split'}, which is not here: pass --data SPLIT.csv"
    )


# ----------------------------------------------------------------------------------------------
# The whole job
# ----------------------------------------------------------------------------------------------


def enroll(
    run: str | Path,
    name: str,
    images: list[str | Path],
    out: str | Path,
    *,
    data: str | Path | None = None,
    method: str = "row",
    l2: float = DEFAULT_L2,
    reference_per_class: int = DEFAULT_REFERENCE_PER_CLASS,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    rules: LoadRules = LoadRules(),
    on_status=lambda message: None,
) -> EnrollResult:
    """Write `out`: `run` with class `name` enrolled from `images`. See the module docstring."""
    from animeprov.evaluation.calibration import fit_calibration, save_calibration

    started = time.perf_counter()
    run, out = Path(run), Path(out)
    if not (run / ckpt.CONFIG_FILE).is_file():
        raise EnrollError(f"{run}: not a run folder (no {ckpt.CONFIG_FILE})")
    if out.resolve() == run.resolve():
        raise EnrollError("--out must differ from RUN: the old run is never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EnrollError(f"--out {out}: already exists and is not empty; the new run needs a new folder")
    if method not in METHODS:
        raise EnrollError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    model, config = ckpt.load_model(run, device="cpu")
    classes = list(config["classes"])
    human_class = config.get("human_class", DEFAULT_HUMAN_CLASS)
    human = classes.index(human_class) if human_class in classes else None  # the new class goes last
    size = int(config["size"])
    check_class_name(name, classes)
    layer = last_linear(model)
    data_csv = _find_data(run, config, Path(data) if data is not None else None)

    on_status(f"reading {len(images)} image(s) of {name!r}")
    records, new_views, new_owners = read_new_images([Path(p) for p in images], size, rules)
    on_status(f"reading reference images of {len(classes)} old classes from {data_csv}")
    try:
        train_rows = reference_rows(data_csv, "train", classes, reference_per_class, seed)
    except ValueError as error:
        raise EnrollError(str(error)) from None
    notes = []
    try:
        val_rows = reference_rows(data_csv, "val", classes, 10**9, seed)
    except ValueError:  # no val split: calibrate on the training reference (over-confident, so noted)
        val_rows = train_rows
        notes.append(f"{data_csv} has no val rows: calibrated on training images (over-confident)")
    missing = sorted(set(classes) - {row["class"] for row in train_rows})
    if missing:
        raise EnrollError(f"{data_csv}: no training rows of the run's classes {missing}")
    ref_views, ref_labels, ref_owners, skipped = reference_views(data_csv, train_rows, classes, size, rules)
    val_views, val_labels_v, val_owners, skipped_val = reference_views(
        data_csv, val_rows, classes, size, rules
    )

    on_status("computing frozen features")
    model.eval()
    new_features = head_features(model, new_views)
    ref_features = head_features(model, ref_views)
    features = torch.cat([ref_features, new_features])
    new_label = len(classes)
    labels = torch.cat(
        [torch.from_numpy(ref_labels), torch.full((len(new_features),), new_label, dtype=torch.int64)]
    )
    weight, bias = layer.weight.detach(), layer.bias.detach()

    on_status(f"fitting the head ({method})")
    fitter = HeadFit(weight, bias, features, n_reference=len(ref_features))
    new_weight, new_bias = fitter.fit(labels, method=method, l2=l2)

    # Out-of-fold probabilities of the new images (folds over images, not views), for calibration.
    n_new = len(records)
    fold_of = np.random.default_rng(seed).permutation(n_new) % min(folds, n_new)
    oof = np.zeros((n_new, new_label + 1))
    for fold in range(min(folds, n_new)):
        held = np.isin(new_owners, np.flatnonzero(fold_of == fold))
        keep = torch.cat([torch.ones(len(ref_features), dtype=torch.bool), torch.from_numpy(~held)])
        w, b = fitter.fit(labels, keep, method=method, l2=l2)
        held_probs = _predict_probs(w, b, new_features[torch.from_numpy(held)])
        held_images = np.flatnonzero(fold_of == fold)
        remap = np.searchsorted(held_images, new_owners[held])
        oof[held_images] = _image_probs(held_probs, remap, human)
    val_features = head_features(model, val_views)
    n_val = int(val_owners.max()) + 1 if len(val_owners) else 0
    val_probs = _image_probs(_predict_probs(new_weight, new_bias, val_features), val_owners, human)
    val_labels = np.zeros(n_val, dtype=np.int64)
    val_labels[val_owners] = val_labels_v
    fit_probs = _image_probs(_predict_probs(new_weight, new_bias, new_features), new_owners, human)

    all_classes = [*classes, name]
    calibration_probs = np.concatenate([val_probs, oof])
    calibration_labels = np.concatenate([val_labels, np.full(n_new, new_label)])
    notes += [f"skipped reference image {reason}" for reason in skipped + skipped_val]

    # The new run is built in a sibling folder and renamed at the end: a failure leaves no half run.
    final, out = out, out.with_name(out.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if (run / "fingerprints").is_dir():
        shutil.copytree(run / "fingerprints", out / "fingerprints")
    with torch.no_grad():
        grown = nn.Linear(layer.in_features, new_label + 1)
        grown.weight.copy_(new_weight)
        grown.bias.copy_(new_bias)
    head = model.backbone.head
    if isinstance(head, nn.Sequential):
        head[-1] = grown
    else:
        model.backbone.head = grown
    ckpt.save_weights(model, out / ckpt.BEST_WEIGHTS)
    weights_sha256 = sha256_file(out / ckpt.BEST_WEIGHTS)
    if (run / FAMILIARITY_FILE).is_file() and n_val:
        # The old run abstains on images unlike its training data: refit that check with the new class in it
        # (class means from the reference sample and the new images, threshold on the val split).
        ref_image_labels = np.zeros(int(ref_owners.max()) + 1, dtype=np.int64)
        ref_image_labels[ref_owners] = ref_labels
        familiarity = fit_familiarity(
            np.concatenate([_per_image(ref_features, ref_owners), _per_image(new_features, new_owners)]),
            np.concatenate([ref_image_labels, np.full(n_new, new_label)]),
            _per_image(val_features, val_owners),
        )
        save_familiarity(out, familiarity, ckpt.BEST_WEIGHTS)

    record = {
        "class": name,
        "enrolled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_run": str(run),
        "from_weights_sha256": sha256_file(run / ckpt.BEST_WEIGHTS),
        "method": method,
        "l2": l2,
        "seed": seed,
        "files": [{"path": r["path"], "sha256": r["sha256"], "views": r["views"]} for r in records],
        "reference_data": str(data_csv),
        "reference_data_sha256": sha256_file(data_csv),
        "reference_images_per_class": {c: sum(r["class"] == c for r in train_rows) for c in classes},
        "fit_accuracy_new_class": float((fit_probs.argmax(1) == new_label).mean()),
        "out_of_fold_accuracy_new_class": float((oof.argmax(1) == new_label).mean()),
        "val_accuracy_old_classes": float((val_probs.argmax(1) == val_labels).mean()) if n_val else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if human_class in classes and (calibration_labels == all_classes.index(human_class)).any():
        try:
            calibration = fit_calibration(
                calibration_probs, calibration_labels, all_classes, human_class=human_class
            )
        except ValueError as error:
            notes.append(f"not calibrated: {error}")
        else:
            calibration = replace(
                calibration,
                source={
                    "data": str(data_csv),
                    "split": "val (old classes) + enrolled images out-of-fold",
                    "data_sha256": record["reference_data_sha256"],
                    "enrolled_class": name,
                    "weights": ckpt.BEST_WEIGHTS,
                    "weights_sha256": weights_sha256,
                    "variant": config["variant"],
                },
            )
            save_calibration(out, calibration)
            record["calibration"] = {
                "images": len(calibration_labels),
                "fpr": calibration.measured["fpr"],
                "tpr": calibration.measured["tpr"],
            }
    else:
        notes.append(f"not calibrated: no {human_class!r} images in the validation split of {data_csv}")
    previous = []
    if (run / ENROLLMENT_FILE).is_file():
        previous = json.loads((run / ENROLLMENT_FILE).read_text()).get("enrollments", [])
    ckpt.atomic_write_text(
        out / ENROLLMENT_FILE, json.dumps({"enrollments": [*previous, record]}, indent=2) + "\n"
    )
    new_config = {
        **config,
        "classes": all_classes,
        "train_counts": {**config.get("train_counts", {}), name: n_new},
        "enrolled": [
            *config.get("enrolled", []),
            {"class": name, "at": record["enrolled_at"], "images": n_new},
        ],
    }
    ckpt.write_config(out, new_config)

    if final.is_dir():
        final.rmdir()  # checked empty above
    out.rename(final)
    return EnrollResult(final, record, notes)
