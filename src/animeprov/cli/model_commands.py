"""`animeprov models | train | evaluate | demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_HUMAN_CLASS, VARIANTS
from animeprov.progress import console, labelled, stdout

# No column rules, so that whole names and values fit 80 columns (rich cuts what does not fit with "…"):
# a variant's name or a recipe's value is what a user types.
COMPACT_TABLE = {"box": box.SIMPLE_HEAD, "collapse_padding": True, "pad_edge": False}


def models(
    size: int = typer.Option(256, help="Input size (pixels) for the FLOP count."),
    num_classes: int = typer.Option(5, help="Number of classes (human + generators)."),
) -> None:
    """List the model variants (parameters, FLOPs at a given size), the training recipes and the bundled
    models."""
    from animeprov.models.registry import model_summary
    from animeprov.recipe import DEFAULT_RECIPE, RECIPE_FIELDS, RECIPES

    rows = model_summary(size, num_classes)
    table = Table(
        title=f"animeprov variants at {size}x{size}, {num_classes} classes, GFLOPs per image", **COMPACT_TABLE
    )
    table.add_column("variant", min_width=max(len(row["name"]) for row in rows))
    table.add_column("backbone", overflow="fold")
    for column in ("stem", "CBAM"):
        table.add_column(column)
    for column in ("parameters", "GFLOPs"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["name"],
            row["backbone"],
            row["stem"],
            "yes" if row["attention"] else "no",
            f"{row['params']:,}",
            f"{row['gflops']:.3f}",
        )
    stdout.print(table)
    recipes = Table(
        title=f"training recipes (`train --recipe NAME`; default {DEFAULT_RECIPE})", **COMPACT_TABLE
    )
    recipes.add_column("field", min_width=max(map(len, RECIPE_FIELDS)))
    for name in RECIPES:
        recipes.add_column(name + (" (default)" if name == DEFAULT_RECIPE else ""), overflow="fold")
    for field in RECIPE_FIELDS:
        recipes.add_row(field, *(str(RECIPES[name][field]) for name in RECIPES))
    stdout.print(recipes)
    print("\n".join(bundled_model_lines()))


def bundled_model_lines() -> list[str]:
    """The models shipped in the package (`predict --model NAME`), each with its card in short."""
    from animeprov.reference import BundleError, bundled_models, card_summary, resolve_run

    lines = ["", "bundled models (`animeprov predict --model NAME`; without a run, `reference`):"]
    for name in bundled_models():
        try:
            card = card_summary(resolve_run(name)) or {}
        except BundleError as error:
            lines.append(f"  {name}: not usable: {error}")
            continue
        test = card.get("random_split_test") or {}
        figures = ", ".join(f"{key} {value:.3g}" for key, value in test.items() if value is not None)
        val = card.get("validation") or {}
        held_out = "sources held out of training" if val.get("by") == "source" else "a random split"
        lines += [
            f"  {name} (sha256 verified)",
            f"    data:    {card.get('data')} ({card.get('images')} images)",
            f"    classes: {', '.join(card.get('classes', []))}",
            f"    recipe:  {card.get('recipe')}, seed {card.get('seed')}",
            f"    calibrated on: {val.get('images')} images of {val.get('sources')} sources, {held_out}",
        ]
        if figures:
            lines.append(f"    random-split test: {figures}")
        lines.append(f"    card:    {card.get('card')}")
    return lines


def train(
    data: Path = typer.Option(..., "--data", help="Split CSV (from `animeprov data split`)."),
    out: Path = typer.Option(..., "--out", help="Run folder to write."),
    recipe: str = typer.Option(
        "", help="Named training recipe (`animeprov models` lists them); default: the default."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override any recipe field, e.g. --set view=random --set views_per_image=4."
    ),
    variant: str | None = typer.Option(None, help=f"Override the recipe's variant: {', '.join(VARIANTS)}."),
    size: int | None = typer.Option(
        None, help="Model input size; images are cropped or tiled, never resized."
    ),
    epochs: int | None = typer.Option(None, min=1),
    batch_size: int | None = typer.Option(None, min=1),
    optimizer: str | None = typer.Option(None, help="adam or adamw."),
    lr: float | None = typer.Option(None, min=0.0),
    weight_decay: float | None = typer.Option(None, min=0.0),
    patience: int | None = typer.Option(
        None, min=1, help="Early stopping: epochs without better val accuracy."
    ),
    weighted_loss: bool | None = typer.Option(None, help="Weight the loss by inverse class frequency."),
    augment: str | None = typer.Option(
        None,
        help="Random perturbations of training images only, e.g. 'resize,jpeg,webp,blur,noise,crop,p=0.5' "
        "or 'all' (see `animeprov robustness --help`).",
    ),
    seed: int = typer.Option(0),
    workers: int = typer.Option(0, min=0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    precision: str = typer.Option("auto", help="auto (fp16 AMP on CUDA, fp32 on CPU), fp32, bf16, fp16."),
    human_class: str = typer.Option(DEFAULT_HUMAN_CLASS),
    calibrate: bool = typer.Option(True, help="Fit calibration.json (verdict thresholds) on the val split."),
    resume: bool = typer.Option(False, help="Continue the run in --out after its last finished epoch."),
    allow_changes: bool = typer.Option(
        False, help="With --resume: continue even if the data or settings differ (recorded in config.json)."
    ),
) -> None:
    """Train a model with a recipe on the train split; early-stops on the val split, then calibrates."""
    from animeprov import distributed
    from animeprov.recipe import DEFAULT_RECIPE, parse_settings, train_config
    from animeprov.train import RunExistsError
    from animeprov.train import train as run_training

    flags = {
        "variant": variant,
        "size": size,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "patience": patience,
        "weighted_loss": weighted_loss,
        "augment": augment,
    }
    try:
        overrides = {**parse_settings(set_), **{k: v for k, v in flags.items() if v is not None}}
        config = train_config(
            recipe or DEFAULT_RECIPE,
            overrides=overrides,
            data=str(data),
            seed=seed,
            workers=workers,
            device=device,
            precision=precision,
            human_class=human_class,
            calibrate=calibrate,
        )
    except ValueError as error:
        raise fail(error) from None
    try:
        summary = run_training(config, out, resume=resume, allow_changes=allow_changes)
    except (RunExistsError, ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    if not distributed.is_main():
        return  # under torchrun every rank returns the same summary: rank 0 prints it once
    for path, reason in summary["skipped"].items():
        console.print(labelled("skipped", f"{path}: {reason}"))
    if summary["averaged_epochs"]:
        saved = f"saved the mean of the weights of the last {summary['averaged_epochs']} epochs"
    else:
        saved = f"best val accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']}"
    console.print(f"{saved}; run in {summary['run']}")
    console.print(summary["calibration"])


def evaluate(
    run: Path = typer.Argument(..., help="Run folder (from `animeprov train`)."),
    data: Path = typer.Option(..., "--data", help="Split CSV or manifest."),
    split: str = typer.Option("test", help="Split to evaluate; 'all' for every row."),
    out: Path = typer.Option(..., "--out"),
    human_class: str = typer.Option(DEFAULT_HUMAN_CLASS, help="The class meaning 'drawn by a person'."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="P(generated) threshold for detection."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
) -> None:
    """Attribution and detection metrics, confusion matrix: report.json, report.md, confusion.png."""
    from animeprov.evaluation.evaluate import evaluate_run

    try:
        report = evaluate_run(
            run,
            data,
            out,
            split=None if split == "all" else split,
            human_class=human_class,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            device=device,
        )
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    for item in report["skipped"]:
        console.print(labelled("skipped", f"{item['path']}: {item['reason']}"))
    detection = report["detection"]
    detection_text = f"detection accuracy {detection['accuracy']:.4f}, " if detection else ""
    console.print(
        f"attribution accuracy {report['attribution_accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
        f"{detection_text}on {report['n']} images; report in {out}"
    )


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for data, runs and the report."),
    per_class: int = typer.Option(200, min=10, help="Synthetic images per class."),
    size: int = typer.Option(128, help="Image and model size."),
    epochs: int = typer.Option(10, min=1),
    seed: int = typer.Option(0),
) -> None:
    """The main job: synthetic data -> split -> train cnn-dct-mask and cnn-pixel -> evaluate -> report."""
    from animeprov.demo import run_demo

    report = run_demo(out, per_class=per_class, size=size, epochs=epochs, seed=seed)
    print(report.read_text())
    console.print(labelled("report:", report, style="bold green"))


def register(app: typer.Typer) -> None:
    for command in (models, train, evaluate, demo):
        app.command()(command)
