"""`animeprov fingerprint`: per-class mean DCT spectra (the paper's Figs. 10-15)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.progress import console, labelled, progress_bar


def fingerprint(
    data: Path = typer.Argument(
        ..., help="Manifest/split CSV, or an ImageFolder (one sub-folder per class)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write DIR/<class>/*.npy|png and DIR/index.json."),
    split: str = typer.Option("", help="Only this split of a split CSV (train/val/test); default: all rows."),
    size: int = typer.Option(
        0, min=0, help="Centre-crop size (never resized); smaller images are skipped. 0: first image's size."
    ),
    per_class: int = typer.Option(0, min=0, help="Read at most this many images per class (0: all)."),
    human_class: str = typer.Option(
        DEFAULT_HUMAN_CLASS, help="Reference class for the difference images (none: no differences)."
    ),
    resize_class: str = typer.Option(
        "", help="Class for the before/after-resize panel (Fig. 15); default: the first non-human class."
    ),
    resize_chain: str = typer.Option(
        "resize:512-1024-512",
        help="animeprov.perturb spec for the panel; ratios apply to other sizes (256: x2 then x0.5).",
    ),
    resize_panel: bool = typer.Option(
        True, help="Write resize_panel.png (costs a second pass over one class)."
    ),
    batch_size: int = typer.Option(
        16, min=1, help="Crops transformed per DCT batch (memory ~ batch x size^2)."
    ),
) -> None:
    """Mean log|DCT| per class (R, G, B, luminance), the paper-style view and the difference from human."""
    from animeprov.fingerprint import (
        RESIZE_PANEL_FILE,
        compute_fingerprints,
        labelled_images,
        plot_resize_panel,
        resize_comparison,
        write_fingerprints,
    )
    from animeprov.perturb import parse_spec

    split_name = split or None
    try:
        parse_spec(resize_chain)  # a typo should fail before the long pass, not after it
        items = list(labelled_images(data, split=split_name))
        if not items:
            raise ValueError(f"{data}: no images found")
        with progress_bar() as bar:
            task = bar.add_task("fingerprints", total=len(items), info="")
            fingerprints = compute_fingerprints(
                items,
                size=size or None,
                batch_size=batch_size,
                per_class=per_class or None,
                on_image=lambda cls: bar.update(task, advance=1, info=cls),
            )
        source = {"data": str(data), "split": split_name, "per_class": per_class or None}
        index_path = write_fingerprints(fingerprints, out, human_class=human_class, source=source)
        panel_class = resize_class or next((c for c in fingerprints if c != human_class), "")
        if resize_panel and panel_class:
            if panel_class not in fingerprints:
                raise ValueError(f"--resize-class {panel_class!r} is not among {', '.join(fingerprints)}")
            console.print(f"resize panel: {panel_class}, {resize_chain}")
            before, after = resize_comparison(
                [(c, p) for c, p in items if c == panel_class],
                # The crop size of a class with images: one whose every file failed holds a placeholder.
                size=next(fp.size for fp in fingerprints.values() if fp.count),
                chain=resize_chain,
                batch_size=batch_size,
                per_class=per_class or None,
            )
            plot_resize_panel(before, after, out / RESIZE_PANEL_FILE, label=panel_class, chain=resize_chain)
    except (ValueError, FileNotFoundError) as error:
        raise fail(error) from None

    table = Table(title=f"fingerprints of {data}")
    for column in ("class", "images", "skipped"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for cls, fp in fingerprints.items():
        table.add_row(cls, str(fp.count), str(fp.skipped))
    console.print(table)
    for cls, fp in fingerprints.items():
        for reason in fp.skipped_examples[:3]:
            console.print(labelled(f"skipped ({cls}):", reason))
    console.print(f"written {index_path}")


def register(app: typer.Typer) -> None:
    app.command()(fingerprint)
