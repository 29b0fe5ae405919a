from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hand_case import CLASSES, HAND_LABELS, HAND_PROBS
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from animeprov.evaluation.metrics import classification_report, expected_calibration_error


@pytest.fixture
def hand_report() -> dict:
    return classification_report(HAND_LABELS, HAND_PROBS, CLASSES)


def test_hand_case_attribution(hand_report: dict) -> None:
    assert hand_report["n"] == 6
    assert hand_report["class_names"] == CLASSES
    assert hand_report["confusion_matrix"] == [[2, 0, 0], [0, 1, 1], [1, 0, 1]]
    assert hand_report["attribution_accuracy"] == pytest.approx(4 / 6)
    assert hand_report["counts"] == {"human": 2, "gen_a": 2, "gen_b": 2}
    expected = {
        # human: 2 of 2 found; 3 predicted human of which 2 right -> F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
        "human": {"n": 2, "accuracy": 1.0, "precision": 2 / 3, "f1": 0.8},
        "gen_a": {"n": 2, "accuracy": 0.5, "precision": 1.0, "f1": 2 / 3},
        "gen_b": {"n": 2, "accuracy": 0.5, "precision": 0.5, "f1": 0.5},
    }
    for name, stats in expected.items():
        assert hand_report["per_class"][name] == pytest.approx(stats)
    assert hand_report["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.5) / 3)


def test_hand_case_detection(hand_report: dict) -> None:
    detection = hand_report["detection"]
    assert detection["threshold"] == 0.5
    assert detection["n_human"] == 2
    assert detection["n_generated"] == 4
    # Image 1 (P(human) = 0.4, argmax human) is judged generated, so only 1 of 2 humans is judged human.
    assert detection["accuracy"] == pytest.approx(4 / 6)
    assert detection["accuracy_human"] == pytest.approx(1 / 2)
    assert detection["accuracy_generated"] == pytest.approx(3 / 4)
    # Scores P(generated): humans 0.2, 0.6; generated 0.9, 0.8, 0.4, 0.95.
    # ROC-AUC: 7 of the 8 (generated, human) pairs are ordered correctly (0.4 < 0.6 is not).
    assert detection["roc_auc"] == pytest.approx(7 / 8)
    # AP = sum over positives of precision at its rank: ranks 1, 2, 3 at precision 1, the 4th positive
    # at rank 5 with precision 4/5; each step adds recall 1/4.
    assert detection["average_precision"] == pytest.approx((1 + 1 + 1 + 4 / 5) / 4)


def test_hand_case_calibration_nll(hand_report: dict) -> None:
    true_probs = [0.8, 0.4, 0.7, 0.2, 0.3, 0.8]
    assert hand_report["calibration"]["nll"] == pytest.approx(-sum(math.log(p) for p in true_probs) / 6)
    assert 0.0 <= hand_report["calibration"]["ece"] <= 1.0


def test_threshold_changes_detection_only() -> None:
    # At threshold 0.65 image 1 (P(generated) 0.6) is judged human, image 3's 0.8 still generated.
    report = classification_report(HAND_LABELS, HAND_PROBS, CLASSES, threshold=0.65)
    assert report["detection"]["accuracy_human"] == 1.0
    assert report["detection"]["accuracy_generated"] == pytest.approx(3 / 4)
    assert report["detection"]["threshold"] == 0.65
    assert report["attribution_accuracy"] == pytest.approx(4 / 6)


def test_p_generated_equal_to_threshold_counts_as_generated() -> None:
    probs = np.array([[0.5, 0.5], [0.5, 0.5]])
    report = classification_report([0, 1], probs, ["human", "gen"])
    assert report["detection"]["accuracy_human"] == 0.0
    assert report["detection"]["accuracy_generated"] == 1.0


def test_human_class_need_not_be_first() -> None:
    # Same hand case with the columns reordered so that "human" is the last class.
    order = [1, 2, 0]
    names = [CLASSES[i] for i in order]
    remap = {old: new for new, old in enumerate(order)}
    report = classification_report([remap[y] for y in HAND_LABELS], HAND_PROBS[:, order], names)
    assert report["detection"]["accuracy_human"] == pytest.approx(1 / 2)
    assert report["detection"]["roc_auc"] == pytest.approx(7 / 8)
    assert report["per_class"]["human"]["f1"] == pytest.approx(0.8)


def test_report_is_json_serialisable(hand_report: dict) -> None:
    assert json.loads(json.dumps(hand_report, allow_nan=False)) == hand_report


def test_matches_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=300)
    logits = rng.normal(size=(300, 5)) + 1.5 * np.eye(5)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    names = ["human", "a", "b", "c", "d"]
    report = classification_report(labels, probs.astype(np.float32), names)

    predicted = probs.argmax(axis=1)
    assert report["confusion_matrix"] == confusion_matrix(labels, predicted, labels=range(5)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(5))
    for i, name in enumerate(names):
        assert report["per_class"][name] == pytest.approx(
            {"n": support[i], "accuracy": recall[i], "precision": precision[i], "f1": f1[i]}
        )
    assert report["macro_f1"] == pytest.approx(f1.mean())
    assert report["attribution_accuracy"] == pytest.approx((predicted == labels).mean())


