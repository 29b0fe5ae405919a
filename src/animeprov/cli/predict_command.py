"""`animeprov predict [RUN] PATHS...` (no run: the bundled reference model) and `animeprov predict-merge OUT`.

Streams any number of files through `Predictor.predict_many` and writes one row per file as it comes:
JSON lines, CSV or a plain table. `--out FILE` is resumable: sources already in FILE are skipped and a
half-written last line (a kill mid-write) is cut off first. Sharding (torchrun's RANK/WORLD_SIZE, or
`--shard K/N` for Slurm job arrays) gives each process the files whose path hashes to its shard; each
writes `OUT.shard-K-of-N.EXT` (plus a `.done` marker when it finishes) and `predict-merge OUT` joins them.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import heapq
import io
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

import typer

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TILES
from animeprov.progress import console, counted, labelled, progress_bar

FORMATS = ("auto", "jsonl", "csv", "table")
_GLOB_CHARS = re.compile(r"[*?\[]")
_SHARD_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)$")
# Exit status when files were found but none could be judged (all unreadable); 2 is a usage error.
NOTHING_JUDGED = 3


# ----------------------------------------------------------------------------------------------
# Which files: paths, folders and globs; the shard a file belongs to
# ----------------------------------------------------------------------------------------------


def expand_paths(
    paths: Iterable[str], recursive: bool, on_skip: Callable[[Path, str], None] | None = None
) -> Iterator[Path]:
    """Files as given, folders walked (io.iter_image_files, which passes folders it cannot list to
    `on_skip`), and glob patterns (`**` included) expanded in sorted order. Raises FileNotFoundError for
    a missing path or a pattern that matches nothing."""
    from animeprov.io import iter_image_files

    expanded: list[list[str]] = []
    for given in paths:
        if _GLOB_CHARS.search(given) and not os.path.exists(given):
            matches = sorted(glob.glob(given, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{given}: no file matches this pattern")
            expanded.append(matches)
        else:
            expanded.append([given])
    for group in expanded:  # iter_image_files checks that every path exists before yielding any
        yield from iter_image_files(group, recursive=recursive, on_skip=on_skip)


def shard_of(source: str, shards: int) -> int:
    """A stable shard for a path: its hash, so shards never overlap, cover every file, and keep their files
    when other files are added or removed (an index in the list would shift)."""
    digest = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' (0 <= K < N), else torchrun's RANK/WORLD_SIZE when WORLD_SIZE > 1, else None."""
    if text:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not int(match[1]) < int(match[2]):
            raise ValueError(f"--shard must be K/N with 0 <= K < N, got {text!r}")
        return int(match[1]), int(match[2])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ.get("RANK", "0")), world
    return None


def shard_path(out: Path, shard: int, shards: int) -> Path:
    """results.jsonl -> results.shard-0-of-2.jsonl"""
    return out.with_name(f"{out.stem}.shard-{shard}-of-{shards}{out.suffix}")


def done_marker(path: Path) -> Path:
    return path.with_name(path.name + ".done")


# ----------------------------------------------------------------------------------------------
# Rows: one line per file in every format, so a resumed file can be cut at its last newline
# ----------------------------------------------------------------------------------------------


def csv_header(classes: list[str]) -> list[str]:
    return [
        "source",
        "verdict",
        "generator",
        "p_generated",
        "reason",
        *(f"p_{name}" for name in classes),
        "view",
        "n_views",
        "evidence_indicates_ai",
        "evidence_generators",
        "notes",
        "error",
    ]


def _one_line(text: object) -> str:
    return " ".join(str(text).splitlines())


# A file name that is not valid UTF-8 reaches Python with each undecodable byte as a lone surrogate
# (U+DC80..U+DCFF, PEP 383). Rows keep such names losslessly: JSON lines write the surrogate as a JSON
# escape ("\udcff": the file stays UTF-8, and os.fsencode(json.loads(line)["source"]) gives the name's
# bytes back); CSV files and stdout carry the name's own bytes (errors="surrogateescape" both ways).
_SURROGATE = re.compile(r"[\ud800-\udfff]")
ENCODING_ERRORS = "surrogateescape"


def _escape_surrogates(json_text: str) -> str:
    """Lone surrogates (only possible inside JSON strings) as JSON \\u escapes."""
    return _SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", json_text)


def _displayable(text: str) -> str:
    """For people (the table): undecodable file-name bytes shown as \\xNN."""
    return text.encode("utf-8", ENCODING_ERRORS).decode("utf-8", "backslashreplace")


