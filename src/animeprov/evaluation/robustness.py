"""Table 4: attribution and detection accuracy under a ladder of perturbations, every class alike.

Each ladder step perturbs the decoded pixels of every test image (after an optional `equalize` step that
re-encodes every class identically first), then the model sees its usual view: the centre crop at model
size, never a resize. A step that leaves an image smaller than the view skips that image (counted in
`skipped`), rather than resizing it silently.

Also here: `jpeg_grid_score`, a probe for an 8x8 JPEG block grid in decoded pixels (format-bias checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.dataset import ImageDataset, read_split_rows
from animeprov.engine import make_loader, predict, prepare_model, select_device
from animeprov.evaluation.metrics import classification_report
from animeprov.io import ImageError
from animeprov.perturb import (
    DEFAULT_LADDER,
    Perturbation,
    SpecError,
    chain_sizes,
    parse_ladder,
    parse_spec,
    perturb,
)
from animeprov.progress import console, progress_bar
from animeprov.reports.tables import markdown_table, write_json

TABLE_JSON, TABLE_MARKDOWN, FIGURE = "robustness.json", "robustness.md", "robustness.png"


def combine(equalize: Perturbation | None, step: Perturbation) -> Perturbation:
    """`equalize` then `step` as one perturbation ("jpeg:90+blur:1.0"); `step` alone without equalize."""
    if equalize is None or not equalize.steps:
        return step
    if not step.steps:
        return equalize
    return parse_spec(f"{equalize.spec}+{step.spec}")


def robustness_run(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = "test",
    ladder: Sequence[str] = DEFAULT_LADDER,
    equalize: str | None = None,
    seed: int = 0,
    human_class: str = DEFAULT_HUMAN_CLASS,
    threshold: float = 0.5,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    weights: str = ckpt.BEST_WEIGHTS,
) -> dict[str, Any]:
    """Evaluate `run` on `split` of `data` under each ladder step; write Table 4 (JSON, Markdown) and plot.

    `none` is always evaluated first (the clean, or equalized-only, baseline the drops are measured from).
    Random steps (noise, crop) draw from a generator seeded by (seed, image index), so every run of the
    same command perturbs each image the same way.
    """
    run, out = Path(run), Path(out)
    steps = parse_ladder(["none", *ladder])
    equalizer = parse_spec(equalize) if equalize else None
    torch_device = select_device(device)
    model, config = ckpt.load_model(run, weights=weights)
    prepare_model(model, torch_device)
    classes, size = config["classes"], config["size"]
    rows = read_split_rows(data, split)
    detect = human_class in classes
    if not detect:
        console.print(f"no class {human_class!r} among {classes}: detection is not reported", style="yellow")

    results = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("robustness", total=len(steps) * len(rows), info="")
        for step in steps:
            applied = combine(equalizer, step)
            bar.update(task, info=applied.spec)
            dataset = ImageDataset(
                data, rows, classes, size, augment=_SkipTooLarge(applied), augment_seed=seed
            )
            predictions = predict(
                model,
                make_loader(dataset, batch_size, workers=workers, device=torch_device),
                torch_device,
                on_batch=lambda n, _info: bar.update(task, advance=n),
            )
            bar.update(task, advance=len(predictions.errors))
            results.append(_row(step, applied, predictions, classes, detect, human_class, threshold, rows))

    table = {
        "run": str(run),
        "variant": config["variant"],
        "model_size": size,
        "classes": classes,
        "data": str(data),
        "split": split,
        "equalize": equalizer.spec if equalizer else None,
        "seed": seed,
        "threshold": threshold,
        "human_class": human_class if detect else None,
        "rows": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(table, out / TABLE_JSON)
    (out / TABLE_MARKDOWN).write_text(table_markdown(table))
    plot_robustness({config["variant"]: table}, out / FIGURE, title=_figure_title(table))
    return table


@dataclass(frozen=True)
class _SkipTooLarge:
    """`perturbation`, but an image it would grow past perturb.MAX_SIDE a side (a large original under a
    x2 chain) is skipped and counted like an unreadable file, instead of stopping the whole run."""

    perturbation: Perturbation

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        try:
            return perturb(pixels, self.perturbation, seed=rng)
        except SpecError as error:
            raise ImageError("<perturbed image>", str(error)) from None


def _row(
    step: Perturbation,
    applied: Perturbation,
    predictions,
    classes: list[str],
    detect: bool,
    human_class: str,
    threshold: float,
    rows: list[dict],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "perturbation": step.spec,
        "applied": applied.spec,
        "family": step.family,
        "strength": step.strength,
        "sizes": _typical_sizes(step, rows),
        "n": int(len(predictions.labels)),
        "skipped": len(predictions.errors),
        "attribution_accuracy": None,
        "macro_f1": None,
        "detection_accuracy": None,
        "detection_accuracy_human": None,
        "detection_accuracy_generated": None,
        "detection_roc_auc": None,
        "per_class_accuracy": {name: None for name in classes},
    }
    if len(predictions.labels) == 0:
        return row
    report = classification_report(
        predictions.labels,
        predictions.probs,
        classes,
        human_class=human_class if detect else None,
        threshold=threshold,
    )
    row.update(
        attribution_accuracy=report["attribution_accuracy"],
        macro_f1=report["macro_f1"],
        per_class_accuracy={name: stats["accuracy"] for name, stats in report["per_class"].items()},
    )
    if report["detection"] is not None:
        detection = report["detection"]
        row.update(
            detection_accuracy=detection["accuracy"],
            detection_accuracy_human=detection["accuracy_human"],
            detection_accuracy_generated=detection["accuracy_generated"],
            detection_roc_auc=detection["roc_auc"],
        )
    return row


def _typical_sizes(step: Perturbation, rows: list[dict]) -> str | None:
    """For a resize chain: the sizes the split's first image goes through, e.g. "256x256 -> 512x512"."""
    chains = [s for s in step.steps if s.kind in ("resize", "scale")]
    if len(step.steps) != 1 or not chains or not rows or not rows[0].get("width"):
        return None
    shape = (int(rows[0]["height"]), int(rows[0]["width"]))
    try:
        return " -> ".join(f"{w}x{h}" for h, w in chain_sizes(shape, chains[0]))
    except SpecError:  # that image is too large for the chain: it is skipped, and so is this label
        return None


