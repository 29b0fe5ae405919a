"""Human-drawn images from a booru API (Safebooru and other Gelbooru-0.2-style sites), cropped for training.

The paper collected human images from Safebooru and cropped them to 512 x 512. This module does that
politely and reproducibly:

- `BooruClient`: standard-library HTTP (urllib) with a clear User-Agent, at most one request per
  `min_interval` seconds, and retries with exponential backoff on 429/5xx, dropped connections,
  truncated bodies and unreadable JSON (a `Retry-After` header is honoured, capped at `max_wait`).
- `collect`: walks `index.php?page=dapi&s=post&q=index&json=1&tags=...&pid=...&limit=...` page by
  page (newest first, as the API returns them) and keeps a post only if it was made before the cutoff,
  has an accepted rating, carries no tag marking AI generation (`is_ai_tag`), is not a duplicate (md5),
  downloads intact (md5 checked when the API gives one) and is at least `size` pixels on both sides.
  The kept image is centre-cropped to size x size WITHOUT resizing (resizing destroys the fingerprints
  a detector learns) and saved as PNG; its original format is recorded (format bias: most booru
  originals are JPEG).

Date filter. The Gelbooru 0.2 API has no documented date search, so the cutoff is applied here, to
each post's `created_at` (Gelbooru's XML/JSON) or, when the API does not give one (Safebooru's JSON),
to `change` (the Unix time of the post's last change). A post changed before the cutoff was also
created before it, so filtering on `change` never admits a newer post; it only drops some older posts
that were edited later. `max_id` adds the metatag `id:<N` to the search, to skip the newest posts
without paging through them (look up N, the first post id after the cutoff, on the site).

Resuming: every final decision about a post (kept, or skipped with a reason) goes to
`OUT/.collect-journal.jsonl` at once. A rerun with the same query skips posts already decided (no
download) and reuses kept images whose sha256 still matches; transient failures are not journaled, so
they are tried again.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path
from xml.etree import ElementTree

from PIL import Image

from animeprov import __version__
from animeprov.config import DEFAULT_HUMAN_CLASS
from animeprov.data.manifest import MANIFEST_COLUMNS, write_rows
from animeprov.io import ImageError, LoadRules, load_image, make_views

COLLECT_VERSION = 1
MANIFEST_NAME = "manifest.csv"
JOURNAL_NAME = ".collect-journal.jsonl"
DEFAULT_BASE_URL = "https://safebooru.org/"
DEFAULT_USER_AGENT = (
    f"animeprov/{__version__} (research data collection for AI-image attribution; Python urllib)"
)
# Ratings kept by default: Safebooru's "safe" and its newer "general"; Danbooru-style single letters.
DEFAULT_RATINGS = ("safe", "general", "s", "g")
MANIFEST_EXTRA_COLUMNS = (
    "source",
    "post_id",
    "md5",
    "tags",
    "artist",
    "uploader",
    "source_url",
    "rating",
    "created",
    "file_url",
    "original_width",
    "original_height",
    "original_format",
)

# Tags marking AI-made or AI-assisted images on the common boorus (written with _ or -).
_AI_TAG_PATTERN = re.compile(
    r"^(ai[_-]?(generated|assisted|art|created|generated_background|upscaled|enhanced|edited)|"
    r"stable[_-]?diffusion|novelai(_diffusion)?|nai[_-]diffusion|midjourney|niji[_-]?journey|dall[_-]?e\d?|"
    r"waifu[_-]?diffusion|anything[_-]v\d|ai|generated_by_ai|made_with_ai)$",
    re.IGNORECASE,
)


def is_ai_tag(tag: str) -> bool:
    """Whether a booru tag marks an image as AI-generated or AI-assisted."""
    return bool(_AI_TAG_PATTERN.match(tag.strip()))


class CollectError(RuntimeError):
    """The API could not be used (retries exhausted, or answers that are not a post list)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------------------
# HTTP


