"""`animeprov data collect` / `data tags` against a local fake booru whose every answer the test writes."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.data.collect import (
    JOURNAL_NAME,
    BooruClient,
    CollectError,
    _retry_after,
    _timestamp,
    collect,
    is_ai_tag,
    parse_cutoff,
)
from animeprov.data.manifest import MANIFEST_COLUMNS, read_columns, read_rows
from animeprov.data.prompts import load_tag_set

runner = CliRunner()
BEFORE = 1659312000  # 2022-08-01T00:00:00Z
CUTOFF = datetime(2022, 8, 1, tzinfo=UTC)


class FakeBooru:
    """Serves posts page by page and image files; `script[key]` lists answers given before the normal
    one: ("status", code, headers), ("malformed",), ("truncated",). Keys: "api", "tags" or an image path."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.tags: bytes = b"[]"
        self.script: dict[str, list[tuple]] = {}
        self.log: list[tuple[str, str]] = []  # (path with query, User-Agent)
        self.url = ""

    def add_post(self, post_id: int, data: bytes | None = None, ext: str = "jpg", **fields) -> dict:
        record = {"id": post_id, "directory": "1", "image": f"{post_id}.{ext}", "tags": "1girl solo",
                  "rating": "safe", "source": f"https://example.org/{post_id}", "owner": "uploader",
                  "change": BEFORE - 1000, "parent_id": 0}  # fmt: skip
        if data is not None:
            self.files[f"/images/1/{post_id}.{ext}"] = data
            record["hash"] = hashlib.md5(data).hexdigest()
        record.update(fields)
        self.posts.append(record)
        return record

    def image_requests(self) -> Counter:
        return Counter(path for path, _ in self.log if path.startswith("/images/"))


def _handler(booru: FakeBooru):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            booru.log.append((self.path, self.headers.get("User-Agent", "")))
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/index.php":
                key = "tags" if query.get("s") == "tag" else "api"
                body = booru.tags if key == "tags" else self._page(query)
                content_type = "application/json"
            else:
                key, body, content_type = url.path, booru.files.get(url.path), "image/jpeg"
                if body is None:
                    self.send_error(404)
                    return
            scripted = booru.script.get(key)
            if scripted:
                kind, *args = scripted.pop(0)
                if kind == "status":
                    code, headers = args
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "malformed":
                    body = b'[{"id": 1, "tags": "unterminated'
                if kind == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _page(self, query: dict) -> bytes:
            pid, limit = int(query.get("pid", 0)), int(query.get("limit", 100))
            page = booru.posts[pid * limit : (pid + 1) * limit]
            return json.dumps(page).encode() if page else b""  # Safebooru answers past the end with nothing

    return Handler


@pytest.fixture
def booru() -> Iterator[FakeBooru]:
    fake = FakeBooru()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    # a short poll so that shutdown() returns at once (the default 0.5 s is waited out by every test)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield fake
    server.shutdown()
    server.server_close()