def csv_row(prediction, classes: list[str]) -> list[str]:
    probs = prediction.probabilities
    indicates = prediction.evidence.get("indicates_ai")
    return [
        _one_line(prediction.source),
        prediction.verdict or "",
        prediction.generator or "",
        f"{prediction.p_generated:.6f}" if not prediction.error else "",
        _one_line(prediction.reason or ""),
        *(f"{probs[name]:.6f}" if name in probs else "" for name in classes),
        prediction.view,
        str(prediction.n_views),
        "" if indicates is None else str(indicates).lower(),
        _one_line("; ".join(prediction.evidence.get("named_generators", []))),
        _one_line("; ".join(prediction.notes)),
        _one_line(prediction.error or ""),
    ]


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _csv_source(line: str) -> str:
    return next(csv.reader([line]))[0]


def _jsonl_source(line: str) -> str:
    return json.loads(line)["source"]


TABLE_COLUMNS = f"{'verdict':<8} {'generator':<20} {'p_gen':>6}  {'top class':<20} {'views':>5}  source"


def table_line(prediction) -> str:
    if prediction.error:
        return f"{'ERROR':<8} {'':<20} {'':>6}  {'':<20} {'':>5}  {prediction.error}"
    top = max(prediction.probabilities, key=prediction.probabilities.get)
    verdict = prediction.verdict or "-"
    generator = (prediction.generator or "")[:20]
    views = f"{prediction.n_views}{'t' if prediction.view == 'tiles' else ''}"
    p_generated = f"{prediction.p_generated:.3f}"
    line = f"{verdict:<8} {generator:<20} {p_generated:>6}  {top[:20]:<20} {views:>5}  {prediction.source}"
    # After the source: why unsure, what the metadata says (beside the verdict, never in it), loading notes.
    extras = [f"({prediction.reason})"] if prediction.reason else []
    indicates = prediction.evidence.get("indicates_ai")
    if indicates is not None:
        named = ", ".join(prediction.evidence.get("named_generators", []))
        says = (f"AI ({named})" if named else "AI") if indicates else "saved by a drawing/editing program"
        extras.append(f"[metadata: {says}]")
    extras += [f"[{note}]" for note in prediction.notes]
    return "  ".join([line, *extras])


