"""How every command reports a failure: one red line on stderr, then a non-zero exit status."""

from __future__ import annotations

import typer

from animeprov.progress import console


def fail(message: object, code: int = 2) -> typer.Exit:
    """Print `error: message` and return the Exit to raise: `raise fail(error) from None`."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)
