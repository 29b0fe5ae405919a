"""Two-round manual curation of a generated (or collected) image set: the paper's "manual" test set.

Reviewer 1 (round 1) sees every image of the set; reviewer r sees what reviewer r-1 accepted. Each
image is accepted or rejected with one reason (REJECT_REASONS: abnormal anatomy, blur, signature or
watermark, off-model character, other), all from the keyboard. Every decision is written to SQLite (WAL
journal, synchronous=FULL) before the page moves on, so a restart loses nothing.

The curation set is a folder holding a manifest.csv (from `data generate` / `data collect`) or, without
one, the images under it. Items get ids when first seen; the page asks for images by id only, and the
file served is the one the manifest named (checked to lie inside the folder): nothing in a request
names a file path.

`export_curation` writes the curated manifest (the images accepted in every round, with the standard
manifest columns, the set's extra columns and each round's decision), a CSV of every decision, and the
acceptance rate of each round (the paper reports about 80%).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from animeprov.config import IMAGE_EXTENSIONS
from animeprov.data.manifest import MANIFEST_COLUMNS, read_columns, read_rows, relative_path, write_rows
from animeprov.io import ImageError, iter_image_files, load_image
from animeprov.web import protect

MANIFEST_NAME = "manifest.csv"
DEFAULT_DB_NAME = ".curation.sqlite3"
# Every request body is one small JSON decision; without a cap a single POST could fill the server's memory.
MAX_BODY_BYTES = 16 * 1024
SQLITE_INT_MAX = 2**63 - 1  # a larger id in a request would make sqlite3 raise OverflowError (a 500)
STATIC_DIR = Path(__file__).parent / "static"
ACCEPT = "accept"
REJECT = "reject"
# Rejection reasons: id -> (label, key). The keys are what the page binds; accept is "a" or Enter.
REJECT_REASONS: dict[str, tuple[str, str]] = {
    "anatomy": ("abnormal anatomy", "1"),
    "blur": ("blurry", "2"),
    "watermark": ("signature or watermark", "3"),
    "off-model": ("off-model character", "4"),
    "other": ("other defect", "5"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    item_id INTEGER NOT NULL REFERENCES items(id),
    round INTEGER NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject')),
    reason TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    PRIMARY KEY (item_id, round)
);
"""


class CurationError(ValueError):
    """A request the curation rules do not allow (unknown item, wrong round, bad reason)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Item:
    id: int
    path: str  # relative to the curation folder, as the manifest names it
    row: dict[str, str]


def load_curation_rows(folder: Path) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, columns) of the set: its manifest.csv, or every image under the folder. A file that does not
    decode (corrupt, truncated, not an image) is left out with a warning naming it and the reason: a
    reviewer could not judge it, and accepted it would reach a training set.

    A manifest row whose file lies outside the folder or does not exist is refused (ValueError).
    """
    folder = folder.resolve()
    manifest = folder / MANIFEST_NAME
    if manifest.is_file():
        columns = read_columns(manifest)
        rows = list(read_rows(manifest))
        for row in rows:
            target = (folder / row["path"]).resolve()
            if not target.is_relative_to(folder):
                raise ValueError(f"{manifest}: {row['path']!r} lies outside {folder}")
            if not target.is_file():
                raise ValueError(f"{manifest}: {row['path']!r} is not a file")
        return _decodable(folder, rows), columns
    rows = []
    for file in iter_image_files([folder]):
        if not file.is_file():  # a dangling or looping symlink, a FIFO: nothing a reviewer could look at
            warnings.warn(f"{file}: not a readable regular file; left out of the curation set", stacklevel=2)
            continue
        path = relative_path(file, folder)
        parts = path.split("/")
        rows.append({"path": path, "class": parts[0] if len(parts) > 1 else ""})
    return _decodable(folder, rows), list(MANIFEST_COLUMNS)


