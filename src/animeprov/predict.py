"""Prediction for users: `Predictor.from_checkpoint(run).predict(image)` and a streaming `predict_many`.

One image goes through: load (`animeprov.io`, the one place for bad-input rules) -> metadata evidence (kept
apart, never folded into the verdict) -> views (one centre crop, or the tiles of the centred grid for
images larger than the model input, at most `max_tiles` of them spread over it; never a silent resize)
-> model -> the views are pooled (`engine.pool_views`: P(generated) from the mean of the views' detection
logits, the generators' shares from their mean log-probabilities) -> temperature and verdict from the
run's calibration.json.

`predict_many` streams: items are taken lazily, decoded (optionally in DataLoader worker processes, which
overlaps decoding with the model), their views batched across images, and each result is yielded, in input
order, as soon as its last view has been through the model. Memory stays flat however many items there are.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.special import log_softmax

import animeprov
from animeprov.config import DEFAULT_HUMAN_CLASS, DEFAULT_MAX_TILES
from animeprov.engine import PRECISIONS, autocast, pool_views, prepare_model, select_device
from animeprov.evaluation.calibration import (
    Calibration,
    StaleCalibrationError,
    load_calibration,
    verdicts,
)
from animeprov.evaluation.familiarity import Familiarity, load_familiarity
from animeprov.evidence import evidence_summary, read_evidence
from animeprov.io import (
    VIEW_MODES,
    ImageError,
    LoadedImage,
    LoadRules,
    load_image,
    make_views,
    read_file,
    sha256_file,
    tile_grid,
)
from animeprov.models.efficientnet import fold_batchnorm

PREDICT_VIEWS = ("auto", *VIEW_MODES)
# Where the model's forward pass runs: PyTorch, or onnxruntime (CPU, float32: the same answers, about twice
# as fast a model pass on the 2-core CPU measured); "auto" picks onnxruntime when it can run the predictor.
BACKENDS = ("auto", "torch", "onnx")
# Threshold names accepted by `thresholds=`, as Calibration.with_thresholds calls them.
THRESHOLD_NAMES = ("ai", "artist", "unknown")

Item = str | os.PathLike | bytes | Image.Image | LoadedImage | tuple[str, bytes]


@dataclass
class ImagePrediction:
    source: str  # file path, or the upload's name
    probabilities: dict[str, float]  # per class, temperature-calibrated when the run has calibration.json
    p_generated: float  # 1 - probabilities[human_class]: calibrated with its own temperature
    verdict: str | None  # "artist" | "ai" | "unsure"; None when the run has no calibration
    generator: str | None  # for "ai": the most likely generator, or "unknown"; else None
    view: str  # "crop" | "tiles" (or "pad" | "resize" when asked for)
    n_views: int
    evidence: dict  # evidence_summary(...): metadata, NEVER folded into the verdict
    notes: list[str]  # loading notes (EXIF rotation applied, alpha composited, first frame only, ...)
    error: str | None = None  # "path: reason" for an unreadable file; the other fields are then empty/zero
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1] aligned with the image as loaded
    reason: str | None = None  # why the verdict is "unsure" (thresholds, unfamiliar image, unstable verdict)
    checks: dict = field(default_factory=dict)  # familiarity distance, verdicts under mild re-encodings

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, without the heatmap array."""
        data = asdict(self)
        data.pop("heatmap")
        return data

    @classmethod
    def failed(cls, source: str, error: str) -> ImagePrediction:
        return cls(source, {}, 0.0, None, None, "", 0, {}, [], error=error)


# ----------------------------------------------------------------------------------------------
# Loading and views (pure functions: they run in DataLoader workers too)
# ----------------------------------------------------------------------------------------------


def choose_view(height: int, width: int, size: int, view: str = "auto") -> str:
    """ "auto": tiles when the image is larger than the model input on either side, else crop (which
    refuses an image smaller than the input: pad or resize must then be asked for)."""
    if view not in PREDICT_VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(PREDICT_VIEWS)}")
    if view != "auto":
        return view
    return "tiles" if (height > size or width > size) and height >= size and width >= size else "crop"


