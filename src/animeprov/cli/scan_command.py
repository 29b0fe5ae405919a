"""`animeprov scan [RUN] PATHS... --report scan.html` and `animeprov report PREDS.jsonl --out scan.html`.

`scan` is `animeprov predict [RUN] PATHS --out PREDS.jsonl` (the reference model without a run; the same
command, so the same streaming, resuming and heatmaps) followed by `report`, which renders a predictions
file (from `predict`, `predict-merge` or `scan`) as one self-contained HTML page (animeprov.reports.scan).
"""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.progress import console, counted, labelled, progress_bar


def _render(predictions: Path, out: Path, run: Path | None, heatmaps: Path | None, thumb_size: int) -> None:
    from animeprov.reports.scan import render_report

    if not predictions.is_file():
        raise fail(f"{predictions}: no such predictions file")
    with progress_bar() as bar:
        task = bar.add_task("report", total=None, info=str(out))
        try:
            summary = render_report(
                predictions,
                out,
                run=run,
                heatmaps=heatmaps,
                thumb_size=thumb_size,
                on_row=lambda: bar.update(task, advance=1),
            )
        except (FileNotFoundError, ValueError) as error:
            raise fail(error) from None
    for line in summary.bad_lines[:10]:
        console.print(labelled("not a prediction row", line))
    counts = ", ".join(f"{name} {count}" for name, count in summary.verdicts.most_common())
    console.print(
        f"{out}: {counted(summary.rows, 'file')} ({counts}), {out.stat().st_size / 1e6:.1f} MB"
        + (f", {summary.heatmaps} heatmaps" if summary.heatmaps else "")
    )


def report(
    predictions: Path = typer.Argument(..., help="Predictions JSONL (from predict, predict-merge or scan)."),
    out: Path = typer.Option(..., "--out", help="HTML file to write."),
    run: Path | None = typer.Option(
        None, help="The run that made the predictions: its card goes in the report."
    ),
    heatmaps: Path | None = typer.Option(None, help="Folder of `predict --heatmaps` overlays to show."),
    thumb_size: int = typer.Option(96, min=0, help="Thumbnail longest side in px (0: none)."),
) -> None:
    """Render predictions as one self-contained HTML report: summary, filterable rows, unreadable files."""
    if run is not None and not (run / "config.json").is_file():
        raise fail(f"--run {run}: not a run folder (no config.json)")
    _render(predictions, out, run, heatmaps, thumb_size)


def scan(
    paths: list[str] = typer.Argument(
        ...,
        metavar="[RUN] PATHS...",
        help="Image files, folders, or quoted glob patterns, optionally after a run folder (from `animeprov "
        "train` or `animeprov enroll`). Without a run, --model.",
    ),
    model: str | None = typer.Option(
        None, "--model", help="reference (the model shipped with animeprov, the default) or a run folder."
    ),
    report_path: Path = typer.Option(..., "--report", help="HTML report to write."),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Predictions JSONL (default: the report's name with .jsonl); rerunning resumes it.",
    ),
    heatmaps: Path | None = typer.Option(
        None, help="Also compute heatmaps into this folder (slow) and show them."
    ),
    recursive: bool = typer.Option(True, help="Walk folders recursively."),
    view: str = typer.Option("auto", help="As for predict: auto, crop, tiles, pad, resize."),
    batch_size: int | None = typer.Option(
        None, min=1, help="Views per model batch (default: predict's, by the model's input size)."
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    thumb_size: int = typer.Option(96, min=0, help="Thumbnail longest side in px (0: none)."),
) -> None:
    """Predict a folder and write a shareable HTML report (predict, then report)."""
    import typer.main

    from animeprov.cli.predict_command import predict
    from animeprov.reference import resolve_run, run_and_paths

    try:
        chosen, paths = run_and_paths(model, paths)
        run = resolve_run(chosen)  # the folder whose card the report shows
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None

    preds = out or report_path.with_suffix(".jsonl")
    if preds.suffix.lower() == ".csv":
        raise fail("--out must be a JSON lines file (the report reads JSON lines)")
    if preds.resolve() == report_path.resolve():
        raise fail("--out and --report must be different files")
    preds.parent.mkdir(parents=True, exist_ok=True)
    # The predict command itself, through Click, so its options keep their defaults and checks.
    command = typer.Typer()
    command.command()(predict)
    args = [*paths, "--model", str(chosen), "--out", str(preds), "--format", "jsonl", "--view", view]
    args += ["--device", device, "--recursive" if recursive else "--no-recursive"]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if heatmaps is not None:
        args += ["--heatmaps", str(heatmaps)]
    code = typer.main.get_command(command).main(args, prog_name="animeprov scan", standalone_mode=False)
    if code:  # predict printed why
        raise typer.Exit(code)
    _render(preds, report_path, run, heatmaps, thumb_size)


def register(app: typer.Typer) -> None:
    app.command()(scan)
    app.command()(report)
