"""Index an ImageFolder tree (`root/<class>/**/<image>`) into a manifest CSV with leakage groups.

Every file goes through `animeprov.io.load_image`, so the index applies exactly the bad-input rules
that training and prediction apply; a file that cannot be loaded is skipped with its reason (and
listed in `<out>.skipped.csv`), never fatal.

Groups keep related images in one split. Two rows share a group when any of these link them
(transitively, via union-find):
- the same file bytes (sha256);
- perceptual hashes (imagehash.phash of the decoded RGB) at most `near_dup_bits` bits apart;
- an equal, non-empty value in one of the `group_by` columns (e.g. original_path, source).

Near-duplicate search: identical hashes are merged first (np.unique), then the distinct hashes are
compared all-against-all with a vectorised XOR + popcount in row blocks of bounded size. That is
O(n^2) comparisons but in numpy, not Python: about 17 s for 100k distinct 64-bit hashes on a 2-core
machine, small beside decoding 100k images, and exact (no missed pairs). Beyond ~1M files a
multi-index (pigeonhole on hash chunks) search would be the next step.

Memory: pixels are dropped as soon as each file is hashed; what stays is one small record per file
(path, class, sha256, size, format, hash bytes) plus the columns carried over from the root's
`manifest.csv`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import imagehash
import numpy as np
from PIL import Image

from animeprov.data.manifest import MANIFEST_COLUMNS, read_columns, read_rows, relative_path, write_rows
from animeprov.io import ImageError, LoadRules, iter_image_files, load_image, sha256_file

# A manifest already lying in the root (the shared sets have one) contributes its extra columns.
ROOT_MANIFEST_NAME = "manifest.csv"
SKIPPED_COLUMNS = ("path", "reason")
DEFAULT_NEAR_DUP_BITS = 6
DEFAULT_HASH_SIZE = 8

# Elements (block rows x hashes) per vectorised distance block: ~32 MB of uint64 temporaries.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class IndexResult:
    out_csv: Path
    skipped_csv: Path
    rows: int
    skipped: list[tuple[str, str]]  # (file, reason)
    class_counts: dict[str, int]
    groups: int
    multi_member_groups: int  # groups holding more than one row
    cross_class_groups: list[str]  # ids of groups whose rows carry several classes: label conflicts?
    carried_columns: list[str] = field(default_factory=list)


class _Record(NamedTuple):
    key: str  # path relative to root, forward slashes: joins the root manifest
    cls: str
    sha256: str
    width: int
    height: int
    format: str
    hash_bytes: bytes


def skipped_csv_path(out_csv: str | Path) -> Path:
    """Where `build_index` lists the files it skipped: `manifest.csv` -> `manifest.skipped.csv`."""
    return Path(out_csv).with_suffix(".skipped.csv")


def build_index(
    root: str | Path,
    out_csv: str | Path,
    *,
    near_dup_bits: int = DEFAULT_NEAR_DUP_BITS,
    hash_size: int = DEFAULT_HASH_SIZE,
    group_by: Sequence[str] = (),
    rules: LoadRules | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IndexResult:
    """Index `root` into `out_csv` (and `<out>.skipped.csv`); see the module docstring.

    `on_progress(done, total)` is called after each file. Raises ValueError for a bad argument or
    an unknown `group_by` column, FileNotFoundError when `root` is not a folder.
    """
    root = Path(root)
    out_csv = Path(out_csv)
    rules = rules if rules is not None else LoadRules()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    if near_dup_bits < 0:
        raise ValueError(f"near_dup_bits must be >= 0, got {near_dup_bits}")
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")

    root_columns, root_rows = _read_root_manifest(root)
    unknown = [name for name in group_by if name not in root_columns]
    if unknown:
        raise ValueError(
            f"group-by column(s) {', '.join(unknown)} not in {root / ROOT_MANIFEST_NAME}"
            + (f" (columns: {', '.join(root_columns)})" if root_columns else " (no such file)")
        )
    # Columns we compute ourselves are not carried over: ours describe the file as loaded now.
    carried_columns = [name for name in root_columns if name not in MANIFEST_COLUMNS]

    # Listed first for the progress total; as strings, which are much smaller than Path objects.
    skipped: list[tuple[str, str]] = []  # files (and folders that cannot be listed) with the reason

    def unlisted(folder: Path, reason: str) -> None:
        skipped.append((str(folder), reason))

    files = [str(file) for file in iter_image_files([root], recursive=True, on_skip=unlisted)]
    records: list[_Record] = []
    for done, file in enumerate(files, start=1):
        record_or_reason = _index_file(root, Path(file), rules, hash_size)
        if isinstance(record_or_reason, str):
            skipped.append((file, record_or_reason))
        else:
            records.append(record_or_reason)
        if on_progress is not None:
            on_progress(done, len(files))

    group_by_values = [
        [root_rows.get(record.key, {}).get(column, "") for record in records] for column in group_by
    ]
    groups = _assign_groups(records, group_by_values, near_dup_bits)

    out_dir = out_csv.parent
    fieldnames = [*MANIFEST_COLUMNS, *carried_columns]

    def rows() -> Iterator[dict[str, object]]:
        for record, group in zip(records, groups, strict=True):
            yield {
                **{name: root_rows.get(record.key, {}).get(name, "") for name in carried_columns},
                "path": relative_path(root / record.key, out_dir),
                "class": record.cls,
                "sha256": record.sha256,
                "width": record.width,
                "height": record.height,
                "format": record.format,
                "group": group,
            }

    written = write_rows(out_csv, rows(), fieldnames)
    skipped_csv = skipped_csv_path(out_csv)
    write_rows(
        skipped_csv,
        ({"path": relative_path(file, out_dir), "reason": reason} for file, reason in skipped),
        SKIPPED_COLUMNS,
    )
    return IndexResult(
        out_csv=out_csv,
        skipped_csv=skipped_csv,
        rows=written,
        skipped=skipped,
        class_counts=dict(sorted(Counter(record.cls for record in records).items())),
        groups=len(set(groups)),
        multi_member_groups=sum(1 for size in Counter(groups).values() if size > 1),
        cross_class_groups=_cross_class_groups(records, groups),
        carried_columns=list(carried_columns),
    )


def _cross_class_groups(records: Sequence[_Record], groups: Sequence[str]) -> list[str]:
    classes_of: dict[str, set[str]] = {}
    for record, group in zip(records, groups, strict=True):
        classes_of.setdefault(group, set()).add(record.cls)
    return sorted(group for group, classes in classes_of.items() if len(classes) > 1)


def _read_root_manifest(root: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns of `root/manifest.csv` (without `path`) and its rows keyed by root-relative path."""
    manifest = root / ROOT_MANIFEST_NAME
    if not manifest.is_file():
        return [], {}
    columns = [name for name in read_columns(manifest) if name != "path"]
    rows = {Path(row.pop("path")).as_posix(): row for row in read_rows(manifest)}
    return columns, rows


