"""The reference model shipped inside the package, and the one place that turns a model name or a path into
a run folder (`resolve_run`), for `predict`, `serve`, `export`, `scan` and `Predictor.from_checkpoint`.

The bundle (`animeprov/reference/`) is an ordinary run folder plus:
    reference.json      what built it: data (sets, sources, licences, counts), recipe, seed, random-split
                        test figures, calibration figures, the build command and the build machine's versions
    training-data.csv   one row per image it saw: dataset, source, class, licence, file name, sha256, split
    SHA256SUMS          sha256 of every file above (`sha256sum -c` reads it); checked on every load, so a
                        modified or half-copied bundle is refused with the file and the reason
    model-card.md       a copy of docs/model-card.md, served by `serve` at /model-card (not in SHA256SUMS:
                        the card's text may be corrected without retraining)

`benchmarks/build_reference.py` writes the bundle; its `--check` rebuilds it and compares.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from animeprov.io import sha256_file

REFERENCE = "reference"  # the name `--model reference` and `Predictor.reference()` use
SUMS_FILE = "SHA256SUMS"
INFO_FILE = "reference.json"
CARD_FILE = "model-card.md"
DATA_FILE = "training-data.csv"
RUN_FILES = ("config.json", "model.safetensors")  # what makes a folder a run


class BundleError(ValueError):
    """A bundled model that is missing, incomplete or modified."""


def bundled_models() -> dict[str, Path]:
    """Model names shipped with the package -> their folders (present or not)."""
    return {REFERENCE: Path(__file__).resolve().parent / REFERENCE}


def is_run_folder(path: str | os.PathLike) -> bool:
    """A run folder holds config.json and model.safetensors (an image folder does not)."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in RUN_FILES)


def resolve_run(name_or_path: str | os.PathLike | None = None) -> Path:
    """The run folder for a bundled model's name (None: the reference model) or a path.

    A folder holding SHA256SUMS (a bundle, wherever it was copied) is verified first: BundleError names the
    file that is missing or modified. A plain run folder is returned as it is (its loader reports problems).
    To use a folder that happens to be called `reference`, write `./reference`."""
    name = REFERENCE if name_or_path is None else name_or_path
    bundles = bundled_models()
    if isinstance(name, str) and name in bundles:
        folder = bundles[name]
        if not (folder / SUMS_FILE).is_file():
            raise BundleError(
                f"{folder}: the {name!r} model is not in this installation (no {SUMS_FILE}); "
                "build it with `python benchmarks/build_reference.py` or give a run folder"
            )
        verify_bundle(folder)
        return folder
    folder = Path(name)
    if (folder / SUMS_FILE).is_file():
        verify_bundle(folder)
    return folder


# ----------------------------------------------------------------------------------------------------
# SHA256SUMS


def bundle_files(folder: Path) -> list[str]:
    """Files of the bundle that SHA256SUMS covers, as sorted POSIX paths relative to `folder`."""
    skip = {SUMS_FILE, CARD_FILE}
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name not in skip and "__pycache__" not in path.parts
    )


def write_sums(folder: str | os.PathLike) -> Path:
    """Write folder/SHA256SUMS in `sha256sum` format (two spaces, then the path)."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in bundle_files(folder)]
    path = folder / SUMS_FILE
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_sums(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} from folder/SHA256SUMS."""
    path = Path(folder) / SUMS_FILE
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise BundleError(f"{path}:{number}: not a `sha256sum` line: {line!r}")
        sums[name] = digest
    return sums


def verify_bundle(folder: str | os.PathLike) -> None:
    """Raise BundleError when a file listed in SHA256SUMS is missing or its sha256 differs."""
    folder = Path(folder)
    for name, digest in read_sums(folder).items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in {folder / SUMS_FILE})")
        actual = sha256_file(path)
        if actual != digest:
            raise BundleError(
                f"{path}: modified (sha256 {actual[:12]}..., {SUMS_FILE} says {digest[:12]}...); "
                "reinstall animeprov or rebuild with `python benchmarks/build_reference.py`"
            )


# ----------------------------------------------------------------------------------------------------
# The card


def bundle_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """folder/reference.json, or None for a run that is not a bundle."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def card_summary(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What `animeprov models`, /v1/model and the page say about a bundled model; None for other runs."""
    info = bundle_info(folder)
    if info is None:
        return None
    test = info.get("test") or {}
    return {
        "name": info.get("name", Path(folder).name),
        "data": info.get("built_from", "unknown"),
        "classes": info.get("classes", []),
        "recipe": info.get("recipe"),
        "seed": info.get("seed"),
        "images": sum(sum(split.values()) for split in info.get("counts", {}).values()),
        "random_split_test": {
            key: test.get(key) for key in ("n", "attribution_accuracy", "detection_accuracy") if key in test
        },
        # what the verdicts were calibrated on: sources held out of training, or a random split of them
        "validation": {
            "by": ((info.get("build") or {}).get("args") or {}).get("val_by", "group"),
            "images": sum(entry["val"] for entry in info.get("sources", [])),
            "sources": len({entry["source"] for entry in info.get("sources", []) if entry["val"]}),
        },
        "licence": (info.get("licences") or {}).get("model"),
        "card": f"docs/model-card.md (animeprov/{REFERENCE}/{CARD_FILE}; `serve` shows it at /model-card)",
    }


# A markdown link to a file of the repository, relative to the card's home (docs/model-card.md).
_RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?![a-z]+:)([^)#\s]+)(#[^)\s]*)?\)")


def card_text(folder: str | os.PathLike) -> str | None:
    """The model card shipped in the bundle, or None. Its links point into the repository's docs/, which
    the package does not ship: each is written out as the file's repository path, not left to go nowhere."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    return _RELATIVE_LINK.sub(
        lambda link: f"{link[1]} ({posixpath.normpath('docs/' + link[2])}{link[3] or ''})",
        path.read_text(encoding="utf-8"),
    )


# ----------------------------------------------------------------------------------------------------
# Command lines


def run_and_paths(model: str | None, args: list[str]) -> tuple[str, list[str]]:
    """`predict [RUN] PATHS... [--model M]` -> (model, image paths). The first argument is the run when it
    is a run folder (config.json and model.safetensors; an image folder has neither), as before bundled
    models existed, or a bundled model's name that is no file here; else --model, else the reference
    model. Raises ValueError when the model is given twice or no image path is left."""
    run: str = model or REFERENCE
    named = bool(args) and args[0] in bundled_models() and not os.path.exists(args[0])
    if args and (is_run_folder(args[0]) or named):  # `predict reference x.png` too, like `serve reference`
        if model is not None:
            raise ValueError(f"{args[0]} is a run folder and --model {model} names another: give one")
        run, args = args[0], args[1:]
    if not args:
        raise ValueError(f"no image paths given (model: {run})")
    return run, list(args)


def describe(run: str | os.PathLike) -> str:
    """One line saying which model answers: a bundled model's name, data and card, or the run folder."""
    summary = card_summary(run)
    if summary is None:
        return f"model: run {run}"
    return f"model: {summary['name']} (data: {summary['data']}; card: docs/model-card.md)"


def choose_run(run: str | os.PathLike | None, model: str | None) -> str:
    """`serve [RUN] [--model M]` and `export`: RUN or M (not both), else the reference model."""
    if run is not None and model is not None:
        raise ValueError(f"both a run ({run}) and --model {model} given: give one")
    return str(run) if run is not None else model or REFERENCE
