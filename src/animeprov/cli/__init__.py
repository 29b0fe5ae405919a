"""The `animeprov` command line: thin Typer commands that call the library modules."""

from __future__ import annotations

import typer

from animeprov.cli import (
    calibrate_command,
    crossval_command,
    enroll_command,
    evidence_command,
    experiment_command,
    export_command,
    fingerprint_command,
    model_commands,
    predict_command,
    robustness_command,
    scan_command,
    serve_command,
    study_command,
)
from animeprov.cli.data import data_app

app = typer.Typer(
    name="animeprov",
    help="Tell human-drawn from generated anime images, and which generator made them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(asked: bool) -> None:
    if asked:
        from animeprov import __version__

        typer.echo(f"animeprov {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """The options before any command; the app's help text is the Typer's own."""


model_commands.register(app)  # models, train, evaluate, demo
calibrate_command.register(app)
predict_command.register(app)  # predict, predict-merge
scan_command.register(app)  # scan, report
enroll_command.register(app)
serve_command.register(app)
export_command.register(app)
evidence_command.register(app)
fingerprint_command.register(app)
experiment_command.register(app)
crossval_command.register(app)
robustness_command.register(app)
app.add_typer(
    data_app,
    name="data",
    help="Data sets: synthetic benchmark, index, split, prompts, generation, booru collection, curation.",
)
study_command.register(app)


def main() -> None:
    app()
