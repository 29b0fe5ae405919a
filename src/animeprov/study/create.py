"""Build a study folder: balanced stimuli of one size under opaque ids, plus study.json (the key).

Rules:
- stimuli come from one split of a split CSV (`test` by default). The train split is refused unless
  `allow_train` is set, because people would then be compared with a model on images it has seen; a
  manifest without a split column is accepted with a loud warning (nothing says which images trained what);
- per class, rows are shuffled with a generator seeded by (seed, class) over the rows sorted by path, so
  the choice depends only on the content and the seed; one image per group is taken first (tiles of one
  grid, or one character drawn twice, should not all be shown), other rows of a group only if needed;
- every stimulus is a centre crop of `size` x `size` pixels, never resized (resizing changes what people
  and models see); the default size is the largest one every class can fill with `per_class` images;
- the crop is re-encoded as PNG with NO metadata (no text chunks, EXIF or ICC profile): a generator's
  parameters chunk would otherwise give the answer away; the file is named by a random id, so neither
  its name nor its bytes name the class;
- study.json lists each stimulus's id, class, generator and source (path and sha256). It is read by the
  server and the report only, never sent to a browser;
- optional attention checks are extra screens (kind "attention") whose picture says which answer to
  give; they are shuffled in with the images, and the report shows who passed them and leaves them out
  of every accuracy.
"""

from __future__ import annotations

import json
import random
import secrets
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from animeprov import __version__
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.manifest import SPLIT_COLUMN, file_digest, image_path, read_labelled_rows
from animeprov.io import ImageError, load_image, make_views, sha256_file

STUDY_FILE = "study.json"
STIMULI_DIR = "stimuli"
STUDY_FORMAT = 1
ANSWERS = ("artist", "ai", "unsure")
FAMILIARITY = ("none", "some", "expert")
ANSWER_LABELS = {"artist": "Drawn by an artist", "ai": "AI-generated", "unsure": "Unsure"}
# Random ids: 12 hex digits, far too many to guess and short enough to read in the admin page.
ID_BYTES = 6
# Attention-check pictures are at least this wide, so their text stays readable with tiny stimuli.
ATTENTION_MIN_SIZE = 256


class TrainingSplitError(ValueError):
    """Stimuli were asked for from the training split."""


class StudyDataWarning(UserWarning):
    """The stimuli's provenance cannot be checked (e.g. a manifest without a split column)."""


@dataclass(frozen=True)
class Candidate:
    row: dict[str, str]
    path: Path
    group: str


