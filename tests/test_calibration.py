"""Temperature scaling, verdict thresholds, unknown-generator outcome and calibration.json."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import typer
from scipy.special import softmax
from typer.testing import CliRunner

from animeprov.cli import calibrate_command
from animeprov.evaluation.calibration import (
    CALIBRATION_FILE,
    Calibration,
    StaleCalibrationError,
    apply_temperature,
    balanced_binary_nll,
    fit_calibration,
    fit_detection_scaling,
    fnr_threshold,
    fpr_threshold,
    load_calibration,
    pass_threshold,
    save_calibration,
    verdict,
    verdicts,
)
from animeprov.evaluation.metrics import expected_calibration_error

CLASSES = ("gen-a", "gen-b", "human")


def calibrated_toy(n: int = 6000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: softmax(logits) is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits, axis=1)])
    return logits, labels


def test_temperature_undoes_over_confidence() -> None:
    logits, labels = calibrated_toy()
    over_confident = softmax(5.0 * logits, axis=1)
    calibration = fit_calibration(over_confident, labels, ["human", "a", "b", "c"])
    assert calibration.temperature == pytest.approx(5.0, rel=0.1)
    m = calibration.measured
    assert m["ece_before"] > 0.2 and m["ece_after"] < 0.03
    assert m["nll_after"] < m["nll_before"]
    assert m["ece_after"] == pytest.approx(
        expected_calibration_error(apply_temperature(over_confident, calibration.temperature), labels)
    )


def test_temperature_of_a_calibrated_model_stays_near_one() -> None:
    logits, labels = calibrated_toy(seed=1)
    calibration = fit_calibration(softmax(logits, axis=1), labels, ["human", "a", "b", "c"])
    assert calibration.temperature == pytest.approx(1.0, abs=0.1)


def test_apply_temperature_matches_softmax_of_scaled_logits() -> None:
    logits, _ = calibrated_toy(n=50)
    np.testing.assert_allclose(apply_temperature(softmax(logits, axis=1), 2.5), softmax(logits / 2.5, axis=1))


def test_fpr_threshold_by_hand_with_ties() -> None:
    human = np.array([0.05, 0.2, 0.1, 0.9, 0.2])
    # 1% of 5 allows 0 false positives: just above the highest human score.
    assert fpr_threshold(human, 0.01) == np.nextafter(0.9, 1.0)
    # 20% allows 1: just above 0.2; 40% also allows 2, but 0.2 is tied, so the same threshold (FPR 1/5).
    assert fpr_threshold(human, 0.2) == np.nextafter(0.2, 1.0)
    assert fpr_threshold(human, 0.4) == np.nextafter(0.2, 1.0)
    assert fpr_threshold(human, 0.6) == np.nextafter(0.1, 1.0)  # 0.6 * 5 = 2.999...: still 3 allowed
    # Mirror for the artist band: at most floor(rate * m) generated scores <= t, t as large as possible.
    generated = np.array([0.3, 0.95, 0.6, 0.6])
    assert fnr_threshold(generated, 0.0) == np.nextafter(0.3, 0.0)
    assert fnr_threshold(generated, 0.25) == np.nextafter(0.6, 0.0)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.33])
def test_fpr_threshold_is_the_smallest_meeting_the_target(target: float) -> None:
    scores = np.round(np.random.default_rng(3).random(57), 2)  # rounding makes ties
    t = fpr_threshold(scores, target)
    allowed = int(np.floor(target * len(scores) + 1e-9))
    assert (scores >= t).sum() <= allowed
    assert (scores >= np.nextafter(t, -np.inf)).sum() > allowed


def test_pass_threshold_passes_the_requested_fraction() -> None:
    scores = np.random.default_rng(4).random(200)
    for rate in (0.5, 0.9, 0.95, 1.0):
        t = pass_threshold(scores, rate)
        assert (scores >= t).mean() >= rate
        assert (scores >= np.nextafter(t, np.inf)).mean() < rate  # and no larger threshold would do
    assert pass_threshold(scores, 1.0) == scores.min()


def separable_split() -> tuple[np.ndarray, np.ndarray]:
    """Classes gen-a, gen-b, human; 100 humans, 200 generated; scores overlap a little."""
    rng = np.random.default_rng(5)
    labels = np.repeat([2, 0, 1], [100, 100, 100])
    logits = rng.normal(0.0, 1.0, size=(300, 3))
    logits[np.arange(300), labels] += 2.5
    return softmax(3.0 * logits, axis=1), labels


def test_fitted_thresholds_meet_their_targets_on_the_fit_split() -> None:
    probs, labels = separable_split()
    calibration = fit_calibration(
        probs, labels, CLASSES, target_fpr=0.03, target_fnr=0.05, known_pass_rate=0.9
    )
    judged = verdicts(probs, calibration)
    human, generated = labels == 2, labels != 2
    said = np.array([v["verdict"] for v in judged])
    assert (said[human] == "ai").sum() == calibration.measured["false_positives"] <= 3
    assert (said[generated] == "artist").mean() <= 0.05
    assert calibration.measured["tpr"] == pytest.approx((said[generated] == "ai").mean())
    # The unknown threshold is fitted where it applies: on the generated images judged ai.
    scores = np.array([v["generator_score"] for v in judged])[generated & (said == "ai")]
    assert (scores >= calibration.unknown_threshold).mean() >= 0.9
    assert calibration.measured["known_pass_rate"] == pytest.approx(
        (scores >= calibration.unknown_threshold).mean()
    )
    assert calibration.measured["unknown_fit_images"] == len(scores)
    assert calibration.artist_threshold <= calibration.ai_threshold


def test_unknown_threshold_falls_back_to_all_generated_images_when_none_is_judged_ai() -> None:
    # A model that has it backwards: every human looks more generated than any generated image.
    labels = np.repeat([2, 0, 1], 10)
    p_human = np.where(labels == 2, 0.1, 0.8)
    rest = np.linspace(0.3, 0.7, 30)
    probs = np.stack([(1 - p_human) * rest, (1 - p_human) * (1 - rest), p_human], axis=1)
    calibration = fit_calibration(probs, labels, CLASSES, known_pass_rate=0.5)
    m = calibration.measured
    assert m["tpr"] == 0 and m["unknown_fit_images"] == 20
    assert any("fitted on all generated images" in note for note in m["notes"])


def test_small_human_sample_allows_no_false_positive_and_says_so() -> None:
    probs, labels = separable_split()
    keep = np.r_[np.arange(34), np.arange(100, 300)]  # 34 human images, as in the issue
    calibration = fit_calibration(probs[keep], labels[keep], CLASSES, target_fpr=0.01)
    m = calibration.measured
    assert m["allowed_false_positives"] == 0 and m["false_positives"] == 0
    assert m["fpr_upper_95"] == pytest.approx(1 - 0.05 ** (1 / 34))  # rule-of-three-like bound, ~8.4%
    assert any("allow 0 false positive" in note for note in m["notes"])


def hand_calibration(**overrides) -> Calibration:
    values = dict(
        class_names=CLASSES,
        human_class="human",
        temperature=1.0,
        detection_temperature=1.0,
        ai_threshold=0.8,
        artist_threshold=0.3,
        unknown_threshold=0.6,
        target_fpr=0.01,
        target_fnr=0.05,
        known_pass_rate=0.95,
    )
    values.update(overrides)
    return Calibration(**values)


def test_verdict_bands_on_hand_made_rows() -> None:
    calibration = hand_calibration()
    cases = [
        ([0.05, 0.05, 0.90], "artist", None),
        ([0.30, 0.20, 0.50], "unsure", None),
        ([0.85, 0.05, 0.10], "ai", "gen-a"),  # generator score 0.85 / 0.9
        ([0.02, 0.93, 0.05], "ai", "gen-b"),
        ([0.46, 0.44, 0.10], "ai", "unknown"),  # looks generated, fits neither generator (score 0.51)
    ]
    for row, expected_verdict, expected_generator in cases:
        result = verdict(np.array(row), calibration)
        assert (result["verdict"], result["generator"]) == (expected_verdict, expected_generator), row
        assert result["p_generated"] == pytest.approx(1 - row[2])


def test_verdict_band_edges_and_temperature() -> None:
    row = np.array([0.6, 0.2, 0.2])
    p = verdict(row, hand_calibration())["p_generated"]
    assert verdict(row, hand_calibration(ai_threshold=p))["verdict"] == "ai"  # ai includes its threshold
    assert verdict(row, hand_calibration(ai_threshold=0.9, artist_threshold=p))["verdict"] == "artist"
    # The class temperature leaves P(generated) alone (at T = 5 the softmax alone would pull 0.8 towards the
    # uniform 2/3); the detection temperature pulls it towards 0.5: no longer ai.
    assert verdict(row, hand_calibration(temperature=5.0))["p_generated"] == pytest.approx(0.8)
    flattened = verdict(row, hand_calibration(detection_temperature=5.0))
    assert flattened["verdict"] == "unsure"
    assert flattened["p_generated"] == pytest.approx(1 / (1 + 4 ** (-1 / 5)))  # logit(0.8) = log 4


def test_a_high_class_temperature_does_not_make_human_art_look_generated() -> None:
    # Six classes, an image the model gives P(human) = 0.8. Temperature 5 over the softmax would give
    # P(generated) = 5 * 0.04**0.2 / (0.8**0.2 + 5 * 0.04**0.2) = 0.733, and "ai" at a 0.7 threshold.
    classes = ("human", "a", "b", "c", "d", "e")
    row = np.array([0.8, 0.04, 0.04, 0.04, 0.04, 0.04])
    assert 1 - apply_temperature(row[None, :], 5.0)[0, 0] == pytest.approx(0.7331, abs=1e-4)
    calibration = hand_calibration(class_names=classes, temperature=5.0, ai_threshold=0.7)
    judged = verdict(row, calibration)
    assert judged["p_generated"] == pytest.approx(0.2) and judged["verdict"] == "artist"
    calibrated = calibration.probabilities(row[None, :])[0]
    assert calibrated.sum() == pytest.approx(1.0) and calibrated[0] == pytest.approx(0.8)
    np.testing.assert_allclose(calibrated[1:], 0.04)  # equal generators keep equal shares


def test_detection_temperature_is_fitted_on_generated_against_human() -> None:
    # A model three times over-confident about "generated": its detection logit is 3x the true one, and
    # the labels are drawn with the true probabilities. The fitted detection temperature undoes it.
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 6000)
    generated = rng.random(6000) < 1 / (1 + np.exp(-true_logit))
    p_generated = 1 / (1 + np.exp(-3 * true_logit))
    share = rng.dirichlet([2, 2], 6000)  # which generator: unrelated to detection
    probs = np.column_stack([p_generated[:, None] * share, 1 - p_generated])
    labels = np.where(generated, rng.integers(0, 2, 6000), 2)
    calibration = fit_calibration(probs, labels, CLASSES, target_fpr=0.05)
    assert calibration.detection_temperature == pytest.approx(3.0, rel=0.1)
    m = calibration.measured
    assert m["detection_nll_after"] < m["detection_nll_before"]


def test_detection_shift_moves_the_half_point_to_the_balanced_one() -> None:
    # A model that leans to "human" on these sources: human logits ~ N(-4, 1), generated ~ N(-1, 1), so at
    # its own 0.5 it calls nearly every image human. At equal class weight the true log-odds are
    # log N(z; -1, 1) - log N(z; -4, 1) = 3 z + 7.5 = (z + 2.5) / (1/3): temperature 1/3, shift -2.5.
    rng = np.random.default_rng(1)
    z = np.r_[rng.normal(-4, 1, 3000), rng.normal(-1, 1, 1000)]
    labels = np.r_[np.full(3000, 2), rng.integers(0, 2, 1000)]
    p_generated = 1 / (1 + np.exp(-z))
    probs = np.column_stack([p_generated[:, None] * [0.5, 0.5], 1 - p_generated])
    calibration = fit_calibration(probs, labels, CLASSES, target_fpr=0.01)
    assert calibration.detection_temperature == pytest.approx(1 / 3, rel=0.1)
    assert calibration.detection_shift == pytest.approx(-2.5, abs=0.15)
    m = calibration.measured
    assert m["balanced_accuracy_at_half_before"] < 0.6 < 0.9 < m["balanced_accuracy_at_half_after"]
    calibrated = calibration.probabilities(probs)[:, 2]
    np.testing.assert_allclose(1 - calibrated, 1 / (1 + np.exp(-(z + 2.5) * 3)), atol=0.05)
    # Monotone: the ai threshold still lets exactly floor(0.01 x 3000) = 30 human images through, and the
    # generated images above it are those above the 31st highest human logit.
    human_z = np.sort(z[:3000])[::-1]
    assert m["false_positives"] == 30
    assert m["tpr"] == pytest.approx((z[3000:] > human_z[30]).mean())


def test_detection_fit_weighs_the_classes_equally() -> None:
    # Labels drawn from P(generated) = sigmoid((z - 1) / 2) with 4x more human images: a plain logistic fit
    # would find shift 1; at equal class weight the prior odds 1:4 are taken out, so the shift is
    # 1 + 2 log(n_generated / n_human) and temperature 2.
    rng = np.random.default_rng(2)
    z = rng.normal(-3, 3, 40000)
    generated = rng.random(40000) < 1 / (1 + np.exp(-(z - 1) / 2))
    temperature, shift = fit_detection_scaling(z, generated)
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert shift == pytest.approx(1 + 2 * np.log(generated.sum() / (~generated).sum()), abs=0.15)
    assert balanced_binary_nll(z, generated, temperature, shift) < balanced_binary_nll(z, generated, 2.0, 1.0)


def test_calibration_format_3_loads_without_a_shift(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"classes": list(CLASSES)}))
    data = hand_calibration().to_dict()
    del data["detection_shift"]
    (run / "calibration.json").write_text(json.dumps({**data, "format": 3}))
    loaded = load_calibration(run)
    assert loaded.detection_shift == 0.0
    assert verdict(np.array([0.6, 0.2, 0.2]), loaded)["p_generated"] == pytest.approx(0.8)
    shifted = verdict(np.array([0.6, 0.2, 0.2]), hand_calibration(detection_shift=np.log(4)))
    assert shifted["p_generated"] == pytest.approx(0.5)  # logit(0.8) = log 4, moved to 0


@pytest.mark.parametrize("old_format", [1, 2])
def test_older_calibration_formats_ask_for_a_new_fit(tmp_path, old_format) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"classes": list(CLASSES)}))
    data = hand_calibration().to_dict()
    if old_format == 1:
        del data["detection_temperature"]
    (run / "calibration.json").write_text(json.dumps({**data, "format": old_format}))
    with pytest.raises(
        StaleCalibrationError, match=rf"calibration\.json: calibration format {old_format}.*calibrate"
    ):
        load_calibration(run)


def test_overrides_are_recorded_and_checked() -> None:
    calibration = hand_calibration()
    strict = calibration.with_thresholds(ai=0.95).with_thresholds(ai=0.97)
    assert strict.ai_threshold == 0.97 and strict.artist_threshold == 0.3
    assert strict.overrides == {"ai_threshold": {"fitted": 0.8, "now": 0.97}}
    assert verdict(np.array([0.85, 0.05, 0.10]), strict)["verdict"] == "unsure"
    with pytest.raises(ValueError, match="above the ai threshold"):
        calibration.with_thresholds(artist=0.9)
    with pytest.raises(ValueError, match="human class"):
        hand_calibration(human_class="person")


def write_run_config(run, classes=CLASSES) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"classes": list(classes)}))


def test_calibration_json_round_trip_and_staleness(tmp_path) -> None:
    probs, labels = separable_split()
    run = tmp_path / "run"
    write_run_config(run)
    assert load_calibration(run) is None
    (run / "model.safetensors").write_bytes(b"weights v1")
    calibration = replace(
        fit_calibration(probs, labels, CLASSES).with_thresholds(unknown=0.5),
        source={"weights": "model.safetensors", "weights_sha256": _sha256(b"weights v1"), "split": "val"},
    )
    path = save_calibration(run, calibration)
    stored = json.loads(path.read_text())
    assert path.name == CALIBRATION_FILE and stored["bands"]["ai"].startswith("p_generated >= ")
    loaded = load_calibration(run)
    assert loaded == calibration
    assert verdicts(probs, loaded) == verdicts(probs, calibration)

    (run / "model.safetensors").write_bytes(b"weights v2")  # e.g. a resumed training
    with pytest.raises(StaleCalibrationError, match="other weights"):
        load_calibration(run)
    assert load_calibration(run, check_weights=False) == calibration
    write_run_config(run, ("gen-a", "human"))
    with pytest.raises(StaleCalibrationError, match="classes"):
        load_calibration(run, check_weights=False)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_fit_refuses_a_split_without_both_kinds() -> None:
    probs, labels = separable_split()
    with pytest.raises(ValueError, match="human and generated"):
        fit_calibration(probs[labels != 2], labels[labels != 2], CLASSES)
    with pytest.raises(ValueError, match="not among"):
        fit_calibration(probs, labels, CLASSES, human_class="person")


def test_cli_calibrates_a_tiny_run_end_to_end(tiny_split, tmp_path) -> None:
    from animeprov.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_split), size=32, epochs=1, batch_size=8, seed=0), run)
    app = typer.Typer()
    calibrate_command.register(app)
    app.command()(
        lambda: None
    )  # a second command, so that `calibrate` is addressed by name as in the real CLI
    result = CliRunner().invoke(
        app, ["calibrate", str(run), "--data", str(tiny_split), "--target-fpr", "0.01"]
    )
    assert result.exit_code == 0, result.output
    assert "ECE before -> after" in result.output and "temperature" in result.output
    assert "detection temperature" in result.output
    calibration = load_calibration(run)
    assert calibration is not None and calibration.class_names == ("gen-a", "gen-b", "human")
    m = calibration.measured
    # The tiny split's val has 2 images per class: 2 human, 4 generated; 1% allows 0 false positives.
    assert (m["n_human"], m["n_generated"], m["false_positives"]) == (2, 4, 0)
    assert calibration.source["split"] == "val" and calibration.source["same_data_as_training"] is True
    assert len(calibration.source["data_sha256"]) == 64
