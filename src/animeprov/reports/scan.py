"""A scan report: one self-contained HTML file from `animeprov predict` JSON lines. It names the files, the
predictions file and the run by the paths they were given as (check them before passing the page on).

`render_report(preds.jsonl, scan.html)` reads the predictions line by line: each row becomes a compact JSON
object (with a small WebP thumbnail as a data URI, and the heatmap overlay when `predict --heatmaps` wrote
one), appended to a temporary file while the summary (counts per verdict and generator, a histogram of
P(generated), the unreadable files) is accumulated. The HTML is then written: summary, model card,
the unreadable files, the page's script and style inline, and the rows copied in as one JSON block, so
memory stays flat however many rows there are. The page filters, sorts, searches and pages the rows in
the browser; a Content-Security-Policy of `default-src 'none'` keeps it from making any request.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from PIL import Image

from animeprov.io import ImageError, LoadRules, load_image

HISTOGRAM_BINS = 20
DEFAULT_THUMB_SIZE = 96  # longest side, px: ~2-3 KB per WebP thumbnail, so 10,000 rows stay ~30 MB
HEATMAP_SIZE = 320  # longest side of the embedded heatmap overlay in the larger view
UNREADABLE = "unreadable"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


@dataclass
class ReportSummary:
    rows: int = 0
    verdicts: Counter = field(default_factory=Counter)
    generators: Counter = field(default_factory=Counter)
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    unreadable: int = 0
    thumbnails: int = 0
    heatmaps: int = 0
    bad_lines: list[str] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if row["error"]:
            self.unreadable += 1
            self.verdicts[UNREADABLE] += 1
            return
        self.verdicts[row["verdict"] or "no verdict"] += 1
        if row["generator"]:
            self.generators[row["generator"]] += 1
        p = row["p"]
        if p is not None and math.isfinite(p):
            self.histogram[min(int(p * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1


def heatmap_file(folder: Path, source: str) -> Path:
    """Where `animeprov predict --heatmaps FOLDER` writes the overlay of `source` (cli/predict_command.py)."""
    tag = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return folder / f"{Path(source).stem}-{tag}.png"


def _data_url(image: Image.Image, longest_side: int, quality: int) -> str:
    image = image.convert("RGB")
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail(source: str, size: int, rules: LoadRules) -> str | None:
    """A WebP data URI of the image as the model saw it (orientation, alpha rules); None if unreadable."""
    try:
        pixels = load_image(source, rules).pixels
    except (ImageError, OSError):
        return None
    return _data_url(Image.fromarray(pixels), size, quality=70)


def compact_row(data: dict[str, Any], index: int) -> dict[str, Any]:
    """The fields the page shows, from one `ImagePrediction.to_dict()` line."""
    evidence = data.get("evidence") or {}
    probabilities = data.get("probabilities") or {}
    top = sorted(probabilities.items(), key=lambda item: -item[1])
    error = data.get("error")
    return {
        "i": index,
        "source": str(data.get("source", "")),
        "name": Path(str(data.get("source", ""))).name,
        "verdict": UNREADABLE if error else data.get("verdict"),
        "generator": data.get("generator"),
        "p": None if error else data.get("p_generated"),
        "reason": data.get("reason"),
        "probabilities": [[name, round(float(p), 4)] for name, p in top],
        "evidence": {
            "indicates_ai": evidence.get("indicates_ai"),
            "generators": evidence.get("named_generators", []),
            "items": [
                {"source": item.get("source"), "detail": item.get("detail")}
                for item in evidence.get("items", [])
            ],
        },
        "notes": data.get("notes") or [],
        "view": data.get("view"),
        "n_views": data.get("n_views"),
        "error": error,
    }


def _json_for_script(value: Any) -> str:
    """JSON that cannot end the <script> element it sits in."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def model_card(run: Path | None) -> dict[str, Any] | None:
    """What the report says about the model: from the run's config.json and calibration.json."""
    if run is None:
        return None
    from animeprov.checkpoint import BEST_WEIGHTS, read_config
    from animeprov.io import sha256_file

    config = read_config(run)
    card = {
        "run": str(run),
        "variant": config.get("variant"),
        "size": config.get("size"),
        "classes": config.get("classes"),
        "human_class": config.get("human_class", "human"),
        "trained_on_sha256": config.get("data_sha256"),
        "weights_sha256": sha256_file(run / BEST_WEIGHTS) if (run / BEST_WEIGHTS).is_file() else None,
        "enrolled": config.get("enrolled", []),
        "animeprov": (config.get("environment") or {}).get("animeprov"),
    }
    calibration = run / "calibration.json"
    if calibration.is_file():
        data = json.loads(calibration.read_text())
        measured = data.get("measured", {})
        card["calibration"] = {
            "temperature": data.get("temperature"),
            "ai_threshold": data.get("ai_threshold"),
            "artist_threshold": data.get("artist_threshold"),
            "target_fpr": data.get("target_fpr"),
            "measured_fpr": measured.get("fpr"),
            "fpr_upper_95": measured.get("fpr_upper_95"),
            "calibration_images": measured.get("n_images"),
        }
    return card


