"""`animeprov export`: write a run's model (input stem included) to ONNX and check it against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from animeprov.cli.errors import fail
from animeprov.progress import console, labelled, stdout


def export(
    run: Path | None = typer.Argument(
        None, help="Run folder (from `animeprov train`); default: --model, else the reference model."
    ),
    model: str | None = typer.Option(
        None, "--model", help="reference (the model shipped with animeprov) or a run folder."
    ),
    onnx: Path = typer.Option(..., "--onnx", help="ONNX file to write (one self-contained file)."),
    weights: str = typer.Option("model.safetensors", help="Weights file inside RUN."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch."),
) -> None:
    """ONNX export: input (N, 3, S, S) RGB in [0, 1], outputs logits and calibrated probabilities."""
    from animeprov.config import get_variant
    from animeprov.export import export_onnx
    from animeprov.reference import choose_run, resolve_run

    try:
        result = export_onnx(resolve_run(choose_run(run, model)), onnx, weights=weights, check=check)
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    table = Table(title=f"{result.path} ({result.path.stat().st_size / 1e6:.1f} MB, {result.seconds:.1f} s)")
    table.add_column("metadata")
    table.add_column("value")
    for key, value in result.metadata.items():
        table.add_row(key, value)
    stdout.print(table)
    for note in result.notes:
        console.print(labelled("note:", note))
    parity = result.parity
    if parity is None:
        return
    # Only a DCT stem computes differently on the CPU prediction path (scipy's DCT, not the matrix one).
    has_dct = "dct" in get_variant(result.metadata["variant"]).stem
    line = (
        f"parity onnxruntime vs PyTorch on {parity['images']} images (batches {parity['batches']}): "
        f"max |probability diff| {parity['max_abs_prob_diff']:.3g}, "
        f"max |logit diff| {parity['max_abs_logit_diff']:.3g}; "
        f"vs the CPU prediction path{' (scipy DCT)' if has_dct else ''}: max |probability diff| "
        f"{parity['prediction_path_max_abs_prob_diff']:.3g}, "
        f"max |logit diff| {parity['prediction_path_max_abs_logit_diff']:.3g}"
    )
    if not parity["ok"]:
        console.print(labelled("parity FAILED", f"(tolerance {parity['tolerance']:g}): {line}", style="red"))
        raise typer.Exit(1)
    print(line)
    if parity["prediction_path_max_abs_prob_diff"] > parity["tolerance"]:
        console.print(
            labelled(
                "note:",
                "the difference from the CPU prediction path is the float32 rounding of the scipy and "
                "matrix DCTs (amplified by log|c| on flat images), not the export; see docs/export.md",
            )
        )


def register(app: typer.Typer) -> None:
    app.command()(export)