# ----------------------------------------------------------------------------------------------
# Table and figure
# ----------------------------------------------------------------------------------------------


def _delta(value: float | None, clean: float | None) -> float | None:
    return None if value is None or clean is None else value - clean


def table_markdown(table: Mapping[str, Any], *, title: str | None = None) -> str:
    """Table 4 as Markdown: overall accuracies with their drop from the clean row, then per class."""
    rows = table["rows"]
    clean = rows[0]
    classes = table["classes"]
    equalize = table.get("equalize")
    heading = title or f"Robustness of {table['variant']} on {table['split'] or 'all'} ({table['data']})"
    notes = [
        f"# {heading}",
        f"Model size {table['model_size']} px (centre crop after the perturbation, never a resize); "
        f"seed {table['seed']}; detection threshold {table['threshold']}."
        + (f" Every image, every class, was first re-encoded with `{equalize}`." if equalize else ""),
        "Per-class columns are the recall of each class (attribution). Rows whose images became smaller "
        "than the model view count them under `skipped`.",
    ]
    headers = ["perturbation", "n", "skipped", "attribution", "Δ attr", "detection", "Δ det", *classes]
    body = [
        [
            row["perturbation"] + (f" ({row['sizes']})" if row.get("sizes") else ""),
            row["n"],
            row["skipped"],
            row["attribution_accuracy"],
            _delta(row["attribution_accuracy"], clean["attribution_accuracy"]),
            row["detection_accuracy"],
            _delta(row["detection_accuracy"], clean["detection_accuracy"]),
            *(row["per_class_accuracy"][name] for name in classes),
        ]
        for row in rows
    ]
    return "\n\n".join([*notes, markdown_table(headers, body)]) + "\n"