def render_report(
    predictions: str | Path,
    out: str | Path,
    *,
    run: str | Path | None = None,
    heatmaps: str | Path | None = None,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    title: str | None = None,
    rules: LoadRules = LoadRules(),
    on_row=lambda: None,
) -> ReportSummary:
    """Write the HTML report of a predictions JSONL file. Streams: memory does not grow with the rows."""
    predictions, out = Path(predictions), Path(out)
    if not predictions.is_file():
        raise FileNotFoundError(f"{predictions}: no such predictions file")
    heatmap_folder = Path(heatmaps) if heatmaps else None
    card = model_card(Path(run) if run else None)
    summary = ReportSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".report-") as scratch:
        rows_path, errors_path = Path(scratch) / "rows.json", Path(scratch) / "errors.html"
        with (
            open(predictions, encoding="utf-8") as lines,
            open(rows_path, "w", encoding="utf-8") as rows,
            open(errors_path, "w", encoding="utf-8") as errors,
        ):
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    if not isinstance(data, dict) or "source" not in data:
                        raise ValueError("no 'source'")
                    row = compact_row(data, summary.rows)
                except ValueError as error:  # a cut last line, or not a predict row
                    summary.bad_lines.append(f"{predictions}:{number}: {error}")
                    continue
                # The card shown must be the predicting model's: at least its classes must be theirs.
                classes = sorted(data.get("probabilities") or {})
                if card and card["classes"] and classes and classes != sorted(card["classes"]):
                    raise ValueError(
                        f"{predictions}:{number}: predicted with the classes {', '.join(classes)}, but --run "
                        f"{run} has {', '.join(sorted(card['classes']))}: "
                        "the predictions come from another model"
                    )
                if row["error"]:
                    reason = row["error"].removeprefix(f"{row['source']}: ")  # predict's errors name the file
                    source = html.escape(row["source"])
                    errors.write(f"<li><code>{source}</code>: {html.escape(reason)}</li>\n")
                else:
                    if thumb_size > 0:
                        row["thumb"] = thumbnail(row["source"], thumb_size, rules)
                        summary.thumbnails += row["thumb"] is not None
                    if heatmap_folder is not None and heatmap_file(heatmap_folder, row["source"]).is_file():
                        with Image.open(heatmap_file(heatmap_folder, row["source"])) as overlay:
                            row["heatmap"] = _data_url(overlay, HEATMAP_SIZE, quality=80)
                        summary.heatmaps += 1
                rows.write(("," if summary.rows else "") + _json_for_script(row) + "\n")
                summary.add(row)
                on_row()
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as page:
            _write_page(page, summary, rows_path, errors_path, card, title
                        or f"Scan report: {predictions.name}", predictions)  # fmt: skip
        tmp.replace(out)
    return summary


def _static(name: str) -> str:
    return resources.files("animeprov.reports").joinpath("static", name).read_text(encoding="utf-8")


def _histogram_svg(histogram: list[int]) -> str:
    width, height, gap = 400, 120, 2
    peak = max(histogram) or 1
    bar = width / len(histogram)
    bars = []
    for i, count in enumerate(histogram):
        h = round(height * count / peak, 1)
        low, high = i / len(histogram), (i + 1) / len(histogram)
        bars.append(
            f'<rect x="{i * bar + gap / 2:.1f}" y="{height - h}" width="{bar - gap:.1f}" height="{h}">'
            f"<title>P(generated) {low:.2f}-{high:.2f}: {count}</title></rect>"
        )
    return (
        f'<svg class="histogram" viewBox="0 -2 {width} {height + 18}" role="img" '
        f'aria-label="histogram of P(generated)">{"".join(bars)}'
        f'<text x="0" y="{height + 14}">0</text><text x="{width / 2}" y="{height + 14}" '
        f'text-anchor="middle">0.5</text><text x="{width}" y="{height + 14}" text-anchor="end">1</text></svg>'
    )


