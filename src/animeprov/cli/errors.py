"""How every command reports a failure: one red line on stderr, then a non-zero exit status."""

from __future__ import annotations

import typer

from animeprov.progress import console, labelled


def fail(message: object, code: int = 2) -> typer.Exit:
    """Print `error: message` and return the Exit to raise: `raise fail(error) from None`.

    An OSError with a file name reads "FILE: reason" (e.g. a run folder another user's umask left
    unreadable), not Python's "[Errno 13] ..."."""
    if isinstance(message, OSError) and message.filename is not None:
        reason = (message.strerror or str(message)).lower()
        if isinstance(message, PermissionError):
            reason += " (it must be readable by the user running this command)"
        message = f"{message.filename}: {reason}"
    console.print(labelled("error:", message, style="red"))
    return typer.Exit(code)