def test_single_detection_class_gives_none_without_warnings() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report([0, 0, 0], probs, ["human", "gen"])
    detection = report["detection"]
    assert detection["average_precision"] is None
    assert detection["roc_auc"] is None
    assert detection["accuracy_generated"] is None
    assert detection["accuracy_human"] == pytest.approx(2 / 3)
    assert detection["n_generated"] == 0
    # "gen" has no images but is predicted once (wrongly): recall undefined, precision and F1 zero.
    assert report["per_class"]["gen"] == {"n": 0, "accuracy": None, "precision": 0.0, "f1": 0.0}
    assert report["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)
    json.dumps(report, allow_nan=False)


def test_class_absent_from_labels_and_predictions_is_undefined_and_left_out_of_macro_f1() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report([0, 1, 1], probs, CLASSES)
    assert report["per_class"]["gen_b"] == {"n": 0, "accuracy": None, "precision": None, "f1": None}
    assert report["macro_f1"] == 1.0


def test_class_never_predicted_has_undefined_precision() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = classification_report([0, 1, 2], probs, CLASSES)
    assert report["per_class"]["gen_b"] == {"n": 1, "accuracy": 0.0, "precision": None, "f1": 0.0}
    assert report["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_missing_human_class_names_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'human'.*gen_a.*gen_b"):
        classification_report([0, 1], np.array([[0.5, 0.5], [0.2, 0.8]]), ["gen_a", "gen_b"])
    with pytest.raises(ValueError, match="'real'"):
        classification_report(HAND_LABELS, HAND_PROBS, CLASSES, human_class="real")


def test_no_human_class_reports_attribution_only() -> None:
    from animeprov.reports.tables import report_markdown

    report = classification_report(
        [0, 1], np.array([[0.9, 0.1], [0.3, 0.7]]), ["gan_a", "gan_b"], human_class=None
    )
    assert report["detection"] is None and report["attribution_accuracy"] == 1.0
    text = report_markdown(report, title="gans")
    assert "no human class" in text and "Detection: human vs generated" not in text


@pytest.mark.parametrize(
    ("labels", "probs", "message"),
    [
        (HAND_LABELS, HAND_PROBS[:, :2], "2 columns but there are 3 class names"),
        (HAND_LABELS, HAND_PROBS.ravel(), "2-D"),
        (HAND_LABELS[:5], HAND_PROBS, "5 labels but probs has 6 rows"),
        ([0, 0, 1, 1, 2, 3], HAND_PROBS, r"label 3 out of range.*\[0, 2\]"),
        ([0, 0, 1, 1, 2, -1], HAND_PROBS, "label -1 out of range"),
        ([0, 0, 1, 1, 2, 2.5], HAND_PROBS, "integer class indices"),
        (np.array(HAND_LABELS)[:, None], HAND_PROBS, "1-D"),
        (HAND_LABELS, HAND_PROBS * 3.0, "sum to 1"),
        (HAND_LABELS, np.where(HAND_PROBS == 0.8, np.nan, HAND_PROBS), "NaN"),
        ([], np.zeros((0, 3)), "no images"),
    ],
)
def test_bad_inputs_raise_clear_errors(labels, probs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report(labels, probs, CLASSES)


def test_bad_threshold_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="threshold"):
        classification_report(HAND_LABELS, HAND_PROBS, CLASSES, threshold=1.5)
    with pytest.raises(ValueError, match="unique"):
        classification_report(HAND_LABELS, HAND_PROBS, ["human", "gen_a", "gen_a"])


def _toy(confidences_and_correct: list[tuple[float, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class toy predictions: class 0 predicted with the given confidence, right or wrong."""
    probs = np.array([[c, 1.0 - c] for c, _ in confidences_and_correct])
    labels = np.array([0 if correct else 1 for _, correct in confidences_and_correct])
    return probs, labels


def test_ece_is_zero_when_each_bin_is_calibrated() -> None:
    # Bin (0.667, 0.733]: 10 images at 0.7 with 7 right; bin (0.867, 0.933]: 10 at 0.9 with 9 right.
    probs, labels = _toy([(0.7, i < 7) for i in range(10)] + [(0.9, i < 9) for i in range(10)])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_an_overconfident_case() -> None:
    # Bin (0.933, 1]: confidences 0.94, 0.94, 0.96, 0.96 (mean 0.95), 2 of 4 right -> gap 0.45.
    # Bin (0.733, 0.8]: 4 at 0.75, 3 right -> gap 0. ECE = 4/8 * 0.45 + 4/8 * 0 = 0.225.
    # (Per-image |confidence - correct| would give a different number: the gap is taken per bin.)
    probs, labels = _toy(
        [(0.94, True), (0.94, False), (0.96, True), (0.96, False)] + [(0.75, i < 3) for i in range(4)]
    )
    assert expected_calibration_error(probs, labels) == pytest.approx(0.225)
    assert classification_report(labels, probs, ["human", "gen"])["calibration"]["ece"] == pytest.approx(
        0.225
    )


def test_ece_confidence_one_lands_in_last_bin_and_bin_count_matters() -> None:
    # 15 bins: 1.0 goes to the last bin (gap 0), 0.55 to its own (gap 0.55) -> 0.55 / 3.
    # One bin: |2/3 - mean confidence 2.55/3|.
    probs, labels = _toy([(1.0, True), (1.0, True), (0.55, False)])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.55 / 3)
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(2 / 3 - 2.55 / 3))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, labels, n_bins=0)
