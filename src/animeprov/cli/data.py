"""`animeprov data ...` commands: synthetic benchmark, dataset index, train/val/test split."""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from animeprov.config import DEFAULT_MAX_PIXELS
from animeprov.progress import console, progress_bar

data_app = typer.Typer(no_args_is_help=True)

# Tables and results go to stdout; progress, warnings and notes go to stderr (`console`).
stdout = Console()

# The library modules are imported inside each command so that `animeprov --help` stays fast.


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(
        ..., metavar="OUT", help="Folder to write the synthetic ImageFolder tree and manifest.csv into."
    ),
    per_class: int = typer.Option(..., "--per-class", min=1, help="Images per class."),
    size: int = typer.Option(512, "--size", min=16, help="Image side in pixels (a multiple of 8)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same images)."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Comma-separated class names (default: the standard classes, without held-out ones).",
    ),
    workers: int = typer.Option(
        os.cpu_count() or 1, "--workers", min=0, help="Worker processes (0: in this process)."
    ),
) -> None:
    """Generate the synthetic benchmark: one class per simulated generator, plus `human`."""
    from animeprov.data.synth import DEFAULT_CLASSES, SYNTH_CLASSES, generate_synthetic

    class_list = _parse_classes(classes) if classes is not None else list(DEFAULT_CLASSES)
    unknown = [name for name in class_list if name not in SYNTH_CLASSES]
    if unknown:
        raise typer.BadParameter(
            f"unknown class(es) {', '.join(unknown)}; choose from {', '.join(SYNTH_CLASSES)}",
            param_hint="--classes",
        )
    with progress_bar() as bar:
        task = bar.add_task("generating", total=per_class * len(class_list), info=str(out))
        try:
            manifest = generate_synthetic(
                out,
                per_class,
                size=size,
                seed=seed,
                classes=class_list,
                workers=workers,
                on_progress=lambda n: bar.update(task, advance=n),
            )
        except ValueError as error:  # arguments are checked before any image is drawn, e.g. --size
            raise typer.BadParameter(str(error)) from None
    stdout.print(f"wrote {per_class * len(class_list)} images; manifest: {manifest}", soft_wrap=True)


