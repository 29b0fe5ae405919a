"""`animeprov robustness`: Table 4, accuracy under resize chains, compression, crop, blur and noise."""

from __future__ import annotations

from pathlib import Path

import typer

from animeprov.cli.errors import fail
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.perturb import DEFAULT_LADDER
from animeprov.progress import console


def robustness(
    run: Path = typer.Argument(..., help="Run folder (from `animeprov train`)."),
    data: Path = typer.Option(..., "--data", help="Split CSV or manifest."),
    out: Path = typer.Option(..., "--out", help="Folder for robustness.json, robustness.md, robustness.png."),
    split: str = typer.Option("test", help="Split to evaluate; 'all' for every row."),
    ladder: str = typer.Option(
        ",".join(DEFAULT_LADDER),
        help="Comma-separated perturbation specs: none, resize:512-1024-512 (absolute sizes of the shorter "
        "side; other image sizes get the same ratios), scale:2-0.5, jpeg:75, webp:80, blur:1.0, noise:2, "
        "crop:0.8; '+' chains steps (jpeg:90+blur:1).",
    ),
    chain: list[str] = typer.Option(
        [], "--chain", help="Extra resize chain(s) added to the ladder, e.g. 512-640-512 or x2,x0.5."
    ),
    equalize: str = typer.Option(
        "", help="Re-encode every image of every class with this first (e.g. jpeg:90), then each step."
    ),
    seed: int = typer.Option(0, help="Seed of the random steps (noise, crop), per image."),
    human_class: str = typer.Option(DEFAULT_HUMAN_CLASS, help="The class meaning 'drawn by a person'."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0, help="P(generated) threshold for detection."),
    batch_size: int = typer.Option(64, min=1),
    workers: int = typer.Option(0, min=0),
    device: str = typer.Option("auto"),
    weights: str = typer.Option("best", help="best (best validation epoch) or last (last finished epoch)."),
) -> None:
    """Attribution and detection accuracy, overall and per class, under a ladder of perturbations."""
    from animeprov import checkpoint as ckpt
    from animeprov.evaluation.robustness import TABLE_MARKDOWN, robustness_run
    from animeprov.perturb import SpecError, parse_ladder

    specs = [spec.strip() for spec in ladder.split(",") if spec.strip()]
    weight_files = {"best": ckpt.BEST_WEIGHTS, "last": ckpt.LAST_STATE}
    if weights not in weight_files:
        raise fail(f"--weights must be best or last, got {weights!r}")
    try:
        specs += [chain_spec(text) for text in chain]
        parse_ladder(specs)  # every spec error before any prediction
        table = robustness_run(
            run,
            data,
            out,
            split=None if split == "all" else split,
            ladder=specs,
            equalize=equalize or None,
            seed=seed,
            human_class=human_class,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            device=device,
            weights=weight_files[weights],
        )
    except (SpecError, ValueError, FileNotFoundError) as error:
        raise fail(error) from None
    clean = table["rows"][0]
    worst = min(
        table["rows"],
        key=lambda row: row["attribution_accuracy"] if row["attribution_accuracy"] is not None else 2.0,
    )
    console.print(
        f"clean attribution {_fmt(clean['attribution_accuracy'])}; worst {worst['perturbation']}: "
        f"{_fmt(worst['attribution_accuracy'])}; table in {out / TABLE_MARKDOWN}"
    )


def chain_spec(text: str) -> str:
    """A --chain value as a spec: '512-1024-512' -> resize:..., 'x2,x0.5' -> scale:2-0.5, specs as given."""
    from animeprov.perturb import SpecError

    text = text.strip().lower()
    if text.startswith(("resize:", "scale:")):
        return text
    if text.startswith("x"):
        factors = [part.strip().removeprefix("x") for part in text.split(",")]
        if not all(factors):
            raise SpecError(f"--chain {text!r}: write scale factors as x2,x0.5")
        return "scale:" + "-".join(factors)
    return f"resize:{text.replace('->', '-')}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.command()(robustness)
