"""The study's web app: FastAPI serving plain HTML/JS from the package (no CDN) and a small JSON API.

Routes (JSON unless said otherwise):
- GET  /                            the participant page (consent, instructions, one image per screen)
- GET  /admin                       the admin page (asks for the token; data comes from /api/admin/progress)
- GET  /static/{name}               only the shipped files listed in STATIC_FILES
- GET  /api/study                   title, number of images, answer labels, the localStorage key
- POST /api/participants            {"consent": true, "familiarity": "none"|"some"|"expert"|null,
                                     "simulated": bool} -> 201 {"participant_id", ...state}
- GET  /api/participants/{pid}      state: n_answered, n_total, next {"stimulus_id", "position"}, done
- GET  /api/stimuli/{sid}           the PNG; `sid` is looked up in the study's ids, never used as a path
- POST /api/answers                 {"participant_id", "stimulus_id", "answer", "confidence", "response_ms"}
                                     201 stored; 200 with "duplicate": true and the FIRST answer when the
                                     participant already answered that image; 404 unknown participant or
                                     image; 422 invalid values
- GET  /api/admin/progress          header X-Admin-Token; 401 without the right token

Nothing that identifies a person is stored or logged by the app (no IP address, no user agent).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from hashlib import sha256
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from animeprov.study.create import ANSWERS, FAMILIARITY, STIMULI_DIR, load_study
from animeprov.study.store import (
    CONFIDENCE_LEVELS,
    MAX_RESPONSE_MS,
    UnknownParticipantError,
    UnknownStimulusError,
    open_store,
)
from animeprov.web import protect

STATIC_FILES = {
    "study.js": "text/javascript",
    "study.css": "text/css",
    "admin.js": "text/javascript",
}
_NO_STORE = {"Cache-Control": "no-store"}
# Every request body is a small JSON object; without a cap a single POST could fill the server's memory.
MAX_BODY_BYTES = 16 * 1024


class NewParticipant(BaseModel):
    consent: bool
    familiarity: Literal["none", "some", "expert"] | None = None
    simulated: bool = False


class AnswerIn(BaseModel):
    participant_id: str = Field(max_length=64)
    stimulus_id: str = Field(max_length=64)
    answer: Literal["artist", "ai", "unsure"]
    confidence: int | None = Field(default=None, ge=min(CONFIDENCE_LEVELS), le=max(CONFIDENCE_LEVELS))
    response_ms: int | None = Field(default=None, ge=0, le=MAX_RESPONSE_MS)


def _static_text(name: str) -> str:
    return resources.files("animeprov.study").joinpath("static", name).read_text(encoding="utf-8")


def create_app(
    study_dir: str | Path, *, admin_token: str, allowed_hosts: Sequence[str] | None = None
) -> FastAPI:
    """The app for one study folder. `admin_token` guards the admin API (compared in constant time).
    `allowed_hosts` (e.g. web.LOOPBACK_HOSTS) refuses requests whose Host header names another host."""
    if not admin_token:
        raise ValueError("an admin token is required")
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    store = open_store(study_dir, study)
    # The only files the app serves as images: id -> path, built from study.json at start-up.
    stimulus_files = {s["id"]: study_dir / STIMULI_DIR / f"{s['id']}.png" for s in study["stimuli"]}
    # A per-study key for the browser's localStorage, so two studies on one host do not share ids.
    storage_key = "animeprov-study-" + sha256(study["study_id"].encode()).hexdigest()[:12]

    app = FastAPI(title="animeprov study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.study = study
    protect(app, max_body_bytes=MAX_BODY_BYTES, allowed_hosts=allowed_hosts)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"), headers=_NO_STORE)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page() -> HTMLResponse:
        return HTMLResponse(_static_text("admin.html"), headers=_NO_STORE)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        return Response(_static_text(name), media_type=STATIC_FILES[name], headers=_NO_STORE)

    @app.get("/api/study")
    def study_info() -> dict:
        return {
            "title": study["title"],
            "n_stimuli": len(study["stimuli"]),
            "answers": list(ANSWERS),
            "familiarity": list(FAMILIARITY),
            "storage_key": storage_key,
        }

    @app.post("/api/participants", status_code=201)
    def new_participant(body: NewParticipant) -> dict:
        if not body.consent:
            raise HTTPException(400, "consent is required to take part")
        participant = store.new_participant(familiarity=body.familiarity, simulated=body.simulated)
        return store.state(participant.id)

    @app.get("/api/participants/{participant_id}")
    def participant_state(participant_id: str) -> JSONResponse:
        try:
            return JSONResponse(store.state(participant_id), headers=_NO_STORE)
        except UnknownParticipantError:
            raise HTTPException(404, "unknown participant") from None

    @app.get("/api/stimuli/{stimulus_id}")
    def stimulus(stimulus_id: str) -> Response:
        file = stimulus_files.get(stimulus_id)
        if file is None:
            raise HTTPException(404, "unknown image")
        # Bytes only, no Last-Modified/ETag from the file's mtime: `study create` writes the stimuli class by
        # class, so their times would tell a participant which images share a class.
        return Response(
            file.read_bytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.post("/api/answers")
    def answer(body: AnswerIn) -> JSONResponse:
        try:
            stored, created = store.add_answer(
                body.participant_id,
                body.stimulus_id,
                body.answer,
                confidence=body.confidence,
                response_ms=body.response_ms,
            )
        except UnknownParticipantError:
            raise HTTPException(404, "unknown participant") from None
        except UnknownStimulusError:
            raise HTTPException(404, "unknown image") from None
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        state = store.state(body.participant_id)
        return JSONResponse(
            {"stored": stored, "duplicate": not created, "state": state}, status_code=201 if created else 200
        )

    @app.get("/api/admin/progress")
    def progress(x_admin_token: str = Header(default="")) -> JSONResponse:
        if not secrets.compare_digest(x_admin_token.encode(), admin_token.encode()):
            raise HTTPException(401, "wrong or missing admin token")
        return JSONResponse({"title": study["title"], **store.progress()}, headers=_NO_STORE)

    return app
