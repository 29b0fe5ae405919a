"""ONNX export of a run: the whole model, input stem (DCT, log, normalisation) and CBAM included.

The exported graph takes what the PyTorch model takes, `images` (N, 3, S, S) float32 RGB in [0, 1] (a centre
crop or tile of the model size, never a resized image), with a dynamic batch size, and returns two outputs:
`logits` (N, C), the raw scores, and `probabilities` (N, C), calibrated as `animeprov predict` calibrates
them (evaluation/calibration.py): P(generated) = sigmoid((logsumexp(generator logits) - human logit) / D)
= 1 - probabilities[human], shared among the generator classes as softmax(logits / T) shares them, where T
and D are the run's temperature and detection temperature (calibration.json; 1 when it has none). Class
names, the human class, T, D and the calibration's verdict thresholds are stored in the model's
metadata_props.

The stem's CPU DCT is scipy, which no exporter can see into; the export uses the matrix DCT (two matmuls,
the same transform) so the DCT is part of the graph. `parity_check` compares onnxruntime against the
same mathematics in PyTorch (the exporter's error) and against the model as `animeprov predict` runs it
on CPU (scipy DCT: that adds the two DCT implementations' float32 rounding).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import animeprov
from animeprov.checkpoint import BEST_WEIGHTS, atomic_write_bytes, load_model
from animeprov.config import DEFAULT_HUMAN_CLASS, cache_root
from animeprov.evaluation.calibration import Calibration, StaleCalibrationError, load_calibration
from animeprov.io import sha256_file
from animeprov.layers.cbam import CBAM
from animeprov.transforms.dct import dct_matrix
from animeprov.transforms.stem import DCTStem

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
VIEWS_INPUT = "views"  # the prediction backend's graph (`inference_session`)
# Max |probability difference| between onnxruntime and PyTorch that still counts as the same model.
PARITY_TOLERANCE = 1e-4
# The batch sizes the parity check runs: 1 and an odd size that no export example used.
PARITY_BATCHES = (1, 7)


@dataclass(frozen=True)
class Scaling:
    """What turns logits into calibrated probabilities (calibration.json's; all 1 without one)."""

    human_index: int
    temperature: float = 1.0
    detection_temperature: float = 1.0
    detection_shift: float = 0.0

    @classmethod
    def of(cls, calibration: Calibration | None, classes: list[str], human_class: str) -> Scaling:
        if calibration is None:
            return cls(classes.index(human_class))
        return cls(
            classes.index(calibration.human_class),
            calibration.temperature,
            calibration.detection_temperature,
            calibration.detection_shift,
        )


class ExportedClassifier(nn.Module):
    """images -> (logits, calibrated probabilities): the graph that is written to ONNX. The same
    mathematics as `calibrated_probabilities`, on logits."""

    def __init__(self, model: nn.Module, scaling: Scaling) -> None:
        super().__init__()
        self.model = model
        self.human = scaling.human_index
        self.register_buffer("temperature", torch.tensor(float(scaling.temperature)))
        self.register_buffer("detection_temperature", torch.tensor(float(scaling.detection_temperature)))
        self.register_buffer("detection_shift", torch.tensor(float(scaling.detection_shift)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        human = logits[:, self.human : self.human + 1]
        generators = torch.cat([logits[:, : self.human], logits[:, self.human + 1 :]], dim=1)
        detection_logit = (
            torch.logsumexp(generators, dim=1, keepdim=True) - human - self.detection_shift
        ) / self.detection_temperature
        share = torch.softmax(generators / self.temperature, dim=1)
        p_generated = torch.sigmoid(detection_logit)
        shared = p_generated * share
        probabilities = torch.cat(
            [shared[:, : self.human], torch.sigmoid(-detection_logit), shared[:, self.human :]], dim=1
        )
        return logits, probabilities


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, str]
    parity: dict[str, Any] | None = None  # from `parity_check`, when it ran
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def exportable_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode that the exporter can trace: the matrix DCT (not scipy) in DCT stems, and CBAM
    without the Python-side bookkeeping of its last gates."""
    exportable = copy.deepcopy(model).eval()
    for module in exportable.modules():
        if isinstance(module, DCTStem):
            module.dct_backend = "matrix"
        if isinstance(module, CBAM):
            module.keep_gates = False
    return exportable


def export_metadata(
    config: dict[str, Any], calibration: Calibration | None, weights_path: Path
) -> dict[str, str]:
    """The strings stored as the ONNX model's metadata_props."""
    size = config["size"]
    metadata = {
        "animeprov_version": animeprov.__version__,
        "variant": config["variant"],
        "size": str(size),
        "classes": json.dumps(list(config["classes"])),
        "human_class": calibration.human_class
        if calibration
        else config.get("human_class", DEFAULT_HUMAN_CLASS),
        "input": f"{INPUT_NAME}: (N, 3, {size}, {size}) float32 RGB in [0, 1]; a centre crop or tile of the "
        "model size, never a resized image",
        "outputs": "logits: (N, classes) raw scores; probabilities: (N, classes), P(generated) = "
        "sigmoid((logsumexp(generator logits) - human logit - detection_shift) / detection_temperature) "
        "= 1 - P(human), "
        "shared among the generator classes as softmax(logits / temperature)",
        "temperature": repr(calibration.temperature if calibration else 1.0),
        "detection_temperature": repr(calibration.detection_temperature if calibration else 1.0),
        "detection_shift": repr(calibration.detection_shift if calibration else 0.0),
        "calibrated": "true" if calibration else "false",
        "weights_sha256": sha256_file(weights_path),
    }
    if calibration:
        metadata["calibration"] = json.dumps(
            {
                "ai_threshold": calibration.ai_threshold,
                "artist_threshold": calibration.artist_threshold,
                "unknown_threshold": calibration.unknown_threshold,
                "bands": calibration.bands(),
            }
        )
    return metadata


def parity_images(size: int, seed: int = 0) -> torch.Tensor:
    """Test inputs for the parity check: uniform noise, and flat-coloured blocks with a few hard lines
    (quantised to 8 bits) whose many near-zero DCT coefficients stress the log in the stem."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(PARITY_BATCHES)
    noise = torch.rand(n - n // 2, 3, size, size, generator=generator)
    blocks = torch.rand(n // 2, 3, 4, 4, generator=generator)
    flat = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest")
    flat[:, :, size // 3, :] = 0.0  # a black line, as in line art
    flat = (flat * 255).round() / 255
    return torch.cat([noise, flat])


def parity_check(
    model: nn.Module, onnx_path: Path, scaling: Scaling, images: torch.Tensor | None = None
) -> dict[str, Any]:
    """Max |difference| of probabilities and logits between onnxruntime and PyTorch over `images` (default
    `parity_images`), run in batches of PARITY_BATCHES.

    Two references: the same mathematics in PyTorch (`exportable_copy`: matrix DCT), which measures the
    exporter and decides `ok`; and the model as `animeprov predict` runs it on CPU (scipy DCT), whose
    difference adds the two DCT implementations' float32 rounding (`prediction_path_*`; equal to the first
    for pixel variants). On flat-coloured images that rounding, amplified by log|c| where coefficients are
    exactly zero, is the larger part (docs/export.md).
    """
    import onnxruntime

    images = parity_images(model.size) if images is None else images
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    references = {
        "": ExportedClassifier(exportable_copy(model), scaling).eval(),
        "prediction_path_": ExportedClassifier(model, scaling).eval(),
    }
    worst = {f"{prefix}max_abs_{what}_diff": 0.0 for prefix in references for what in ("prob", "logit")}
    start, batches = 0, []
    while start < len(images):
        batch = images[start : start + PARITY_BATCHES[len(batches) % len(PARITY_BATCHES)]]
        start += len(batch)
        batches.append(len(batch))
        onnx_logits, onnx_probs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
        for prefix, reference in references.items():
            with torch.no_grad():
                logits, probs = (t.numpy() for t in reference(batch))
            for what, ours, theirs in (("prob", onnx_probs, probs), ("logit", onnx_logits, logits)):
                key = f"{prefix}max_abs_{what}_diff"
                worst[key] = max(worst[key], float(np.abs(ours - theirs).max()))
    return {
        "images": len(images),
        "batches": batches,
        **worst,
        "tolerance": PARITY_TOLERANCE,
        "ok": worst["max_abs_prob_diff"] <= PARITY_TOLERANCE,
    }


def _write_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict[str, str]:
    """An exported model's metadata_props as a dict."""
    import onnx

    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's progress, its notes on absent torchvision ops and torch's own deprecation warnings
    are not the user's business when a prediction backend is built."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


# Part of the cache key of exported prediction graphs: bump it when ViewsForward or the export changes.
VIEWS_GRAPH_FORMAT = 1
# Max |logit difference| between a cached graph and the model for the graph to be used, relative to the
# largest logit (at least 1): float rounding passes, another model's graph does not.
CACHED_GRAPH_TOLERANCE = 1e-3


def inference_session(model: nn.Module, size: int, threads: int, *, cache: Path | None = None):
    """An onnxruntime session running `Predictor`'s forward pass of `model` (`predict.ViewsForward`: uint8
    views -> logits and features). Exporting takes several seconds (7 s for the reference model on the
    2-core CPU), so the graph is kept under `cache` (default: cache_root()/onnx), named by a digest of the
    weights, the input size and the torch and animeprov versions; a cached graph is used only when it gives
    the model's logits on two test views, else it is exported again. An unwritable cache only costs the
    export. Raises ImportError naming the extra when onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the onnx backend needs onnxruntime: pip install 'animeprov[export]'") from None

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(graph: bytes):
        return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    path = (cache or cache_root() / "onnx") / f"views-{views_graph_key(model, size)}.onnx"
    try:
        cached = session(path.read_bytes())
        if _agrees(cached, model, size):
            return cached
    except Exception:  # noqa: BLE001 - no file, or a corrupt or foreign one: whatever it raised, export again
        pass
    graph = _export_views_graph(model, size)
    try:
        atomic_write_bytes(path, graph)  # another process never reads half a graph
    except OSError:
        pass  # a read-only or full disk: the next run exports again
    return session(graph)


def views_graph_key(model: nn.Module, size: int) -> str:
    """sha256 of what an exported prediction graph depends on: the weights (names, shapes, bytes), the
    model's class, the input size and the versions of the exporter and of this code."""
    versions = f"{VIEWS_GRAPH_FORMAT} {animeprov.__version__} {torch.__version__}"
    digest = hashlib.sha256(f"{versions} {type(model).__name__} {size}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _export_views_graph(model: nn.Module, size: int) -> bytes:
    from animeprov.predict import ViewsForward

    dct_matrix(size)  # a real constant in the graph, as in export_onnx
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            ViewsForward(exportable_copy(model)).eval(),
            (example,),
            None,
            input_names=[VIEWS_INPUT],
            output_names=["logits", "features"],
            dynamic_shapes={VIEWS_INPUT: {0: torch.export.Dim("batch", min=1)}},
            dynamo=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def _agrees(session: Any, model: nn.Module, size: int) -> bool:
    """Whether `session` gives `model`'s logits on two seeded random views (a stale or altered cache
    would not)."""
    from animeprov.predict import ViewsForward

    views = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = ViewsForward(model.eval())(torch.from_numpy(views))[0].float().numpy()
    logits = session.run(None, {VIEWS_INPUT: views})[0]
    tolerance = CACHED_GRAPH_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    return logits.shape == expected.shape and bool(np.abs(logits - expected).max() <= tolerance)


def export_onnx(
    run: str | Path, out: str | Path, *, weights: str = BEST_WEIGHTS, check: bool = True
) -> ExportResult:
    """Write RUN's model to `out` as one self-contained ONNX file and (with `check`) measure parity.

    Raises FileNotFoundError / ValueError (StaleCalibrationError included) for a run that cannot be
    exported as it is.
    """
    start = time.perf_counter()
    run, out = Path(run), Path(out)
    model, config = load_model(run, weights=weights)
    calibration = load_calibration(run)
    fitted_for = calibration.source.get("weights") if calibration else None
    if fitted_for and fitted_for != weights:  # its temperature and thresholds would be baked in silently
        raise StaleCalibrationError(
            f"{run}: calibration.json was fitted for {fitted_for}, not {weights}; "
            "run `animeprov calibrate` for those weights"
        )
    scaling = Scaling.of(calibration, list(config["classes"]), config.get("human_class", DEFAULT_HUMAN_CLASS))
    wrapped = ExportedClassifier(exportable_copy(model), scaling).eval()
    example = torch.rand(2, 3, model.size, model.size, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build the cached DCT matrix with real values now, so the graph gets it as a constant. Built during
    # tracing, it became a chain of ops that onnxruntime computed less exactly (logits of flat images off by
    # up to 0.32), and the cache kept the tracer's fake tensor, breaking later matrix DCTs in this process.
    dct_matrix(model.size)
    metadata = export_metadata(config, calibration, run / weights)
    # Written under a temporary name and renamed when complete: a failed export leaves no half file at `out`.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # The exporter reports its progress with print(); keep stdout for the command's own output.
        with contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(
                wrapped,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
                external_data=False,
                dynamo=True,
                verbose=False,
            )
        _write_metadata(tmp, metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result = ExportResult(path=out, metadata=metadata)
    if calibration is None:
        result.notes.append(
            "no calibration.json: probabilities are the uncalibrated softmax (temperatures 1)"
        )
    if check:
        result.parity = parity_check(model, out, scaling)
    result.seconds = time.perf_counter() - start
    return result
