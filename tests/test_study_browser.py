"""A real browser (Debian's chromium via pytest-playwright) takes a short study with the keyboard, reloads
half-way and resumes at the right image; and the model's verdicts sit beside the people's in the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from animeprov.study.app import create_app
from animeprov.study.create import STIMULI_DIR, create_study, load_study
from animeprov.study.store import open_store

READY = "#stimulus[data-ready='1']"


def _current_id(page) -> str:
    page.wait_for_selector(READY)
    return page.get_attribute("#stimulus", "data-stimulus-id")


def _answer(page, key: str) -> str:
    """Press `key` on the image shown; return that image's id once the next screen is up."""
    shown = _current_id(page)
    page.keyboard.press(key)
    page.wait_for_function(
        "id => { const img = document.getElementById('stimulus'); "
        "return document.getElementById('trial').hidden || img.dataset.stimulusId !== id; }",
        arg=shown,
    )
    return shown


def test_browser_study_with_keyboard_resumes_after_reload(
    tiny_split: Path, tmp_path: Path, live_server, page
):
    create_study(tiny_split, tmp_path / "study", per_class=2, seed=0)  # 3 classes x 2 test images
    url = live_server(create_app(tmp_path / "study", admin_token="t"))
    study = load_study(tmp_path / "study")
    store = open_store(tmp_path / "study", study)

    page.goto(url)
    page.wait_for_selector("#consent:not([hidden])")
    assert page.is_disabled("#start")  # no start without consent
    page.select_option("#familiarity", "some")
    page.check("#consent-box")
    page.click("#start")

    answered = {}
    for key, answer in (("1", "artist"), ("i", "ai"), ("3", "unsure")):
        answered[_answer(page, key)] = answer
    participant = store.participants()[0]
    assert list(answered) == participant.order[:3]  # the participant's own order

    page.reload()
    assert _current_id(page) == participant.order[3]  # resumed at the first unanswered image
    assert page.inner_text("#progress-text") == "Image 4 of 6"
    page.click(".conf[data-confidence='3']")  # optional confidence for this one
    for key, answer in (("2", "ai"), ("a", "artist"), ("u", "unsure")):
        answered[_answer(page, key)] = answer
    page.wait_for_selector("#done:not([hidden])")

    stored = {a["stimulus_id"]: a for a in store.answers()}
    assert {sid: a["answer"] for sid, a in stored.items()} == answered
    assert [stored[sid]["position"] for sid in participant.order] == list(range(6))
    assert (
        stored[participant.order[3]]["confidence"] == 3 and stored[participant.order[4]]["confidence"] is None
    )
    assert all(a["response_ms"] is not None and a["response_ms"] >= 0 for a in stored.values())
    assert participant.familiarity == "some" and not participant.simulated

    page.reload()  # a finished participant sees the thank-you page, not a new study
    page.wait_for_selector("#done:not([hidden])")
    assert len(store.participants()) == 1


def test_report_puts_the_model_verdicts_beside_the_people(tiny_split: Path, tmp_path: Path) -> None:
    from animeprov.predict import Predictor
    from animeprov.study.report import write_report
    from animeprov.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(data=str(tiny_split), size=32, epochs=1, batch_size=8, seed=0), run)
    study_dir = tmp_path / "study"
    study = create_study(tiny_split, study_dir, per_class=2, seed=0)
    store = open_store(study_dir, study)
    person = store.new_participant()
    for sid in person.order:
        store.add_answer(person.id, sid, "ai")

    report = write_report(study_dir, tmp_path / "report", model_run=run, n_boot=20)
    model = report["model"]
    assert model["n_images"] == 6 and sum(model["verdicts"].values()) == 6
    predictor = Predictor.from_checkpoint(run, device="cpu")
    for row in model["images"]:
        assert row["model_verdict"] in ("artist", "ai", "unsure")
        # The stimulus is a lossless crop of its 32 x 32 source, so the source gives the same prediction:
        # the id -> image mapping is right.
        source = next(s["source"] for s in study["stimuli"] if s["id"] == row["stimulus_id"])
        direct = predictor.predict(source)
        assert row["p_generated"] == pytest.approx(direct.p_generated, abs=1e-6)
        assert row["model_verdict"] == direct.verdict
        assert row["people_accuracy"] == (1.0 if row["truth"] == "ai" else 0.0)
        assert (study_dir / STIMULI_DIR / f"{row['stimulus_id']}.png").exists()
    truth_hits = sum(row["model_verdict"] == row["truth"] for row in model["images"])
    assert model["accuracy"] == pytest.approx(truth_hits / 6)
    assert "## Model side by side" in (tmp_path / "report" / "report.md").read_text()