class BooruClient:
    """A polite client for one booru's `index.php?page=dapi` API."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        min_interval: float = 1.0,
        retries: int = 4,
        backoff: float = 2.0,
        max_wait: float = 120.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.user_agent = user_agent
        self.min_interval = min_interval
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self.sleep = sleep
        self.requests = 0  # sent, retries included
        self._last_request = float("-inf")

    def api_url(self, params: dict[str, object]) -> str:
        return self.base_url + "index.php?" + urllib.parse.urlencode(params)

    def get(self, url: str, check: Callable[[bytes], None] | None = None) -> bytes:
        """The body at `url`, retried on transient failures; `check(body)` may raise ValueError to retry."""
        for attempt in range(self.retries + 1):
            try:
                body = self._get_once(url)
                if check is not None:
                    try:
                        check(body)
                    except ValueError as error:
                        raise _Retryable(str(error)) from None
                return body
            except _Retryable as error:
                if attempt == self.retries:
                    raise CollectError(f"{url}: gave up after {attempt + 1} tries ({error})") from None
                wait = self.backoff * 2**attempt
                if error.retry_after is not None:
                    wait = max(wait, error.retry_after)
                self.sleep(min(wait, self.max_wait))
        raise AssertionError("unreachable")

    def _get_once(self, url: str) -> bytes:
        pause = self._last_request + self.min_interval - time.monotonic()
        if pause > 0:
            self.sleep(pause)
        self._last_request = time.monotonic()
        self.requests += 1
        request = urllib.request.Request(url, headers={"User-Agent": self.user_agent})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()  # raises IncompleteRead when the body is shorter than Content-Length
                expected = response.headers.get("Content-Length")
                if expected is not None and expected.isdigit() and int(expected) != len(body):
                    raise _Retryable(f"truncated body ({len(body)} of {expected} bytes)")
                return body
        except urllib.error.HTTPError as error:
            if error.code == 429 or error.code >= 500:
                raise _Retryable(
                    f"HTTP {error.code}", _retry_after(error.headers.get("Retry-After"))
                ) from None
            raise CollectError(f"{url}: HTTP {error.code} {error.reason}") from None
        except (OSError, HTTPException) as error:  # URLError, timeouts, resets, TLS errors mid-body
            raise _Retryable(f"{type(error).__name__}: {error}") from None

    def get_json(self, params: dict[str, object]) -> object:
        """Decoded JSON of an API call; an empty body (Safebooru's answer past the last page) is []."""
        body = self.get(self.api_url(params), check=_check_json)
        return json.loads(body) if body.strip() else []

    def posts(self, tags: str, pid: int, limit: int) -> list[dict]:
        params = {
            "page": "dapi",
            "s": "post",
            "q": "index",
            "json": 1,
            "tags": tags,
            "pid": pid,
            "limit": limit,
        }
        return _records(self.get_json(params), "post")

    def tag_list(self, pid: int, limit: int) -> list[dict]:
        """One page of the tag list, most-used first where the API honours orderby=count."""
        params = {
            "page": "dapi",
            "s": "tag",
            "q": "index",
            "json": 1,
            "pid": pid,
            "limit": limit,
            "orderby": "count",
            "order": "DESC",
        }
        body = self.get(self.api_url(params), check=_check_json_or_xml)
        return _tag_records(body)

    def tag_types(self, names: Sequence[str]) -> dict[str, int]:
        """{name: type} for the given tags (Gelbooru's `names` parameter; types: 1 = artist)."""
        params = {"page": "dapi", "s": "tag", "q": "index", "json": 1, "names": " ".join(names)}
        body = self.get(self.api_url(params), check=_check_json_or_xml)
        found = {}
        for record in _tag_records(body):
            try:
                found[str(record["name"])] = int(record.get("type", 0))
            except (KeyError, TypeError, ValueError):
                continue
        return found


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: an integer, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _check_json(body: bytes) -> None:
    if body.strip():
        json.loads(body)  # ValueError (JSONDecodeError) -> retry: often an HTML error page from a proxy


def _check_json_or_xml(body: bytes) -> None:
    if body.lstrip().startswith(b"<"):
        try:
            ElementTree.fromstring(body)
        except ElementTree.ParseError as error:  # a SyntaxError, not a ValueError
            raise ValueError(f"unreadable XML ({error})") from None
    else:
        _check_json(body)


def _records(data: object, key: str) -> list[dict]:
    """Records from `[...]`, `{"post": [...]}` or Gelbooru's `{"@attributes": ..., "post": [...]}`."""
    if isinstance(data, dict):
        data = data.get(key, [])
    if isinstance(data, dict):  # a single record
        data = [data]
    if not isinstance(data, list):
        raise CollectError(f"unexpected API answer: {type(data).__name__}, not a list of {key}s")
    return [record for record in data if isinstance(record, dict)]


def _tag_records(body: bytes) -> list[dict]:
    if not body.strip():
        return []
    if body.lstrip().startswith(b"<"):  # Safebooru's tag list may only speak XML: <tags><tag name=.../>
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as error:
            raise CollectError(f"unreadable tag list XML ({error})") from None
        return [dict(element.attrib) for element in root.iter("tag")]
    return _records(json.loads(body), "tag")


# ---------------------------------------------------------------------------------------------------------
# Posts


@dataclass(frozen=True)
class Post:
    post_id: str
    md5: str
    tags: tuple[str, ...]
    rating: str
    source_url: str
    uploader: str
    artist: str
    created: datetime | None
    width: int | None
    height: int | None
    file_url: str
    parent_id: str


def parse_post(record: dict, base_url: str) -> Post:
    """A Post from one API record (Gelbooru 0.2 / Safebooru fields, with Danbooru names as fallbacks)."""
    post_id = str(record.get("id", "")).strip()
    if not post_id:
        raise ValueError("post without an id")
    tags = str(record.get("tags") or record.get("tag_string") or "").split()
    file_url = str(record.get("file_url") or "")
    if not file_url and record.get("directory") is not None and record.get("image"):
        file_url = f"{base_url.rstrip('/')}/images/{record['directory']}/{record['image']}"
    if file_url.startswith("//"):
        file_url = "https:" + file_url
    parent = str(record.get("parent_id") or "")
    return Post(
        post_id=post_id,
        md5=str(record.get("md5") or record.get("hash") or "").lower(),
        tags=tuple(tags),
        rating=str(record.get("rating") or "").lower(),
        source_url=str(record.get("source") or ""),
        uploader=str(record.get("owner") or record.get("uploader_name") or ""),
        artist=str(record.get("tag_string_artist") or ""),
        created=_timestamp(record.get("created_at")) or _timestamp(record.get("change")),
        width=_int_or_none(record.get("width")),
        height=_int_or_none(record.get("height")),
        file_url=file_url,
        parent_id="" if parent in ("", "0", "None") else parent,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _timestamp(value: object) -> datetime | None:
    """A post time: Unix seconds, Gelbooru's "Fri Jul 29 15:35:11 -0500 2022", or ISO 8601."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return datetime.fromtimestamp(int(value), UTC)
    text = str(value).strip()
    for parse in (
        lambda t: datetime.strptime(t, "%a %b %d %H:%M:%S %z %Y"),
        lambda t: datetime.fromisoformat(t.replace("Z", "+00:00")),
    ):
        try:
            when = parse(text)
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def parse_cutoff(text: str) -> datetime:
    """YYYY-MM-DD (midnight UTC) or a full ISO timestamp."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a date like 2022-08-01, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------
# Collecting


@dataclass
class CollectResult:
    manifest: Path
    kept: int
    skipped: Counter = field(default_factory=Counter)  # reason -> posts
    failed: int = 0  # transient failures (not journaled: tried again on the next run)
    pages: int = 0
    requests: int = 0


def collect(
    out: str | Path,
    client: BooruClient,
    *,
    tags: str,
    n: int,
    before: datetime | None = None,
    size: int = 512,
    ratings: Sequence[str] = DEFAULT_RATINGS,
    source_name: str = "safebooru",
    class_name: str = DEFAULT_HUMAN_CLASS,
    page_size: int = 100,
    max_pages: int = 1000,
    max_id: int | None = None,
    lookup_artists: bool = False,
    on_progress: Callable[[int, str], None] | None = None,
) -> CollectResult:
    """Collect up to `n` cropped images into `out/<class_name>/` plus `out/manifest.csv`.

    `on_progress(kept_so_far, note)` is called after each post. Raises ValueError when `out` holds a
    journal of a different query (use another folder), CollectError when the API cannot be used.
    """
    if n < 1 or size < 1 or page_size < 1:
        raise ValueError("n, size and page_size must be positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    query = " ".join(tags.split() + ([f"id:<{max_id}"] if max_id is not None else []))
    header = {
        "collect_version": COLLECT_VERSION,
        "base_url": client.base_url,
        "tags": query,
        "before": before.isoformat() if before else None,
        "size": size,
        "ratings": sorted(ratings),
        "class": class_name,
    }
    decided, kept_rows = _read_journal(out, header)
    seen_md5 = {entry["md5"] for entry in decided.values() if _blocks_md5(entry)}
    result = CollectResult(manifest=out / MANIFEST_NAME, kept=len(kept_rows))
    accepted_ratings = {rating.lower() for rating in ratings}
    artist_types: dict[str, int] = {}

    _end_torn_line(out / JOURNAL_NAME)
    with (out / JOURNAL_NAME).open("a", encoding="utf-8") as journal:
        if journal.tell() == 0:  # a new journal starts with the settings it belongs to
            journal.write(json.dumps(header) + "\n")

        def record(entry: dict) -> None:
            decided[entry["post_id"]] = entry
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            if _blocks_md5(entry):
                seen_md5.add(entry["md5"])
            if entry["status"] == "kept":
                kept_rows.append(entry["row"])
                result.kept += 1
            else:
                result.skipped[entry["reason"]] += 1

        for pid in range(max_pages):
            if result.kept >= n:
                break
            records = client.posts(query, pid, page_size)
            result.pages += 1
            if not records:
                break
            for raw in records:
                if result.kept >= n:
                    break
                try:
                    post = parse_post(raw, client.base_url)
                except ValueError:
                    result.skipped["malformed post record"] += 1
                    continue
                if post.post_id in decided:
                    continue
                reason = _reason_to_skip(post, before, accepted_ratings, seen_md5, size)
                if reason is not None:
                    record({"post_id": post.post_id, "status": "skipped", "reason": reason, "md5": post.md5})
                else:
                    try:
                        entry = _keep(out, client, post, size, source_name, class_name, seen_md5)
                    except CollectError as error:  # the download failed after every retry: try next run
                        result.failed += 1
                        if on_progress is not None:
                            on_progress(result.kept, f"download failed: {error}")
                        continue
                    if entry["status"] == "kept" and lookup_artists:
                        entry["row"]["artist"] = _artists(client, post, artist_types)
                    record(entry)
                if on_progress is not None:
                    on_progress(result.kept, f"post {post.post_id}")

    fieldnames = list(MANIFEST_COLUMNS) + list(MANIFEST_EXTRA_COLUMNS)
    write_rows(result.manifest, kept_rows, fieldnames)
    result.requests = client.requests
    return result


def _blocks_md5(entry: dict) -> bool:
    """Whether later posts with this entry's md5 are duplicates: the file was kept, or is tagged as AI
    (a post skipped for its date, rating or size must not block an older upload of the same file)."""
    return bool(entry.get("md5")) and (entry["status"] == "kept" or entry.get("reason") == "ai-tagged")


def _reason_to_skip(
    post: Post, before: datetime | None, ratings: set[str], seen_md5: set[str], size: int
) -> str | None:
    """Why a post is left out before any download (a journaled, final decision), or None."""
    if before is not None:
        if post.created is None:
            return "no date"
        if post.created >= before:
            return "after cutoff"
    if ratings and post.rating not in ratings:
        return "rating"
    if any(is_ai_tag(tag) for tag in post.tags):
        return "ai-tagged"
    if post.md5 and post.md5 in seen_md5:
        return "duplicate md5"
    if post.width is not None and post.height is not None and min(post.width, post.height) < size:
        return "too small"
    if not post.file_url.lower().startswith(("https://", "http://")):  # urllib would open file:// too
        return "no file url"
    return None


def _keep(
    out: Path,
    client: BooruClient,
    post: Post,
    size: int,
    source_name: str,
    class_name: str,
    seen_md5: set[str],
) -> dict:
    """Download, check, crop and save one post; the journal entry (kept, or skipped with a reason)."""
    skipped = {"post_id": post.post_id, "status": "skipped", "md5": post.md5}

    def intact(body: bytes) -> None:  # a wrong md5 is a damaged transfer: retried by the client
        if post.md5 and hashlib.md5(body).hexdigest() != post.md5:
            raise ValueError(f"md5 mismatch ({len(body)} bytes)")

    data = client.get(post.file_url, check=intact)
    md5 = hashlib.md5(data).hexdigest()
    if md5 in seen_md5:
        return {**skipped, "md5": md5, "reason": "duplicate md5"}
    try:
        loaded = load_image(data, LoadRules(), name=post.file_url)
    except ImageError:
        return {**skipped, "md5": md5, "reason": "unreadable image"}
    if min(loaded.width, loaded.height) < size:  # the API's width/height were missing or wrong
        return {**skipped, "md5": md5, "reason": "too small"}
    crop = make_views(loaded.pixels, size, "crop", path=post.file_url)[0]
    relative = f"{class_name}/{source_name}-{post.post_id}.png"
    encoded = io.BytesIO()
    Image.fromarray(crop, "RGB").save(encoded, format="PNG")
    png = encoded.getvalue()
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(png)
    os.replace(temporary, target)
    row = {
        "path": relative,
        "class": class_name,
        "sha256": hashlib.sha256(png).hexdigest(),
        "width": size,
        "height": size,
        "format": "PNG",
        # Child posts (variants of one picture) share their parent's group, so a split keeps them together.
        "group": f"{source_name}-{post.parent_id or post.post_id}",
        "source": source_name,
        "post_id": post.post_id,
        "md5": md5,
        "tags": " ".join(post.tags),
        "artist": post.artist,
        "uploader": post.uploader,
        "source_url": post.source_url,
        "rating": post.rating,
        "created": post.created.isoformat() if post.created else "",
        "file_url": post.file_url,
        "original_width": loaded.width,
        "original_height": loaded.height,
        "original_format": loaded.format,
    }
    return {"post_id": post.post_id, "status": "kept", "md5": md5, "row": row}


ARTIST_TAG_TYPE = 1


def _artists(client: BooruClient, post: Post, known: dict[str, int]) -> str:
    """The post's artist tags, looked up in the tag API (cached; unknown tags are asked 100 at a time)."""
    if post.artist:
        return post.artist
    unknown = [tag for tag in post.tags if tag not in known]
    for start in range(0, len(unknown), 100):
        batch = unknown[start : start + 100]
        found = client.tag_types(batch)
        for tag in batch:
            known[tag] = found.get(tag, -1)
    return " ".join(tag for tag in post.tags if known.get(tag) == ARTIST_TAG_TYPE)


def _read_journal(out: Path, header: dict) -> tuple[dict[str, dict], list[dict]]:
    """(decided post id -> entry, kept rows whose files are intact) of an earlier run of this query."""
    path = out / JOURNAL_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}, []
    if not lines:
        return {}, []
    try:
        earlier = json.loads(lines[0])
    except ValueError:
        earlier = None
    if earlier != header:
        raise ValueError(
            f"{out} holds a collection made with other settings ({path.name}); use another folder"
        )
    decided = {str(entry["post_id"]): entry for entry in _complete_json_lines(lines[1:])}  # last one wins
    rows: list[dict] = []
    for post_id, entry in list(decided.items()):
        if entry.get("status") != "kept":
            continue
        row = entry.get("row") or {}
        if _sha256_of(out / str(row.get("path", ""))) != row.get("sha256"):
            del decided[post_id]  # file gone or changed: decide this post again
            continue
        rows.append(row)
    return decided, rows


def _end_torn_line(path: Path) -> None:
    """End a line torn by an interrupted write with a newline, so the next entry starts a line of its own
    instead of being glued onto the fragment (and lost with it on the next read)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")


def _complete_json_lines(lines: Sequence[str]) -> Iterator[dict]:
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line torn by an interrupted write
            continue
        if isinstance(entry, dict) and entry.get("post_id"):
            yield entry


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Tag lists (for `animeprov data tags`)


def fetch_tag_counts(client: BooruClient, *, pages: int = 5, page_size: int = 1000) -> list[dict]:
    """Up to pages * page_size tag records {"name", "count", "type"} from the booru's tag list."""
    entries: list[dict] = []
    for pid in range(pages):
        page = client.tag_list(pid, page_size)
        if not page:
            break
        entries += page
    return entries