def picture(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def client_for(booru: FakeBooru, waits: list[float]) -> BooruClient:
    return BooruClient(booru.url, min_interval=0, retries=3, backoff=0.01, sleep=waits.append)


def test_collect_filters_retries_crops_and_resumes(booru: FakeBooru, tmp_path: Path) -> None:
    good = picture(600, 530, 1)
    booru.add_post(101, good, tags="1girl solo smile artist_a", created_at="Fri Jul 29 15:35:11 -0500 2022")
    booru.add_post(102, picture(520, 520, 2), tags="1girl ai-generated")
    booru.add_post(103, good)  # the same file again under another id
    booru.add_post(104, picture(300, 300, 4), width=300, height=300)  # too small, known from the record
    booru.add_post(105, picture(300, 700, 5))  # too small, found only after the download
    booru.add_post(106, picture(520, 520, 6), change=BEFORE + 10)  # after the cutoff
    truncated = picture(512, 600, 7, fmt="PNG")
    booru.add_post(107, truncated, ext="png", parent_id=101)
    booru.add_post(108, picture(520, 520, 8), rating="questionable")
    booru.add_post(109, picture(520, 520, 9), tags="stable_diffusion 1boy")
    newer = picture(520, 520, 10)
    booru.add_post(110, newer, change=BEFORE + 50)  # a re-upload after the cutoff is seen first ...
    booru.add_post(111, newer, tags="1girl")  # ... and must not block the older post of the same file
    booru.script["api"] = [("status", 500, {}), ("status", 429, {"Retry-After": "3"}), ("malformed",)]
    booru.script["/images/1/107.png"] = [("truncated",)]
    waits: list[float] = []

    out = tmp_path / "human"
    result = collect(out, client_for(booru, waits), tags="1girl", n=10, before=CUTOFF, size=512, page_size=4)

    assert result.kept == 3 and result.failed == 0
    assert result.skipped == {
        "ai-tagged": 2,
        "duplicate md5": 1,
        "too small": 2,
        "after cutoff": 2,
        "rating": 1,
    }
    assert 3 in waits  # Retry-After honoured
    assert all(agent.startswith("animeprov/") for _, agent in booru.log)
    first_query = urllib.parse.parse_qs(urllib.parse.urlsplit(booru.log[0][0]).query)
    assert first_query["tags"] == ["1girl"] and first_query["json"] == ["1"] and first_query["s"] == ["post"]
    assert booru.image_requests()["/images/1/104.jpg"] == 0  # never downloaded: too small per the API
    assert booru.image_requests()["/images/1/107.png"] == 2  # truncated, then retried

    columns = read_columns(out / "manifest.csv")
    assert columns[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    rows = {row["post_id"]: row for row in read_rows(out / "manifest.csv")}
    assert set(rows) == {"101", "107", "111"}
    row = rows["101"]
    assert (row["class"], row["width"], row["height"], row["format"]) == ("human", "512", "512", "PNG")
    assert (
        row["tags"] == "1girl solo smile artist_a"
        and row["rating"] == "safe"
        and row["uploader"] == "uploader"
    )
    assert row["source_url"] == "https://example.org/101" and row["original_format"] == "JPEG"
    assert (row["original_width"], row["original_height"]) == ("600", "530")
    assert row["created"].startswith("2022-07-29T15:35:11")
    assert rows["107"]["group"] == row["group"] == "safebooru-101"  # child post grouped with its parent
    # A centre crop, not a resize: the saved pixels are exactly the middle of the decoded original.
    original = np.asarray(Image.open(io.BytesIO(good)).convert("RGB"))
    saved = np.asarray(Image.open(out / row["path"]))
    assert np.array_equal(saved, original[9:521, 44:556])

    # Resume: nothing is downloaded again; a deleted file is fetched again, alone.
    before_requests = booru.image_requests()
    again = collect(out, client_for(booru, []), tags="1girl", n=10, before=CUTOFF, size=512, page_size=4)
    assert again.kept == 3 and booru.image_requests() == before_requests
    (out / rows["107"]["path"]).unlink()
    third = collect(out, client_for(booru, []), tags="1girl", n=10, before=CUTOFF, size=512, page_size=4)
    assert third.kept == 3
    assert booru.image_requests() - before_requests == Counter({"/images/1/107.png": 1})
    assert (out / rows["107"]["path"]).is_file()

    with pytest.raises(ValueError, match="other settings"):
        collect(out, client_for(booru, []), tags="1boy", n=1, size=512)


def test_collect_stops_at_n_and_adds_max_id(booru: FakeBooru, tmp_path: Path) -> None:
    for post_id in range(1, 6):
        booru.add_post(post_id, picture(512, 512, post_id))
    result = collect(tmp_path, client_for(booru, []), tags="solo", n=2, max_id=50, size=512, page_size=2)
    assert result.kept == 2 and result.pages == 1
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(booru.log[0][0]).query)["tags"] == ["solo id:<50"]
    assert len(list(read_rows(tmp_path / "manifest.csv"))) == 2


def test_failed_download_is_not_journaled_and_retried_next_run(booru: FakeBooru, tmp_path: Path) -> None:
    booru.add_post(1, picture(512, 512, 1))
    booru.script["/images/1/1.jpg"] = [("status", 503, {})] * 4
    first = collect(tmp_path, client_for(booru, []), tags="", n=1, size=512)
    assert (first.kept, first.failed) == (0, 1)
    second = collect(tmp_path, client_for(booru, []), tags="", n=1, size=512)
    assert (second.kept, second.failed) == (1, 0)
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines[1:]] == ["kept"]


def test_entry_after_a_torn_journal_line_is_not_lost(booru: FakeBooru, tmp_path: Path) -> None:
    for post_id in (1, 2):
        booru.add_post(post_id, picture(512, 512, post_id))
    collect(tmp_path, client_for(booru, []), tags="", n=1, size=512)
    with (tmp_path / JOURNAL_NAME).open("a", encoding="utf-8") as journal:
        journal.write('{"post_id": "99", "sta')  # a kill in the middle of writing an entry
    assert collect(tmp_path, client_for(booru, []), tags="", n=2, size=512).kept == 2
    downloads = booru.image_requests()
    # The entry written after the torn line must be readable: nothing is decided (or downloaded) again.
    assert collect(tmp_path, client_for(booru, []), tags="", n=2, size=512).kept == 2
    assert booru.image_requests() == downloads


