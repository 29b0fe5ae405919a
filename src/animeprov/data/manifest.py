"""Manifest CSV files: the one place where data-set CSVs are read and written.

A manifest has one row per image with the columns `MANIFEST_COLUMNS`, then any extra columns
(generator, source, original_path, ...). A split CSV is the same plus a `split` column.

`path` is relative to the folder holding the CSV and uses forward slashes, so a manifest can be
moved together with its images, and `write_rows(..., source_csv=...)` rebases it when rows are
written to a CSV in another folder. The shared development sets name this column `file`; it is
read as `path` when there is no `path` column.
"""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from animeprov.io import sha256_file

MANIFEST_COLUMNS = ("path", "class", "sha256", "width", "height", "format", "group")
SPLIT_COLUMN = "split"
SPLITS = ("train", "val", "test")

# A file name that is not valid UTF-8 (its undecodable bytes are lone surrogates in Python, PEP 383) is
# written as its own bytes and read back to the same str, so such files are indexed, split and trained on.
ENCODING_ERRORS = "surrogateescape"

# The shared data sets call the path column `file`.
_PATH_ALIASES = ("file",)


def read_columns(csv_path: str | Path) -> list[str]:
    """The column names of a manifest, with `file` renamed to `path` when there is no `path`."""
    with open(csv_path, newline="", encoding="utf-8", errors=ENCODING_ERRORS) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{csv_path}: empty CSV file (no header row)")
    return _normalise_header(header, csv_path)


def column_as_read(name: str, columns: Sequence[str]) -> str:
    """The name under which `read_columns` / `read_rows` give a CSV's column `name` (`file` is read as
    `path`), so that a user may name a column as the CSV's header does."""
    return "path" if name in _PATH_ALIASES and name not in columns else name


def read_rows(csv_path: str | Path) -> Iterator[dict[str, str]]:
    """Stream the rows of a manifest as dicts (one row in memory at a time).

    Raises ValueError for a CSV without a `path` (or `file`) column or with a row holding more
    values than there are columns.
    """
    with open(csv_path, newline="", encoding="utf-8", errors=ENCODING_ERRORS) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{csv_path}: empty CSV file (no header row)")
        columns = _normalise_header(header, csv_path)
        for values in reader:
            if not values:  # blank line
                continue
            if len(values) > len(columns):
                raise ValueError(
                    f"{csv_path}: line {reader.line_num} has {len(values)} values for {len(columns)} columns"
                )
            # Short rows (trailing columns omitted) read as empty strings, like csv.DictReader's restval.
            yield dict(zip(columns, values + [""] * (len(columns) - len(values)), strict=True))


def read_labelled_rows(csv_path: str | Path) -> list[dict[str, str]]:
    """Every row of a manifest of labelled images: `read_rows`, plus a ValueError naming the CSV when it has
    no `class` column or a row leaves it empty (which would otherwise become a class named '')."""
    columns = read_columns(csv_path)
    if "class" not in columns:
        raise ValueError(f"{csv_path}: no 'class' column; columns are {', '.join(columns)}")
    rows = list(read_rows(csv_path))
    unlabelled = [row["path"] for row in rows if not row["class"].strip()]
    if unlabelled:
        raise ValueError(f"{csv_path}: {len(unlabelled)} row(s) with an empty 'class', e.g. {unlabelled[0]}")
    return rows


def image_path(csv_path: str | Path, row: dict[str, str]) -> Path:
    """The file a manifest row points at: its `path`, resolved against the CSV's own folder."""
    return Path(csv_path).parent / row["path"]


def write_rows(
    out_csv: str | Path,
    rows: Iterable[dict[str, object]],
    fieldnames: Sequence[str],
    *,
    source_csv: str | Path | None = None,
) -> int:
    """Write rows to `out_csv` atomically (temp file + os.replace); return the number of rows.

    `rows` may be a generator: it is consumed once, row by row. When the rows were read from
    `source_csv` (whose `path` values are relative to that CSV's folder), `path` is rebased so
    that it stays correct relative to `out_csv`'s folder. Keys outside `fieldnames` are an error.
    """
    out_csv = Path(out_csv)
    out_dir = out_csv.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rebase = _rebaser(Path(source_csv).parent, out_dir) if source_csv is not None else None

    # Not tempfile's: its files are 0600 whatever the umask, and the rename would keep that mode.
    temporary = out_dir / f".{out_csv.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    handle = open(temporary, "x", newline="", encoding="utf-8", errors=ENCODING_ERRORS)
    count = 0
    try:
        with handle:
            writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="raise")
            writer.writeheader()
            for row in rows:
                if rebase is not None and "path" in row:
                    row = {**row, "path": rebase(str(row["path"]))}
                writer.writerow(row)
                count += 1
        os.replace(temporary, out_csv)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count


def relative_path(file: str | Path, csv_folder: str | Path) -> str:
    """`file` written as a manifest `path`: relative to `csv_folder`, with forward slashes."""
    try:
        relative = os.path.relpath(Path(file).absolute(), Path(csv_folder).absolute())
    except ValueError:  # different drives on Windows: no relative path exists
        relative = str(Path(file).absolute())
    return Path(relative).as_posix()


def file_digest(csv_path: str | Path) -> str:
    """sha256 (hex) of a CSV file's bytes: identifies the exact data a model was trained on."""
    return sha256_file(csv_path)


def _normalise_header(header: list[str], csv_path: str | Path) -> list[str]:
    columns = [name.strip() for name in header]
    if "path" not in columns:
        alias = next((name for name in _PATH_ALIASES if name in columns), None)
        if alias is None:
            raise ValueError(f"{csv_path}: no 'path' (or 'file') column; columns are {', '.join(columns)}")
        columns[columns.index(alias)] = "path"
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise ValueError(f"{csv_path}: duplicate column(s) {', '.join(duplicates)}")
    return columns


def _rebaser(source_dir: Path, out_dir: Path):
    """A function mapping a path relative to `source_dir` to one relative to `out_dir`."""
    if source_dir.resolve() == out_dir.resolve():
        return lambda path: path

    def rebase(path: str) -> str:
        if Path(path).is_absolute():
            return path
        return relative_path(source_dir / path, out_dir)

    return rebase
