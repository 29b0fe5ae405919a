"""Markdown tables and JSON files for evaluation results."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_ALIGN_RULES = {"left": ":---", "right": "---:", "center": ":---:"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def format_cell(value: Any, digits: int = 3) -> str:
    """One table cell: floats with `digits` decimals, None as "n/a", text with pipes escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    if isinstance(value, np.integer):
        return str(int(value))
    # A "|" would end the cell and a newline the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence], *, align: Sequence[str] | None = None, digits: int = 3
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline).

    `align` gives "left", "right" or "center" per column; by default columns whose cells are all numbers
    (or None) are right-aligned and the others left-aligned.
    """
    n_columns = len(headers)
    for i, row in enumerate(rows):
        if len(row) != n_columns:
            raise ValueError(f"row {i} has {len(row)} cells but there are {n_columns} headers")
    if align is None:
        align = [
            "right"
            if any(_is_number(row[c]) for row in rows)
            and all(row[c] is None or _is_number(row[c]) for row in rows)
            else "left"
            for c in range(n_columns)
        ]
    if len(align) != n_columns:
        raise ValueError(f"align has {len(align)} entries but there are {n_columns} headers")
    unknown = [a for a in align if a not in _ALIGN_RULES]
    if unknown:
        raise ValueError(f"unknown alignment {unknown[0]!r}; use one of {', '.join(_ALIGN_RULES)}")

    lines = [
        "| " + " | ".join(format_cell(h) for h in headers) + " |",
        "| " + " | ".join(_ALIGN_RULES[a] for a in align) + " |",
    ]
    lines += ["| " + " | ".join(format_cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(report: dict, *, title: str, model_info: dict | None = None) -> str:
    """Render a `classification_report` dict as a Markdown document (ends with a newline)."""
    detection = report["detection"]
    calibration = report["calibration"]
    class_names = report["class_names"]
    threshold = format_cell(detection["threshold"]) if detection else None
    detection_rows = (
        [
            (f"detection accuracy (threshold {threshold})", detection["accuracy"]),
            ("detection average precision", detection["average_precision"]),
            ("detection ROC-AUC", detection["roc_auc"]),
        ]
        if detection
        else [("detection", "n/a (no human class)")]
    )

    sections = [f"# {title}"]
    if model_info:
        sections.append(
            markdown_table(["setting", "value"], list(model_info.items()), align=["left", "left"])
        )

    sections.append("## Summary")
    sections.append(
        markdown_table(
            ["metric", "value"],
            [
                ("images", report["n"]),
                ("attribution accuracy", report["attribution_accuracy"]),
                ("macro-F1", report["macro_f1"]),
                *detection_rows,
                (f"expected calibration error ({calibration.get('n_bins', 15)} bins)", calibration["ece"]),
                ("negative log-likelihood", calibration["nll"]),
            ],
        )
    )

    sections.append(
        "## Per class\n\nAccuracy is the recall of the class: the fraction of its images attributed to it."
    )
    sections.append(
        markdown_table(
            ["class", "n", "accuracy", "precision", "F1"],
            [
                (name, stats["n"], stats["accuracy"], stats["precision"], stats["f1"])
                for name, stats in report["per_class"].items()
            ],
        )
    )

    sections.append(
        "## Confusion matrix\n\nRows are the true class, columns the predicted class (image counts)."
    )
    sections.append(
        markdown_table(
            ["true \\ predicted", *class_names],
            [(name, *counts) for name, counts in zip(class_names, report["confusion_matrix"], strict=True)],
        )
    )

    if not detection:
        return "\n\n".join(sections) + "\n"
    sections.append(
        f"## Detection: human vs generated\n\nAn image is judged generated when P(generated) = 1 - P(human) "
        f">= {threshold}. Average precision and ROC-AUC treat generated as the positive class."
    )
    sections.append(
        markdown_table(
            ["images", "n", "accuracy"],
            [
                ("human (judged human)", detection["n_human"], detection["accuracy_human"]),
                ("generated (judged generated)", detection["n_generated"], detection["accuracy_generated"]),
                ("all", detection["n_human"] + detection["n_generated"], detection["accuracy"]),
            ],
        )
    )
    return "\n\n".join(sections) + "\n"


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays and paths through json.dump; anything else is still an error."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` as indented JSON, atomically: readers see the old file or the new one, never half.

    NaN and infinity are refused (ValueError): they are not JSON and break strict readers such as browsers.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False, allow_nan=False, default=_json_default)
            handle.write("\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
