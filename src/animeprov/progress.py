"""Rich progress bars, configured once for every long-running command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and status go to stderr so that stdout stays clean for tables, CSV and JSON lines.
console = Console(stderr=True)


def progress_bar(*, transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar showing count, rate-friendly timings and a free-text field `info`.

    `disable` keeps the same API but draws nothing (e.g. on every rank but 0 of a distributed run).

    Use `task = bar.add_task("indexing", total=n, info="")` and
    `bar.update(task, advance=1, info="loss 0.12")`.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=disable,
    )
