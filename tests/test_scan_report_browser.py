"""The scan report in Debian's chromium, opened from disk: filter, sort, search, page, detail, no requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from animeprov.reports.scan import heatmap_file, render_report

N_ROWS = 130  # more than one page of 100


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan-browser")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_ROWS):
        path = root / f"file-{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        p = (i * 37 % N_ROWS) / N_ROWS  # every P once, in scrambled order
        verdict = "ai" if p >= 0.8 else "artist" if p <= 0.2 else "unsure"
        rows.append(
            {
                "source": str(path),
                "probabilities": {"human": 1 - p, "gen-a" if i % 2 else "gen-b": p},
                "p_generated": p,
                "verdict": verdict,
                "generator": ("gen-a" if i % 2 else "gen-b") if verdict == "ai" else None,
                "view": "crop",
                "n_views": 1,
                "evidence": {"items": [], "named_generators": [], "indicates_ai": None, "caveat": ""},
                "notes": [],
                "error": None,
                **({"reason": "no generator fits"} if verdict == "unsure" else {}),
            }
        )
    broken = str(root / "broken.png")
    rows.append(
        {**rows[0], "source": broken, "probabilities": {}, "verdict": None, "error": f"{broken}: truncated"}
    )
    heat = root / "heat"
    heat.mkdir()
    Image.new("RGB", (24, 24), (255, 0, 0)).save(heatmap_file(heat, rows[5]["source"]))
    preds = root / "preds.jsonl"
    preds.write_text("".join(json.dumps(row) + "\n" for row in rows))
    render_report(preds, root / "scan.html", heatmaps=heat)
    return root / "scan.html"


@pytest.fixture
def opened(report, page):
    """The report opened from disk, with every request and every console error recorded."""
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(report.as_uri())
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page, requests, problems


def shown_values(page, css: str) -> list[str]:
    return page.locator(f"#rows-body td.{css}").all_inner_texts()


def test_sorting_filtering_search_and_paging(opened):
    page, requests, problems = opened
    expect(page.locator("#count")).to_have_text(f"{N_ROWS + 1} files")
    expect(page.locator("#rows-body tr")).to_have_count(100)
    p_values = [float(v.split()[0]) for v in shown_values(page, "p") if v.strip()]
    assert p_values == sorted(p_values, reverse=True) and p_values[0] == pytest.approx(
        (N_ROWS - 1) / N_ROWS, abs=1e-3
    )

    page.locator(".sort-head[data-key=p]").click()  # ascending by P
    p_values = [float(v.split()[0]) for v in shown_values(page, "p") if v.strip()]
    assert p_values == sorted(p_values) and p_values[0] == 0.0

    page.select_option("#verdict", "ai")
    page.select_option("#generator", "gen-a")
    names = shown_values(page, "verdict")
    assert names and set(names) == {"ai"} and set(shown_values(page, "generator")) == {"gen-a"}
    page.fill("#p-min", "0.9")
    p_values = [float(v.split()[0]) for v in shown_values(page, "p")]
    assert p_values and min(p_values) >= 0.9

    page.click("#reset")
    page.fill("#search", "FILE-00")  # case-insensitive, file name only
    expect(page.locator("#rows-body tr")).to_have_count(10)
    assert all(name.startswith("file-00") for name in shown_values(page, "name"))

    page.fill("#search", "")
    page.click("#next")
    expect(page.locator("#rows-body tr")).to_have_count(N_ROWS + 1 - 100)
    expect(page.locator("#page-info")).to_have_text("page 2 of 2")
    assert problems == []
    assert requests == [page.url]  # the page itself, nothing else


def test_unreadable_file_is_listed_and_filterable(opened):
    page, requests, problems = opened
    expect(page.locator("#unreadable")).to_contain_text("broken.png")
    expect(page.locator("#unreadable")).to_contain_text("truncated")
    page.select_option("#verdict", "unreadable")
    row = page.locator("#rows-body tr")
    expect(row).to_have_count(1)
    expect(row.locator("td.reason")).to_contain_text("truncated")
    assert requests == [page.url] and problems == []


def test_row_opens_a_larger_view_with_heatmap_and_reason(opened):
    page, requests, problems = opened
    page.select_option("#sort", "order-asc")
    page.locator("#rows-body tr").nth(5).click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#detail-name")).to_have_text("file-005.png")
    heatmap = dialog.locator("#detail-heatmap img")
    expect(heatmap).to_be_visible()
    assert heatmap.evaluate("img => img.complete && img.naturalWidth > 0")  # data URI allowed by the CSP
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    page.select_option("#verdict", "unsure")
    page.locator("#rows-body tr").first.click()
    expect(dialog.locator("#detail-reason")).to_have_text("reason: no generator fits")
    expect(dialog.locator("#detail-heatmap")).to_be_hidden()
    assert requests == [page.url] and problems == []


def test_the_page_cannot_fetch_anything(opened):
    """The Content-Security-Policy blocks any request the page might try (a script added later, say)."""
    page, _, _ = opened
    violations = page.evaluate(
        """async () => {
            const seen = [];
            document.addEventListener('securitypolicyviolation', (e) => seen.push(e.violatedDirective));
            try { await fetch('https://example.com/x'); } catch (e) {}
            const img = new Image(); img.src = 'https://example.com/pixel.png'; document.body.append(img);
            await new Promise((done) => setTimeout(done, 200));
            return seen;
        }"""
    )
    assert sorted(violations) == ["connect-src", "img-src"]  # both refused by the policy
