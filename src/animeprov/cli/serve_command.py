"""`animeprov serve [RUN]`: the HTTP API and the browser page for a trained run (default: the bundled
reference model)."""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_MAX_TILES
from animeprov.progress import console, labelled


def serve(
    run: Path | None = typer.Argument(
        None, help="Run folder (from `animeprov train`); default: --model, else the reference model."
    ),
    model: str | None = typer.Option(
        None, "--model", help="reference (the model shipped with animeprov) or a run folder."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to bind; 0.0.0.0 exposes the server to the network."
    ),
    port: int = typer.Option(8000, min=1, max=65535),
    fingerprints: Path = typer.Option(
        None,
        "--fingerprints",
        help="Class fingerprints from `animeprov fingerprint` (default RUN/fingerprints).",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    max_upload_mb: float = typer.Option(20.0, min=0.001, help="Largest request body accepted (MiB)."),
    max_pixels: int = typer.Option(4096 * 4096, min=1, help="Largest width x height decoded."),
    max_concurrent: int = typer.Option(
        2, min=1, help="Predictions computed at once, each with its share of the CPU threads."
    ),
    max_waiting: int = typer.Option(16, min=0, help="Requests queued beyond those; more get 503."),
    max_heatmap_views: int = typer.Option(16, min=1, help="Most tiles a heatmap request may cover."),
    max_tiles: int = typer.Option(
        DEFAULT_MAX_TILES,
        min=0,
        help="Judge at most this many tiles of an image larger than the model input, spread over it; 0: "
        "every tile (4x the work on a 512 px image for the reference model, a little more accurate).",
    ),
    backend: str = typer.Option(
        "auto",
        help="Where the model runs: auto (onnx where it can run, else torch), torch, or onnx (onnxruntime, "
        "CPU, float32, the same answers, about 2x faster a model pass; needs the export extra).",
    ),
    stability: bool = typer.Option(
        False,
        help="Re-judge each committed verdict after JPEG 90, WebP 90 and a 4-px shift; a verdict that "
        "changes becomes 'unsure' (up to 4x the model's work).",
    ),
    cors_origin: list[str] = typer.Option(
        [], "--cors-origin", help="Browser origin allowed to call the API (repeat for more). Default: none."
    ),
    allowed_host: list[str] = typer.Option(
        [],
        "--allowed-host",
        help="Host header value accepted (repeat for more). Default: the loopback names when bound to "
        "loopback, else any.",
    ),
    header_timeout: float = typer.Option(
        None,
        min=0.1,
        help="Seconds a client has to send a request's headers, else it is cut off [default: 10].",
    ),
) -> None:
    """Serve the model: POST /v1/predict, GET /v1/model, GET /healthz, docs at /docs, the page at /."""
    import torch
    import uvicorn

    from animeprov.evaluation.calibration import StaleCalibrationError
    from animeprov.predict import STABILITY_CHECKS
    from animeprov.reference import choose_run, describe
    from animeprov.serve import ServeSettings, create_app
    from animeprov.web import allowed_hosts_for, is_loopback, server_options

    if fingerprints is not None and not fingerprints.is_dir():
        raise fail(f"{fingerprints}: no such fingerprint folder")
    allowed_hosts = allowed_hosts_for(host, allowed_host)
    if not is_loopback(host):
        console.print(
            labelled(
                "warning:",
                f"binding to {host}: the server is reachable from other machines; it has no authentication",
            )
        )
    # Each of the --max-concurrent predictions gets its share of the threads: with all of them each, the
    # predictions of concurrent requests fought over the cores (docs/serve.md, "Latency under load").
    torch.set_num_threads(max(1, torch.get_num_threads() // max_concurrent))
    try:
        run = choose_run(run, model)
        settings = ServeSettings(
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels,
            max_concurrent=max_concurrent,
            max_waiting=max_waiting,
            max_heatmap_views=max_heatmap_views,
            cors_origins=tuple(cors_origin),
            allowed_hosts=tuple(allowed_hosts or ()),
        )
        app = create_app(
            run,
            settings=settings,
            fingerprints=fingerprints,
            device=device,
            max_tiles=max_tiles or None,
            backend=backend,
            checks=STABILITY_CHECKS if stability else (),
        )
    except (ValueError, OSError, ImportError, StaleCalibrationError) as error:  # OSError: e.g. unreadable
        raise fail(error) from None
    console.print(describe(app.state.run))
    console.print(f"serving {run} on http://{host}:{port}/ (API docs at /docs)")
    options = server_options(
        host,
        port,
        header_timeout=header_timeout,
        max_connections=settings.connection_limit(),
        log_level="warning",
    )
    uvicorn.run(app, **options)


def register(app: typer.Typer) -> None:
    app.command()(serve)