def create_study(
    data_csv: str | Path,
    out: str | Path,
    *,
    per_class: int,
    classes: Sequence[str] | None = None,
    split: str = "test",
    seed: int = 0,
    size: int | None = None,
    human_class: str = DEFAULT_HUMAN_CLASS,
    generators: dict[str, str] | None = None,
    allow_train: bool = False,
    attention_checks: int = 0,
    title: str = "Drawn by an artist, or generated?",
) -> dict[str, Any]:
    """Write the study folder `out` (stimuli/<id>.png and study.json) and return the study dict.

    `generators` maps a class to its generator's name (e.g. "novelai-random" -> "novelai"), so the report
    can pool the paper's random and manual prompt sets; unmapped generated classes are their own generator.
    `attention_checks` adds that many instruction screens, each asking for one answer (chosen with `seed`).
    Raises ValueError (TrainingSplitError for the train split) when the request cannot be met, and
    FileExistsError when `out` already holds a study.
    """
    data_csv, out = Path(data_csv), Path(out)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if attention_checks < 0:
        raise ValueError(f"attention_checks must be >= 0, got {attention_checks}")
    if (out / STUDY_FILE).exists():
        raise FileExistsError(f"{out / STUDY_FILE} exists; choose a new folder for a new study")
    if split == "train" and not allow_train:
        raise TrainingSplitError(
            "stimuli from the train split would compare people with a model on images it was trained on; "
            "choose --split test (or val), or pass --allow-train if no model you compare was trained on it"
        )
    rows = _rows_of_split(data_csv, split)
    by_class = _candidates(data_csv, rows, classes)
    if human_class not in by_class:
        raise ValueError(
            f"the human class {human_class!r} is not among the study's classes {sorted(by_class)}"
        )
    generators = dict(generators or {})
    unknown = sorted(set(generators) - set(by_class))
    if unknown:
        raise ValueError(f"--generator names class(es) not in the study: {', '.join(unknown)}")
    if size is None:
        size = _largest_common_size(by_class, per_class)
    chosen = {cls: _choose(candidates, per_class, size, seed, cls) for cls, candidates in by_class.items()}

    out.mkdir(parents=True, exist_ok=True)
    (out / STIMULI_DIR).mkdir(exist_ok=True)
    stimuli = []
    used_ids: set[str] = set()
    for cls in sorted(chosen):
        for candidate, pixels in chosen[cls]:
            stimulus_id = _new_id(used_ids)
            file = out / STIMULI_DIR / f"{stimulus_id}.png"
            write_clean_png(pixels, file)
            stimuli.append(
                {
                    "id": stimulus_id,
                    "kind": "image",
                    "class": cls,
                    "generator": None if cls == human_class else generators.get(cls, cls),
                    "source": str(candidate.path.resolve()),
                    "source_sha256": sha256_file(candidate.path),
                    "group": candidate.group,
                    "sha256": sha256_file(file),
                }
            )
    rng = random.Random(f"{seed}/attention")
    for _ in range(attention_checks):
        stimulus_id = _new_id(used_ids)
        expected = rng.choice(ANSWERS)
        file = out / STIMULI_DIR / f"{stimulus_id}.png"
        write_clean_png(attention_picture(expected, max(size, ATTENTION_MIN_SIZE)), file)
        stimuli.append(
            {"id": stimulus_id, "kind": "attention", "class": None, "generator": None, "expected": expected}
            | {"source": None, "source_sha256": None, "group": None, "sha256": sha256_file(file)}
        )
    # Sorted by id, so the file's order says nothing about the classes either.
    stimuli.sort(key=lambda stimulus: stimulus["id"])
    study = {
        "format": STUDY_FORMAT,
        "study_id": secrets.token_hex(8),
        "title": title,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "animeprov_version": __version__,
        "data": str(data_csv),
        "data_sha256": file_digest(data_csv),
        "split": split,
        "seed": seed,
        "per_class": per_class,
        "size": size,
        "classes": sorted(chosen),
        "human_class": human_class,
        "answers": list(ANSWERS),
        "truth": {"artist": human_class, "ai": "every other class"},
        "attention_checks": attention_checks,
        "stimuli": stimuli,
    }
    (out / STUDY_FILE).write_text(json.dumps(study, indent=2) + "\n", encoding="utf-8")
    return study


