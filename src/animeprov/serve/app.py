"""The HTTP API and the browser page for one trained run: `create_app(run) -> FastAPI`.

Endpoints: POST /v1/predict (multipart upload of one image), GET /v1/model, GET /model-card,
GET /v1/fingerprints, GET /v1/fingerprints/{class}.png, GET /healthz, the page at / and FastAPI's OpenAPI
docs (/docs, /openapi.json).

Security model (docs/serve.md explains each rule):
- the request body is capped before it is read (413), the pixel count from the image header before decoding
  (413), and the format is sniffed from the bytes by `io.load_image`, never taken from the file name or the
  Content-Type (415 when it is not an image, 422 when it is corrupt, truncated or unusable);
- nothing from a request names a file on disk: the page's files and the fingerprints are read once at start-up
  and served from memory by fixed names; the upload's file name is only a display label;
- weights come only from safetensors (the Predictor loads them through `checkpoint`);
- CORS is off unless origins are listed; the CLI binds to 127.0.0.1 unless told otherwise;
- inference is CPU-bound, so it runs in worker threads, at most `max_concurrent` at a time, and at most
  `max_waiting` more requests queue for a slot (503 beyond that): memory stays bounded under load. Heatmaps
  (hundreds of forward passes each) have their own gate of one, so they never hold up plain predictions.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

import animeprov
from animeprov.config import DEFAULT_MAX_TILES
from animeprov.io import ImageError, LoadedImage, LoadRules, load_image, make_views, tile_grid
from animeprov.predict import Predictor, choose_view
from animeprov.web import protect

log = logging.getLogger("animeprov.serve")

FINGERPRINTS_DIR = "fingerprints"  # RUN/fingerprints/, written by `animeprov fingerprint DATA --out ...`
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads only its own script and style; pictures come back as data: URLs; nothing else is allowed.
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of the server; all but display_size are options of `animeprov serve`."""

    max_upload_bytes: int = 20 * 1024 * 1024  # whole request body, multipart overhead included
    max_pixels: int = 4096 * 4096  # width * height from the header, checked before decoding
    max_concurrent: int = 2  # predictions running at once (each in a worker thread)
    max_waiting: int = 16  # requests queued for a slot; beyond that: 503
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    # Host header values accepted (no port); () accepts any. The CLI sets the loopback names when it binds to
    # loopback, which stops DNS-rebinding pages from reaching a local server under their own host name.
    allowed_hosts: tuple[str, ...] = ()
    display_size: int = 768  # longest side of the heatmap overlay sent back (a picture for people only)
    max_heatmap_views: int = 16  # an occlusion heatmap is ~192 forward passes PER VIEW: tiles of huge images

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_concurrent", "display_size", "max_heatmap_views"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting}")
        if "*" in self.cors_origins:
            raise ValueError("CORS origin '*' is not allowed; list the origins that may call the API")

    def request_limit(self) -> int:
        """Requests in flight at once: every prediction slot and queue place (plain and heatmap), plus a few
        for pages and health checks. Beyond it: 503, so uploads being received (each up to
        max_upload_bytes) are bounded too."""
        return (self.max_concurrent + self.max_waiting) + (1 + self.max_waiting) + 8

    def connection_limit(self) -> int:
        """Open connections the HTTP server accepts (uvicorn's limit; its plain-text 503 beyond): room for
        idle keep-alive connections and clients still sending headers beside the requests in flight."""
        return 4 * self.request_limit()


# ----------------------------------------------------------------------------------------------
# Response schemas (for the OpenAPI docs and the contract tests; extra keys of the Predictor pass through)
# ----------------------------------------------------------------------------------------------


class SpectrumOut(BaseModel):
    image_png: str = Field(description="data:image/png URL: this image's luminance log|DCT| spectrum")
    shape: list[int] = Field(description="[height, width] of the centre crop the spectrum was computed on")
    compared_class: str = Field(description="the class whose fingerprint the page shows beside it")
    fingerprint_url: str | None = Field(description="the fingerprint picture of that class, or null if none")
    note: str | None = None


class PredictionOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: str
    probabilities: dict[str, float]
    p_generated: float
    verdict: Literal["artist", "ai", "unsure"] | None = Field(description="null when the run is uncalibrated")
    generator: str | None
    view: str
    n_views: int
    evidence: dict[str, Any] = Field(description="metadata evidence; never folded into the verdict")
    notes: list[str]
    error: str | None = None
    heatmap_png: str | None = Field(None, description="data:image/png URL of the overlay (?heatmap=true)")
    spectrum: SpectrumOut | None = Field(None, description="present with ?spectrum=true")