class RowWriter:
    """Writes one line per prediction to a stream, flushing each, in jsonl, csv or table form."""

    def __init__(self, stream: TextIO, fmt: str, classes: list[str], *, header: bool) -> None:
        self.stream, self.fmt, self.classes = stream, fmt, classes
        if header and fmt == "csv":
            self._write(_csv_line(csv_header(classes)))
        elif header and fmt == "table":
            self._write(TABLE_COLUMNS + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def write(self, prediction) -> None:
        if self.fmt == "jsonl":
            row = json.dumps(prediction.to_dict(), ensure_ascii=False, allow_nan=False)
            self._write(_escape_surrogates(row) + "\n")
        elif self.fmt == "csv":
            self._write(_csv_line(csv_row(prediction, self.classes)))
        else:
            self._write(_displayable(table_line(prediction)) + "\n")


def source_reader(fmt: str) -> Callable[[str], str]:
    return _csv_source if fmt == "csv" else _jsonl_source


def resume_output(path: Path, fmt: str, classes: list[str]) -> tuple[set[str], bool]:
    """(sources already written, whether a header is needed). Cuts a half-written last line off first.

    Reads line by line (steady memory except the set of sources). A CSV written for other classes, or a
    line that cannot be read, is an error: appending to it would mix incompatible rows.
    """
    if not path.exists() or path.stat().st_size == 0:
        return set(), True
    _cut_partial_last_line(path)
    read_source = source_reader(fmt)
    done: set[str] = set()
    with open(path, encoding="utf-8", errors=ENCODING_ERRORS, newline="") as handle:
        if fmt == "csv":
            header = handle.readline().rstrip("\n")
            if not header:
                return set(), True
            if next(csv.reader([header])) != csv_header(classes):
                raise ValueError(f"{path}: its CSV columns are not this run's ({', '.join(classes)})")
        for number, line in enumerate(handle, start=2 if fmt == "csv" else 1):
            try:
                done.add(read_source(line))
            except (ValueError, KeyError, StopIteration, TypeError):
                raise ValueError(
                    f"{path}:{number}: not a {fmt} prediction row; not resuming into it"
                ) from None
    return done, fmt == "csv" and path.stat().st_size == 0


def _cut_partial_last_line(path: Path) -> None:
    """Every row ends with a newline, so bytes after the last one are a row a kill cut short."""
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            step = min(1 << 16, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position < size:
            handle.truncate(position)
            console.print(f"cut a half-written last line off {path}", style="yellow")


# ----------------------------------------------------------------------------------------------
# Merging shard outputs
# ----------------------------------------------------------------------------------------------


def find_shards(out: Path) -> tuple[int, dict[int, Path]]:
    """(N, {K: path}) of OUT's shard files; ValueError when there are none or N differs between them."""
    found: dict[int, dict[int, Path]] = {}
    pattern = f"{glob.escape(out.stem)}.shard-*-of-*{glob.escape(out.suffix)}"
    for path in out.parent.glob(pattern):
        match = _SHARD_NAME.search(path.name.removesuffix(out.suffix) if out.suffix else path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise ValueError(f"no shard files {out.parent / pattern}")
    if len(found) > 1:
        raise ValueError(
            f"shard files of different counts N={sorted(found)} next to {out}; remove the stale ones"
        )
    ((shards, paths),) = found.items()
    return shards, paths


def merge_shards(out: Path, *, allow_incomplete: bool = False) -> dict[str, int]:
    """Join OUT's shard files into OUT, sorted by path (a single run over one folder writes that order).

    Refuses when a shard file is missing or has no `.done` marker (it was killed: resume it first), unless
    `allow_incomplete`. Streams: each shard is already in path order, so a k-way merge keeps memory flat
    apart from the set of sources used to drop (and count) any row seen twice.
    """
    fmt = "csv" if out.suffix.lower() == ".csv" else "jsonl"
    shards, paths = find_shards(out)
    missing = [k for k in range(shards) if k not in paths]
    unfinished = [k for k, path in paths.items() if not done_marker(path).exists()]
    if (missing or unfinished) and not allow_incomplete:
        raise ValueError(
            f"{out}: shard(s) {missing} of {shards} missing and {sorted(unfinished)} not finished "
            "(no .done marker); rerun them (they resume), or pass --allow-incomplete"
        )
    read_source = source_reader(fmt)
    headers: set[str] = set()
    handles = []
    try:
        for k in sorted(paths):
            _cut_partial_last_line(paths[k])
            handle = open(paths[k], encoding="utf-8", errors=ENCODING_ERRORS, newline="")
            handles.append(handle)
            if fmt == "csv":
                headers.add(handle.readline())
        if len(headers) > 1:
            raise ValueError(f"{out}: shard files have different CSV columns")

        def keyed(handle: TextIO) -> Iterator[tuple[tuple[str, ...], str, str]]:
            for line in handle:
                source = read_source(line)
                yield Path(source).parts, source, line

        seen: set[str] = set()
        counts = {"shards": shards, "rows": 0, "duplicates": 0}
        tmp = out.with_name(out.name + ".merging")
        with open(tmp, "w", encoding="utf-8", errors=ENCODING_ERRORS, newline="") as merged:
            merged.writelines(headers)
            for _, source, line in heapq.merge(*(keyed(h) for h in handles)):
                if source in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(source)
                merged.write(line)
                counts["rows"] += 1
        os.replace(tmp, out)
        return counts
    finally:
        for handle in handles:
            handle.close()


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def predict(
    paths: list[str] = typer.Argument(
        ...,
        metavar="[RUN] PATHS...",
        help="Image files, folders, or quoted glob patterns ('imgs/**/*.png'), optionally after a run folder "
        "(from `animeprov train`: it holds config.json and model.safetensors). Without a run, --model.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="reference (the model shipped with animeprov, the default; docs/model-card.md) or a run folder.",
    ),
    recursive: bool = typer.Option(True, help="Walk folders recursively."),
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="jsonl, csv or table (auto: by --out's suffix, .csv or jsonl; table on stdout).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write rows here instead of stdout; rerunning skips files already written."
    ),
    view: str = typer.Option(
        "auto",
        help="auto (crop when the image is the model size, tiles when larger), crop, tiles, pad, "
        "or resize (resamples: destroys generator fingerprints).",
    ),
    batch_size: int | None = typer.Option(
        None,
        min=1,
        help="Views per model batch (tiles of several images share one). Default: by the model's input "
        "size, 16 views of 181 px or more, up to 128 small tiles (128 for the reference model's 64 px).",
    ),
    workers: int = typer.Option(
        -1,
        min=-1,
        help="Decoding processes beside the model. -1: 0 when the model runs on CPU (a decoding process "
        "competes with the model's threads; slower on 2 cores, see docs/predict.md), else 4.",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    precision: str = typer.Option(
        "auto", help="auto (fp16 on CUDA, fp32 elsewhere), fp32, bf16, fp16; calibration was fitted in fp32."
    ),
    ai_threshold: float | None = typer.Option(
        None, help="Override calibration: 'ai' when P(generated) >= this."
    ),
    artist_threshold: float | None = typer.Option(
        None, help="Override calibration: 'artist' when P(generated) <= this."
    ),
    unknown_threshold: float | None = typer.Option(
        None, help="Override calibration: an 'ai' image whose generator score is below this is 'unknown'."
    ),
    shard: str | None = typer.Option(
        None,
        help="K/N, K from 0 to N-1: only this shard's files, written to OUT.shard-K-of-N (default under "
        "torchrun: RANK/WORLD_SIZE). Needs --out; `predict-merge` joins the shards.",
    ),
    heatmaps: Path | None = typer.Option(
        None, help="Write an overlay PNG of where the model looked for its top class per image (slow)."
    ),
    max_tiles: int = typer.Option(
        DEFAULT_MAX_TILES,
        min=0,
        help="Judge at most this many tiles of an image larger than the model input, spread over it; 0: "
        "every tile (4x the work on a 512 px image for the reference model, a little more accurate).",
    ),
    backend: str = typer.Option(
        "auto",
        help="Where the model runs: auto (onnx where it can run, else torch), torch, or onnx (onnxruntime, "
        "CPU, float32, the same answers, about 2x faster a model pass; needs the export extra; a model's "
        "first run exports it, ~7 s, kept in the cache).",
    ),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS,
        "--max-pixels",
        min=1,
        help="Refuse images with more pixels than this (from the header, before decoding: decompression "
        "bombs).",
    ),
    stability: bool = typer.Option(
        False,
        help="Re-judge each committed verdict after JPEG 90, WebP 90 and a 4-px shift; a verdict that "
        "changes becomes 'unsure' (up to 4x the model's work; on unseen sources no better than a stricter "
        "threshold, docs/predict.md).",
    ),
) -> None:
    """Judge images: class probabilities, P(generated), verdict artist | ai | unsure, metadata evidence."""
    from animeprov.engine import keep_freed_memory
    from animeprov.evaluation.calibration import StaleCalibrationError
    from animeprov.evidence import METADATA_CAVEAT
    from animeprov.io import LoadRules
    from animeprov.predict import PREDICT_VIEWS, STABILITY_CHECKS, ImagePrediction, Predictor
    from animeprov.reference import describe, run_and_paths

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}")
    if view not in PREDICT_VIEWS:
        raise fail(f"--view must be one of {', '.join(PREDICT_VIEWS)}")
    if fmt == "auto":
        fmt = ("csv" if out.suffix.lower() == ".csv" else "jsonl") if out else "table"
    if out is not None and fmt == "table":
        raise fail("--out needs --format jsonl or csv (a table cannot be resumed)")
    try:
        sharding = parse_shard(shard)
    except ValueError as error:
        raise fail(str(error)) from None
    if sharding and out is None:
        raise fail("sharded prediction needs --out (each shard writes OUT.shard-K-of-N)")
    thresholds = {"ai": ai_threshold, "artist": artist_threshold, "unknown": unknown_threshold}
    try:
        run, paths = run_and_paths(model, paths)
        predictor = Predictor.from_checkpoint(
            run,
            device=device,
            thresholds=thresholds,
            precision=precision,
            checks=STABILITY_CHECKS if stability else (),
            max_tiles=max_tiles or None,
            backend=backend,
            load_rules=LoadRules(max_pixels=max_pixels),
        )
    except (OSError, ValueError, ImportError, StaleCalibrationError) as error:  # OSError: e.g. unreadable
        raise fail(error) from None
    console.print(describe(predictor.run))
    if predictor.device.type == "cpu":
        keep_freed_memory()  # steady batch shapes: reusing freed memory avoids page-faulting each batch
    if workers < 0:
        workers = 0 if predictor.device.type == "cpu" else 4

    target = shard_path(out, *sharding) if sharding and out else out
    done: set[str] = set()
    header = True
    if target is not None:
        try:
            done, header = resume_output(target, fmt, predictor.classes)
        except ValueError as error:
            raise fail(str(error)) from None
        if done:
            console.print(f"resuming {target}: {len(done)} files already written are skipped")
        if target.exists() and done_marker(target).exists():
            done_marker(target).unlink()

    def wanted(source: str) -> bool:
        return source not in done and not (sharding and shard_of(source, sharding[1]) != sharding[0])

    def files(on_skip: Callable[[Path, str], None] = lambda folder, reason: None) -> Iterator[str]:
        return (str(path) for path in expand_paths(paths, recursive, on_skip) if wanted(str(path)))

    # Counting walks everything once; folders it cannot list get an error row each, like unreadable files.
    unlisted: list[ImagePrediction] = []

    def note_unlisted(folder: Path, reason: str) -> None:
        if wanted(str(folder)):
            unlisted.append(ImagePrediction.failed(str(folder), f"{folder}: {reason}"))

    try:
        total = sum(1 for _ in files(note_unlisted)) + len(unlisted)
    except FileNotFoundError as error:
        raise fail(str(error)) from None
    if sharding:
        console.print(f"shard {sharding[0]} of {sharding[1]}: {total} files to predict")

    if target is None and fmt == "csv" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors=ENCODING_ERRORS)  # a CSV row carries file names' own bytes
    stream = open(target, "a", encoding="utf-8", errors=ENCODING_ERRORS, newline="") if target else sys.stdout
    writer = RowWriter(stream, fmt, predictor.classes, header=header)
    counts = {"written": 0, "errors": 0}
    start = time.perf_counter()
    try:
        with progress_bar(transient=target is None) as bar:
            task = bar.add_task("predicting", total=total, info="")
            if heatmaps is not None:
                results = _predict_with_heatmaps(predictor, files(), view, heatmaps)
            else:
                results = predictor.predict_many(files(), view=view, batch_size=batch_size, workers=workers)
            for prediction in itertools.chain(unlisted, results):
                writer.write(prediction)
                counts["written"] += 1
                if prediction.error:
                    counts["errors"] += 1
                    if fmt != "table":  # a table row already shows it
                        console.print(labelled("unreadable", prediction.error))
                rate = counts["written"] / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, info=f"{counts['errors']} unreadable, {rate:.1f} img/s")
    finally:
        if target is not None:
            stream.close()
    if target is not None:
        done_marker(target).write_text(json.dumps({**counts, "skipped_already_written": len(done)}) + "\n")
    seconds = time.perf_counter() - start
    console.print(
        f"{counted(counts['written'], 'file')} predicted ({counts['errors']} unreadable) in {seconds:.1f} s"
        + (f", written to {target}" if target else "")
    )
    if predictor.calibration is None:
        console.print(
            "no calibration.json in the run: no verdicts (run `animeprov calibrate`)", style="yellow"
        )
    console.print(f"Metadata evidence: {METADATA_CAVEAT}")
    if counts["written"] and counts["errors"] == counts["written"] and not done:
        raise fail(f"none of the {counts['written']} files could be judged", code=NOTHING_JUDGED)


