"""`animeprov crossval`: leave-one-source-out evaluation of a training recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.split import MAX_HELD_OUT_CLASS_SHARE
from animeprov.progress import console


def crossval(
    manifests: list[Path] = typer.Argument(..., help="Manifest CSVs (from `data index`); they are combined."),
    out: Path = typer.Option(..., "--out", help="Folder; re-running it resumes and skips finished folds."),
    by: str = typer.Option("source", "--by", "--group-column", help="Column whose values are held out."),
    folds: int = typer.Option(0, min=0, help="0: one fold per source (LOSO); K: sources dealt into K folds."),
    recipe: str = typer.Option("", help="Training recipe (see `animeprov models`); default: the default."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override one recipe field, e.g. --set view=random --set views_per_image=4."
    ),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    val_by: str = typer.Option(
        "source",
        help="Column whose values are held out of training for validation and calibration (default source, "
        "else --by), or 'group': random groups.",
    ),
    val_share: float = typer.Option(0.15, min=0.01, max=0.5, help="Share of the training images for val."),
    max_val_class_share: float = typer.Option(
        MAX_HELD_OUT_CLASS_SHARE,
        min=0.0,
        max=1.0,
        help="Val sources take at most this share of any class's training images (1: no limit, as in "
        "folders made before this option).",
    ),
    stability: bool = typer.Option(
        False,
        help="Judge the held-out images with predict's stability checks (predict --stability), as folders "
        "made before they were off by default did.",
    ),
    human_class: str = typer.Option(DEFAULT_HUMAN_CLASS),
    only: list[str] = typer.Option(
        [],
        help="Run only the fold(s) holding out this value (repeatable), e.g. --by dataset --only my-set.",
    ),
    workers: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
) -> None:
    """Train on all sources but the held-out ones, judge those, for every fold and seed; report per source
    and pooled (ROC-AUC, balanced accuracy, false-positive rate at the ai threshold, coverage...)."""
    from animeprov.crossval import CrossvalConfig, run_crossval
    from animeprov.recipe import DEFAULT_RECIPE, parse_settings

    try:
        config = CrossvalConfig(
            manifests=tuple(str(m) for m in manifests),
            recipe=recipe or DEFAULT_RECIPE,
            overrides=parse_settings(set_),
            by=by,
            folds=folds,
            seeds=tuple(int(s) for s in seeds.split(",") if s.strip()),
            val_by=val_by,
            val_share=val_share,
            max_val_class_share=max_val_class_share,
            stability=stability,
            human_class=human_class,
            only=tuple(only),
            workers=workers,
            device=device,
        )
        run_crossval(config, out)
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    print((out / "report.md").read_text(encoding="utf-8"))
    written = [out / name for name in ("report.md", "report.json", "sources.png", "risk_coverage.png")]
    console.print("written " + ", ".join(str(path) for path in written if path.exists()))


def register(app: typer.Typer) -> None:
    app.command()(crossval)