def _decodable(folder: Path, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    kept = []
    for row in rows:
        try:
            load_image(folder / row["path"])
        except ImageError as error:
            warnings.warn(f"{error.path}: {error.reason}; left out of the curation set", stacklevel=3)
            continue
        kept.append(row)
    return kept


class CurationStore:
    """Items and decisions in one SQLite file; safe to share between the server's threads."""

    def __init__(self, db_path: str | Path, rounds: int) -> None:
        if rounds < 1:
            raise ValueError(f"rounds (reviewers) must be at least 1, got {rounds}")
        self.rounds = rounds
        # Re-entrant: `decide` holds it across its checks and its write, and the checks query through it.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a decision is on disk before the page moves on
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_items(self, rows: Sequence[dict[str, str]], columns: Sequence[str]) -> None:
        """Register the set's images (new paths get the next ids; known ones keep theirs)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('columns', ?)", (json.dumps(list(columns)),)
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO items (path, row) VALUES (?, ?)",
                [(row["path"], json.dumps(row)) for row in rows],
            )

    def columns(self) -> list[str]:
        found = self._query("SELECT value FROM meta WHERE key = 'columns'")
        return json.loads(found[0][0]) if found else list(MANIFEST_COLUMNS)

    def item(self, item_id: int) -> Item:
        found = self._query("SELECT id, path, row FROM items WHERE id = ?", (item_id,))
        if not found:
            raise CurationError(f"no item {item_id}", status=404)
        return Item(found[0][0], found[0][1], json.loads(found[0][2]))

    def _check_round(self, round_: int) -> None:
        if not 1 <= round_ <= self.rounds:
            raise CurationError(f"round must be 1..{self.rounds}, got {round_}")

    def _eligible_sql(self, round_: int) -> tuple[str, tuple]:
        """SQL condition on items.id: the item is shown in this round."""
        if round_ == 1:
            return "1", ()
        return (
            "EXISTS (SELECT 1 FROM decisions d "
            "WHERE d.item_id = items.id AND d.round = ? AND d.decision = ?)",
            (round_ - 1, ACCEPT),
        )

    def next_item(self, round_: int, after: int | None = None) -> Item | None:
        """The first item of this round without a decision (after id `after`, else from the start)."""
        self._check_round(round_)
        condition, params = self._eligible_sql(round_)
        sql = (
            f"SELECT id FROM items WHERE {condition} AND NOT EXISTS "
            "(SELECT 1 FROM decisions d WHERE d.item_id = items.id AND d.round = ?) "
            "AND id > ? ORDER BY id LIMIT 1"
        )
        found = self._query(sql, (*params, round_, after or 0))
        if not found and after:
            found = self._query(sql, (*params, round_, 0))  # wrap around to anything skipped
        return self.item(found[0][0]) if found else None

    def decision(self, item_id: int, round_: int) -> dict | None:
        found = self._query(
            "SELECT decision, reason, decided_at FROM decisions WHERE item_id = ? AND round = ?",
            (item_id, round_),
        )
        return dict(zip(("decision", "reason", "decided_at"), found[0], strict=True)) if found else None

    def decide(self, item_id: int, round_: int, decision: str, reason: str = "") -> None:
        """Record (or change) a decision. Rejecting an item withdraws it from the later rounds."""
        self._check_round(round_)
        if decision == ACCEPT:
            reason = ""
        elif decision == REJECT:
            if reason not in REJECT_REASONS:
                raise CurationError(f"unknown reason {reason!r}; choose from {', '.join(REJECT_REASONS)}")
        else:
            raise CurationError(f"decision must be {ACCEPT!r} or {REJECT!r}, got {decision!r}")
        # One lock over the checks and the write: otherwise a round-1 reject landing between the check of
        # round 1 and the insert of round 2 would leave a round-2 decision on a rejected image.
        with self._lock:
            self.item(item_id)  # 404 for an unknown id
            if round_ > 1:
                earlier = self.decision(item_id, round_ - 1)
                if earlier is None or earlier["decision"] != ACCEPT:
                    raise CurationError(f"item {item_id} was not accepted in round {round_ - 1}", status=409)
            self._write_decision(item_id, round_, decision, reason)

    def _write_decision(self, item_id: int, round_: int, decision: str, reason: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)",
                (item_id, round_, decision, reason, now),
            )
            if decision == REJECT:
                self._db.execute("DELETE FROM decisions WHERE item_id = ? AND round > ?", (item_id, round_))

    def counts(self, round_: int) -> dict[str, int]:
        """Images shown in this round, decided, accepted (and, for convenience, left)."""
        self._check_round(round_)
        condition, params = self._eligible_sql(round_)
        eligible = self._query(f"SELECT COUNT(*) FROM items WHERE {condition}", params)[0][0]
        decided, accepted = self._query(
            "SELECT COUNT(*), COALESCE(SUM(decision = 'accept'), 0) FROM decisions WHERE round = ?", (round_,)
        )[0]
        return {"eligible": eligible, "decided": decided, "accepted": accepted, "left": eligible - decided}

    def all_items(self) -> list[Item]:
        return [
            Item(i, p, json.loads(r))
            for i, p, r in self._query("SELECT id, path, row FROM items ORDER BY id")
        ]

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()


def open_store(folder: str | Path, rounds: int, db_path: str | Path | None = None) -> CurationStore:
    """The store of a curation folder, with the folder's images registered."""
    folder = Path(folder)
    rows, columns = load_curation_rows(folder)
    if not rows:
        raise ValueError(f"{folder}: no images to curate")
    store = CurationStore(db_path or folder / DEFAULT_DB_NAME, rounds)
    store.add_items(rows, columns)
    return store


# ---------------------------------------------------------------------------------------------------------
# Export


@dataclass(frozen=True)
class RoundSummary:
    round: int
    eligible: int
    decided: int
    accepted: int

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.decided if self.decided else None


def export_curation(store: CurationStore, folder: str | Path, out_csv: str | Path) -> list[RoundSummary]:
    """Write the curated manifest (accepted in every round), OUT.decisions.csv and OUT.summary.json."""
    out_csv = Path(out_csv)
    decision_columns = [
        f"round{r}_{what}" for r in range(1, store.rounds + 1) for what in ("decision", "reason")
    ]
    base_columns = list(dict.fromkeys([*MANIFEST_COLUMNS, *store.columns()]))
    all_rows, kept_rows = [], []
    for item in store.all_items():
        row = {column: item.row.get(column, "") for column in base_columns}
        final = True
        for r in range(1, store.rounds + 1):
            decided = store.decision(item.id, r)
            row[f"round{r}_decision"] = decided["decision"] if decided else ""
            row[f"round{r}_reason"] = decided["reason"] if decided else ""
            final = final and bool(decided) and decided["decision"] == ACCEPT
        all_rows.append(row)
        if final:
            kept_rows.append(row)
    source = Path(folder) / MANIFEST_NAME  # paths are relative to the folder: rebase them to OUT's folder
    fieldnames = base_columns + decision_columns
    write_rows(out_csv, kept_rows, fieldnames, source_csv=source)
    write_rows(out_csv.with_suffix(".decisions.csv"), all_rows, fieldnames, source_csv=source)
    summaries = [
        RoundSummary(r, **{k: v for k, v in store.counts(r).items() if k != "left"})
        for r in range(1, store.rounds + 1)
    ]
    summary = {
        "curated_images": len(kept_rows),
        "images": len(all_rows),
        "rounds": [{**vars(s), "acceptance_rate": s.acceptance_rate} for s in summaries],
    }
    out_csv.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summaries


# ---------------------------------------------------------------------------------------------------------
# Web app


class DecisionIn(BaseModel):
    """The body of POST /api/decisions (module level: FastAPI resolves the annotation by name)."""

    item_id: int = Field(ge=1, le=SQLITE_INT_MAX)
    round: int
    decision: str
    reason: str = ""


def create_app(
    folder: str | Path,
    rounds: int = 2,
    db_path: str | Path | None = None,
    allowed_hosts: Sequence[str] | None = None,
):
    """The curation page and its JSON API (FastAPI).

    `allowed_hosts` (e.g. web.LOOPBACK_HOSTS) refuses requests whose Host header names another host: a web
    page the reviewer visits cannot then reach this server through a DNS-rebound name.
    """
    from fastapi import FastAPI, HTTPException, Query
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, HTMLResponse
    from fastapi.staticfiles import StaticFiles

    root = Path(folder).resolve()
    store = open_store(root, rounds, db_path)
    app = FastAPI(title="animeprov curation", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    protect(app, max_body_bytes=MAX_BODY_BYTES, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    no_store = {"Cache-Control": "no-store"}

    def checked(call):
        try:
            return call()
        except CurationError as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None

    def item_json(item: Item | None, round_: int) -> dict | None:
        if item is None:
            return None
        return {
            "id": item.id,
            "name": item.path,
            "class": item.row.get("class", ""),
            "decision": store.decision(item.id, round_),
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"), headers=no_store)

    @app.get("/api/config")
    def config() -> dict:
        return {
            "rounds": store.rounds,
            "reasons": [{"id": k, "label": label, "key": key} for k, (label, key) in REJECT_REASONS.items()],
        }

    @app.get("/api/next")
    def next_item(  # noqa: A002 (round: the API's word)
        round: int, after: int | None = Query(None, ge=0, le=SQLITE_INT_MAX)
    ) -> dict:
        item = checked(lambda: store.next_item(round, after))
        return {"item": item_json(item, round), "counts": checked(lambda: store.counts(round))}

    @app.get("/api/items/{item_id}")
    def get_item(  # noqa: A002
        item_id: int = PathParam(ge=1, le=SQLITE_INT_MAX), round: int = Query()
    ) -> dict:
        counts = checked(lambda: store.counts(round))  # first: it refuses a round out of range (400)
        item = checked(lambda: store.item(item_id))
        return {"item": item_json(item, round), "counts": counts}

    @app.get("/api/items/{item_id}/image")
    def image(item_id: int = PathParam(ge=1, le=SQLITE_INT_MAX)) -> FileResponse:
        item = checked(lambda: store.item(item_id))
        target = (root / item.path).resolve()
        if not target.is_relative_to(root) or not target.is_file():  # the manifest changed since it was read
            raise HTTPException(status_code=404, detail=f"image of item {item_id} is missing")
        if target.suffix.lower() not in IMAGE_EXTENSIONS:  # an .html named by a manifest would run as script
            raise HTTPException(status_code=415, detail=f"item {item_id} is not an image file")
        # nosniff: the browser must not reinterpret the bytes as anything but the declared image type.
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return FileResponse(target, headers=headers)

    @app.post("/api/decisions")
    def decide(body: DecisionIn) -> dict:
        checked(lambda: store.decide(body.item_id, body.round, body.decision, body.reason))
        return {"counts": store.counts(body.round)}

    return app
