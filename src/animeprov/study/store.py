"""Participants and answers in SQLite: every answer is committed before the server replies.

The database runs in WAL mode with synchronous=FULL, so an answer the participant saw accepted survives
a killed server (and a power cut). Each call opens its own short-lived connection, so the store is safe
to use from the server's worker threads; SQLite serialises the writes (busy timeout 30 s).

What is stored (nothing else, in particular no name, IP address or user agent):
- participants: a random id, when they started, their optional familiarity answer, whether they are a
  simulated participant, and their own stimulus order;
- answers: participant, stimulus id, answer (artist | ai | unsure), optional confidence (1-3), response
  time in ms as the browser measured it, position in the participant's order, and when it arrived.

A second answer for the same participant and image does not change the first: `add_answer` returns the
stored one with `created=False` (the HTTP API answers 200 with `"duplicate": true`).
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animeprov.study.create import ANSWERS, FAMILIARITY

DB_FILE = "answers.sqlite"
CONFIDENCE_LEVELS = (1, 2, 3)  # low, medium, high
MAX_RESPONSE_MS = 24 * 3600 * 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    familiarity TEXT CHECK (familiarity IS NULL OR familiarity IN ('none', 'some', 'expert')),
    simulated INTEGER NOT NULL DEFAULT 0,
    stimulus_order TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    participant_id TEXT NOT NULL REFERENCES participants(id),
    stimulus_id TEXT NOT NULL,
    answer TEXT NOT NULL CHECK (answer IN ('artist', 'ai', 'unsure')),
    confidence INTEGER CHECK (confidence IS NULL OR confidence IN (1, 2, 3)),
    response_ms INTEGER,
    position INTEGER NOT NULL,
    answered_at REAL NOT NULL,
    PRIMARY KEY (participant_id, stimulus_id)
);
"""


class UnknownParticipantError(KeyError):
    pass


class UnknownStimulusError(KeyError):
    pass


@dataclass(frozen=True)
class Participant:
    id: str
    created: float
    familiarity: str | None
    simulated: bool
    order: list[str]


