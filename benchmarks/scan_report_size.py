"""Size, build time, peak memory and browser load time of `animeprov report` at 1,000 and 10,000 rows (JSON).

    python benchmarks/scan_report_size.py --work /work/runs/scan-bench --rows 1000,10000

Inputs: --distinct cartoon drawings (the synthetic benchmark's content, 256 px PNGs) hard-linked under
the wanted number of names in 10 folders, and a predictions file with one row per name (5 classes, made
up probabilities and verdicts, no model needed) plus 1% unreadable rows. The report is built by the
command in a subprocess (peak RSS from the kernel); the page is opened from disk in Debian's chromium
(load = navigation until the page has parsed its rows and drawn the first page; then a search and a
sort, timed until the table is redrawn).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["human", "nearest-conv", "transposed-conv", "bilinear-conv", "pixel-shuffle"]


def make_inputs(work: Path, rows: int, distinct: int, seed: int = 0) -> Path:
    from animeprov.data.synth import render_content

    originals = work / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        path = originals / f"o{i:04d}.png"
        if not path.exists():
            Image.fromarray(render_content(np.random.default_rng([seed, i]), 256)).save(path)
    rng = np.random.default_rng(seed)
    images = work / f"images-{rows}"
    preds = work / f"preds-{rows}.jsonl"
    with open(preds, "w") as out:
        for i in range(rows):
            path = images / f"folder-{i % 10}" / f"upload-{i:06d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                os.link(originals / f"o{i % distinct:04d}.png", path)
            if i % 100 == 99:
                row = {"source": str(path), "probabilities": {}, "p_generated": 0.0, "verdict": None,
                       "generator": None, "view": "", "n_views": 0, "evidence": {}, "notes": [],
                       "error": f"{path}: truncated image data"}  # fmt: skip
            else:
                probs = rng.dirichlet(np.full(len(CLASSES), 0.3))
                p = float(1 - probs[0])
                verdict = "ai" if p >= 0.9 else "artist" if p <= 0.1 else "unsure"
                generator = CLASSES[1 + int(np.argmax(probs[1:]))] if verdict == "ai" else None
                row = {
                    "source": str(path),
                    "probabilities": dict(zip(CLASSES, probs.round(6).tolist(), strict=True)),
                    "p_generated": p,
                    "verdict": verdict,
                    "generator": generator,
                    "view": "tiles",
                    "n_views": 4,
                    "evidence": {"items": [], "named_generators": [], "indicates_ai": None, "caveat": "..."},
                    "notes": [],
                    "error": None,
                }
                if verdict == "unsure":
                    row["reason"] = "P(generated) between the artist and ai thresholds"
            out.write(json.dumps(row) + "\n")
    return preds


# The command in a fresh process that prints its own peak RSS (KB) last on stderr.
_MEASURED = """
import resource, sys
from animeprov.cli import main
sys.argv = ["animeprov", *sys.argv[1:]]
try:
    main()
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def build(preds: Path, out: Path) -> dict:
    command = [sys.executable, "-c", _MEASURED, "report", str(preds), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    return {
        "build_seconds": round(seconds, 2),
        "peak_rss_mb": round(int(done.stderr.split()[-1]) / 1024, 1),
        "file_mb": round(out.stat().st_size / 1e6, 2),
    }


def browser_times(report: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        started = time.perf_counter()
        page.goto(report.as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        load = time.perf_counter() - started
        started = time.perf_counter()
        page.fill("#search", "upload-00012")
        page.wait_for_function("document.getElementById('count').textContent.includes('match')")
        search = time.perf_counter() - started
        started = time.perf_counter()
        page.select_option("#sort", "name-desc")
        page.wait_for_function(
            "document.querySelector('#rows-body td.name').textContent.startsWith('upload-00012')"
        )
        sort = time.perf_counter() - started
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
        browser.close()
    return {
        "page_load_seconds": round(load, 2),
        "search_seconds": round(search, 3),
        "sort_seconds": round(sort, 3),
        "js_heap_mb": round(heap / 1e6, 1) if heap else None,
        "requests_other_than_the_page": len(requests) - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rows", default="1000,10000")
    parser.add_argument("--distinct", type=int, default=300)
    args = parser.parse_args()
    results = []
    for rows in [int(n) for n in args.rows.split(",")]:
        preds = make_inputs(args.work, rows, args.distinct)
        report = args.work / f"scan-{rows}.html"
        result = {"rows": rows, **build(preds, report), **browser_times(report)}
        print(json.dumps(result), flush=True)
        results.append(result)
    (args.work / "result.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
