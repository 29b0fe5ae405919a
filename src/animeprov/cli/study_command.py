"""`animeprov study ...`: create, serve, simulate and report a subjective test (the paper's Section VIII)."""

from __future__ import annotations

import secrets
import warnings
from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.progress import console, labelled

study_app = typer.Typer(no_args_is_help=True)

# The library modules are imported inside each command so that `animeprov --help` stays fast.


def _parse_generators(values: list[str]) -> dict[str, str]:
    mapping = {}
    for value in values:
        cls, sep, generator = value.partition("=")
        if not sep or not cls or not generator:
            raise typer.BadParameter(f"expected CLASS=GENERATOR, got {value!r}", param_hint="--generator")
        mapping[cls.strip()] = generator.strip()
    return mapping


@study_app.command("create")
def create(
    data: Path = typer.Option(..., "--data", help="Split CSV (from `animeprov data split`)."),
    out: Path = typer.Option(..., "--out", help="New study folder: stimuli/ and study.json."),
    per_class: int = typer.Option(20, "--per-class", min=1, help="Images per class (the paper: 20)."),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated classes (default: every class in the split)."
    ),
    split: str = typer.Option(
        "test", "--split", help="Split to draw from; one no compared model trained on."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the selection and of each participant's order."),
    size: int | None = typer.Option(
        None, "--size", min=8, help="Crop side in pixels (default: the largest every class can fill)."
    ),
    human_class: str = typer.Option(DEFAULT_HUMAN_CLASS, "--human-class", help="The class drawn by artists."),
    generator: list[str] = typer.Option(
        [], "--generator", help="CLASS=GENERATOR, repeatable: pools classes per generator in the report."
    ),
    allow_train: bool = typer.Option(False, "--allow-train", help="Allow --split train (not recommended)."),
    attention_checks: int = typer.Option(
        0,
        "--attention-checks",
        min=0,
        help="Extra screens that ask for a given answer (left out of accuracy).",
    ),
    title: str = typer.Option("Drawn by an artist, or generated?", "--title", help="Shown to participants."),
) -> None:
    """Select balanced stimuli, write them under opaque ids as metadata-free PNGs, and write study.json."""
    from animeprov.study.create import create_study

    if split == "train" and allow_train:
        console.print(
            "WARNING: stimuli from the TRAIN split. A model trained on it has seen these images; "
            "comparing it with people here is meaningless.",
            style="bold red",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            study = create_study(
                data,
                out,
                per_class=per_class,
                classes=[c.strip() for c in classes.split(",") if c.strip()] if classes else None,
                split=split,
                seed=seed,
                size=size,
                human_class=human_class,
                generators=_parse_generators(generator),
                allow_train=allow_train,
                attention_checks=attention_checks,
                title=title,
            )
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            raise fail(error) from None
    for warning in caught:
        console.print(labelled("WARNING:", warning.message, style="bold yellow"))
    console.print(
        f"study {study['study_id']}: {len(study['stimuli'])} images ({per_class} x {len(study['classes'])} "
        f"classes, {study['size']}x{study['size']}) written to {out}"
    )
    console.print(f"serve it with: animeprov study serve {out}")


@study_app.command("serve")
def serve(
    study: Path = typer.Argument(..., help="Study folder (from `animeprov study create`)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8001, "--port"),
    admin_token: str | None = typer.Option(
        None,
        "--admin-token",
        envvar="ANIMEPROV_STUDY_ADMIN_TOKEN",
        help="Token for /admin (default: a random one, printed at start).",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Host header value accepted (repeat for more; e.g. the public name behind a reverse proxy). "
        "Default: the loopback names when bound to loopback, else any.",
    ),
) -> None:
    """Run the study web app. Answers go to STUDY/answers.sqlite the moment they arrive."""
    import uvicorn

    from animeprov.study.app import create_app
    from animeprov.web import allowed_hosts_for, is_loopback, server_options

    token = admin_token or secrets.token_urlsafe(18)
    try:
        app = create_app(study, admin_token=token, allowed_hosts=allowed_hosts_for(host, allowed_host))
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    if not is_loopback(host):
        console.print(
            "listening beyond this machine: put the study behind HTTPS (a reverse proxy) so answers "
            "do not travel in clear text",
            style="yellow",
        )
    console.print(f"participants: http://{host}:{port}/")
    console.print(f"admin page:   http://{host}:{port}/admin")
    if admin_token is None:
        console.print(f"admin token:  {token}")
    # access_log off: uvicorn's access log would write participants' IP addresses to the terminal.
    uvicorn.run(app, **server_options(host, port, log_level="info", access_log=False))


@study_app.command("simulate")
def simulate(
    study: Path = typer.Argument(..., help="Study folder (the simulated participants read its answer key)."),
    participants: int = typer.Option(20, "--participants", min=1, help="How many simulated participants."),
    url: str = typer.Option("http://127.0.0.1:8001", "--url", help="The running `study serve`."),
    accuracy: float = typer.Option(0.6, "--accuracy", min=0.0, max=1.0, help="Share of correct answers."),
    unsure_rate: float = typer.Option(0.1, "--unsure-rate", min=0.0, max=1.0, help="Share of 'unsure'."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Drive simulated participants through the HTTP API. They are marked simulated: NOT human data."""
    import httpx

    from animeprov.study.simulate import SimulatedProfile, simulate_participants

    try:
        profile = SimulatedProfile(accuracy=accuracy, unsure_rate=unsure_rate)
        results = simulate_participants(study, url, participants, profile=profile, seed=seed)
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    except httpx.HTTPError as error:
        raise fail(f"the study server at {url} failed: {error}", 1) from None
    total = sum(r["answers"] for r in results)
    console.print(
        f"{len(results)} SIMULATED participants submitted {total} answers (accuracy {accuracy:g}, "
        f"unsure {unsure_rate:g}); they are marked simulated in the database and the report"
    )


@study_app.command("report")
def report(
    study: Path = typer.Argument(..., help="Study folder."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.json and figures."),
    model: Path | None = typer.Option(
        None, "--model", help="Run folder with calibration.json: its verdicts beside the people's."
    ),
    export: str | None = typer.Option(
        None, "--export", help="'csv': also write every answer to answers.csv."
    ),
    include_partial: bool = typer.Option(
        False, "--include-partial", help="Also analyse unfinished participants."
    ),
    include_simulated: bool | None = typer.Option(
        None,
        "--include-simulated/--exclude-simulated",
        help="Default: simulated participants only when there are no real ones.",
    ),
    exclude_failed_attention: bool = typer.Option(
        False, "--exclude-failed-attention", help="Leave out participants who failed an attention check."
    ),
    bootstrap: int = typer.Option(2000, "--bootstrap", min=1, help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Per-participant accuracy (Table 5), per class and generator, confusion, Fleiss' kappa, familiarity."""
    from animeprov.study.report import write_report

    if export not in (None, "csv"):
        raise typer.BadParameter("only 'csv' is supported", param_hint="--export")
    try:
        result = write_report(
            study,
            out,
            model_run=model,
            include_partial=include_partial,
            include_simulated=include_simulated,
            exclude_failed_attention=exclude_failed_attention,
            n_boot=bootstrap,
            seed=seed,
            export_csv=export == "csv",
            device=device,
        )
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    selection = result["participants"]
    if result["simulated_only"]:
        console.print("every analysed participant is SIMULATED: not human data", style="bold yellow")
    mean = result["overall"]["mean_participant_accuracy"]
    console.print(
        f"{selection['analysed']} participants analysed ({selection['analysed_simulated']} simulated); "
        f"mean accuracy {'n/a' if mean is None else f'{mean:.3f}'}; report in {out / 'report.md'}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study", help="Subjective test: create, serve, simulate, report.")
