"""`animeprov evidence PATHS...`: what each file's own metadata says about its origin (JSON lines)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.progress import console, counted, labelled


def evidence(
    paths: list[Path] = typer.Argument(..., help="Image files or folders."),
    recursive: bool = typer.Option(True, help="Walk folders recursively."),
) -> None:
    """Read generation metadata (A1111, NovelAI, ComfyUI, EXIF, XMP, C2PA) without trusting it."""
    from animeprov.evidence import METADATA_CAVEAT, evidence_summary, read_evidence
    from animeprov.io import ImageError, iter_image_files, load_image, read_file

    read, skipped = 0, 0

    def skip(reason: object) -> None:
        nonlocal skipped
        skipped += 1
        console.print(labelled("skipped", reason))

    try:
        files = list(iter_image_files(paths, recursive=recursive, on_skip=lambda f, why: skip(f"{f}: {why}")))
    except FileNotFoundError as error:
        raise fail(error) from None
    for path in files:
        try:
            raw = read_file(path)  # an ImageError for a FIFO, a broken symlink, ... (never blocks)
            summary = evidence_summary(read_evidence(load_image(raw, name=str(path)), raw))
        except (ImageError, OSError) as error:
            skip(error)
            continue
        summary.pop("caveat")
        print(json.dumps({"path": str(path), **summary}))
        read += 1
    console.print(f"{counted(read, 'file')} read, {skipped} skipped. {METADATA_CAVEAT}")


def register(app: typer.Typer) -> None:
    app.command()(evidence)