@data_app.command("index")
def index(
    root: Path = typer.Argument(
        ...,
        metavar="ROOT",
        exists=True,
        file_okay=False,
        dir_okay=True,
        help="ImageFolder tree: ROOT/<class>/**/<image>.",
    ),
    out: Path = typer.Option(Path("manifest.csv"), "--out", "-o", help="Manifest CSV to write."),
    near_dup_bits: int = typer.Option(
        6,
        "--near-dup-bits",
        min=0,
        help="Perceptual-hash bits that may differ between near-duplicates (0: off).",
    ),
    hash_size: int = typer.Option(8, "--hash-size", min=2, help="Perceptual hash side (bits = side^2)."),
    group_by: list[str] = typer.Option(
        [], "--group-by", help="Column of ROOT/manifest.csv whose equal values share a group (repeatable)."
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Refuse images with more pixels than this."
    ),
) -> None:
    """Index every image under ROOT into a manifest with duplicate/near-duplicate groups."""
    from animeprov.data.index import build_index
    from animeprov.io import LoadRules

    with progress_bar() as bar:
        task = bar.add_task("indexing", total=None, info=str(root))
        try:
            result = build_index(
                root,
                out,
                near_dup_bits=near_dup_bits,
                hash_size=hash_size,
                group_by=group_by,
                rules=LoadRules(max_pixels=max_pixels),
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as error:  # e.g. an unknown --group-by column: raised before any file is read
            raise typer.BadParameter(str(error)) from None

    table = Table(title=f"indexed {result.rows} images")
    table.add_column("class")
    table.add_column("images", justify="right")
    for cls, n in result.class_counts.items():
        table.add_row(cls, str(n))
    stdout.print(table)
    stdout.print(
        f"{result.groups} groups ({result.multi_member_groups} with more than one image); "
        f"manifest: {result.out_csv}",
        soft_wrap=True,
    )
    if result.cross_class_groups:
        _warn(
            f"{len(result.cross_class_groups)} group(s) hold images of several classes "
            f"(one picture under two labels?): {', '.join(result.cross_class_groups[:10])}"
        )
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} file(s):")
        for file, reason in result.skipped:
            console.print(f"  {file}: {reason}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"skipped list: {result.skipped_csv}", markup=False, soft_wrap=True)
    if result.rows == 0:
        console.print(
            f"error: no readable image found under {root}", style="red", markup=False, soft_wrap=True
        )
        raise typer.Exit(1)


@data_app.command("split")
def split(
    manifest: Path = typer.Argument(
        ..., metavar="MANIFEST", exists=True, dir_okay=False, help="Manifest CSV (from `data index`)."
    ),
    out: Path = typer.Option(Path("split.csv"), "--out", "-o", help="Split CSV to write."),
    ratios: str = typer.Option("8:1:1", "--ratios", help="train:val:test proportions, e.g. 8:1:1."),
    per_class: int | None = typer.Option(
        None, "--per-class", min=1, help="Images per class (default: the size of the smallest class)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    group_column: str = typer.Option(
        "group", "--group-column", help="Rows with the same value here stay in one split."
    ),
    drop_conflicts: bool = typer.Option(
        False, "--drop-conflicts", help="Leave out groups whose images carry different classes."
    ),
) -> None:
    """Split a manifest into train/val/test: balanced per class, groups never divided."""
    from animeprov.data.manifest import SPLIT_COLUMN, SPLITS, read_columns, read_rows, write_rows
    from animeprov.data.split import split_counts, split_manifest, split_table

    ratio_values = _parse_ratios(ratios)
    try:
        columns = read_columns(manifest)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="MANIFEST") from None
    for name in ("class", group_column):
        if name not in columns:
            hint = "--group-column" if name == group_column else "MANIFEST"
            raise typer.BadParameter(
                f"{manifest} has no {name!r} column ({', '.join(columns)})", param_hint=hint
            )

    rows = list(read_rows(manifest))
    if not rows:
        console.print(f"error: {manifest} has no rows", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    available = dict(sorted(Counter(row["class"] for row in rows).items()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        selected = split_manifest(
            rows,
            ratios=ratio_values,
            per_class=per_class,
            seed=seed,
            group_column=group_column,
            drop_conflicts=drop_conflicts,
        )
    for warning in caught:
        _warn(str(warning.message))

    fieldnames = [name for name in columns if name != SPLIT_COLUMN] + [SPLIT_COLUMN]
    write_rows(out, selected, fieldnames, source_csv=manifest)

    counts = split_counts(selected)
    stdout.print(split_table(counts, available))
    target = per_class if per_class is not None else min(available.values(), default=0)
    for cls, n in available.items():
        per_split = counts.get(cls, {})
        used = sum(per_split.values())
        if used < target:
            why = (
                "class too small"
                if n < target
                else "its groups are too large to fill the cap; try a larger --per-class"
            )
            _warn(f"class {cls}: {used} images selected, below {target} per class ({why})")
        empty = [
            name
            for name, ratio in zip(SPLITS, ratio_values, strict=True)
            if ratio > 0 and not per_split.get(name)
        ]
        if used and empty:
            _warn(f"class {cls}: no {' or '.join(empty)} images (too few groups to divide)")
    left_out = (
        f" ({len(rows) - len(selected)} left out by the per-class cap or as conflicts)"
        if len(selected) < len(rows)
        else ""
    )
    stdout.print(
        f"{len(selected)} of {len(rows)} images in the split{left_out}; split: {out}", soft_wrap=True
    )


def _warn(message: str) -> None:
    """A yellow "warning:" line on stderr; the message is plain text (file and class names may hold [])."""
    console.print(Text("warning: ", style="yellow") + Text(message), soft_wrap=True)


def _parse_ratios(text: str) -> tuple[float, float, float]:
    parts = text.split(":")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise typer.BadParameter(
            f"expected train:val:test, three numbers >= 0 with a positive sum (e.g. 8:1:1), got {text!r}",
            param_hint="--ratios",
        )
    return values  # type: ignore[return-value]


def _parse_classes(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("expected comma-separated class names", param_hint="--classes")
    return names