def _count_table(title: str, counts: Counter, css: str) -> str:
    if not counts:
        return f'<table class="{css}"><caption>{title}</caption><tr><td>none</td></tr></table>'
    body = "".join(
        f'<tr><td>{html.escape(str(name))}</td><td class="num">{count}</td></tr>'
        for name, count in counts.most_common()
    )
    return f'<table class="{css}"><caption>{title}</caption>{body}</table>'


def _card_html(card: dict[str, Any] | None) -> str:
    if card is None:
        return '<p class="muted">Model not given (render with <code>--run RUN</code> to show its card).</p>'
    items = [
        ("variant", card["variant"]),
        ("input size", f"{card['size']} px"),
        ("classes", ", ".join(card["classes"] or [])),
        ("run", card["run"]),
        ("weights sha256", card["weights_sha256"]),
        ("trained on (split sha256)", card["trained_on_sha256"]),
        ("animeprov", card["animeprov"]),
    ]
    for enrolled in card["enrolled"]:
        items.append(
            (
                "enrolled class",
                f"{enrolled.get('class')} ({enrolled.get('images')} images, {enrolled.get('at')})",
            )
        )
    calibration = card.get("calibration")
    if calibration:
        items.append(
            (
                "verdicts",
                f"ai when P(generated) >= {calibration['ai_threshold']:.4g}, artist when <= "
                f"{calibration['artist_threshold']:.4g}, unsure between; "
                f"temperature {calibration['temperature']:.3g}",
            )
        )
        if calibration.get("measured_fpr") is not None:
            items.append(
                (
                    "false accusations",
                    f"{calibration['measured_fpr']:.3f} of human images on the calibration split "
                    f"({calibration['calibration_images']} images; "
                    f"95% upper bound {calibration['fpr_upper_95']:.3f}; "
                    f"target {calibration['target_fpr']:g})",
                )
            )
    else:
        items.append(("verdicts", "none: the run has no calibration.json"))
    rows = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items if v is not None
    )
    return f'<dl class="card">{rows}</dl>'


def _write_page(
    page: TextIO,
    summary: ReportSummary,
    rows_path: Path,
    errors_path: Path,
    card: dict[str, Any] | None,
    title: str,
    predictions: Path,
) -> None:
    from animeprov import __version__
    from animeprov.evidence import METADATA_CAVEAT

    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    page.write(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_static('scan.css')}</style>\n</head><body>\n"
        f'<header><h1>{html.escape(title)}</h1><p class="muted">{summary.rows} files, '
        f"made {made} by animeprov "
        f"{html.escape(__version__)} from <code>{html.escape(str(predictions))}</code></p></header>\n"
        '<section id="summary"><h2>Summary</h2><div class="summary-grid">'
        + _count_table("Verdicts", summary.verdicts, "verdict-counts")
        + _count_table("Generators (verdict ai)", summary.generators, "generator-counts")
        + f"<figure><figcaption>P(generated), {sum(summary.histogram)} readable files</figcaption>"
        + _histogram_svg(summary.histogram)
        + "</figure></div>\n<h3>Model</h3>"
        + _card_html(card)
        + f'<p class="caveat">Metadata evidence is shown beside the verdict, never folded into it. '
        f"{html.escape(METADATA_CAVEAT)}</p></section>\n"
    )
    page.write(f'<section id="unreadable"><h2>Unreadable files ({summary.unreadable})</h2><ul>')
    with open(errors_path, encoding="utf-8") as errors:
        shutil.copyfileobj(errors, page)
    page.write("</ul></section>\n")
    if summary.bad_lines:
        shown = "".join(f"<li>{html.escape(line)}</li>" for line in summary.bad_lines[:50])
        page.write(
            f'<section id="bad-lines"><h2>Lines not read ({len(summary.bad_lines)})</h2>'
            f"<ul>{shown}</ul></section>"
        )
    page.write(_static("scan-body.html"))
    page.write('<script type="application/json" id="rows">[')
    with open(rows_path, encoding="utf-8") as rows:
        shutil.copyfileobj(rows, page)
    page.write(f"]</script>\n<script>{_static('scan.js')}</script>\n</body></html>\n")