def view_corners(
    height: int, width: int, size: int, view: str, max_tiles: int | None = None
) -> list[tuple[int, int]] | None:
    """(top, left) of each view in the loaded image, in `make_views` order; None for pad/resize views,
    which are not a window of the image."""
    if view == "crop":
        return [((height - size) // 2, (width - size) // 2)]
    if view == "tiles":
        return tile_grid(height, width, size, max_tiles)
    return None


class ViewsForward(torch.nn.Module):
    """(N, S, S, 3) uint8 views -> (logits, features): the model's forward pass as `Predictor` runs it, in
    PyTorch or exported for onnxruntime (`export.inference_session`); the features feed the familiarity
    check."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, H, W, 3) permuted is already a channels_last (B, 3, H, W) tensor: no copy for the layout.
        images = views.permute(0, 3, 1, 2).float() / 255.0
        features = self.model.embed(images)
        return self.model.backbone.head[-1](features), features


def _pil_to_bytes(image: Image.Image) -> bytes:
    """A PIL image as lossless bytes that load_image decodes to the same pixels: its rules (orientation,
    alpha, 16-bit) then apply exactly as for a file. PNG keeps text chunks (generation metadata); modes PNG
    cannot hold (CMYK, ...) go through TIFF."""
    from PIL.PngImagePlugin import PngInfo

    buffer = io.BytesIO()
    exif = image.getexif()
    if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        text = PngInfo()
        for key, value in image.info.items():
            if isinstance(key, str) and isinstance(value, str):
                text.add_itxt(key, value)
        image.save(buffer, format="PNG", pnginfo=text, exif=exif)
    else:
        image.save(buffer, format="TIFF", exif=exif)
    return buffer.getvalue()


def load_item(
    item: Item, rules: LoadRules = LoadRules(), *, name: str | None = None, raw: bytes | None = None
) -> tuple[LoadedImage, bytes | None]:
    """(decoded image, raw bytes or None) for a path, bytes, (name, bytes), PIL image or LoadedImage.

    `raw`: the file bytes of an already decoded LoadedImage, so that the evidence readers that need them
    (C2PA, full-length PNG text) still run."""
    if isinstance(item, LoadedImage):
        return item, raw
    if isinstance(item, tuple):
        name, item = item
    if isinstance(item, (bytes, bytearray, memoryview)):
        raw = bytes(item)
        return load_image(raw, rules, name=name or "<bytes>"), raw
    if isinstance(item, Image.Image):
        display = name or getattr(item, "filename", "") or "<PIL image>"
        try:
            raw = _pil_to_bytes(item)
        except Exception as error:  # PIL raises many types for images it cannot write
            raise ImageError(
                display, f"cannot convert the PIL image ({type(error).__name__}: {error})"
            ) from None
        loaded = load_image(raw, rules, name=display)
        loaded.format = item.format or "PIL"
        return loaded, None
    path = os.fspath(item)
    raw = read_file(path)
    return load_image(raw, rules, name=name or path), raw


@dataclass
class Prepared:
    """One image made ready for the model: what a loader worker hands to the main process."""

    source: str
    views: np.ndarray | None  # (K, size, size, 3) uint8
    view: str = ""
    notes: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    corners: list[tuple[int, int]] | None = None
    shape: tuple[int, int] = (0, 0)  # (height, width) of the image as loaded
    pixels: np.ndarray | None = None  # kept only for heatmaps and stability checks
    error: str | None = None
    # (name, number of views) in the model's row order: "image" first, then each stability check's copy
    groups: list[tuple[str, int]] = field(default_factory=list)


def prepare(
    item: Item,
    size: int,
    view: str = "auto",
    rules: LoadRules = LoadRules(),
    *,
    name: str | None = None,
    keep_pixels: bool = False,
    raw: bytes | None = None,
    max_tiles: int | None = None,
) -> Prepared:
    """Load, read evidence, cut views (at most `max_tiles` tiles, spread over the image: `io.tile_grid`).
    Raises ImageError for a bad image."""
    loaded, raw = load_item(item, rules, name=name, raw=raw)
    height, width = loaded.height, loaded.width
    chosen = choose_view(height, width, size, view)
    views = make_views(loaded.pixels, size, chosen, path=loaded.path, max_tiles=max_tiles)
    return Prepared(
        source=loaded.path,
        views=np.stack(views),
        groups=[("image", len(views))],
        view=chosen,
        notes=list(loaded.notes),
        evidence=evidence_summary(read_evidence(loaded, raw)),
        corners=view_corners(height, width, size, chosen, max_tiles),
        shape=(height, width),
        pixels=loaded.pixels if keep_pixels else None,
    )


# Mild changes a verdict should survive (users report detectors whose verdict flips from 0.4 to 0.9 after a
# resize): re-encoding at high quality and a few-pixel shift of the view grid; `predict --stability`. Not on
# by default: on sources never seen they made 16% of the right `ai` verdicts unsure and 18% of the wrong
# ones, no better than chance, and abstaining on as many of the least confident verdicts removes more wrong
# ones, at no cost (docs/predict.md, "Stability checks").
STABILITY_CHECKS = ("jpeg:90", "webp:90", "shift:4")
# libwebp effort for the "webp:Q" check: method 0 encodes a 512 px image ~2.5x faster than the default 4
# (~10 vs 25-29 ms, the costliest step of a check), and its verdicts are as close to method 4's as those
# at quality 91 are to quality 90's (benchmarks/webp_check_method.py, docs/predict.md): the check still
# asks whether the verdict survives a user's WebP 90 re-encode. Training augmentation and `perturb` keep 4.
CHECK_WEBP_METHOD = 0


def parse_check(check: str) -> tuple[str, int]:
    """ "jpeg:90" -> ("jpeg", 90); ValueError for anything but jpeg:Q, webp:Q (Q in 1..100) or shift:N."""
    kind, _, value = check.partition(":")
    if kind not in ("jpeg", "webp", "shift") or not value.isdigit():
        raise ValueError(f"unknown stability check {check!r}; expected jpeg:Q, webp:Q or shift:N")
    if kind != "shift" and not 1 <= int(value) <= 100:
        raise ValueError(f"stability check {check!r}: the quality must be in 1..100")
    return kind, int(value)


def stability_views(
    prepared: Prepared, checks: Sequence[str], size: int, view: str, max_tiles: int | None = None
) -> np.ndarray | None:
    """The views of each of `checks`' copies of the image (in `prepared.pixels`), appended to
    `prepared.groups` in order; None when no check applies (an image too small to shift). A copy that
    cannot be made (WebP holds at most 16383 px a side: a long webtoon strip) is skipped with a note: one
    image never stops a stream, and its verdict then rests on the checks that ran."""
    views: list[np.ndarray] = []
    for check in checks:
        try:
            variant = stability_variant(prepared.pixels, check, size)
        except Exception as error:  # PIL raises several types for images an encoder refuses
            prepared.notes.append(f"stability check {check} skipped: {type(error).__name__}: {error}")
            continue
        if variant is not None:
            chosen = choose_view(*variant.shape[:2], size, view)
            extra = make_views(variant, size, chosen, path=prepared.source, max_tiles=max_tiles)
            views += extra
            prepared.groups.append((check, len(extra)))
    return np.stack(views) if views else None


def stability_variant(pixels: np.ndarray, check: str, size: int) -> np.ndarray | None:
    """The image as `check` changes it ("jpeg:Q", "webp:Q" re-encode; "shift:N" drops N rows and columns at
    the top left, so every view moves by N px); None when the image is too small to shift."""
    kind, value = parse_check(check)
    if kind == "shift":
        if min(pixels.shape[:2]) - value < size:
            return None
        return pixels[value:, value:]
    from animeprov.perturb import decode, encode_jpeg, encode_webp

    if kind == "webp":
        # The check's WebP encoder effort is CHECK_WEBP_METHOD, not perturb's 4 (which training uses).
        return decode(encode_webp(pixels, value, method=CHECK_WEBP_METHOD))
    return decode(encode_jpeg(pixels, value))


def _source_name(item: Item) -> str:
    if isinstance(item, LoadedImage):
        return item.path
    if isinstance(item, tuple):
        return str(item[0])
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or "<PIL image>"
    return os.fspath(item)


def prepare_or_error(
    item: Item,
    size: int,
    view: str,
    rules: LoadRules,
    keep_pixels: bool = False,
    max_tiles: int | None = None,
) -> Prepared:
    """`prepare`, with any failure turned into `Prepared.error`: one bad file never stops a stream."""
    try:
        return prepare(item, size, view, rules, keep_pixels=keep_pixels, max_tiles=max_tiles)
    except ImageError as error:
        return Prepared(source=error.path, views=None, error=str(error))
    except Exception as error:  # e.g. MemoryError on a huge image: reported for this file, the rest goes on
        source = _source_name(item)
        return Prepared(source=source, views=None, error=f"{source}: {type(error).__name__}: {error}")


class _PrepareDataset(torch.utils.data.Dataset):
    """Map-style dataset whose "indices" are the items themselves: the DataLoader's sampler is the (lazy)
    item iterable, so the main process pulls items one by one, workers decode them, and results come back
    in order with at most prefetch_factor x workers items in flight."""

    def __init__(
        self, size: int, view: str, rules: LoadRules, keep_pixels: bool, max_tiles: int | None
    ) -> None:
        self.size, self.view, self.rules, self.keep_pixels = size, view, rules, keep_pixels
        self.max_tiles = max_tiles

    def __getitem__(self, item: Item) -> Prepared:
        return prepare_or_error(item, self.size, self.view, self.rules, self.keep_pixels, self.max_tiles)


def _no_collate(prepared: Prepared) -> Prepared:
    return prepared


def _prepared_stream(
    items: Iterable[Item],
    size: int,
    view: str,
    rules: LoadRules,
    workers: int,
    keep_pixels: bool,
    max_tiles: int | None,
):
    if workers == 0:
        return (prepare_or_error(item, size, view, rules, keep_pixels, max_tiles) for item in items)
    loader = torch.utils.data.DataLoader(
        _PrepareDataset(size, view, rules, keep_pixels, max_tiles),
        sampler=items,
        batch_size=None,
        num_workers=workers,
        collate_fn=_no_collate,
        prefetch_factor=4,
    )
    return iter(loader)


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------


def default_batch_size(size: int) -> int:
    """Views per model batch when none is given: about 2**19 pixels, at least 16 views (views of 181 px
    and more: 16, the long-standing default) and at most 128 (64 px tiles, two 512 px images). Small views
    need large batches: a model call has a fixed cost (dispatch, per-layer set-up) that 16 tiles of 64 px do
    not amortise (128 a batch measured ~1.2x faster than 16 for the reference model on CPU)."""
    return max(16, min(128, (1 << 19) // (size * size)))


class Predictor:
    """A run's model with its calibration, ready to judge images. Build with `from_checkpoint`."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        classes: list[str],
        size: int,
        variant: str,
        human_class: str = DEFAULT_HUMAN_CLASS,
        calibration: Calibration | None = None,
        device: str | torch.device = "cpu",
        load_rules: LoadRules = LoadRules(),
        precision: str = "auto",
        weights_sha256: str | None = None,
        run: str | None = None,
        familiarity: Familiarity | None = None,
        checks: Sequence[str] = (),
        max_tiles: int | None = DEFAULT_MAX_TILES,
        backend: str = "auto",
    ) -> None:
        """`familiarity` and `checks` (e.g. STABILITY_CHECKS; none by default) make a verdict "unsure" for an
        image unlike the training data or whose verdict changes under those mild re-encodings; both need a
        calibration. The checks run only for a verdict that would otherwise be committed (artist or ai), each
        as one more pass of the model over the image. `max_tiles` caps the tiles judged per image, spread
        over it (`io.tile_grid`): the model's work on a large image, at some cost in accuracy
        (docs/predict.md); None judges every tile. `backend` "onnx" runs the model's forward pass in
        onnxruntime (CPU, float32; exported when the predictor is made, or taken from the cache of an earlier
        export), "torch" in PyTorch, "auto" in onnxruntime where it can (`choose_backend`; in PyTorch when the
        export fails)."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if human_class not in classes:
            raise ValueError(f"human class {human_class!r} is not among the model's classes {classes}")
        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.model = prepare_model(model, self.device).eval()
        fold_batchnorm(self.model)  # inference only, as here: BatchNorm folded into the convs, ~1.5x faster
        self.classes = list(classes)
        self.size = int(size)
        self.variant = variant
        self.human_class = human_class
        self.calibration = calibration
        self.load_rules = load_rules
        self.precision = precision
        self.weights_sha256 = weights_sha256
        self.run = run
        self.familiarity = familiarity if calibration is not None else None
        self.checks = tuple(checks) if calibration is not None else ()
        for check in self.checks:
            parse_check(check)  # fails fast on a typo, before any image
        tile_grid(self.size, self.size, self.size, max_tiles)  # and on a budget below 1
        self.max_tiles = max_tiles
        self.backend = choose_backend(backend, self.device, precision)
        self._session = None
        if self.backend == "onnx":
            from animeprov.export import VIEWS_INPUT, inference_session

            try:
                self._session = inference_session(self.model, self.size, torch.get_num_threads())
            except Exception:  # noqa: BLE001 - whatever the exporter raised: under "auto" PyTorch runs it
                if backend != "auto":
                    raise
                self.backend = "torch"
            self._session_input = VIEWS_INPUT

    @classmethod
    def from_checkpoint(
        cls,
        run: str | os.PathLike,
        *,
        device: str = "auto",
        weights: str = "model.safetensors",
        thresholds: dict[str, float] | None = None,
        load_rules: LoadRules = LoadRules(),
        precision: str = "auto",
        checks: Sequence[str] = (),
        max_tiles: int | None = DEFAULT_MAX_TILES,
        backend: str = "auto",
    ) -> Predictor:
        """Load a run folder, or a bundled model by name ("reference", sha256-checked).
        `thresholds` ({"ai", "artist", "unknown"}: P(generated) / generator-score
        cut-offs) override calibration.json's. A run without calibration.json gives verdict None, unless
        both "ai" and "artist" thresholds are given: they then apply to the uncalibrated probabilities
        (temperature 1). Raises StaleCalibrationError if calibration.json was fitted for other weights."""
        from animeprov.checkpoint import load_model
        from animeprov.reference import resolve_run

        run = resolve_run(run)  # "reference" (the bundled model, sha256-checked) or a run folder
        # onnxruntime runs here on the CPU: asked for, it keeps device "auto" off a GPU
        torch_device = (
            torch.device("cpu") if backend == "onnx" and device == "auto" else _default_device(device)
        )
        model, config = load_model(run, weights=weights, device="cpu")
        classes = list(config["classes"])
        human_class = config.get("human_class", DEFAULT_HUMAN_CLASS)
        calibration = load_calibration(run)
        fitted_for = calibration.source.get("weights") if calibration else None
        if fitted_for and fitted_for != weights:
            raise StaleCalibrationError(
                f"{run}: calibration.json was fitted for {fitted_for}, not {weights}; "
                f"run `animeprov calibrate` for those weights"
            )
        calibration = _with_thresholds(calibration, thresholds, classes, human_class)
        return cls(
            model,
            classes=classes,
            size=int(config["size"]),
            variant=config["variant"],
            human_class=human_class,
            calibration=calibration,
            device=torch_device,
            load_rules=load_rules,
            precision=precision,
            weights_sha256=sha256_file(run / weights),
            run=str(run),
            familiarity=load_familiarity(run, weights),
            checks=checks,
            max_tiles=max_tiles,
            backend=backend,
        )

    @classmethod
    def reference(cls, **options: Any) -> Predictor:
        """The reference model shipped in the package (docs/model-card.md says what it can and cannot do);
        `options` as for `from_checkpoint`."""
        from animeprov.reference import REFERENCE

        return cls.from_checkpoint(REFERENCE, **options)

    def info(self) -> dict[str, Any]:
        from animeprov.reference import card_summary

        calibration = self.calibration
        return {
            "run": self.run,
            # a bundled model's card in short (data, classes, recipe, where the card is); None for other runs
            "model_card": card_summary(self.run) if self.run else None,
            "classes": self.classes,
            "variant": self.variant,
            "size": self.size,
            "human_class": self.human_class,
            "animeprov": animeprov.__version__,
            "device": str(self.device),
            "backend": self.backend,
            "weights_sha256": self.weights_sha256,
            "max_tiles": self.max_tiles,
            "checks": list(self.checks),
            "calibrated": calibration is not None and calibration.measured != {},
            "thresholds": None
            if calibration is None
            else {
                "temperature": calibration.temperature,
                "detection_temperature": calibration.detection_temperature,
                "detection_shift": calibration.detection_shift,
                "ai": calibration.ai_threshold,
                "artist": calibration.artist_threshold,
                "unknown": calibration.unknown_threshold,
                "overrides": calibration.overrides,
                "bands": calibration.bands(),
            },
        }

    # --- model ---------------------------------------------------------------------------------

    def log_probs(self, views: np.ndarray) -> np.ndarray:
        """Views (B, size, size, 3) uint8 -> (B, classes) float64 log-softmax of the logits."""
        return self._forward(views)[0]

    @torch.no_grad()
    def _forward(self, views: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(log-probabilities, features for the familiarity check or None when there is none)."""
        if self._session is not None:
            logits, features = self._session.run(None, {self._session_input: np.ascontiguousarray(views)})
            log_probs = log_softmax(logits.astype(np.float64), axis=1)
            return log_probs, None if self.familiarity is None else features
        pixels = torch.from_numpy(np.ascontiguousarray(views)).to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            logits, features = ViewsForward(self.model)(pixels)
        log_probs = log_softmax(logits.float().cpu().numpy().astype(np.float64), axis=1)
        return log_probs, None if self.familiarity is None else features.float().cpu().numpy()

    def _batched_forward(
        self, views: np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        batch_size = batch_size or default_batch_size(self.size)
        parts = [self._forward(views[i : i + batch_size]) for i in range(0, len(views), batch_size)]
        features = None if self.familiarity is None else np.concatenate([f for _, f in parts])
        return np.concatenate([p for p, _ in parts]), features

    def pool(self, log_probs: np.ndarray) -> np.ndarray:
        """(1, C) probabilities of one image from its views' log-probabilities (`engine.pool_views`)."""
        human = self.classes.index(self.human_class)  # __init__ made sure it is there
        return pool_views(log_probs, np.zeros(len(log_probs), dtype=np.intp), human)

    def _needs_stability(self, log_probs: np.ndarray, features: np.ndarray | None) -> bool:
        """Whether the stability checks can still change the verdict given the image's own views: only a
        verdict that would be committed (artist or ai, familiar image) can become "unsure"."""
        if not self.checks or self.calibration is None:
            return False
        judged = verdicts(self.pool(log_probs), self.calibration)[0]
        familiarity = self._familiarity(features, len(log_probs))
        return abstention_reason(judged, familiarity, self.calibration) is None

    def _result(
        self, prepared: Prepared, log_probs: np.ndarray, features: np.ndarray | None
    ) -> ImagePrediction:
        n_image = prepared.groups[0][1] if prepared.groups else len(log_probs)
        raw = self.pool(log_probs[:n_image])
        human = self.classes.index(self.human_class)
        reason, checks = None, {}
        if self.calibration is None:
            probs, verdict, generator = raw[0], None, None
        else:
            probs = self.calibration.probabilities(raw)[0]
            judged = verdicts(raw, self.calibration)[0]
            verdict, generator = judged["verdict"], judged["generator"]
            checks = self._checks(prepared, log_probs, features, n_image)
            reason = abstention_reason(judged, checks, self.calibration)
            if reason is not None:
                verdict, generator = "unsure", None
        probabilities = {name: float(p) for name, p in zip(self.classes, probs, strict=True)}
        return ImagePrediction(
            source=prepared.source,
            probabilities=probabilities,
            p_generated=float(1.0 - probs[human]),
            verdict=verdict,
            generator=generator,
            view=prepared.view,
            n_views=n_image,
            evidence=prepared.evidence,
            notes=prepared.notes,
            reason=reason,
            checks=checks,
        )

    def _checks(
        self, prepared: Prepared, log_probs: np.ndarray, features: np.ndarray | None, n_image: int
    ) -> dict[str, Any]:
        """The familiarity distance and the verdict of each re-encoded copy that ran (`_needs_stability`)."""
        checks = self._familiarity(features, n_image)
        start = n_image
        for name, count in prepared.groups[1:]:
            judged = verdicts(self.pool(log_probs[start : start + count]), self.calibration)[0]
            # rounded: a diagnostic, and batches of other sizes differ in the last float digits
            checks[name] = {"verdict": judged["verdict"], "p_generated": round(judged["p_generated"], 6)}
            start += count
        return checks

    def _familiarity(self, features: np.ndarray | None, n_image: int) -> dict[str, Any]:
        """{"familiarity": distance of the image's mean feature to the training data, and its threshold}."""
        if self.familiarity is None or features is None:
            return {}
        distance = float(self.familiarity.scores(features[:n_image].mean(axis=0, keepdims=True))[0])
        return {"familiarity": {"distance": round(distance, 6), "threshold": self.familiarity.threshold}}

    # --- public --------------------------------------------------------------------------------

    def predict(
        self,
        item: Item,
        *,
        view: str = "auto",
        heatmap: bool = False,
        name: str | None = None,
        raw: bytes | None = None,
    ) -> ImagePrediction:
        """One image: a path, bytes, (name, bytes), PIL image or LoadedImage. Raises ImageError on bad input.
        `name` labels bytes or PIL images in `source`; `raw` gives a LoadedImage's file bytes to the evidence
        readers. `heatmap=True` adds where the model looked for its top class (see `animeprov.heatmap`),
        stitched back onto the image for tiles."""
        choose_view(0, 0, self.size, view)  # validates the name before any work
        prepared = prepare(
            item,
            self.size,
            view,
            self.load_rules,
            name=name,
            keep_pixels=heatmap or bool(self.checks),
            raw=raw,
            max_tiles=self.max_tiles,
        )
        log_probs, features = self._batched_forward(prepared.views)
        if self._needs_stability(log_probs, features):
            extra = stability_views(prepared, self.checks, self.size, view, self.max_tiles)
            if extra is not None:
                log_probs = np.concatenate([log_probs, self._batched_forward(extra)[0]])
        result = self._result(prepared, log_probs, features)
        if heatmap:
            result.heatmap = self._heatmap(prepared, result)
        return result

    def _batched_log_probs(self, views: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.concatenate(
            [self.log_probs(views[i : i + batch_size]) for i in range(0, len(views), batch_size)]
        )

    def predict_many(
        self,
        items: Iterable[Item],
        *,
        view: str = "auto",
        batch_size: int | None = None,
        workers: int = 0,
    ) -> Iterator[ImagePrediction]:
        """Predictions for many images, yielded in input order as soon as each is done.

        Items are consumed lazily; views of several images share a batch (`batch_size` views, default
        `default_batch_size` of the model's input size), so memory is bounded by a few batches. `workers`
        > 0 decodes in that many DataLoader processes. A bad file never raises: its prediction has `error`
        set. An image's stability-check views join the queue once its own views are judged, and only when
        they can still change the verdict; with `workers` > 0 its re-encoded copies are made in as many
        threads (the encoders release the GIL) while the model goes on, not in line.
        """
        choose_view(0, 0, self.size, view)
        if batch_size is None:
            batch_size = default_batch_size(self.size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        stream = _prepared_stream(
            items, self.size, view, self.load_rules, workers, bool(self.checks), self.max_tiles
        )
        waiting: deque[_Pending] = deque()  # in input order
        views: list[tuple[_Pending, np.ndarray]] = []  # views not yet through the model, with their image
        # Made in line, the copies kept a GPU waiting on one CPU core (docs/results/gpu-h200.md)
        encoder = ThreadPoolExecutor(workers) if workers > 0 and self.checks else None

        def check_arguments(owner: _Pending) -> tuple:
            return owner.prepared, self.checks, self.size, view, self.max_tiles

        def queue_checks(owner: _Pending) -> None:
            owner.image_judged = True
            features = np.stack(owner.features) if owner.features else None
            if not self._needs_stability(np.stack(owner.rows), features):
                owner.prepared.pixels = None
            elif encoder is None:
                add_checks(owner, stability_views(*check_arguments(owner)))
            else:
                owner.copies = encoder.submit(stability_views, *check_arguments(owner))

        def add_checks(owner: _Pending, extra: np.ndarray | None) -> None:
            owner.copies, owner.prepared.pixels = None, None
            if extra is not None:
                owner.n_views += len(extra)
                views.extend((owner, check_view) for check_view in extra)

        def collect_checks(wait: bool) -> None:
            """Queue the views of the copies made (with `wait`: of the oldest image's, once made)."""
            pending = [owner for owner in waiting if owner.copies is not None]
            if wait and pending:
                pending[0].copies.result()
            for owner in pending:
                if owner.copies.done():
                    add_checks(owner, owner.copies.result())

        def run_batch(count: int) -> None:
            batch, views[:] = views[:count], views[count:]
            log_probs, features = self._forward(np.stack([view for _, view in batch]))
            for i, (owner, _) in enumerate(batch):
                owner.rows.append(log_probs[i])
                if features is not None:
                    owner.features.append(features[i])
                if not owner.image_judged and len(owner.rows) == owner.n_views:
                    queue_checks(owner)

        def finished() -> Iterator[ImagePrediction]:
            while waiting and waiting[0].copies is None and len(waiting[0].rows) == waiting[0].n_views:
                pending = waiting.popleft()
                prepared = pending.prepared
                if prepared.error is not None:
                    yield ImagePrediction.failed(prepared.source, prepared.error)
                else:
                    features = np.stack(pending.features) if pending.features else None
                    yield self._result(prepared, np.stack(pending.rows), features)

        try:
            for prepared in stream:
                n_views = 0 if prepared.views is None else len(prepared.views)
                pending = _Pending(prepared, n_views)
                waiting.append(pending)
                if n_views:
                    views.extend((pending, view) for view in prepared.views)
                    prepared.views = None  # they live in `views` now, and go once through the model
                collect_checks(wait=False)
                # at most 2 x workers images wait for their copies: memory stays bounded when the model
                # outruns the encoders
                while encoder is not None and sum(o.copies is not None for o in waiting) > 2 * workers:
                    collect_checks(wait=True)
                while len(views) >= batch_size:
                    run_batch(batch_size)
                yield from finished()
            while views or any(owner.copies is not None for owner in waiting):
                collect_checks(wait=not views)
                if views:
                    run_batch(min(batch_size, len(views)))
                yield from finished()
        finally:
            if encoder is not None:
                encoder.shutdown(cancel_futures=True)

    # --- heatmaps ------------------------------------------------------------------------------

    def _heatmap(self, prepared: Prepared, result: ImagePrediction) -> np.ndarray:
        """The top class's map, each view placed where it came from, on ONE scale for all tiles (the
        strongest evidence anywhere in the image is 1; zero where no view looked). pad/resize views are
        not windows of the image: their map is returned at the view size."""
        from animeprov.heatmap import class_heatmap

        top = max(result.probabilities, key=result.probabilities.get)
        image_views = prepared.views[: prepared.groups[0][1]] if prepared.groups else prepared.views
        images = torch.from_numpy(image_views).permute(0, 3, 1, 2).float().div(255.0)
        maps = class_heatmap(self.model, images, self.classes.index(top), normalize=False)
        maps = np.asarray(maps, dtype=np.float32)
        if prepared.corners is None:
            stitched = maps[0]
        else:
            stitched = np.zeros(prepared.shape, dtype=np.float32)
            for (top_row, left), view_map in zip(prepared.corners, maps, strict=True):
                stitched[top_row : top_row + self.size, left : left + self.size] = view_map
        peak = float(stitched.max())
        return stitched / peak if peak > 0 else stitched


@dataclass
class _Pending:
    """An image in predict_many whose views are (partly) still waiting for the model."""

    prepared: Prepared
    n_views: int  # grows by the stability checks' views once the image's own views are judged
    image_judged: bool = False
    copies: Future | None = None  # its stability-check views, while a thread still makes them
    rows: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)


def abstention_reason(judged: dict[str, Any], checks: dict[str, Any], calibration: Calibration) -> str | None:
    """Why the verdict must be "unsure", or None: P(generated) between the two thresholds, an image unlike
    the training data (familiarity distance above its threshold), or a verdict that a mild re-encoding
    changes. Several reasons are joined with "; "."""
    reasons = []
    if judged["verdict"] == "unsure":
        reasons.append(
            f"between the thresholds: P(generated) {judged['p_generated']:.2f} is above the artist threshold "
            f"{calibration.artist_threshold:.2f} and below the ai threshold {calibration.ai_threshold:.2f}"
        )
    familiarity = checks.get("familiarity")
    if familiarity and familiarity["distance"] > familiarity["threshold"]:
        reasons.append(
            f"unfamiliar: unlike the training images (distance {familiarity['distance']:.2f} > "
            f"{familiarity['threshold']:.2f})"
        )
    flips = [
        f"{name} gives {check['verdict']} (P {check['p_generated']:.2f})"
        for name, check in checks.items()
        if name != "familiarity" and check["verdict"] != judged["verdict"]
    ]
    if flips and judged["verdict"] != "unsure":
        reasons.append(
            f"unstable: {judged['verdict']} (P {judged['p_generated']:.2f}) but " + ", ".join(flips)
        )
    return "; ".join(reasons) or None


def reason_kinds(reason: str | None) -> list[str]:
    """The kinds of an `abstention_reason`, in order: "between the thresholds", "unfamiliar", "unstable"."""
    return [part.split(":")[0] for part in (reason or "").split("; ") if part]


def choose_backend(backend: str, device: torch.device, precision: str) -> str:
    """The backend a predictor runs: "onnx" runs float32 on the CPU only; "auto" is "onnx" where that holds
    and onnxruntime is installed (the `export` extra), else "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    onnx_can_run = device.type == "cpu" and precision in ("auto", "fp32")
    if backend == "onnx" and not onnx_can_run:
        raise ValueError(f"the onnx backend runs float32 on the CPU, not {precision} on {device}")
    if backend == "auto":
        return "onnx" if onnx_can_run and importlib.util.find_spec("onnxruntime") else "torch"
    return backend


def _default_device(requested: str) -> torch.device:
    """select_device, plus the local GPU of this process under torchrun (LOCAL_RANK)."""
    device = select_device(requested)
    if requested == "auto" and device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


def _with_thresholds(
    calibration: Calibration | None,
    thresholds: dict[str, float] | None,
    classes: list[str],
    human_class: str,
) -> Calibration | None:
    thresholds = {k: v for k, v in (thresholds or {}).items() if v is not None}
    unknown = set(thresholds) - set(THRESHOLD_NAMES)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)}; use {', '.join(THRESHOLD_NAMES)}")
    if not thresholds:
        return calibration
    if calibration is None:
        if not {"ai", "artist"} <= set(thresholds):
            raise ValueError(
                "this run has no calibration.json: give both the ai and artist thresholds "
                "(they then apply to uncalibrated probabilities), or run `animeprov calibrate`"
            )
        return Calibration(
            class_names=tuple(classes),
            human_class=human_class,
            temperature=1.0,
            detection_temperature=1.0,
            ai_threshold=float(thresholds["ai"]),
            artist_threshold=float(thresholds["artist"]),
            unknown_threshold=float(thresholds.get("unknown", 0.0)),
            target_fpr=float("nan"),
            target_fnr=float("nan"),
            known_pass_rate=float("nan"),
            source={"by_hand": True},
        )
    if "artist" not in thresholds and thresholds.get("ai", np.inf) < calibration.artist_threshold:
        thresholds["artist"] = thresholds[
            "ai"
        ]  # the artist band is capped at the ai threshold, as when fitted
    return calibration.with_thresholds(**thresholds)
