"""`animeprov enroll RUN --class NAME IMAGES... --out NEWRUN`: add a generator class from a few images."""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.progress import console, labelled


def enroll(
    run: Path = typer.Argument(..., help="Run folder to start from (it is never modified)."),
    images: list[Path] = typer.Argument(..., help="5-100 images of the new generator."),
    name: str = typer.Option(..., "--class", help="Name of the new generator class."),
    out: Path = typer.Option(..., "--out", help="New run folder to write (must not exist or be empty)."),
    data: Path | None = typer.Option(
        None,
        help="Split CSV with images of the old classes (train rows fit the head, val rows calibrate). "
        "Default: the split the run was trained on, when it is still there.",
    ),
    method: str = typer.Option(
        "row", help="row: fit one new head row, old rows untouched; head: fine-tune the whole last layer."
    ),
    l2: float = typer.Option(0.1, min=0.0, help="L2 penalty of the fit (on standardised features)."),
    reference_per_class: int = typer.Option(200, min=1, help="Old-class training images per class."),
    seed: int = typer.Option(0, help="Seed for the reference sample and the calibration folds."),
) -> None:
    """Enrol a new generator from 5-100 images: frozen backbone, grown head, recalibrated, new run."""
    from animeprov.enroll import EnrollError
    from animeprov.enroll import enroll as enroll_run
    from animeprov.evaluation.calibration import StaleCalibrationError

    try:
        result = enroll_run(
            run,
            name,
            images,
            out,
            data=data,
            method=method,
            l2=l2,
            reference_per_class=reference_per_class,
            seed=seed,
            on_status=lambda message: console.print(message),
        )
    except (EnrollError, FileNotFoundError, StaleCalibrationError) as error:
        raise fail(error) from None
    record = result.record
    for note in result.notes:
        console.print(labelled("note:", note))
    print(
        f"enrolled {record['class']!r} from {len(record['files'])} images into {result.run}: "
        f"new-class accuracy out-of-fold {record['out_of_fold_accuracy_new_class']:.3f} "
        f"(on the fitted images {record['fit_accuracy_new_class']:.3f}); old classes on their val split "
        + (
            f"{record['val_accuracy_old_classes']:.3f}"
            if record["val_accuracy_old_classes"] is not None
            else "not measured"
        )
    )
    if "calibration" not in record:
        console.print("the new run has no calibration.json: predict gives no verdicts", style="yellow")


def register(app: typer.Typer) -> None:
    app.command()(enroll)
