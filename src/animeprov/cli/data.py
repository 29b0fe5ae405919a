"""`animeprov data ...` commands: synthetic benchmark, dataset index, train/val/test split, and the
paper's data pipeline: prompts, tags, generate, collect, curate."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_MAX_PIXELS
from animeprov.progress import console, labelled, progress_bar, stdout

data_app = typer.Typer(no_args_is_help=True)


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
    stdout.print(f"wrote {per_class * len(class_list)} images; manifest: {manifest}")


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
    )
    if result.cross_class_groups:
        _warn(
            f"{len(result.cross_class_groups)} group(s) hold images of several classes "
            f"(one picture under two labels?): {', '.join(result.cross_class_groups[:10])}"
        )
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} file(s):", style="yellow")
        for file, reason in result.skipped:
            console.print(f"  {file}: {reason}")
    console.print(f"skipped list: {result.skipped_csv}")
    if result.rows == 0:
        console.print(f"error: no readable image found under {root}", style="red")
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
    by: str | None = typer.Option(
        None,
        "--by",
        help="Hold out whole values of this column (e.g. source) as val and test: every image kept, no "
        "class cap; what calibration needs to describe unseen sources.",
    ),
) -> None:
    """Split a manifest into train/val/test: balanced per class, groups never divided (or, with --by,
    whole sources held out)."""
    from animeprov.data.manifest import (
        SPLIT_COLUMN,
        SPLITS,
        column_as_read,
        read_columns,
        read_rows,
        write_rows,
    )
    from animeprov.data.split import split_counts, split_manifest, split_table

    ratio_values = _parse_ratios(ratios)
    if by is not None and (per_class is not None or drop_conflicts):
        raise typer.BadParameter(
            "--by keeps every image: no --per-class or --drop-conflicts", param_hint="--by"
        )
    try:
        columns = read_columns(manifest)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="MANIFEST") from None
    group_column = column_as_read(group_column, columns)
    needed = {"class": "MANIFEST"} | ({by: "--by"} if by is not None else {group_column: "--group-column"})
    for name, hint in needed.items():
        if name not in columns:
            advice = (
                "; `animeprov data index` writes one, or name another column with --group-column (e.g. "
                "source, which keeps each source whole, or path: every image its own group)"
                if hint == "--group-column"
                else ""
            )
            raise typer.BadParameter(
                f"{manifest} has no {name!r} column ({', '.join(columns)}){advice}", param_hint=hint
            )

    rows = list(read_rows(manifest))
    if not rows:
        console.print(f"error: {manifest} has no rows", style="red")
        raise typer.Exit(1)
    available = dict(sorted(Counter(row["class"] for row in rows).items()))
    if by is not None:
        _split_by_column(manifest, rows, columns, available, out, ratio_values, seed, by)
        return
    with _warnings_said():
        selected = split_manifest(
            rows,
            ratios=ratio_values,
            per_class=per_class,
            seed=seed,
            group_column=group_column,
            drop_conflicts=drop_conflicts,
        )

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
    stdout.print(f"{len(selected)} of {len(rows)} images in the split{left_out}; split: {out}")


def _split_by_column(
    manifest: Path,
    rows: list[dict],
    columns: list[str],
    available: dict[str, int],
    out: Path,
    ratios: tuple,
    seed: int,
    by: str,
) -> None:
    """`data split --by COLUMN`: whole values held out as val and test (`data.split.split_by_source`)."""
    from animeprov.data.manifest import SPLIT_COLUMN, SPLITS, write_rows
    from animeprov.data.split import split_by_source, split_counts, split_table

    try:
        selected = split_by_source(rows, ratios=ratios, seed=seed, source_column=by)
    except ValueError as error:
        raise typer.BadParameter(f"{manifest}: {error}", param_hint="--by") from None
    fieldnames = [name for name in columns if name != SPLIT_COLUMN] + [SPLIT_COLUMN]
    write_rows(out, selected, fieldnames, source_csv=manifest)
    counts = split_counts(selected)
    stdout.print(split_table(counts, available))
    for cls, per_split in counts.items():
        empty = [
            name for name, ratio in zip(SPLITS, ratios, strict=True) if ratio > 0 and not per_split.get(name)
        ]
        if empty:
            _warn(
                f"class {cls}: no {' or '.join(empty)} images (held out only as whole {by} values, and it "
                "has too few of them)"
            )
    for name in ("val", "test"):
        values = sorted({row[by] for row in selected if row[SPLIT_COLUMN] == name})
        stdout.print(f"{name}: {len(values)} {by} value(s) held out: {', '.join(values) or 'none'}")
    stdout.print(f"{len(selected)} images, split by {by!r}; split: {out}")


@data_app.command("prompts")
def prompts(
    n: int = typer.Option(2000, "--n", min=1, help="Number of prompts."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed and tag file, same prompts)."),
    style_token: str | None = typer.Option(
        None, "--style-token", help='Words put first in every prompt, e.g. "classic disney style".'
    ),
    tags: Path | None = typer.Option(
        None, "--tags", exists=True, dir_okay=False, help="Tag file (JSON; default: the one shipped)."
    ),
    out: Path = typer.Option(Path("prompts.jsonl"), "--out", "-o", help="JSON-lines file to write."),
) -> None:
    """Random prompts from weighted booru tags (one JSON object per line: id, prompt, tags, seed)."""
    from animeprov.data.prompts import build_prompts, load_tag_set, write_prompts

    try:
        tag_set = load_tag_set(tags)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--tags") from None
    count = write_prompts(out, build_prompts(tag_set, n, seed, style_token))
    stdout.print(f"wrote {count} prompts; {out}")


@data_app.command("tags")
def tags(
    source: str = typer.Option("safebooru", "--source", help="Name of the booru (recorded in the file)."),
    base_url: str = typer.Option(
        "https://safebooru.org/",
        "--base-url",
        help="Booru with a Gelbooru-0.2-style index.php?page=dapi API.",
    ),
    top: int = typer.Option(300, "--top", min=1, help="Keep this many most-used general tags."),
    pages: int = typer.Option(5, "--pages", min=1, help="Pages of the tag list to read."),
    page_size: int = typer.Option(1000, "--page-size", min=1, help="Tags per page."),
    min_interval: float = typer.Option(1.0, "--min-interval", min=0, help="Seconds between requests."),
    out: Path = typer.Option(..., "--out", "-o", help="Tag file (JSON) to write."),
) -> None:
    """Rebuild a tag file from a booru's tag counts; tags outside the default groups go to "other"."""
    from animeprov.data.collect import BooruClient, CollectError, fetch_tag_counts
    from animeprov.data.prompts import load_tag_set, tags_from_counts, write_tag_set

    client = BooruClient(base_url, min_interval=min_interval)
    try:
        entries = fetch_tag_counts(client, pages=pages, page_size=page_size)
        tag_set = tags_from_counts(
            entries, load_tag_set(), top=top, source=f"{source} tag list ({base_url}), post counts as weights"
        )
    except (CollectError, ValueError) as error:
        console.print(f"error: {error}", style="red")
        raise typer.Exit(1) from None
    write_tag_set(out, tag_set)
    summary = ", ".join(f"{group.name} {len(group.tags)}" for group in tag_set.groups)
    stdout.print(f"wrote {sum(len(g.tags) for g in tag_set.groups)} tags ({summary}); {out}")


