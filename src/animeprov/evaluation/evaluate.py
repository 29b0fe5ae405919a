"""Evaluate a run on one split of a CSV: report.json, report.md and confusion.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.dataset import ImageDataset, read_split_rows
from animeprov.engine import Predictions, make_loader, predict, prepare_model, select_device
from animeprov.evaluation.metrics import classification_report
from animeprov.progress import console, progress_bar
from animeprov.reports.figures import plot_confusion
from animeprov.reports.tables import report_markdown, write_json


def predict_split(
    run: str | Path,
    data: str | Path,
    split: str | None,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    weights: str = ckpt.BEST_WEIGHTS,
) -> tuple[Predictions, dict[str, Any]]:
    """The run's model on one split of a CSV (every row when `split` is None): predictions and run config."""
    run = Path(run)
    torch_device = select_device(device)
    model, config = ckpt.load_model(run, weights=weights)
    prepare_model(model, torch_device)
    # Views as the run was validated on: one centre crop, or the tiles pooled per image (as `predict` does).
    view = config.get("eval_view", "crop")
    dataset = ImageDataset(data, read_split_rows(data, split), config["classes"], config["size"], view=view)
    with progress_bar(transient=True) as bar:
        task = bar.add_task(f"predicting {split or 'all'} with {run.name}", total=len(dataset), info="")
        predictions = predict(
            model,
            make_loader(dataset, batch_size, workers=workers, device=torch_device),
            torch_device,
            on_batch=lambda n, _info: bar.update(task, advance=n),
        )
    human_class = config.get("human_class", DEFAULT_HUMAN_CLASS)
    predictions = predictions.pool_by_row(
        config["classes"].index(human_class) if human_class in config["classes"] else None
    )
    return predictions, config


def evaluate_run(
    run: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = "test",
    human_class: str = DEFAULT_HUMAN_CLASS,
    threshold: float = 0.5,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    weights: str = ckpt.BEST_WEIGHTS,
) -> dict[str, Any]:
    run, out = Path(run), Path(out)
    predictions, config = predict_split(
        run, data, split, batch_size=batch_size, workers=workers, device=device, weights=weights
    )
    classes = config["classes"]
    if human_class not in classes:
        console.print(f"no class {human_class!r} among {classes}: detection is not reported", style="yellow")
    report = classification_report(
        predictions.labels,
        predictions.probs,
        classes,
        human_class=human_class if human_class in classes else None,
        threshold=threshold,
    )
    report["run"] = str(run)
    report["variant"] = config["variant"]
    report["data"] = str(data)
    report["split"] = split
    report["skipped"] = [{"path": path, "reason": reason} for path, reason in predictions.errors]
    report["images_per_second"] = len(predictions.labels) / max(predictions.seconds, 1e-9)
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "report.json")
    model_info = {"run": str(run), "variant": config["variant"], "size": config["size"], "split": split}
    (out / "report.md").write_text(
        report_markdown(report, title=f"{config['variant']} on {split}", model_info=model_info)
    )
    plot_confusion(
        report["confusion_matrix"], classes, out / "confusion.png", title=f"{config['variant']} ({split})"
    )
    return report