class FingerprintsOut(BaseModel):
    available: bool
    classes: list[str]
    shape: list[int] | None
    folder: str | None = Field(description="name of the folder they were read from on the server")
    message: str


class ErrorOut(BaseModel):
    detail: str


_ERRORS = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (413, "upload or image too large"),
        (415, "not an image in an accepted format (decided from the bytes)"),
        (422, "corrupt, truncated or unusable image, or a missing/invalid field"),
        (503, "too many requests waiting; retry later"),
    )
}


# ----------------------------------------------------------------------------------------------
# Bounded inference in worker threads
# ----------------------------------------------------------------------------------------------

T = TypeVar("T")


class InferenceGate:
    """At most `limit` calls run at once in worker threads; at most `max_waiting` more wait (else 503)."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.in_gate = 0  # running + waiting; only touched on the event loop thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # asyncio primitives belong to one loop (a test client may start another)
            self._loop, self._slots = loop, asyncio.Semaphore(self.limit)
        return self._slots

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        slots = self._semaphore()
        if self.in_gate >= self.limit + self.max_waiting:
            raise HTTPException(
                503, "server busy: too many predictions waiting; retry later", {"Retry-After": "1"}
            )
        self.in_gate += 1
        try:
            async with slots:
                # Not abandoned on cancel: the slot stays taken until the thread really finishes.
                return await run_in_threadpool(function, *args)
        finally:
            self.in_gate -= 1


# ----------------------------------------------------------------------------------------------
# Fingerprints, read once at start-up
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprints:
    pictures: dict[str, bytes]  # class -> PNG bytes
    shape: tuple[int, int] | None
    folder: Path | None
    message: str

    def describe(self) -> dict[str, Any]:
        return {
            "available": bool(self.pictures),
            "classes": sorted(self.pictures),
            "shape": list(self.shape) if self.shape else None,
            "folder": self.folder.name if self.folder else None,  # not the server's full path
            "message": self.message,
        }


# Messages go to clients, so they name folders by their last part only, never the server's paths (the
# full path and error go to the server's log).
HOW_TO_MAKE_FINGERPRINTS = (
    f"make them with `animeprov fingerprint DATA --out RUN/{FINGERPRINTS_DIR}` (DATA: labelled images of the "
    "run's classes), or point `animeprov serve --fingerprints DIR` at them"
)


def read_fingerprints(folder: Path | None, run: Path) -> Fingerprints:
    """Every class's fingerprint picture as PNG bytes; an absent or unreadable folder gives none, with why."""
    from animeprov.fingerprint import load_fingerprints, spectrum_image

    folder = folder if folder is not None else run / FINGERPRINTS_DIR
    if not folder.is_dir():
        return Fingerprints({}, None, None, f"no fingerprints: {HOW_TO_MAKE_FINGERPRINTS}")
    try:
        spectra = load_fingerprints(folder)
    except (OSError, ValueError) as error:
        log.warning("fingerprints in %s not usable: %s", folder, error)
        reason = (
            f"fingerprints in folder {folder.name!r} not usable ({type(error).__name__}, see the server log)"
        )
        return Fingerprints({}, None, folder, f"{reason}; {HOW_TO_MAKE_FINGERPRINTS}")
    if not spectra:
        return Fingerprints(
            {}, None, folder, f"folder {folder.name!r} holds no fingerprints; {HOW_TO_MAKE_FINGERPRINTS}"
        )
    pictures = {name: _png_bytes(spectrum_image(spectrum)) for name, spectrum in spectra.items()}
    first = next(iter(spectra.values()))
    message = f"{len(pictures)} class fingerprints from folder {folder.name!r}"
    return Fingerprints(pictures, tuple(first.shape[:2]), folder, message)


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png_bytes(image)).decode("ascii")


def heatmap_picture(pixels: np.ndarray, heat: np.ndarray, longest_side: int) -> Image.Image:
    """The heatmap over the image, shrunk for display first (overlaying a 16 MP image costs for nothing)."""
    from animeprov.heatmap import overlay_heatmap

    height, width = pixels.shape[:2]
    scale = min(1.0, longest_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        heat = np.asarray(
            Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
        )
    return overlay_heatmap(pixels, np.clip(heat, 0.0, 1.0))


def centre_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centred height x width window, or the whole image along a side that is shorter."""
    top = max(0, (pixels.shape[0] - height) // 2)
    left = max(0, (pixels.shape[1] - width) // 2)
    return pixels[top : top + height, left : left + width]


def display_name(filename: str | None) -> str:
    """The upload's name as a label only: no folders, no control characters, bounded length."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:_MAX_NAME_CHARS]
    return name or "upload"


def status_for(error: ImageError) -> int:
    """415 for bytes that are not an image we accept, 413 for too many pixels, 422 for the rest."""
    return {"not-image": 415, "too-large": 413}.get(error.kind, 422)


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def _read_static() -> dict[str, bytes]:
    folder = resources.files("animeprov.serve") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *STATIC_FILES)}


