"""`animeprov experiment`: run a grid of variants x training sets x test sets from a TOML config."""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.progress import console


def experiment(
    config: Path = typer.Argument(..., help="TOML grid config (see docs/experiments.md, configs/*.toml)."),
    out: Path = typer.Option(..., "--out", help="Experiment folder; re-running it skips finished cells."),
    device: str = typer.Option("", help="Override the config's train.device (auto, cpu, cuda, ...)."),
    check: bool = typer.Option(False, "--check", help="Only validate the config and list the grid."),
) -> None:
    """Train every (variant, training set) cell, test it on every test set, write Tables 2 and 3."""
    from animeprov.experiment import ConfigError, load_experiment_config, run_experiment

    try:
        grid = load_experiment_config(config, out)
        console.print(
            f"grid {grid.name}: {len(grid.variants)} variants x {len(grid.train_sets)} training sets "
            f"x {len(grid.test_sets)} test sets"
        )
        console.print(f"  variants: {', '.join(grid.variants)}")
        console.print("  trained on: " + ", ".join(f"{s.name} ({s.csv})" for s in grid.train_sets))
        console.print(
            "  tested on: "
            + ", ".join(f"{s.name} ({s.csv}, {s.split or 'all rows'})" for s in grid.test_sets)
        )
        if check:
            return
        results = run_experiment(grid, out, device=device or None)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    print((out / "tables.md").read_text(encoding="utf-8"))
    console.print(f"written {out / 'tables.md'} ({results['seconds_this_call']:.0f} s this call)")


def register(app: typer.Typer) -> None:
    app.command()(experiment)
