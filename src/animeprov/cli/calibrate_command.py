"""`animeprov calibrate`: fit temperature and verdict thresholds on a split; store calibration.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_KNOWN_PASS_RATE, DEFAULT_TARGET_FNR, DEFAULT_TARGET_FPR
from animeprov.progress import console, labelled

if TYPE_CHECKING:  # the fitting code (scipy, sklearn) is imported only when the command runs
    from animeprov.evaluation.calibration import Calibration


def calibrate(
    run: Path = typer.Argument(..., help="Run folder (from `animeprov train`)."),
    data: Path = typer.Option(..., "--data", help="Split CSV with labelled images."),
    split: str = typer.Option("val", help="Split to fit on; never the test split you report."),
    target_fpr: float = typer.Option(
        DEFAULT_TARGET_FPR, min=0.0, max=0.999, help="Most human images judged 'ai' (false accusations)."
    ),
    target_fnr: float = typer.Option(
        DEFAULT_TARGET_FNR, min=0.0, max=0.999, help="Most generated images judged 'artist'."
    ),
    known_pass_rate: float = typer.Option(
        DEFAULT_KNOWN_PASS_RATE,
        min=0.001,
        max=1.0,
        help="Share of known-generator images that must not be called 'unknown generator'.",
    ),
    human_class: str = typer.Option("", help="The class meaning 'drawn by a person' (default: the run's)."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
) -> None:
    """Temperature scaling and calibrated verdict thresholds, written to RUN/calibration.json."""
    from animeprov.checkpoint import BEST_WEIGHTS
    from animeprov.evaluation.calibration import CALIBRATION_FILE, calibrate_run
    from animeprov.evaluation.familiarity import FAMILIARITY_FILE, fit_run_familiarity

    try:
        calibration = calibrate_run(
            run,
            data,
            split=split,
            human_class=human_class or None,
            target_fpr=target_fpr,
            target_fnr=target_fnr,
            known_pass_rate=known_pass_rate,
            batch_size=batch_size,
            workers=workers,
            device=device,
        )
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    try:  # the familiarity check needs the training images too: fitted when the CSV has its train split
        fit_run_familiarity(run, data, weights=BEST_WEIGHTS, device=device, val_split=split)
        console.print(f"familiarity check fitted on the train split and {split}: {run / FAMILIARITY_FILE}")
    except (ValueError, FileNotFoundError) as error:
        console.print(labelled("no familiarity check:", error))
    console.print(calibration_table(calibration))
    for note in calibration.measured["notes"]:
        console.print(labelled("note:", note))
    console.print(f"written {run / CALIBRATION_FILE}")


def calibration_table(calibration: Calibration) -> Table:
    m = calibration.measured
    table = Table(title=f"calibration on {calibration.source.get('split', '?')}: {m['n_images']} images")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("ECE before -> after", f"{m['ece_before']:.4f} -> {m['ece_after']:.4f}"),
        ("NLL before -> after", f"{m['nll_before']:.4f} -> {m['nll_after']:.4f}"),
        ("temperature (classes)", f"{calibration.temperature:.4f}"),
        (
            "detection temperature and shift, balanced NLL before -> after",
            f"{calibration.detection_temperature:.4f}, {calibration.detection_shift:+.4f}, "
            f"{m['detection_nll_before']:.4f} -> {m['detection_nll_after']:.4f}",
        ),
        (
            "balanced accuracy at P(generated) 0.5, before -> after",
            f"{m['balanced_accuracy_at_half_before']:.4f} -> {m['balanced_accuracy_at_half_after']:.4f}",
        ),
        ("ai: P(generated) >=", f"{calibration.ai_threshold:.6f}"),
        ("artist: P(generated) <=", f"{calibration.artist_threshold:.6f}"),
        ("unknown generator: score <", f"{calibration.unknown_threshold:.6f}"),
        (
            f"FPR on {m['n_human']} human (target {calibration.target_fpr:g})",
            f"{m['fpr']:.4f} ({m['false_positives']}/{m['n_human']}; 95% upper {m['fpr_upper_95']:.3f})",
        ),
        (f"TPR on {m['n_generated']} generated", f"{m['tpr']:.4f}"),
        (f"generated judged artist (target {calibration.target_fnr:g})", f"{m['fnr']:.4f}"),
        ("human judged artist", f"{m['human_judged_artist']:.4f}"),
        ("unsure, all images", f"{m['unsure_rate']:.4f}"),
        (
            f"ai-judged known generators named (target {calibration.known_pass_rate:g})",
            f"{m['known_pass_rate']:.4f} of {m['unknown_fit_images']}",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def register(app: typer.Typer) -> None:
    app.command()(calibrate)