def _figure_title(table: Mapping[str, Any]) -> str:
    equalize = table.get("equalize")
    return f"{table['variant']} on {table['split'] or 'all'}" + (
        f", equalized {equalize}" if equalize else ""
    )


def plot_robustness(
    tables: Mapping[str, Mapping[str, Any]], out_path: str | Path, *, title: str | None = None
) -> Path:
    """Accuracy against perturbation strength: one panel per family, attribution solid, detection dashed.

    Several tables (e.g. a plain and an augmented model) are drawn in one figure, one colour each. Within a
    panel the x axis is the family's steps ordered by strength, starting from the clean row.
    """
    if not tables:
        raise ValueError("no robustness tables to plot")
    families = list(
        dict.fromkeys(r["family"] for t in tables.values() for r in t["rows"] if r["family"] != "none")
    )
    columns = min(3, max(len(families), 1))
    lines = max(1, -(-len(families) // columns))
    fig = Figure(figsize=(4.2 * columns, 3.3 * lines + 0.6), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).ravel()
    colours = [f"C{i}" for i in range(10)]
    for ax, family in zip(axes, families, strict=False):
        for colour, (label, table) in zip(colours, tables.items(), strict=False):
            clean = table["rows"][0]
            steps = sorted((r for r in table["rows"] if r["family"] == family), key=lambda r: r["strength"])
            points = [clean, *steps]
            x = np.arange(len(points))
            for key, style, what in (
                ("attribution_accuracy", "o-", "attribution"),
                ("detection_accuracy", "s--", "detection"),
            ):
                values = [np.nan if p[key] is None else p[key] for p in points]
                if not np.all(np.isnan(values)):
                    ax.plot(x, values, style, color=colour, label=f"{label}: {what}")
            ax.set_xticks(x, labels=["clean", *(_tick_label(r["perturbation"]) for r in steps)])
        ax.set_title(family)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[len(families) :]:
        ax.set_visible(False)
    if families:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _tick_label(spec: str) -> str:
    """jpeg:75 -> 75, resize:512-1024-512 -> 512-1024-512, scale:2-0.5 -> x2 x0.5; chains kept whole."""
    if "+" in spec:
        return spec
    kind, _, values = spec.partition(":")
    return " ".join(f"x{v}" for v in values.split("-")) if kind == "scale" else values


# ----------------------------------------------------------------------------------------------
# JPEG-history probe
# ----------------------------------------------------------------------------------------------


# Second differences are clipped at this many grey levels: JPEG block borders are small steps spread over
# the whole image, while real edges are few and large; unclipped, a few edges of clip art decide the score.
_GRID_STEP_CLIP = 4.0


def jpeg_grid_score(pixels: np.ndarray) -> float:
    """How strongly small luma steps peak on one phase of an 8-pixel grid (>= 1; about 1.0-1.05 if none).

    JPEG quantises 8x8 blocks independently, so a once-JPEG'd image has slightly larger steps across block
    borders: one of the 8 column phases (and one row phase) stands out. Per axis: the mean clipped second
    difference of the luma at the strongest phase over the mean at the other seven; the two axes are
    averaged. The phase is searched because a crop may have moved the grid. Any 8-periodic process (an 8x
    upsampling decoder such as Stable Diffusion's VAE, a tile grid) raises it too, so read it beside a
    control (the same images after a known JPEG re-encode).
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 16:
        raise ValueError(f"expected (H, W, 3) pixels of at least 16x16, got {pixels.shape}")
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    scores = []
    for axis in (0, 1):
        steps = np.minimum(np.abs(np.diff(luma, n=2, axis=axis)), _GRID_STEP_CLIP).mean(axis=1 - axis)
        phases = np.array([steps[k::8].mean() for k in range(8)])
        strongest = int(phases.argmax())
        others = np.delete(phases, strongest).mean()
        scores.append(phases[strongest] / others if others > 0 else 1.0)
    return float(np.mean(scores))