def create_app(
    run: str | Path,
    *,
    settings: ServeSettings = ServeSettings(),
    fingerprints: str | Path | None = None,
    device: str = "auto",
    predictor: Predictor | None = None,
    max_tiles: int | None = DEFAULT_MAX_TILES,
    backend: str = "auto",
    checks: Sequence[str] = (),
) -> FastAPI:
    """The FastAPI app serving `run`'s model. `predictor` (a loaded `animeprov.predict.Predictor`) skips
    loading the run again; `fingerprints` overrides RUN/fingerprints/; `max_tiles` caps the tiles judged
    per image, `backend` runs the model in PyTorch or onnxruntime and `checks` are the stability checks
    (`Predictor`)."""
    from animeprov.reference import card_text, resolve_run

    run = resolve_run(run)  # "reference": the bundled model, sha256-checked
    options = {"max_tiles": max_tiles, "backend": backend, "checks": tuple(checks)}
    if predictor is None:
        predictor = Predictor.from_checkpoint(run, device=device, **options)
    elif options != {"max_tiles": DEFAULT_MAX_TILES, "backend": "auto", "checks": ()}:
        raise ValueError(
            "max_tiles, backend and checks are the predictor's: give them to Predictor.from_checkpoint"
        )
    card = card_text(run)  # a bundled model's card, served at /model-card (read once, like the page)
    rules = LoadRules(max_pixels=settings.max_pixels, alpha_background=predictor.load_rules.alpha_background)
    prints = read_fingerprints(Path(fingerprints) if fingerprints is not None else None, run)
    static = _read_static()
    gate = InferenceGate(settings.max_concurrent, settings.max_waiting)
    # A heatmap costs hundreds of forward passes (occlusion) and a batch of views in memory: one at a time, so
    # heatmaps never take the slots that plain predictions need.
    heatmap_gate = InferenceGate(1, settings.max_waiting)
    # The run's name only: clients need not learn the server's directory layout.
    model_info = {
        **predictor.info(),
        "run": run.name,
        "card_url": "/model-card" if card is not None else None,
        "limits": _limits(settings),
    }

    app = FastAPI(
        title="animeprov",
        version=animeprov.__version__,
        summary="Was this anime image drawn by a person or generated, and by which generator?",
    )
    app.state.run = run
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    protect(
        app,
        max_body_bytes=settings.max_upload_bytes,
        what="upload",
        allowed_hosts=settings.allowed_hosts,
        max_requests=settings.request_limit(),
        hint="; send one image as the multipart form field 'file'",
    )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(error).__name__})"}, status_code=500)

    def predict_upload(data: bytes, name: str, view: str, heatmap: bool, spectrum: bool) -> dict[str, Any]:
        """In a worker thread: decode once (under the server's limits), predict, add the pictures asked."""
        try:
            loaded = load_image(data, rules, name=name)
            if heatmap:
                check_heatmap_cost(loaded, view)
            prediction = predictor.predict(loaded, view=view, heatmap=heatmap, raw=data)
        except ImageError as error:
            # io's advice names the CLI option; over HTTP it is the query parameter.
            reason = error.reason.replace("--view ", "view=")
            raise HTTPException(status_for(error), f"{name}: {reason}") from None
        body = prediction.to_dict()
        if heatmap and prediction.heatmap is not None:
            pixels = loaded.pixels
            if prediction.heatmap.shape != pixels.shape[:2]:  # pad/resize: the map covers the view
                pixels = make_views(pixels, predictor.size, prediction.view, path=name)[0]
            picture = heatmap_picture(pixels, prediction.heatmap, settings.display_size)
            body["heatmap_png"] = png_data_url(picture)
        if spectrum:
            body["spectrum"] = _spectrum(loaded, body["probabilities"])
        return body

    def check_heatmap_cost(loaded: LoadedImage, view: str) -> None:
        chosen = choose_view(loaded.height, loaded.width, predictor.size, view)
        n_views = (
            len(tile_grid(loaded.height, loaded.width, predictor.size, predictor.max_tiles))
            if chosen == "tiles"
            else 1
        )
        if n_views > settings.max_heatmap_views:
            raise HTTPException(
                422,
                f"{loaded.path}: a heatmap of {n_views} tiles is refused (at most "
                f"{settings.max_heatmap_views}, each costs hundreds of model passes); ask for view=crop",
            )

    def _spectrum(loaded: LoadedImage, probabilities: dict[str, float]) -> dict[str, Any]:
        from animeprov.fingerprint import luminance_log_dct, spectrum_image

        compared = max(probabilities, key=probabilities.get)
        height, width = prints.shape or (predictor.size, predictor.size)
        crop = centre_crop(loaded.pixels, height, width)
        note = None
        if crop.shape[:2] != (height, width):
            note = f"image smaller than the {width}x{height} fingerprints: spectrum of the whole image"
        return {
            "image_png": png_data_url(spectrum_image(luminance_log_dct(np.ascontiguousarray(crop)))),
            "shape": list(crop.shape[:2]),
            "compared_class": compared,
            "fingerprint_url": f"/v1/fingerprints/{quote(compared, safe='')}.png"
            if compared in prints.pictures
            else None,
            "note": note,
        }

    @app.post("/v1/predict", response_model=PredictionOut, responses=_ERRORS, tags=["model"])
    async def predict(
        request: Request,
        file: UploadFile = File(..., description="one image (PNG, JPEG, WebP, BMP, TIFF, GIF); sniffed"),
        view: Literal["auto", "crop", "tiles", "pad", "resize"] = Query(
            "auto", description="auto: one crop, or tiles when larger; pad/resize for smaller images"
        ),
        heatmap: bool = Query(False, description="add the class heatmap overlay as a PNG data URL"),
        spectrum: bool = Query(False, description="add the image's DCT spectrum and its class fingerprint"),
    ) -> dict[str, Any]:
        """Verdict, per-class probabilities and metadata evidence for one uploaded image."""
        parts = len((await request.form()).getlist("file"))  # the form FastAPI has already parsed
        if parts > 1:  # judging only one of them (FastAPI keeps the last) would be a silent choice
            raise HTTPException(422, f"{parts} 'file' parts received; send one image per request")
        data = await file.read()
        chosen = heatmap_gate if heatmap else gate
        return await chosen.run(predict_upload, data, display_name(file.filename), view, heatmap, spectrum)

    @app.get("/v1/model", tags=["model"])
    async def model() -> dict[str, Any]:
        """Classes, variant, version, thresholds and the server's upload limits."""
        return model_info

    @app.get(
        "/model-card",
        tags=["model"],
        responses={200: {"content": {"text/markdown": {}}}, 404: {"model": ErrorOut}},
        response_class=Response,
    )
    async def model_card() -> Response:
        """The model's card (Markdown): data, classes, figures, intended use and misuse, failure modes."""
        if card is None:
            raise HTTPException(404, f"run {run.name!r} has no model card (only bundled models ship one)")
        return Response(card, media_type="text/markdown; charset=utf-8")

    @app.get("/v1/fingerprints", response_model=FingerprintsOut, tags=["fingerprints"])
    async def fingerprint_list() -> dict[str, Any]:
        """Which class fingerprints (mean luminance DCT spectra) the server has, or how to make them."""
        return prints.describe()

    @app.get(
        "/v1/fingerprints/{class_name}.png",
        tags=["fingerprints"],
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}},
        response_class=Response,
    )
    async def fingerprint_picture(class_name: str) -> Response:
        """A class's fingerprint picture. The name is looked up in memory, never used as a path."""
        picture = prints.pictures.get(class_name)
        if picture is None:
            raise HTTPException(404, f"no fingerprint for class {class_name!r}: {prints.message}")
        return Response(picture, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "busy": gate.in_gate,
            "busy_heatmaps": heatmap_gate.in_gate,
            "max_concurrent": settings.max_concurrent,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> Response:
        return Response(
            static["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_SECURITY_HEADERS
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed list: the name never reaches the file system
            raise HTTPException(404, "not found")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_SECURITY_HEADERS)

    return app


def _limits(settings: ServeSettings) -> dict[str, Any]:
    return {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_pixels": settings.max_pixels,
        "max_concurrent": settings.max_concurrent,
        "max_waiting": settings.max_waiting,
        "max_heatmap_views": settings.max_heatmap_views,
    }