def load_study(folder: str | Path) -> dict[str, Any]:
    """study.json of a study folder, checked for the fields the server and report rely on."""
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no study here (make one with `animeprov study create`)")
    study = json.loads(path.read_text(encoding="utf-8"))
    if study.get("format") != STUDY_FORMAT:
        raise ValueError(f"{path}: unsupported study format {study.get('format')!r}")
    ids = [stimulus["id"] for stimulus in study["stimuli"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate stimulus ids")
    return study


def is_attention(stimulus: dict[str, Any]) -> bool:
    return stimulus.get("kind", "image") == "attention"


def truth_of(stimulus: dict[str, Any], human_class: str) -> str:
    """The correct answer: "artist" for the human class, "ai" for every other, and for an attention
    check the answer its picture asks for."""
    if is_attention(stimulus):
        return stimulus["expected"]
    return "artist" if stimulus["class"] == human_class else "ai"


def attention_picture(expected: str, size: int) -> np.ndarray:
    """A size x size picture that asks, in words, for the answer `expected`."""
    image = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    lines = ["Attention check:", "please answer", f"\u201c{ANSWER_LABELS[expected]}\u201d"]
    font = ImageFont.load_default(size=max(10, size // 14))
    line_height = size // 8
    top = size // 2 - line_height * len(lines) // 2
    for i, line in enumerate(lines):
        draw.text((size // 2, top + i * line_height), line, fill=(20, 20, 20), font=font, anchor="mt")
    return np.array(image)


def write_clean_png(pixels: np.ndarray, path: Path) -> None:
    """Lossless PNG of RGB pixels with only the IHDR, IDAT and IEND chunks (PIL adds no metadata unless
    given pnginfo, exif, icc_profile or dpi, none of which is passed)."""
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG")


def png_chunk_types(data: bytes) -> list[str]:
    """The chunk types of a PNG file in order (for checking that no metadata chunk is present)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    types, offset = [], 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        types.append(data[offset + 4 : offset + 8].decode("latin-1"))
        offset += 12 + length
    return types


def _rows_of_split(data_csv: Path, split: str) -> list[dict[str, str]]:
    rows = read_labelled_rows(data_csv)
    if not rows:
        raise ValueError(f"{data_csv}: no rows")
    if SPLIT_COLUMN not in rows[0]:
        warnings.warn(
            f"{data_csv} has no {SPLIT_COLUMN!r} column: nothing shows that no model you compare was trained "
            "on these images. Use a split CSV (`animeprov data split`) and its test split.",
            StudyDataWarning,
            stacklevel=3,
        )
        return rows
    selected = [row for row in rows if row[SPLIT_COLUMN] == split]
    if not selected:
        present = sorted({row[SPLIT_COLUMN] for row in rows})
        raise ValueError(f"{data_csv}: no rows in split {split!r} (splits present: {', '.join(present)})")
    return selected


def _candidates(
    data_csv: Path, rows: list[dict[str, str]], classes: Sequence[str] | None
) -> dict[str, list[Candidate]]:
    by_class: dict[str, list[Candidate]] = defaultdict(list)
    for row in rows:
        by_class[row["class"]].append(
            Candidate(row=row, path=image_path(data_csv, row), group=row.get("group") or row["path"])
        )
    if classes:
        missing = [cls for cls in classes if cls not in by_class]
        if missing:
            raise ValueError(
                f"class(es) {', '.join(missing)} have no rows in this split; "
                f"present: {', '.join(sorted(by_class))}"
            )
        by_class = {cls: by_class[cls] for cls in classes}
    return {cls: sorted(items, key=lambda c: c.row["path"]) for cls, items in sorted(by_class.items())}


def _header_side(candidate: Candidate) -> int:
    """The shorter side as the manifest records it (0 when it does not)."""
    try:
        return min(int(candidate.row.get("width", "")), int(candidate.row.get("height", "")))
    except ValueError:
        return 0


def _largest_common_size(by_class: dict[str, list[Candidate]], per_class: int) -> int:
    """The largest crop side that every class can fill with `per_class` images (manifest sizes; images
    without recorded sizes are read)."""
    best = None
    for cls, candidates in by_class.items():
        sides = []
        for candidate in candidates:
            side = _header_side(candidate)
            if side == 0:
                try:
                    pixels = load_image(candidate.path).pixels
                except ImageError:
                    continue
                side = min(pixels.shape[:2])
            sides.append(side)
        sides.sort(reverse=True)
        if len(sides) < per_class:
            raise ValueError(
                f"class {cls!r} has {len(sides)} usable image(s), fewer than --per-class {per_class}"
            )
        best = sides[per_class - 1] if best is None else min(best, sides[per_class - 1])
    assert best is not None
    return best


def _choose(
    candidates: list[Candidate], per_class: int, size: int, seed: int, cls: str
) -> list[tuple[Candidate, np.ndarray]]:
    """`per_class` (candidate, crop) pairs: shuffled order, one per group first, unreadable or too small
    images skipped."""
    order = list(candidates)
    random.Random(f"{seed}/{cls}").shuffle(order)
    seen_groups: set[str] = set()
    first = [c for c in order if not (c.group in seen_groups or seen_groups.add(c.group))]
    later = [c for c in order if c not in first]
    chosen: list[tuple[Candidate, np.ndarray]] = []
    skipped: list[str] = []
    for candidate in first + later:
        if len(chosen) == per_class:
            break
        try:
            pixels = load_image(candidate.path).pixels
        except ImageError as error:
            skipped.append(str(error))
            continue
        height, width = pixels.shape[:2]
        if min(height, width) < size:
            skipped.append(f"{candidate.path}: {width}x{height} is smaller than {size}x{size}")
            continue
        chosen.append((candidate, make_views(pixels, size, "crop", path=str(candidate.path))[0]))
    if len(chosen) < per_class:
        reasons = "; ".join(skipped[:3])
        raise ValueError(
            f"class {cls!r}: only {len(chosen)} image(s) of at least {size}x{size} could be read, "
            f"--per-class is {per_class}" + (f" (skipped: {reasons})" if reasons else "")
        )
    return chosen


def _new_id(used: set[str]) -> str:
    while True:
        candidate = secrets.token_hex(ID_BYTES)
        if candidate not in used:
            used.add(candidate)
            return candidate