def _predict_with_heatmaps(predictor, sources: Iterable[str], view: str, folder: Path):
    """One image at a time (a heatmap costs many model passes), writing an overlay PNG per readable file."""
    from animeprov.heatmap import overlay_heatmap
    from animeprov.io import ImageError, load_image, make_views
    from animeprov.predict import ImagePrediction

    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        try:
            prediction = predictor.predict(source, view=view, heatmap=True)
            pixels = load_image(source, predictor.load_rules).pixels
        except ImageError as error:
            yield ImagePrediction.failed(error.path, str(error))
            continue
        if prediction.heatmap is not None:
            if prediction.heatmap.shape != pixels.shape[:2]:  # pad/resize: the map covers the one view
                pixels = make_views(pixels, predictor.size, prediction.view, path=source)[0]
            tag = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
            overlay_heatmap(pixels, prediction.heatmap).save(folder / f"{Path(source).stem}-{tag}.png")
        yield prediction


def predict_merge(
    out: Path = typer.Argument(..., help="The --out given to the sharded `animeprov predict` runs."),
    allow_incomplete: bool = typer.Option(False, help="Merge even if a shard is missing or unfinished."),
) -> None:
    """Join OUT.shard-K-of-N files of a sharded `predict` into OUT (sorted by path, each file once)."""
    try:
        counts = merge_shards(out, allow_incomplete=allow_incomplete)
    except ValueError as error:
        raise fail(error) from None
    console.print(
        f"merged {counts['shards']} shards into {out}: {counts['rows']} rows"
        + (f", {counts['duplicates']} duplicate rows dropped" if counts["duplicates"] else "")
    )


def register(app: typer.Typer) -> None:
    app.command()(predict)
    app.command("predict-merge")(predict_merge)