def test_tls_error_mid_body_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl
    import urllib.request

    answers: list[object] = [ssl.SSLEOFError("EOF occurred in violation of protocol"), b"[]"]

    class Response(io.BytesIO):
        headers: dict[str, str] = {}

    def urlopen(request, timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Response(answer)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    waits: list[float] = []
    client = BooruClient("http://booru.invalid/", min_interval=0, retries=2, backoff=0.5, sleep=waits.append)
    assert client.posts("", 0, 10) == [] and waits == [0.5] and client.requests == 2


def test_only_http_file_urls_are_downloaded(booru: FakeBooru, tmp_path: Path) -> None:
    secret = tmp_path / "local.png"
    secret.write_bytes(picture(512, 512, 1, fmt="PNG"))
    booru.add_post(1, file_url=secret.as_uri())  # an API answer must not make us read local files
    result = collect(tmp_path / "out", client_for(booru, []), tags="", n=1, size=512)
    assert result.kept == 0 and result.skipped == {"no file url": 1}


def test_api_that_keeps_failing_raises_collect_error(booru: FakeBooru, tmp_path: Path) -> None:
    booru.script["api"] = [("status", 500, {})] * 10
    waits: list[float] = []
    client = BooruClient(booru.url, min_interval=0, retries=2, backoff=1.0, max_wait=1.5, sleep=waits.append)
    with pytest.raises(CollectError, match="gave up after 3 tries"):
        collect(tmp_path, client, tags="", n=1)
    assert waits == [1.0, 1.5]  # exponential, capped at max_wait


def test_artist_lookup_reads_tag_types(booru: FakeBooru, tmp_path: Path) -> None:
    booru.add_post(1, picture(512, 512, 1), tags="1girl some_artist smile")
    booru.tags = b'<?xml version="1.0"?><tags><tag name="some_artist" type="1" count="5"/><tag name="1girl" type="0" count="9"/></tags>'  # noqa: E501
    collect(tmp_path, client_for(booru, []), tags="", n=1, size=512, lookup_artists=True)
    assert next(read_rows(tmp_path / "manifest.csv"))["artist"] == "some_artist"


def test_cli_collect_and_tags(booru: FakeBooru, tmp_path: Path) -> None:
    booru.add_post(1, picture(520, 512, 1))
    booru.add_post(2, picture(520, 512, 2), tags="ai_generated")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["data", "collect", "--base-url", booru.url, "--tags", "1girl", "--n", "1",
              "--before", "2022-08-01", "--out", str(out), "--min-interval", "0", "--backoff", "0",
              "--contact", "me@example.org"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 images kept" in result.stdout
    assert booru.log[-1][1].endswith("; contact: me@example.org)")  # the User-Agent says who asks
    assert len(list(read_rows(out / "manifest.csv"))) == 1

    booru.tags = json.dumps(
        [{"name": "1girl", "count": 900, "type": 0}, {"name": "blue_eyes", "count": 500, "type": 0},
         {"name": "new_popular_tag", "count": 400, "type": 0},
         {"name": "some_artist", "count": 800, "type": 1},
         {"name": "ai-generated", "count": 700, "type": 0}, {"name": "cleavage", "count": 600, "type": 0}]
    ).encode()  # fmt: skip
    tag_file = tmp_path / "tags.json"
    result = runner.invoke(
        app, ["data", "tags", "--base-url", booru.url, "--pages", "1", "--min-interval", "0",
              "--out", str(tag_file)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    groups = {
        group.name: dict(zip(group.tags, group.weights, strict=True))
        for group in load_tag_set(tag_file).groups
    }
    assert groups == {
        "subject": {"1girl": 900.0},
        "eyes": {"blue_eyes": 500.0},
        "other": {"new_popular_tag": 400.0},
    }

    booru.script["api"] = [("status", 500, {})] * 5
    result = runner.invoke(
        app, ["data", "collect", "--base-url", booru.url, "--n", "1", "--out", str(tmp_path / "x"),
              "--min-interval", "0", "--backoff", "0", "--retries", "1"]
    )  # fmt: skip
    assert result.exit_code == 1 and "gave up" in result.output


def test_ai_tags_dates_and_retry_after() -> None:
    for tag in ("ai-generated", "ai_generated", "AI-assisted", "stable_diffusion", "novelai", "midjourney"):
        assert is_ai_tag(tag), tag
    for tag in ("1girl", "air", "aiguillette", "hair", "chain"):
        assert not is_ai_tag(tag), tag
    assert _timestamp("Fri Jul 29 15:35:11 -0500 2022") == datetime(2022, 7, 29, 20, 35, 11, tzinfo=UTC)
    assert _timestamp(BEFORE) == CUTOFF == _timestamp(str(BEFORE)) == parse_cutoff("2022-08-01")
    assert _timestamp("2022-07-31T20:00:00-04:00") == CUTOFF
    assert _timestamp("yesterday") is None
    assert _retry_after("12") == 12.0 and _retry_after(None) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
