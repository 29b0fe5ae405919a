"""Calibrated verdicts: temperature scaling, a detection threshold for a target false-positive rate on human
art, an "unknown generator" outcome, and the three-way verdict artist | unsure | ai.

Everything is fitted on one labelled split (the validation split) and stored with the model as
`calibration.json` in the run folder. Fitting and judging are pure numpy; `calibrate_run` adds the model.

Temperature. The engine returns softmax probabilities, not logits. log p equals the logits up to a
per-row constant, which softmax ignores, so softmax(log p / T) is exact temperature scaling (Guo et al.
2017). p is clipped at PROB_FLOOR first, so logit gaps beyond ~27.6 (float32 softmax underflow) are
capped. One scalar T > 0 minimises the NLL; T is searched on a log scale within TEMPERATURE_BOUNDS.
A split the model separates perfectly has no finite optimum (the NLL keeps falling as T shrinks): T then
stops at the lower bound and a note says so.

Detection. P(generated) is the model's own 1 - P(human) (temperature 1), its logit z moved and scaled:
sigmoid((z - detection_shift) / detection_temperature), both fitted by a logistic fit of generated-vs-human
on the calibration split with each class weighing half, so P(generated) is the probability for an image
drawn from a mix that is half generated and 0.5 is that mix's decision point. The shift matters on sources
the model never saw: it judges their generated images "human" far more often than their human art
"generated" (docs/results/generalisation.md); validation sources are held out from training too, so they
show how far the model's own 0.5 sits from the balanced one. The shift and temperature are monotone: every
threshold below, fitted on the calibrated P(generated), judges the same images as without them. The
temperature is not taken
from the multi-class temperature: softmax(log p / T) flattens towards the uniform distribution as T grows,
so 1 - P(human) drifts towards (C - 1) / C for C classes, whatever the image. On validation sources that
training never saw T came out as high as 6.5 and, with six classes, most held-out human art crossed 0.5
(docs/results/generalisation.md). The binary temperature only sharpens or flattens around 0.5. The class
probabilities reported keep both: P(human) = 1 - P(generated), and the generator classes share
P(generated) in the proportions of softmax(log p / T), which attribution reads.

Thresholds. With n human images and target FPR f, at most
k = floor(f * n) of them may score >= the "ai" threshold, and the threshold is the SMALLEST such value:
the next float above the (k+1)-th highest human score. So every human image tied with that score is
below it (ties make the achieved FPR lower than the target, never higher), and with 34 human images a
1% target allows k = 0 false positives: the threshold sits just above the highest human score, and an
achieved FPR of 0 out of 34 still leaves a one-sided 95% upper bound of ~8.4% (reported as
`fpr_upper_95`). The thresholds are fitted on the calibrated P(generated).

"artist" band, the symmetric choice: the "ai" verdict's costly error is a false accusation, controlled
on human images by `target_fpr`; the "artist" verdict's error is letting a generated image pass as
drawn by a person, controlled the same way on GENERATED images by `target_fnr`: at most
floor(target_fnr * m) of the m generated images score <= the "artist" threshold, which is the LARGEST
such value. Between the two thresholds the verdict is "unsure". When the classes are so well separated
that the artist threshold would reach the ai threshold there is no unsure band: it is capped there and
"ai" wins at equality.

Unknown generator. Score: the maximum softmax probability among the generator classes given that the
image is generated, i.e. softmax over the generator columns only of log p / T. The energy score
-T*logsumexp(logits / T) is not available: it needs the logits' per-row scale, which the softmax output
has lost (with log p as logits the logsumexp at T = 1 is 0 for every image), so what remains of it is a
function of the probabilities, like the maximum probability, only less direct. An image judged "ai" whose
score is below the threshold is reported as generator "unknown", so the threshold is fitted where it
applies: it is the largest value that at least `known_pass_rate` of the calibration split's generated
images JUDGED "ai" reach (all its generated images when none is judged ai; a note says so). Fitted on
all generated images it would be lower, because the images the ai threshold leaves "unsure" are also
the ones with the least certain generator. With a single generator class the score is always 1 and the
outcome never fires.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, logsumexp, softmax
from scipy.stats import beta

from animeprov.config import (
    AUXILIARY_CLASSES,
    DEFAULT_HUMAN_CLASS,
    DEFAULT_KNOWN_PASS_RATE,
    DEFAULT_TARGET_FNR,
    DEFAULT_TARGET_FPR,
)
from animeprov.evaluation.metrics import DEFAULT_ECE_BINS, expected_calibration_error
from animeprov.io import sha256_file

CALIBRATION_FILE = "calibration.json"
# 2: P(generated) has its own temperature (`detection_temperature`); format 1 files predate it.
# 3: an image's tiles are pooled on the detection logit (`engine.pool_views`); format 2 thresholds were
#    fitted on the softmax of the tiles' mean log-probabilities.
# 4: P(generated) has a fitted shift (`detection_shift`) and both detection parameters are fitted at equal
#    class weight. Format 3 files still load, as shift 0: their verdicts are the same, only P(generated)
#    keeps the model's own 0.5 point.
CALIBRATION_FORMAT = 4
READABLE_FORMATS = (3, CALIBRATION_FORMAT)  # a format 3 file reads as detection_shift 0
STALE_FORMATS = {
    1: "calibration format 1 predates the detection temperature",
    2: "calibration format 2 was fitted on tiles pooled another way (before the detection-logit pooling)",
}

# Floor before taking log p as logits: float32 softmax underflows to exact zeros.
PROB_FLOOR = 1e-12
# Search range of T: far beyond what real models need (1-5 for over-confident nets), and keeps a
# perfectly separated split from driving T to zero.
TEMPERATURE_BOUNDS = (0.05, 20.0)
# Search range of the detection shift, in logits: as far as the clipped probabilities reach (log 1e12).
SHIFT_BOUND = 28.0
# Guards floor/ceil against products such as 0.6 * 5 = 2.9999999999999996.
_COUNT_SLACK = 1e-9

VERDICTS = ("artist", "unsure", "ai")
UNKNOWN_GENERATOR = "unknown"


class StaleCalibrationError(ValueError):
    """calibration.json was fitted for other weights or classes than the run now holds."""


@dataclass(frozen=True)
class Calibration:
    """What turns a model's softmax into a verdict. Override a threshold with `with_thresholds`."""

    class_names: tuple[str, ...]
    human_class: str
    temperature: float  # of the class probabilities: attribution
    detection_temperature: float  # of P(generated)'s logit: detection and the verdict
    ai_threshold: float  # verdict "ai" when P(generated) >= this
    artist_threshold: float  # verdict "artist" when P(generated) <= this (and below ai_threshold)
    unknown_threshold: float  # an "ai" image whose generator score is below this: generator "unknown"
    target_fpr: float
    target_fnr: float
    known_pass_rate: float
    detection_shift: float = 0.0  # subtracted from P(generated)'s logit before the detection temperature
    measured: dict[str, Any] = field(default_factory=dict)  # figures on the calibration split
    source: dict[str, Any] = field(default_factory=dict)  # data, split, weights the fit used
    overrides: dict[str, dict[str, float]] = field(default_factory=dict)  # {name: {"fitted", "now"}}

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.human_class not in self.class_names:
            raise ValueError(f"human class {self.human_class!r} is not among {list(self.class_names)}")
        for name in ("temperature", "detection_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.artist_threshold > self.ai_threshold:
            raise ValueError(
                f"artist threshold {self.artist_threshold} is above the ai threshold {self.ai_threshold}"
            )

    def probabilities(self, probs: np.ndarray) -> np.ndarray:
        """The calibrated class probabilities of rows of model softmax outputs (see the module docstring)."""
        human = self.class_names.index(self.human_class)
        probs = _check_probs(probs, len(self.class_names))
        return calibrated_probabilities(
            probs, human, self.temperature, self.detection_temperature, self.detection_shift
        )

    def bands(self) -> dict[str, str]:
        """The verdict bands in words, as stored in calibration.json."""
        return {
            "artist": f"p_generated <= {self.artist_threshold!r}",
            "unsure": f"{self.artist_threshold!r} < p_generated < {self.ai_threshold!r}",
            "ai": f"p_generated >= {self.ai_threshold!r}",
            "unknown_generator": f"verdict ai and generator score < {self.unknown_threshold!r}",
        }

    def with_thresholds(
        self, *, ai: float | None = None, artist: float | None = None, unknown: float | None = None
    ) -> Calibration:
        """A copy with thresholds set by hand. The `measured` rates still describe the fitted thresholds;
        `overrides` records what changed."""
        changes = {
            name: value
            for name, value in (
                ("ai_threshold", ai),
                ("artist_threshold", artist),
                ("unknown_threshold", unknown),
            )
            if value is not None
        }
        overrides = dict(self.overrides)
        for name, value in changes.items():
            fitted = overrides.get(name, {}).get("fitted", getattr(self, name))
            overrides[name] = {"fitted": fitted, "now": float(value)}
        return replace(self, **{k: float(v) for k, v in changes.items()}, overrides=overrides)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return {"format": CALIBRATION_FORMAT, **data, "bands": self.bands()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        if data.get("format") in STALE_FORMATS:
            raise StaleCalibrationError(f"{STALE_FORMATS[data['format']]}; run `animeprov calibrate` again")
        if data.get("format") not in READABLE_FORMATS:
            raise ValueError(f"unsupported calibration format {data.get('format')!r}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# ---------------------------------------------------------------------------------------------------------
# Pure functions


def _check_probs(probs: np.ndarray, n_classes: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (n, {n_classes}), got {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs must be finite and non-negative softmax probabilities")
    return probs


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, PROB_FLOOR, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row by row: the probabilities a model with logits / T would give."""
    return np.exp(log_softmax(_log_probs(np.asarray(probs, dtype=np.float64)) / temperature, axis=1))


def _detection_log_probs(log_p: np.ndarray, human: int) -> tuple[np.ndarray, np.ndarray]:
    """(log P(human), log P(generated)) of log softmax outputs."""
    generators = np.delete(log_p, human, axis=1)
    return log_p[:, human], logsumexp(generators, axis=1)


def calibrated_probabilities(
    probs: np.ndarray,
    human: int,
    temperature: float,
    detection_temperature: float,
    detection_shift: float = 0.0,
) -> np.ndarray:
    """Class probabilities with P(generated) = sigmoid((logit(1 - p[human]) - detection_shift) /
    detection_temperature) and the generator columns sharing it as softmax(log p / temperature) shares them
    (module docstring)."""
    log_p = _log_probs(np.asarray(probs, dtype=np.float64))
    log_human, log_generated = _detection_log_probs(log_p, human)
    detection_logit = (log_generated - log_human - detection_shift) / detection_temperature
    share = softmax(np.delete(log_p, human, axis=1) / temperature, axis=1)
    shared = expit(detection_logit)[:, None] * share
    return np.insert(shared, human, expit(-detection_logit), axis=1)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    log_p = log_softmax(_log_probs(np.asarray(probs, dtype=np.float64)) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the NLL of softmax(log p / T), searched over log T."""
    log_p = _log_probs(np.asarray(probs, dtype=np.float64))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(log_p / math.exp(log_t), axis=1)[rows, labels].mean())

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def detection_logits(probs: np.ndarray, human: int) -> np.ndarray:
    """log P(generated) - log P(human) of softmax outputs: the model's own detection logit."""
    log_human, log_generated = _detection_log_probs(_log_probs(np.asarray(probs, dtype=np.float64)), human)
    return log_generated - log_human


def balanced_binary_nll(logits: np.ndarray, generated: np.ndarray, temperature: float, shift: float) -> float:
    """Mean NLL of sigmoid((logit - shift) / temperature) against `generated`, each class weighing half."""
    z = (np.asarray(logits, dtype=np.float64) - shift) / temperature
    losses = np.logaddexp(0.0, np.where(generated, -z, z))  # -log sigmoid(+-z), stable
    return float((losses[generated].mean() + losses[~generated].mean()) / 2)


def fit_detection_scaling(logits: np.ndarray, generated: np.ndarray) -> tuple[float, float]:
    """(temperature, shift) minimising `balanced_binary_nll`: a logistic fit of one feature at equal class
    weight; the temperature within TEMPERATURE_BOUNDS, the shift within +-SHIFT_BOUND."""
    logits = np.asarray(logits, dtype=np.float64)
    generated = np.asarray(generated, dtype=bool)

    def loss(params: np.ndarray) -> float:
        return balanced_binary_nll(logits, generated, math.exp(params[0]), params[1])

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize(
        loss, x0=np.array([0.0, 0.0]), method="L-BFGS-B", bounds=[(low, high), (-SHIFT_BOUND, SHIFT_BOUND)]
    )
    return float(math.exp(result.x[0])), float(result.x[1])


def allowed_count(rate: float, n: int) -> int:
    """floor(rate * n): how many of n images may be wrong at an error rate of `rate`."""
    return int(math.floor(rate * n + _COUNT_SLACK))


def fpr_threshold(negative_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest t with at most floor(target_fpr * n) negative scores >= t.

    That is the next float above the (k+1)-th highest score, so scores tied with it all fall below t; the
    lowest score when every score may be flagged.
    """
    scores = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    allowed = allowed_count(target_fpr, len(scores))
    if allowed >= len(scores):
        return float(scores[-1])
    return float(np.nextafter(scores[allowed], np.inf))


def fnr_threshold(positive_scores: np.ndarray, target_fnr: float) -> float:
    """The largest t with at most floor(target_fnr * m) positive scores <= t (mirror of `fpr_threshold`)."""
    return -fpr_threshold(-np.asarray(positive_scores, dtype=np.float64), target_fnr)


def pass_threshold(scores: np.ndarray, pass_rate: float) -> float:
    """The largest t that at least ceil(pass_rate * n) of `scores` reach (score >= t)."""
    if not 0 < pass_rate <= 1:
        raise ValueError(f"pass rate must be in (0, 1], got {pass_rate}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    needed = max(1, math.ceil(pass_rate * len(scores) - _COUNT_SLACK))
    return float(scores[needed - 1])


def fpr_upper_bound(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate observed as false_positives / n."""
    if false_positives >= n:
        return 1.0
    return float(beta.ppf(confidence, false_positives + 1, n - false_positives))


def _split_columns(calibrated: np.ndarray, class_names: Sequence[str], human_class: str):
    """(P(generated), generator score, index of the best generator class in `class_names`)."""
    human = list(class_names).index(human_class)
    generator_columns = np.array([i for i in range(len(class_names)) if i != human])
    p_generated = 1.0 - calibrated[:, human]
    generator_probs = calibrated[:, generator_columns]
    # The softmax of the generator logits alone: P(generator | generated). Renormalising the tempered
    # probabilities is the same thing and stays finite when P(generated) underflows to 0.
    conditional = generator_probs / np.maximum(
        generator_probs.sum(axis=1, keepdims=True), np.finfo(float).tiny
    )
    best = conditional.argmax(axis=1)
    return p_generated, conditional.max(axis=1), generator_columns[best]


def fit_calibration(
    probs: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    *,
    human_class: str = DEFAULT_HUMAN_CLASS,
    target_fpr: float = DEFAULT_TARGET_FPR,
    target_fnr: float = DEFAULT_TARGET_FNR,
    known_pass_rate: float = DEFAULT_KNOWN_PASS_RATE,
) -> Calibration:
    """Fit temperature, verdict thresholds and the unknown-generator threshold on one labelled split.

    `probs` are the model's softmax outputs (n, classes) in the order of `class_names`; `labels` the true
    class indices. The split needs human and generated images.
    """
    class_names = [str(name) for name in class_names]
    if human_class not in class_names:
        raise ValueError(f"human class {human_class!r} is not among the class names {class_names}")
    if len(class_names) < 2:
        raise ValueError("calibration needs the human class and at least one generator class")
    for name, value in (("target_fpr", target_fpr), ("target_fnr", target_fnr)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not 0 < known_pass_rate <= 1:
        raise ValueError(f"known_pass_rate must be in (0, 1], got {known_pass_rate}")
    probs = _check_probs(probs, len(class_names))
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(probs),):
        raise ValueError(f"{len(labels)} labels for {len(probs)} rows of probabilities")
    is_human = labels == class_names.index(human_class)
    n_human, n_generated = int(is_human.sum()), int((~is_human).sum())
    if n_human == 0 or n_generated == 0:
        raise ValueError(f"calibration needs human and generated images; got {n_human} and {n_generated}")

    human = class_names.index(human_class)
    temperature = fit_temperature(probs, labels)
    logits = detection_logits(probs, human)
    detection_temperature, detection_shift = fit_detection_scaling(logits, ~is_human)
    calibrated = calibrated_probabilities(probs, human, temperature, detection_temperature, detection_shift)
    p_generated, generator_score, _ = _split_columns(calibrated, class_names, human_class)

    ai_threshold = fpr_threshold(p_generated[is_human], target_fpr)
    artist_threshold = min(fnr_threshold(p_generated[~is_human], target_fnr), ai_threshold)
    judged_ai = p_generated >= ai_threshold
    judged_artist = (p_generated <= artist_threshold) & ~judged_ai
    known_ai = judged_ai & ~is_human
    unknown_fit = known_ai if known_ai.any() else ~is_human
    unknown_threshold = pass_threshold(generator_score[unknown_fit], known_pass_rate)
    false_positives = int(judged_ai[is_human].sum())
    allowed = allowed_count(target_fpr, n_human)
    measured = {
        "n_images": int(len(labels)),
        "n_human": n_human,
        "n_generated": n_generated,
        "ece_before": expected_calibration_error(probs, labels),
        "ece_after": expected_calibration_error(apply_temperature(probs, temperature), labels),
        "ece_bins": DEFAULT_ECE_BINS,
        "nll_before": negative_log_likelihood(probs, labels),
        "nll_after": negative_log_likelihood(probs, labels, temperature),
        # at equal class weight, the loss the detection temperature and shift minimise
        "detection_nll_before": balanced_binary_nll(logits, ~is_human, 1.0, 0.0),
        "detection_nll_after": balanced_binary_nll(logits, ~is_human, detection_temperature, detection_shift),
        "balanced_accuracy_at_half_before": _balanced_accuracy(logits >= 0, ~is_human),
        "balanced_accuracy_at_half_after": _balanced_accuracy(logits >= detection_shift, ~is_human),
        "allowed_false_positives": allowed,
        "false_positives": false_positives,
        "fpr": false_positives / n_human,
        "fpr_upper_95": fpr_upper_bound(false_positives, n_human),
        "tpr": float(judged_ai[~is_human].mean()),
        "fnr": float(judged_artist[~is_human].mean()),
        "human_judged_artist": float(judged_artist[is_human].mean()),
        "unsure_rate": float((~judged_ai & ~judged_artist).mean()),
        "unknown_fit_images": int(unknown_fit.sum()),
        "known_pass_rate": float((generator_score[unknown_fit] >= unknown_threshold).mean()),
        "known_pass_rate_all_generated": float((generator_score[~is_human] >= unknown_threshold).mean()),
        "notes": _notes(
            (temperature, detection_temperature), target_fpr, n_human, allowed, ai_threshold, len(class_names)
        ),
    }
    if not known_ai.any():
        measured["notes"].append(
            "no generated image is judged ai: the unknown threshold is fitted on all generated images"
        )
    return Calibration(
        class_names=tuple(class_names),
        human_class=human_class,
        temperature=temperature,
        detection_temperature=detection_temperature,
        ai_threshold=ai_threshold,
        artist_threshold=artist_threshold,
        unknown_threshold=unknown_threshold,
        target_fpr=float(target_fpr),
        target_fnr=float(target_fnr),
        known_pass_rate=float(known_pass_rate),
        detection_shift=detection_shift,
        measured=measured,
    )


def _balanced_accuracy(judged_generated: np.ndarray, generated: np.ndarray) -> float:
    return float((judged_generated[generated].mean() + (~judged_generated[~generated]).mean()) / 2)


def _notes(
    temperatures: tuple[float, float],
    target_fpr: float,
    n_human: int,
    allowed: int,
    ai_threshold: float,
    n_classes: int,
) -> list[str]:
    notes = [
        f"{n_human} human images at target FPR {target_fpr:g} allow {allowed} false positive(s) "
        f"(floor({target_fpr:g} x {n_human})); FPR is measured in steps of 1/{n_human} = {1 / n_human:.3f}"
        + ("; the ai threshold sits just above the highest human score" if allowed == 0 else "")
    ]
    for name, temperature in zip(("temperature", "detection temperature"), temperatures, strict=True):
        if any(math.isclose(temperature, bound, rel_tol=1e-3) for bound in TEMPERATURE_BOUNDS):
            notes.append(
                f"{name} {temperature:.4g} is at its search bound {TEMPERATURE_BOUNDS}: the split may be "
                "separated perfectly (no finite optimum); use a larger or harder calibration split"
            )
    if ai_threshold > 1.0:
        notes.append("a human image scored P(generated) = 1: no image can be judged ai at this target FPR")
    if n_classes == 2:
        notes.append("one generator class: the unknown-generator outcome never fires")
    return notes


def verdicts(probs: np.ndarray, calibration: Calibration) -> list[dict[str, Any]]:
    """One verdict per row of model softmax outputs (uncalibrated, in `calibration.class_names` order)."""
    calibrated = calibration.probabilities(probs)
    p_generated, generator_score, best = _split_columns(
        calibrated, calibration.class_names, calibration.human_class
    )
    results = []
    for p, score, column in zip(p_generated, generator_score, best, strict=True):
        if p >= calibration.ai_threshold:
            label, generator = "ai", calibration.class_names[column]
            if score < calibration.unknown_threshold or generator in AUXILIARY_CLASSES:
                generator = UNKNOWN_GENERATOR
        elif p <= calibration.artist_threshold:
            label, generator = "artist", None
        else:
            label, generator = "unsure", None
        results.append(
            {
                "verdict": label,
                "generator": generator,
                "p_generated": float(p),
                "generator_score": float(score),
            }
        )
    return results


def verdict(probs_row: np.ndarray, calibration: Calibration) -> dict[str, Any]:
    """{"verdict": "artist" | "unsure" | "ai", "generator": name | "unknown" | None, "p_generated": float,
    "generator_score": float}; the generator is named only for an "ai" verdict."""
    return verdicts(np.asarray(probs_row)[None, :], calibration)[0]


# ---------------------------------------------------------------------------------------------------------
# Storage next to the model


def save_calibration(run: str | Path, calibration: Calibration) -> Path:
    from animeprov.checkpoint import atomic_write_text

    path = Path(run) / CALIBRATION_FILE
    atomic_write_text(path, json.dumps(calibration.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def load_calibration(run: str | Path, *, check_weights: bool = True) -> Calibration | None:
    """The run's calibration, or None when it has none.

    Raises StaleCalibrationError when the run's classes, or (with `check_weights`) its weights file, are
    not those the calibration was fitted for: e.g. after a resumed training wrote new best weights.
    """
    from animeprov.checkpoint import read_config

    run = Path(run)
    path = run / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        calibration = Calibration.from_dict(json.loads(path.read_text()))
    except StaleCalibrationError as error:
        raise StaleCalibrationError(f"{path}: {error}") from None
    classes = read_config(run)["classes"]
    if list(calibration.class_names) != list(classes):
        raise StaleCalibrationError(
            f"{path}: fitted for classes {list(calibration.class_names)}, the run has {classes}; "
            "run `animeprov calibrate` again"
        )
    weights, digest = calibration.source.get("weights"), calibration.source.get("weights_sha256")
    if check_weights and weights and digest and sha256_file(run / weights) != digest:
        raise StaleCalibrationError(
            f"{path}: fitted for other weights than the run's {weights} now; run `animeprov calibrate` again"
        )
    return calibration


def calibrate_run(
    run: str | Path,
    data_csv: str | Path,
    *,
    split: str = "val",
    human_class: str | None = None,
    target_fpr: float = DEFAULT_TARGET_FPR,
    target_fnr: float = DEFAULT_TARGET_FNR,
    known_pass_rate: float = DEFAULT_KNOWN_PASS_RATE,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    weights: str | None = None,
    write: bool = True,
) -> Calibration:
    """Predict `split` of `data_csv` with the run's model, fit a calibration and (with `write`) store it
    as calibration.json in the run folder. `human_class` defaults to the one the run was trained with."""
    from animeprov import checkpoint as ckpt
    from animeprov.data.manifest import file_digest
    from animeprov.evaluation.evaluate import predict_split
    from animeprov.progress import console, labelled

    run = Path(run)
    weights = weights or ckpt.BEST_WEIGHTS
    if split == "train":
        console.print("calibrating on the training split: the model is over-confident there", style="yellow")
    predictions, config = predict_split(
        run, data_csv, split, batch_size=batch_size, workers=workers, device=device, weights=weights
    )
    classes = list(config["classes"])
    human_class = human_class or config.get("human_class", DEFAULT_HUMAN_CLASS)
    for path, reason in predictions.errors:
        console.print(labelled("skipped", f"{path}: {reason}"))
    calibration = fit_calibration(
        predictions.probs,
        predictions.labels,
        classes,
        human_class=human_class,
        target_fpr=target_fpr,
        target_fnr=target_fnr,
        known_pass_rate=known_pass_rate,
    )
    data_sha256 = file_digest(data_csv)
    calibration = replace(
        calibration,
        source={
            "data": str(data_csv),
            "split": split,
            "data_sha256": data_sha256,
            "same_data_as_training": data_sha256 == config.get("data_sha256"),
            "skipped_files": len(predictions.errors),
            "weights": weights,
            "weights_sha256": sha256_file(run / weights),
            "variant": config["variant"],
        },
    )
    if write:
        save_calibration(run, calibration)
    return calibration
