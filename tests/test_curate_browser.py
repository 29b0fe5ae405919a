"""The curation page in a real browser: keyboard review in round 1 and 2, restart, export."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect
from test_curate import make_set
from typer.testing import CliRunner

from animeprov.cli import app as cli_app
from animeprov.curate.app import create_app
from animeprov.data.manifest import read_rows

runner = CliRunner()


def test_keyboard_review_survives_a_restart_and_exports(page: Page, live_server, tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=4)
    db = tmp_path / "decisions.sqlite3"
    url = live_server(create_app(folder, rounds=2, db_path=db))
    name, counts = page.locator("#name"), page.locator("#counts")

    page.goto(f"{url}/?round=1")
    expect(name).to_have_text("gen/00.png")
    expect(page.locator("#image")).to_have_js_property("naturalWidth", 16)  # the image really loaded
    page.keyboard.press("a")  # accept 00
    expect(name).to_have_text("gen/01.png")
    page.keyboard.press("3")  # reject 01: signature or watermark
    expect(name).to_have_text("gen/02.png")
    page.keyboard.press("Enter")  # accept 02 ...
    expect(name).to_have_text("gen/03.png")
    page.keyboard.press("u")  # ... go back to 02 and change that to "blurry"
    expect(name).to_have_text("gen/02.png")
    expect(page.locator("#previous")).to_have_text("(decided: accept)")
    page.keyboard.press("2")
    expect(name).to_have_text("gen/03.png")
    page.keyboard.press("a")
    expect(page.locator("#done")).to_contain_text("Round 1 is done")
    expect(counts).to_have_text("round 1: 4 of 4 decided, 2 accepted (50%), 0 left")

    page.goto(f"{url}/?round=2")  # reviewer 2 sees only what reviewer 1 accepted
    expect(name).to_have_text("gen/00.png")
    page.keyboard.press("a")
    expect(name).to_have_text("gen/03.png")
    page.keyboard.press("1")  # abnormal anatomy
    expect(page.locator("#done")).to_contain_text("Round 2 is done")

    restarted = live_server(create_app(folder, rounds=2, db_path=db))  # a new app on the same database
    page.goto(f"{restarted}/?round=2")
    expect(counts).to_have_text("round 2: 2 of 2 decided, 1 accepted (50%), 0 left")
    page.goto(f"{restarted}/?round=1")
    expect(counts).to_have_text("round 1: 4 of 4 decided, 2 accepted (50%), 0 left")

    out = tmp_path / "manual.csv"
    result = runner.invoke(cli_app, ["data", "curate", str(folder), "--db", str(db), "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert [row["path"] for row in read_rows(out)] == ["set/gen/00.png"]
    reasons = {row["path"]: (row["round1_reason"], row["round2_reason"]) for row in read_rows(
        out.with_suffix(".decisions.csv"))}  # fmt: skip
    assert reasons == {"set/gen/00.png": ("", ""), "set/gen/01.png": ("watermark", ""),
                       "set/gen/02.png": ("blur", ""), "set/gen/03.png": ("", "anatomy")}  # fmt: skip


def test_a_round_beyond_the_last_says_which_round_is_shown(page: Page, live_server, tmp_path: Path) -> None:
    url = live_server(create_app(make_set(tmp_path / "set", count=1), rounds=2, db_path=tmp_path / "d.db"))
    page.goto(f"{url}/?round=3")
    expect(page.locator("#status")).to_have_text("There are 2 rounds: this is round 2, not 3.")
    expect(page.locator("#round")).to_have_value("2")
