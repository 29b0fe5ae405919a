"""The curation store and its JSON API: rounds, persistence, export (the browser test is separate)."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app as cli_app
from animeprov.curate.app import CurationError, create_app, export_curation, open_store
from animeprov.data.manifest import MANIFEST_COLUMNS, image_path, read_columns, read_rows
from animeprov.web import LOOPBACK_HOSTS

runner = CliRunner()


def make_set(folder: Path, count: int = 4, manifest: bool = True) -> Path:
    """`count` small PNGs under folder/gen/ and (optionally) a manifest with an extra column."""
    rows = []
    for i in range(count):
        path = folder / "gen" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path)
        rows.append({"path": f"gen/{i:02d}.png", "class": "gen", "sha256": "", "width": 16, "height": 16,
                     "format": "PNG", "group": f"g{i}", "prompt": f"prompt {i}"})  # fmt: skip
    if manifest:
        with open(folder / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def test_two_rounds_persist_and_export(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set")
    store = open_store(folder, rounds=2)
    ids = [item.id for item in store.all_items()]
    assert store.next_item(1).id == ids[0] and store.next_item(2) is None  # round 2 waits for round 1
    store.decide(ids[0], 1, "accept")
    store.decide(ids[1], 1, "reject", "watermark")
    store.decide(ids[2], 1, "accept")
    store.decide(ids[3], 1, "accept")
    with pytest.raises(CurationError, match="not accepted in round 1"):
        store.decide(ids[1], 2, "accept")
    with pytest.raises(CurationError, match="unknown reason"):
        store.decide(ids[0], 2, "reject", "ugly")
    assert store.next_item(2).id == ids[0]
    store.decide(ids[0], 2, "accept")
    store.decide(ids[2], 2, "reject", "anatomy")
    store.decide(ids[3], 2, "accept")
    store.decide(ids[3], 1, "reject", "blur")  # reviewer 1 changes their mind: withdrawn from round 2
    assert store.decision(ids[3], 2) is None
    store.close()

    reopened = open_store(folder, rounds=2)  # a restart: same ids, same decisions
    assert [item.id for item in reopened.all_items()] == ids
    assert reopened.counts(1) == {"eligible": 4, "decided": 4, "accepted": 2, "left": 0}
    assert reopened.counts(2) == {"eligible": 2, "decided": 2, "accepted": 1, "left": 0}
    out = tmp_path / "elsewhere" / "manual.csv"
    summaries = export_curation(reopened, folder, out)
    assert [(s.decided, s.accepted, s.acceptance_rate) for s in summaries] == [(4, 2, 0.5), (2, 1, 0.5)]
    rows = list(read_rows(out))
    assert [row["prompt"] for row in rows] == ["prompt 0"]
    assert read_columns(out)[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert image_path(out, rows[0]).resolve() == (folder / "gen" / "00.png").resolve()  # rebased path
    decisions = {row["path"]: row for row in read_rows(out.with_suffix(".decisions.csv"))}
    assert len(decisions) == 4
    assert decisions["../set/gen/01.png"]["round1_reason"] == "watermark"
    assert decisions["../set/gen/02.png"]["round2_reason"] == "anatomy"
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["rounds"][0]["acceptance_rate"] == 0.5 and summary["curated_images"] == 1
    with sqlite3.connect(folder / ".curation.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_api_serves_images_by_id_only(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=2, manifest=False)  # no manifest: the images under the folder
    (tmp_path / "secret.txt").write_text("not for the page")
    client = TestClient(create_app(folder, rounds=2, db_path=tmp_path / "db.sqlite3"))
    config = client.get("/api/config").json()
    assert config["rounds"] == 2 and [r["key"] for r in config["reasons"]] == ["1", "2", "3", "4", "5"]
    first = client.get("/api/next", params={"round": 1}).json()
    assert first["item"]["name"] == "gen/00.png" and first["item"]["class"] == "gen"
    assert first["counts"] == {"eligible": 2, "decided": 0, "accepted": 0, "left": 2}
    image = client.get(f"/api/items/{first['item']['id']}/image")
    assert image.status_code == 200 and image.content == (folder / "gen" / "00.png").read_bytes()
    assert client.get("/api/items/999/image").status_code == 404
    assert client.get("/api/items/..%2F..%2Fsecret.txt/image").status_code in (404, 422)
    assert client.get("/static/../../secret.txt").status_code == 404
    assert client.get("/api/next", params={"round": 3}).status_code == 400

    posted = client.post(
        "/api/decisions", json={"item_id": first["item"]["id"], "round": 1, "decision": "accept"}
    )
    assert posted.status_code == 200 and posted.json()["counts"]["accepted"] == 1
    # Only JSON bodies count: a cross-site form (text/plain, no CORS preflight) cannot record decisions.
    body = '{"item_id": 2, "round": 1, "decision": "accept"}'
    cross_site = client.post("/api/decisions", content=body, headers={"Content-Type": "text/plain"})
    assert cross_site.status_code == 422
    refused = client.post("/api/decisions", json={"item_id": 2, "round": 2, "decision": "accept"})
    assert refused.status_code == 409
    assert (
        client.post("/api/decisions", json={"item_id": 2, "round": 1, "decision": "maybe"}).status_code == 400
    )
    assert client.get("/api/next", params={"round": 2}).json()["item"]["name"] == "gen/00.png"
    assert '<script src="/static/curate.js">' in client.get("/").text
    assert client.get("/static/curate.js").status_code == 200


def test_loopback_only_app_refuses_other_host_names(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=1)
    client = TestClient(create_app(folder, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8765")
    assert client.get("/api/config").status_code == 200
    assert client.get("/api/config", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_manifest_pointing_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=1)
    (folder / "manifest.csv").write_text("path,class\n../outside.png,gen\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    with pytest.raises(ValueError, match="outside"):
        open_store(folder, rounds=2)


def test_a_manifest_naming_a_non_image_file_never_gets_it_served(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=1)
    (folder / "page.html").write_text("<script>alert(1)</script>")
    (folder / "manifest.csv").write_text("path,class\npage.html,gen\ngen/00.png,gen\n")
    with pytest.warns(UserWarning, match="page.html: .*left out of the curation set"):
        client = TestClient(create_app(folder), base_url="http://127.0.0.1:8765")
    assert client.get("/api/items/1/image").headers["content-type"] == "image/png"  # gen/00.png
    response = client.get("/api/items/2/image")
    assert response.status_code == 404 and "<script>" not in response.text


def test_cli_export_prints_acceptance_rates(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=2)
    store = open_store(folder, rounds=2)
    first, second = (item.id for item in store.all_items())
    store.decide(first, 1, "accept")
    store.decide(second, 1, "reject", "off-model")
    store.decide(first, 2, "accept")
    store.close()
    out = tmp_path / "manual.csv"
    result = runner.invoke(cli_app, ["data", "curate", str(folder), "--reviewers", "2", "--export", str(out)])
    assert result.exit_code == 0, result.output
    assert "50.0%" in result.stdout and "100.0%" in result.stdout
    assert [row["path"] for row in read_rows(out)] == ["set/gen/00.png"]


def test_out_of_range_numbers_are_refused_not_500(tmp_path: Path) -> None:
    # Beyond SQLite's 64-bit integers, sqlite3 raises OverflowError: it must not become a 500.
    client = TestClient(
        create_app(make_set(tmp_path / "set", count=1), rounds=2), raise_server_exceptions=False
    )
    huge = 10**30
    assert client.get(f"/api/items/{huge}/image").status_code == 422
    assert client.get(f"/api/items/{huge}", params={"round": 1}).status_code == 422
    assert client.get("/api/items/1", params={"round": huge}).status_code == 400
    assert client.get("/api/next", params={"round": 1, "after": huge}).status_code == 422
    posted = client.post("/api/decisions", json={"item_id": huge, "round": 1, "decision": "accept"})
    assert posted.status_code == 422
    assert client.get("/api/items/1", params={"round": 1}).json()["item"]["id"] == 1


def test_a_reject_in_round_1_cannot_slip_between_the_check_and_the_write_of_round_2(tmp_path: Path) -> None:
    store = open_store(make_set(tmp_path / "set", count=1), rounds=2)
    item = store.all_items()[0].id
    store.decide(item, 1, "accept")
    check_round_1 = store.decision
    rival: list[threading.Thread] = []

    def decision_with_a_rival(item_id: int, round_: int) -> dict | None:
        found = check_round_1(item_id, round_)
        if not rival:  # reviewer 1 rejects while reviewer 2's accept is between its check and its write
            rival.append(threading.Thread(target=store.decide, args=(item, 1, "reject", "blur")))
            rival[0].start()
            rival[0].join(timeout=0.3)  # without one lock over check + write, the reject lands here
        return found

    store.decision = decision_with_a_rival  # type: ignore[method-assign]
    store.decide(item, 2, "accept")
    rival[0].join()
    store.decision = check_round_1  # type: ignore[method-assign]
    assert store.decision(item, 1)["decision"] == "reject"
    assert store.decision(item, 2) is None  # withdrawn from round 2 by the reject, which came last
    store.close()


def test_nan_json_oversized_bodies_and_foreign_hosts_get_json_errors(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=1)
    client = TestClient(create_app(folder, allowed_hosts=LOOPBACK_HOSTS), raise_server_exceptions=False,
                        base_url="http://127.0.0.1:8765")  # fmt: skip
    json_header = {"Content-Type": "application/json"}
    nan = client.post("/api/decisions", content='{"item_id": NaN, "round": 1, "decision": "accept"}',
                      headers=json_header)  # fmt: skip
    assert nan.status_code == 422 and nan.json()["detail"].startswith("invalid request (")  # was a 500
    padded = json.dumps({"item_id": 1, "round": 1, "decision": "accept", "reason": "x" * 200_000})
    assert client.post("/api/decisions", content=padded, headers=json_header).status_code == 413  # was taken
    chunks = iter([padded[i : i + 4096].encode() for i in range(0, len(padded), 4096)])  # no Content-Length
    assert client.post("/api/decisions", content=chunks, headers=json_header).status_code == 413
    foreign = client.get("/api/config", headers={"Host": "attacker.example"})
    assert foreign.status_code == 400 and "invalid Host header" in foreign.json()["detail"]  # was text/plain
    assert client.get("/api/next", params={"round": 1}).json()["item"]["id"] == 1  # nothing was decided


def test_files_that_do_not_decode_are_left_out_with_a_warning(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=2, manifest=False)
    whole = (folder / "gen" / "00.png").read_bytes()
    (folder / "gen" / "cut.png").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "gen" / "text.png").write_text("not an image")
    with pytest.warns(UserWarning, match="left out of the curation set") as caught:
        store = open_store(folder, rounds=1)
    assert [item.path for item in store.all_items()] == ["gen/00.png", "gen/01.png"]
    assert sorted(Path(str(w.message).split(":")[0]).name for w in caught) == ["cut.png", "text.png"]
    out = tmp_path / "manual.csv"
    result = runner.invoke(cli_app, ["data", "curate", str(folder), "--export", str(out)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "warning: " in said and "cut.png: corrupt or truncated" in said


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs need POSIX")
def test_links_and_fifos_in_a_folder_are_left_out_with_a_warning(tmp_path: Path) -> None:
    folder = make_set(tmp_path / "set", count=2, manifest=False)
    os.symlink("loop-b.png", folder / "gen" / "loop-a.png")  # the walk used to raise on this loop
    os.symlink("loop-a.png", folder / "gen" / "loop-b.png")
    os.mkfifo(folder / "gen" / "pipe.png")
    with pytest.warns(UserWarning, match="left out of the curation set") as caught:
        store = open_store(folder, rounds=1)
    assert [item.path for item in store.all_items()] == ["gen/00.png", "gen/01.png"]
    assert len(caught) == 3