@data_app.command("generate")
def generate(
    model: str = typer.Option(
        ..., "--model", help="A preset (see --list-presets), a Hugging Face repo id, or a local folder/file."
    ),
    prompts_file: Path = typer.Option(
        ..., "--prompts", exists=True, dir_okay=False, help="Prompts (JSON lines, from `data prompts`)."
    ),
    n: int = typer.Option(..., "--n", min=1, help="Images to generate."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for OUT/<class>/*.png and manifest.csv."),
    size: int = typer.Option(512, "--size", min=8, help="Image side in pixels (a multiple of 8)."),
    steps: int = typer.Option(30, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    scheduler: str = typer.Option("pndm", "--scheduler", help="pndm, ddim, euler, euler-a, lms or dpm++2m."),
    negative_prompt: str | None = typer.Option(
        None, "--negative-prompt", help="Negative prompt (default: a short SFW/quality one; '' for none)."
    ),
    class_name: str | None = typer.Option(
        None, "--class", help="Class of the images (default: the preset name or the model's name)."
    ),
    style_token: str | None = typer.Option(
        None, "--style-token", help="Put first in prompts lacking it (default: the preset's; '' for none)."
    ),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per pipeline call."),
    seed: int = typer.Option(0, "--seed", help="Seeds for images beyond the prompts' own (n > prompts)."),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu, ... (default: cuda if available)."),
    safety_checker: bool = typer.Option(
        False,
        "--safety-checker/--no-safety-checker",
        help="Run SD's safety checker; flagged images are skipped.",
    ),
) -> None:
    """Generate images with a diffusers Stable Diffusion model; resumable, with settings in each PNG."""
    from animeprov.data.generate import (
        DEFAULT_NEGATIVE_PROMPT,
        GenerateDependencyError,
        GenerationSettings,
        ModelUnavailableError,
        generate_images,
        import_diffusers,
        load_pipeline,
        pick_device,
        resolve_model,
    )
    from animeprov.data.prompts import read_prompts

    try:
        import_diffusers()
        choice = resolve_model(model, class_name)
        prompt_list = read_prompts(prompts_file)
        device_name, dtype = pick_device(device)
        settings = GenerationSettings(
            model=choice.model,
            class_name=choice.class_name,
            size=size,
            steps=steps,
            guidance=guidance,
            scheduler=scheduler,
            negative_prompt=DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt,
            style_token=choice.style_token if style_token is None else style_token,
            seed=seed,
            dtype=dtype,
            safety_checker=safety_checker,
        )
    except GenerateDependencyError as error:
        console.print(f"error: {error}", style="red")
        raise typer.Exit(1) from None
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    console.print(
        f"model {settings.model} -> class {settings.class_name} on {device_name} ({dtype}); "
        f"safety checker {'on' if safety_checker else 'off'}",
    )
    try:
        with progress_bar() as bar:
            task = bar.add_task("generating", total=n, info=str(out))
            result = generate_images(
                out,
                settings,
                prompt_list,
                n,
                load=lambda: load_pipeline(settings, device_name),
                batch_size=batch_size,
                on_progress=lambda k: bar.update(task, advance=k),
            )
    except (ModelUnavailableError, ValueError) as error:
        raise fail(error, code=1) from None
    flagged = f", {result.flagged} flagged by the safety checker (not saved)" if result.flagged else ""
    stdout.print(
        f"{result.generated} generated, {result.reused} kept from an earlier run{flagged}; "
        f"manifest: {result.manifest}",
    )


@data_app.command("collect")
def collect(
    source: str = typer.Option("safebooru", "--source", help="Name of the booru (file names, manifest)."),
    tags: str = typer.Option("", "--tags", help='Search tags, space-separated, e.g. "1girl solo".'),
    n: int = typer.Option(..., "--n", min=1, help="Images to keep."),
    before: str | None = typer.Option(
        None, "--before", help="Keep only posts made before this date (YYYY-MM-DD, UTC), e.g. 2022-08-01."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for OUT/<class>/*.png and manifest.csv."),
    size: int = typer.Option(512, "--size", min=8, help="Centre-crop side; smaller images are skipped."),
    base_url: str = typer.Option(
        "https://safebooru.org/",
        "--base-url",
        help="Booru with a Gelbooru-0.2-style index.php?page=dapi API.",
    ),
    ratings: str = typer.Option(
        "safe,general,s,g", "--ratings", help="Comma-separated ratings to keep ('' keeps every rating)."
    ),
    class_name: str = typer.Option("human", "--class", help="Class of the images."),
    max_id: int | None = typer.Option(
        None, "--max-id", help="Search only posts with id below this (adds id:<N; skips newer posts quickly)."
    ),
    page_size: int = typer.Option(100, "--page-size", min=1, max=1000, help="Posts per API page."),
    max_pages: int = typer.Option(1000, "--max-pages", min=1, help="Stop after this many pages."),
    min_interval: float = typer.Option(1.0, "--min-interval", min=0, help="Seconds between requests."),
    retries: int = typer.Option(4, "--retries", min=0, help="Retries of a failed request."),
    backoff: float = typer.Option(2.0, "--backoff", min=0, help="First retry wait in seconds (doubles)."),
    artists: bool = typer.Option(
        False, "--artists/--no-artists", help="Look up artist tags in the tag API (more requests)."
    ),
    contact: str | None = typer.Option(
        None, "--contact", help="Contact (e-mail or URL) added to the User-Agent, so the site can reach you."
    ),
) -> None:
    """Collect human-drawn images from a booru, centre-cropped (never resized); resumable."""
    from animeprov.data.collect import DEFAULT_USER_AGENT, BooruClient, CollectError, parse_cutoff
    from animeprov.data.collect import collect as collect_posts

    try:
        cutoff = parse_cutoff(before) if before else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--before") from None
    user_agent = f"{DEFAULT_USER_AGENT[:-1]}; contact: {contact})" if contact else DEFAULT_USER_AGENT
    client = BooruClient(
        base_url, user_agent=user_agent, min_interval=min_interval, retries=retries, backoff=backoff
    )
    rating_list = [rating.strip() for rating in ratings.split(",") if rating.strip()]
    with progress_bar() as bar:
        task = bar.add_task("collecting", total=n, info=source)
        try:
            result = collect_posts(
                out,
                client,
                tags=tags,
                n=n,
                before=cutoff,
                size=size,
                ratings=rating_list,
                source_name=source,
                class_name=class_name,
                page_size=page_size,
                max_pages=max_pages,
                max_id=max_id,
                lookup_artists=artists,
                on_progress=lambda kept, note: bar.update(task, completed=kept, info=note[:60]),
            )
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--out") from None
        except CollectError as error:
            console.print(f"error: {error}", style="red")
            raise typer.Exit(1) from None
    table = Table(title=f"{result.kept} images kept ({result.pages} pages, {result.requests} requests)")
    table.add_column("skipped because")
    table.add_column("posts", justify="right")
    for reason, count in sorted(result.skipped.items()):
        table.add_row(reason, str(count))
    stdout.print(table)
    if result.failed:
        _warn(f"{result.failed} download(s) failed after retries; rerun to try them again")
    if result.kept < n:
        _warn(f"only {result.kept} of {n} images found (no more pages, or --max-pages reached)")
    stdout.print(f"manifest: {result.manifest}")


@data_app.command("curate")
def curate(
    folder: Path = typer.Argument(
        ...,
        metavar="DIR",
        exists=True,
        file_okay=False,
        help="Image set: DIR/manifest.csv, or images under DIR.",
    ),
    reviewers: int = typer.Option(2, "--reviewers", min=1, help="Rounds: reviewer r sees what r-1 accepted."),
    db: Path | None = typer.Option(None, "--db", help="Decisions database (default: DIR/.curation.sqlite3)."),
    export: Path | None = typer.Option(
        None, "--export", help="Write the curated manifest (CSV) and acceptance rates instead of serving."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port."),
) -> None:
    """Two-round manual selection in the browser (keyboard-driven); --export writes the "manual" set."""
    from animeprov.curate.app import create_app, export_curation, open_store
    from animeprov.web import allowed_hosts_for, is_loopback, server_options

    if export is not None:
        try:
            with _warnings_said():
                store = open_store(folder, reviewers, db)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="DIR") from None
        summaries = export_curation(store, folder, export)
        store.close()
        table = Table(title=f"curation of {folder}")
        for column in ("round", "shown", "decided", "accepted", "acceptance rate"):
            table.add_column(column, justify="right")
        for s in summaries:
            rate = f"{s.acceptance_rate:.1%}" if s.acceptance_rate is not None else "-"
            table.add_row(str(s.round), str(s.eligible), str(s.decided), str(s.accepted), rate)
        stdout.print(table)
        stdout.print(
            f"curated manifest: {export} (+ {export.with_suffix('.decisions.csv').name}, "
            f"{export.with_suffix('.summary.json').name})",
        )
        return

    import uvicorn

    loopback = is_loopback(host)
    try:
        with _warnings_said():
            app = create_app(folder, reviewers, db, allowed_hosts=allowed_hosts_for(host))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="DIR") from None
    if not loopback:
        _warn(f"binding to {host}: anyone who can reach this address can see the images and record decisions")
    console.print(f"curation page: http://{host}:{port}/?round=1 (Ctrl+C to stop)")
    uvicorn.run(app, **server_options(host, port, log_level="warning"))


def _warn(message: str) -> None:
    """A yellow "warning:" line on stderr."""
    console.print(labelled("warning:", message))


@contextlib.contextmanager
def _warnings_said():
    """The library's warnings inside the block (e.g. files left out of a set) as `warning:` lines, each
    once, instead of Python's file:line form."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:  # also before an error: they may be why (e.g. no image left to curate)
            for warning in caught:
                _warn(str(warning.message))


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
