"""The consoles (stderr: progress and messages; stdout: tables, results) and progress bars of all commands."""

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
from rich.text import Text

# Progress and status go to stderr so that stdout stays clean for tables, CSV and JSON lines (`stdout`).
# Markup is off: messages carry file names, booru tags and prompts, and rich would read their [brackets]
# as styles (dropping "[artist]" from a file name, failing on "[/x]"); styles are given explicitly
# (`labelled`, `style=`). soft_wrap keeps a long path on one line of a log instead of breaking it at 80
# columns where stderr is not a terminal.
console = Console(stderr=True, markup=False, soft_wrap=True)
stdout = Console(markup=False, soft_wrap=True)


def counted(number: int, noun: str) -> str:
    """'1 file', '2 files': a count for people to read."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def labelled(label: str, message: object, style: str = "yellow") -> Text:
    """`label message` with only the label styled: `console.print(labelled("skipped", f"{path}: {why}"))`."""
    return Text.assemble((label, style), " ", str(message))


def progress_bar(*, transient: bool = False, disable: bool = False) -> Progress:
    """A progress bar showing count, rate-friendly timings and a free-text field `info`.

    `disable` keeps the same API but draws nothing (e.g. on every rank but 0 of a distributed run).

    Use `task = bar.add_task("indexing", total=n, info="")` and
    `bar.update(task, advance=1, info="loss 0.12")`.
    """
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),  # file names, booru notes
        console=console,
        transient=transient,
        disable=disable,
    )