def _index_file(root: Path, file: Path, rules: LoadRules, hash_size: int) -> _Record | str:
    """The record of one file, or the reason it was skipped."""
    relative = file.relative_to(root)
    if len(relative.parts) < 2:
        return f"not inside a class folder (expected {root}/<class>/...)"
    try:
        loaded = load_image(file, rules)
        sha256 = sha256_file(file)
    except ImageError as error:
        return error.reason
    except OSError as error:  # vanished or unreadable between listing and loading
        return f"cannot read: {error.strerror or error}"
    hash_bits = imagehash.phash(Image.fromarray(loaded.pixels), hash_size=hash_size).hash.reshape(-1)
    packed = np.packbits(hash_bits).tobytes()
    packed += bytes(-len(packed) % 8)  # whole uint64 words for the popcount search
    return _Record(
        key=relative.as_posix(),
        cls=sys.intern(relative.parts[0]),  # one string per class, not per row
        sha256=sha256,
        width=loaded.width,
        height=loaded.height,
        format=sys.intern(loaded.format),
        hash_bytes=packed,
    )


class _UnionFind:
    """Disjoint sets over 0..n-1; the smaller index becomes the root, so results are order-stable."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]  # path halving
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def _assign_groups(
    records: Sequence[_Record], group_by_values: Sequence[Sequence[str]], near_dup_bits: int
) -> list[str]:
    """Group id per record: "g00000", "g00001", ... numbered in record (sorted path) order.

    `group_by_values` holds one list per group-by column, aligned with `records`.
    """
    sets = _UnionFind(len(records))

    def union_equal(values: Sequence[str]) -> None:
        first_with: dict[str, int] = {}
        for index, value in enumerate(values):
            if value:
                sets.union(first_with.setdefault(value, index), index)

    union_equal([record.sha256 for record in records])
    for values in group_by_values:
        union_equal(values)

    if records:
        words = len(records[0].hash_bytes) // 8
        hashes = np.frombuffer(b"".join(record.hash_bytes for record in records), dtype=np.uint64)
        distinct, first_index, inverse = np.unique(
            hashes.reshape(len(records), words), axis=0, return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
        for index, distinct_index in enumerate(inverse.tolist()):
            sets.union(int(first_index[distinct_index]), index)
        if near_dup_bits > 0:
            for a, b in _near_pairs(distinct, near_dup_bits):
                sets.union(int(first_index[a]), int(first_index[b]))

    group_ids: dict[int, str] = {}
    width = max(5, len(str(len(records))))
    groups = []
    for index in range(len(records)):
        root = sets.find(index)
        groups.append(group_ids.setdefault(root, f"g{len(group_ids):0{width}d}"))
    return groups


def _near_pairs(hashes: np.ndarray, max_bits: int) -> Iterator[tuple[int, int]]:
    """Pairs (i < j) of rows of `hashes` (n x words uint64) within `max_bits` Hamming distance."""
    n, words = hashes.shape
    block = max(1, _BLOCK_ELEMENTS // max(1, n))
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        later = hashes[start:]  # upper triangle only: each pair is compared once
        distance = np.bitwise_count(rows[:, None, 0] ^ later[None, :, 0])
        if words > 1:  # uint8 would overflow beyond 255 bits
            distance = distance.astype(np.uint16)
            for word in range(1, words):
                distance += np.bitwise_count(rows[:, None, word] ^ later[None, :, word])
        row_index, col_index = np.nonzero(distance <= max_bits)
        keep = col_index > row_index  # drop the diagonal and the lower triangle inside the block
        yield from zip((row_index[keep] + start).tolist(), (col_index[keep] + start).tolist(), strict=True)