class AnswerStore:
    """The answers database of one study; `stimulus_ids` are the only images answers may name."""

    def __init__(self, path: str | Path, stimulus_ids: Sequence[str], *, seed: int = 0) -> None:
        self.path = Path(path)
        self.stimulus_ids = sorted(stimulus_ids)
        self._known = frozenset(self.stimulus_ids)
        self.seed = seed
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    # --- participants ------------------------------------------------------------------------------

    def new_participant(self, *, familiarity: str | None = None, simulated: bool = False) -> Participant:
        """A participant with a random id and their own order: the stimuli shuffled by (seed, id)."""
        if familiarity is not None and familiarity not in FAMILIARITY:
            raise ValueError(f"familiarity must be one of {', '.join(FAMILIARITY)} or empty")
        participant_id = secrets.token_hex(8)
        order = list(self.stimulus_ids)
        random.Random(f"{self.seed}/{participant_id}").shuffle(order)
        created = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO participants (id, created, familiarity, simulated, stimulus_order) "
                "VALUES (?, ?, ?, ?, ?)",
                (participant_id, created, familiarity, int(simulated), json.dumps(order)),
            )
        return Participant(participant_id, created, familiarity, simulated, order)

    def participant(self, participant_id: str) -> Participant:
        with self._connect() as db:
            row = db.execute("SELECT * FROM participants WHERE id = ?", (participant_id,)).fetchone()
        if row is None:
            raise UnknownParticipantError(participant_id)
        return _participant(row)

    def participants(self) -> list[Participant]:
        with self._connect() as db:
            return [
                _participant(row) for row in db.execute("SELECT * FROM participants ORDER BY created, id")
            ]

    def state(self, participant_id: str) -> dict[str, Any]:
        """Where a participant stands: answered count and the next stimulus in their order (None: done)."""
        participant = self.participant(participant_id)
        with self._connect() as db:
            answered = {
                row[0]
                for row in db.execute(
                    "SELECT stimulus_id FROM answers WHERE participant_id = ?", (participant_id,)
                )
            }
        remaining = [(position, sid) for position, sid in enumerate(participant.order) if sid not in answered]
        next_item = {"position": remaining[0][0], "stimulus_id": remaining[0][1]} if remaining else None
        return {
            "participant_id": participant_id,
            "n_total": len(participant.order),
            "n_answered": len(answered),
            "next": next_item,
            "done": not remaining,
        }

    # --- answers -----------------------------------------------------------------------------------

    def add_answer(
        self,
        participant_id: str,
        stimulus_id: str,
        answer: str,
        *,
        confidence: int | None = None,
        response_ms: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store an answer; return (the stored answer, whether this call created it).

        Raises UnknownParticipantError / UnknownStimulusError, or ValueError for an invalid answer,
        confidence or response time. A repeated (participant, stimulus) keeps the first answer.
        """
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}")
        if confidence is not None and confidence not in CONFIDENCE_LEVELS:
            raise ValueError("confidence must be 1, 2 or 3")
        if response_ms is not None and not 0 <= response_ms <= MAX_RESPONSE_MS:
            raise ValueError(f"response_ms must be within 0..{MAX_RESPONSE_MS}")
        if stimulus_id not in self._known:
            raise UnknownStimulusError(stimulus_id)
        participant = self.participant(participant_id)
        position = participant.order.index(stimulus_id)
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO answers (participant_id, stimulus_id, answer, confidence, response_ms, "
                "position, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (participant_id, stimulus_id) DO NOTHING",
                (participant_id, stimulus_id, answer, confidence, response_ms, position, time.time()),
            )
            created = cursor.rowcount == 1
            row = db.execute(
                "SELECT * FROM answers WHERE participant_id = ? AND stimulus_id = ?",
                (participant_id, stimulus_id),
            ).fetchone()
        return dict(row), created

    def answers(self) -> list[dict[str, Any]]:
        """Every stored answer joined with its participant's familiarity and simulated flag."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT a.*, p.familiarity, p.simulated FROM answers a JOIN participants p "
                "ON p.id = a.participant_id ORDER BY p.created, a.participant_id, a.position"
            ).fetchall()
        return [{**dict(row), "simulated": bool(row["simulated"])} for row in rows]

    def progress(self) -> dict[str, Any]:
        """Counts for the admin page."""
        with self._connect() as db:
            counts = dict(
                db.execute("SELECT participant_id, COUNT(*) FROM answers GROUP BY participant_id").fetchall()
            )
            last = dict(
                db.execute(
                    "SELECT participant_id, MAX(answered_at) FROM answers GROUP BY participant_id"
                ).fetchall()
            )
        people = []
        for participant in self.participants():
            answered = counts.get(participant.id, 0)
            people.append(
                {
                    "participant_id": participant.id,
                    "simulated": participant.simulated,
                    "familiarity": participant.familiarity,
                    "started": participant.created,
                    "last_answer": last.get(participant.id),
                    "n_answered": answered,
                    "done": answered == len(participant.order),
                }
            )
        return {
            "n_stimuli": len(self.stimulus_ids),
            "n_participants": len(people),
            "n_done": sum(p["done"] for p in people),
            "n_simulated": sum(p["simulated"] for p in people),
            "n_answers": sum(counts.values()),
            "participants": people,
        }


def _participant(row: sqlite3.Row) -> Participant:
    return Participant(
        id=row["id"],
        created=row["created"],
        familiarity=row["familiarity"],
        simulated=bool(row["simulated"]),
        order=json.loads(row["stimulus_order"]),
    )


def open_store(study_dir: str | Path, study: dict[str, Any]) -> AnswerStore:
    return AnswerStore(
        Path(study_dir) / DB_FILE, [s["id"] for s in study["stimuli"]], seed=int(study["seed"])
    )
