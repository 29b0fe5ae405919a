"""The subjective-test package: stimulus selection, the HTTP API and its store, simulation, the report."""

from __future__ import annotations

import csv
import json
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from animeprov.study.app import create_app
from animeprov.study.create import (
    ANSWERS,
    STIMULI_DIR,
    StudyDataWarning,
    TrainingSplitError,
    create_study,
    load_study,
    png_chunk_types,
    truth_of,
)
from animeprov.study.report import analyse, bootstrap_interval, fleiss_kappa, write_report
from animeprov.study.simulate import SimulatedProfile, simulate_participants
from animeprov.study.store import AnswerStore, Participant, open_store
from animeprov.web import allowed_hosts_for, is_loopback

CLASSES = ("human", "gen-a", "gen-b")


def write_split(root: Path, *, per_split: int = 3, split_column: bool = True) -> Path:
    """A split CSV with `per_split` images per class in each of train/val/test, of varying sizes (>= 40 px),
    each carrying a PNG text chunk naming its class (which a stimulus must not keep)."""
    rng = np.random.default_rng(0)
    rows = []
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            for i in range(per_split):
                height, width = 40 + 3 * i, 44 + 5 * i
                pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", f"class {name}")
                path = root / name / f"{split}-{i}.png"
                Image.fromarray(pixels).save(path, pnginfo=info)
                row = {"path": f"{name}/{path.name}", "class": name, "width": width, "height": height}
                row["group"] = f"{name}-{split}-{i}"
                if split_column:
                    row["split"] = split
                rows.append(row)
    csv_path = root / "split.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """3 classes x 2 images of 32 x 32 from the test split."""
    create_study(write_split(tmp_path / "data"), tmp_path / "study", per_class=2, size=32, seed=1)
    return tmp_path / "study"


# --- create ---------------------------------------------------------------------------------------------


def test_create_writes_balanced_clean_centre_crops_from_the_test_split(tmp_path: Path) -> None:
    data = write_split(tmp_path / "data")
    study = create_study(data, tmp_path / "study", per_class=2, seed=3)
    # Default size: the largest every class can fill with 2 images; the test images are at least
    # 40 x 44, 43 x 49 and 46 x 54, so the second largest shorter side is 43.
    assert study["size"] == 43
    assert sorted(s["class"] for s in study["stimuli"]) == sorted([*CLASSES] * 2)
    assert study["human_class"] == "human" and study["split"] == "test"
    for stimulus in study["stimuli"]:
        source = Path(stimulus["source"])
        assert source.name.startswith("test-")
        file = tmp_path / "study" / STIMULI_DIR / f"{stimulus['id']}.png"
        data_bytes = file.read_bytes()
        # Nothing but the image itself: the source's "parameters" text chunk is gone.
        assert png_chunk_types(data_bytes) == ["IHDR", "IDAT", "IEND"]
        assert b"parameters" not in data_bytes
        assert not any(cls in file.name for cls in CLASSES)
        # A centre crop of the source's pixels, not a resize.
        original = np.array(Image.open(source))
        h, w = original.shape[:2]
        top, left = (h - 43) // 2, (w - 43) // 2
        np.testing.assert_array_equal(np.array(Image.open(file)), original[top : top + 43, left : left + 43])
    assert load_study(tmp_path / "study")["stimuli"] == study["stimuli"]
    # At 32 px all three test images per class qualify: same seed, same images (new random ids);
    # another seed, another choice.
    first, again, other = (
        create_study(data, tmp_path / name, per_class=2, seed=seed, size=32)
        for name, seed in (("first", 3), ("again", 3), ("other", 4))
    )
    sources = sorted(s["source"] for s in first["stimuli"])
    assert sorted(s["source"] for s in again["stimuli"]) == sources
    assert sorted(s["source"] for s in other["stimuli"]) != sources
    assert {s["id"] for s in again["stimuli"]}.isdisjoint({s["id"] for s in first["stimuli"]})


def test_create_refuses_the_train_split_and_warns_without_a_split_column(tmp_path: Path) -> None:
    data = write_split(tmp_path / "data")
    with pytest.raises(TrainingSplitError):
        create_study(data, tmp_path / "s1", per_class=2, split="train")
    assert (
        create_study(data, tmp_path / "s2", per_class=2, split="train", allow_train=True)["split"] == "train"
    )
    with pytest.raises(ValueError, match="fewer than --per-class 4"):
        create_study(data, tmp_path / "s3", per_class=4)
    with pytest.raises(FileExistsError):
        create_study(data, tmp_path / "s2", per_class=1)
    unsplit = write_split(tmp_path / "unsplit", split_column=False)
    with pytest.warns(StudyDataWarning, match="no 'split' column"):
        create_study(unsplit, tmp_path / "s4", per_class=2, classes=["human", "gen-a"])


def test_generator_mapping_pools_classes(tmp_path: Path) -> None:
    data = write_split(tmp_path / "data")
    study = create_study(data, tmp_path / "s", per_class=1, generators={"gen-a": "g", "gen-b": "g"})
    assert {s["class"]: s["generator"] for s in study["stimuli"]} == {
        "human": None,
        "gen-a": "g",
        "gen-b": "g",
    }
    with pytest.raises(ValueError, match="not in the study"):
        create_study(data, tmp_path / "t", per_class=1, generators={"nope": "g"})


# --- HTTP API and store ------------------------------------------------------------------------------------


def test_api_refuses_unknown_ids_and_keeps_the_first_answer(study_dir: Path) -> None:
    client = TestClient(create_app(study_dir, admin_token="secret-token"))
    study = load_study(study_dir)
    ids = sorted(s["id"] for s in study["stimuli"])

    assert client.post("/api/participants", json={"consent": False}).status_code == 400
    state = client.post("/api/participants", json={"consent": True, "familiarity": "expert"}).json()
    pid = state["participant_id"]
    assert state["n_total"] == 6 and state["n_answered"] == 0 and state["next"]["position"] == 0

    def post(**body):
        return client.post("/api/answers", json={"participant_id": pid, "stimulus_id": ids[0], **body})

    assert post(answer="maybe").status_code == 422
    assert post(answer="ai", confidence=7).status_code == 422
    assert (
        client.post(
            "/api/answers", json={"participant_id": "feed", "stimulus_id": ids[0], "answer": "ai"}
        ).status_code
        == 404
    )
    assert post(stimulus_id="0123456789ab", answer="ai").status_code == 404
    first = post(answer="ai", confidence=3, response_ms=1234)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    repeat = post(answer="artist", confidence=1, response_ms=10)
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    assert repeat.json()["stored"]["answer"] == "ai" and repeat.json()["stored"]["response_ms"] == 1234
    assert client.get(f"/api/participants/{pid}").json()["n_answered"] == 1
    assert client.get("/api/participants/unknown").status_code == 404

    # Images only by id: anything else is 404, whatever it names.
    assert (
        client.get(f"/api/stimuli/{ids[0]}").content
        == (study_dir / STIMULI_DIR / f"{ids[0]}.png").read_bytes()
    )
    # Nothing from the file's mtime (stimuli are written class by class): no Last-Modified, no ETag.
    assert not {"last-modified", "etag"} & set(client.get(f"/api/stimuli/{ids[0]}").headers)
    for bad in ("..%2Fstudy.json", "study.json", f"{ids[0]}.png", "%2E%2E"):
        assert client.get(f"/api/stimuli/{bad}").status_code == 404
    assert client.get("/static/../study.json").status_code == 404
    assert client.get("/static/app.py").status_code == 404
    # Pages and scripts ship with the package and load nothing from elsewhere (no CDN).
    for path in ("/", "/admin", "/static/study.js", "/static/admin.js", "/static/study.css"):
        response = client.get(path)
        assert response.status_code == 200
        assert not any(remote in response.text for remote in ("http://", "https://", '="//', "url("))
    # No class or source reaches the browser.
    page_data = client.get("/api/study").text + client.get(f"/api/participants/{pid}").text
    assert not any(cls in page_data for cls in CLASSES) and "source" not in page_data

    assert client.get("/api/admin/progress").status_code == 401
    assert client.get("/api/admin/progress", headers={"X-Admin-Token": "secret-tokeN"}).status_code == 401
    progress = client.get("/api/admin/progress", headers={"X-Admin-Token": "secret-token"}).json()
    assert progress["n_participants"] == 1 and progress["n_answers"] == 1

    # Committed before the reply: a fresh connection (as after a killed server) sees the answer.
    stored = open_store(study_dir, study).answers()
    assert [(a["participant_id"], a["stimulus_id"], a["answer"]) for a in stored] == [(pid, ids[0], "ai")]


def test_oversized_bodies_are_refused_before_they_are_read(study_dir: Path) -> None:
    client = TestClient(create_app(study_dir, admin_token="t"))
    pid = client.post("/api/participants", json={"consent": True}).json()["participant_id"]
    sid = load_study(study_dir)["stimuli"][0]["id"]
    padded = json.dumps({"participant_id": pid, "stimulus_id": sid, "answer": "ai", "pad": "x" * 100_000})
    json_header = {"Content-Type": "application/json"}
    assert client.post("/api/answers", content=padded, headers=json_header).status_code == 413
    chunks = iter([padded[i : i + 4096].encode() for i in range(0, len(padded), 4096)])  # no Content-Length
    assert client.post("/api/answers", content=chunks, headers=json_header).status_code == 413
    assert client.get(f"/api/participants/{pid}").json()["n_answered"] == 0
    answer = {"participant_id": pid, "stimulus_id": sid, "answer": "ai"}
    assert client.post("/api/answers", json=answer).status_code == 201  # a normal answer still fits


def test_loopback_host_check_refuses_rebound_names(study_dir: Path) -> None:
    app = create_app(study_dir, admin_token="t", allowed_hosts=allowed_hosts_for("127.0.0.1"))
    assert TestClient(app, base_url="http://127.0.0.1:8001").get("/").status_code == 200
    assert TestClient(app, base_url="http://evil.example:8001").get("/").status_code == 400
    # Bound beyond loopback (behind a proxy) without --allowed-host: any Host is accepted.
    assert allowed_hosts_for("0.0.0.0") is None
    assert allowed_hosts_for("0.0.0.0", ["study.example.org"]) == ["study.example.org"]
    assert is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_each_participant_gets_their_own_order_and_resumes_at_the_first_unanswered(tmp_path: Path) -> None:
    ids = [f"{i:02x}" for i in range(12)]
    store = AnswerStore(tmp_path / "a.sqlite", ids, seed=5)
    one, two = store.new_participant(), store.new_participant(simulated=True)
    assert sorted(one.order) == ids and sorted(two.order) == ids and one.order != two.order
    assert store.participant(one.id).order == one.order  # stored, not recomputed
    for position in (0, 1, 3):
        store.add_answer(one.id, one.order[position], "unsure")
    state = store.state(one.id)
    assert state["n_answered"] == 3 and state["next"] == {"position": 2, "stimulus_id": one.order[2]}
    assert store.participant(two.id).simulated


def test_concurrent_duplicates_store_exactly_one_answer(study_dir: Path, live_server) -> None:
    import httpx

    url = live_server(create_app(study_dir, admin_token="t"))
    pid = httpx.post(f"{url}/api/participants", json={"consent": True}).json()["participant_id"]
    sid = load_study(study_dir)["stimuli"][0]["id"]
    statuses, stored = [], []

    def submit(answer: str) -> None:
        response = httpx.post(
            f"{url}/api/answers", json={"participant_id": pid, "stimulus_id": sid, "answer": answer}
        )
        statuses.append(response.status_code)
        stored.append(response.json()["stored"]["answer"])

    threads = [threading.Thread(target=submit, args=(["artist", "ai", "unsure"][i % 3],)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 8 + [201]
    assert len(set(stored)) == 1  # everyone is told the one stored answer


def test_twenty_concurrent_simulated_participants_lose_no_answer(study_dir: Path, live_server) -> None:
    url = live_server(create_app(study_dir, admin_token="t"))
    results = simulate_participants(
        study_dir, url, 20, profile=SimulatedProfile(0.7, 0.1), seed=2, threads=20
    )
    assert [r["answers"] for r in results] == [6] * 20
    study = load_study(study_dir)
    store = open_store(study_dir, study)
    answers = store.answers()
    assert len(answers) == 120
    assert len({(a["participant_id"], a["stimulus_id"]) for a in answers}) == 120
    assert all(p.simulated for p in store.participants()) and len(store.participants()) == 20

    report = write_report(study_dir, study_dir / "report", n_boot=50, export_csv=True)
    assert report["simulated_only"] and report["participants"]["analysed"] == 20
    text = (study_dir / "report" / "report.md").read_text()
    assert "SIMULATED PARTICIPANTS: NOT HUMAN DATA" in text
    for name in ("report.json", "participants.png", "classes.png", "confusion.png", "familiarity.png"):
        assert (study_dir / "report" / name).stat().st_size > 0
    with open(study_dir / "report" / "answers.csv", newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert len(exported) == 120 and {row["simulated"] for row in exported} == {"1"}
    assert json.loads((study_dir / "report" / "report.json").read_text())["overall"]["n_answers"] == 120


# --- report on a hand-made answer set -------------------------------------------------------------------


def test_fleiss_kappa_matches_the_wikipedia_example_and_a_hand_computation() -> None:
    # Fleiss' kappa article on Wikipedia: 10 subjects, 14 raters, 5 categories; P = 0.378, Pe = 0.213, 0.210.
    wikipedia = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(wikipedia) == pytest.approx(0.210, abs=5e-4)
    # Two subjects, three raters: P = (1 + 1/3) / 2 = 2/3; p = (4/6, 2/6), Pe = 5/9;
    # kappa = (2/3 - 5/9) / (4/9) = 1/4.
    assert fleiss_kappa([[3, 0], [1, 2]]) == pytest.approx(float(Fraction(1, 4)))
    assert fleiss_kappa([[3, 0, 0], [3, 0, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[1, 0], [0, 1]]) is None  # nobody has two ratings


def test_bootstrap_interval_is_seeded_and_degenerate_when_values_agree() -> None:
    values = np.array([0.2, 0.9, 0.5, 0.7, 0.4])
    first = bootstrap_interval(5, lambda idx: float(values[idx].mean()), n_boot=300, seed=1)
    assert first == bootstrap_interval(5, lambda idx: float(values[idx].mean()), n_boot=300, seed=1)
    assert first[0] < values.mean() < first[1]
    assert bootstrap_interval(4, lambda idx: 0.5, n_boot=50) == [0.5, 0.5]
    assert bootstrap_interval(1, lambda idx: 0.5) is None


def _hand_study() -> dict:
    stimuli = [
        {"id": sid, "class": cls, "generator": None if cls == "human" else "alpha"}
        for sid, cls in (
            ("h1", "human"),
            ("h2", "human"),
            ("a1", "gen-a"),
            ("a2", "gen-a"),
            ("b1", "gen-b"),
            ("b2", "gen-b"),
        )
    ]
    return {
        "title": "hand",
        "seed": 0,
        "classes": ["gen-a", "gen-b", "human"],
        "human_class": "human",
        "stimuli": stimuli,
    }


HAND_ANSWERS = {
    # participant: (familiarity, simulated, {image: answer})
    "p1": (
        "none",
        False,
        {"h1": "artist", "h2": "ai", "a1": "ai", "a2": "ai", "b1": "unsure", "b2": "artist"},
    ),
    "p2": ("expert", False, {"h1": "artist", "h2": "artist", "a1": "ai", "a2": "ai", "b1": "ai", "b2": "ai"}),
    "p3": (None, False, {"h1": "unsure", "h2": "artist", "a1": "artist", "a2": "ai", "b1": "ai", "b2": "ai"}),
    "p4": ("some", False, {"h1": "artist"}),  # unfinished
    "p5": ("some", True, {sid: "ai" for sid in ("h1", "h2", "a1", "a2", "b1", "b2")}),  # simulated
}


def _hand_data() -> tuple[list[Participant], list[dict]]:
    participants, answers = [], []
    for number, (pid, (familiarity, simulated, given)) in enumerate(HAND_ANSWERS.items()):
        order = ["h1", "h2", "a1", "a2", "b1", "b2"]
        participants.append(Participant(pid, float(number), familiarity, simulated, order))
        for position, (sid, answer) in enumerate(given.items()):
            answers.append(
                {
                    "participant_id": pid,
                    "stimulus_id": sid,
                    "answer": answer,
                    "confidence": None,
                    "response_ms": 1000 * (position + 1),
                    "position": position,
                    "answered_at": 0.0,
                    "familiarity": familiarity,
                    "simulated": simulated,
                }
            )
    return participants, answers


def test_report_figures_on_a_hand_made_answer_set_are_exact() -> None:
    participants, answers = _hand_data()
    report = analyse(_hand_study(), participants, answers, n_boot=100)

    assert report["participants"] == {
        "registered": 5,
        "started": 5,
        "left_out_partial": 1,
        "left_out_attention": 0,
        "left_out_simulated": 1,
        "analysed": 3,
        "analysed_simulated": 0,
        "analysed_human": 3,
        "include_partial": False,
    }
    rows = {p["participant_id"]: p for p in report["per_participant"]}
    assert [p["participant"] for p in report["per_participant"]] == ["P1", "P2", "P3"]
    assert rows["p1"]["accuracy"] == pytest.approx(3 / 6)
    assert rows["p1"]["unsure_rate"] == pytest.approx(1 / 6)
    assert rows["p1"]["decided_accuracy"] == pytest.approx(3 / 5)
    assert rows["p2"]["accuracy"] == 1.0 and rows["p3"]["accuracy"] == pytest.approx(4 / 6)
    assert rows["p3"]["familiarity"] == "not given" and rows["p1"]["median_response_ms"] == 3500
    overall = report["overall"]
    assert overall["mean_participant_accuracy"] == pytest.approx((3 / 6 + 1 + 4 / 6) / 3)
    assert overall["pooled_accuracy"] == pytest.approx(13 / 18)
    assert overall["unsure_rate"] == pytest.approx(2 / 18)
    assert overall["decided_accuracy"] == pytest.approx(13 / 16)

    assert {c: g["accuracy"] for c, g in report["per_class"].items()} == pytest.approx(
        {"gen-a": 5 / 6, "gen-b": 4 / 6, "human": 4 / 6}
    )
    assert report["per_generator"]["alpha"]["accuracy"] == pytest.approx(9 / 12)
    assert report["per_generator"]["alpha"]["n_images"] == 4
    assert report["per_generator"]["human"]["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion"]["rows"] == ["gen-a", "gen-b", "human"]
    assert report["confusion"]["counts"] == [[1, 5, 0], [1, 4, 1], [4, 1, 1]]
    assert report["confusion_truth"]["counts"] == [[4, 1, 1], [2, 9, 1]]

    # Per image (artist, ai, unsure): h1 (2,0,1) h2 (2,1,0) a1 (1,2,0) a2 (0,3,0) b1 (0,2,1) b2 (1,2,0).
    # P = (2+2+2+6+2+2)/6/6 = 4/9; p = (6, 10, 2)/18, Pe = 140/324 = 35/81;
    # kappa = (4/9 - 35/81) / (46/81) = 1/46.
    assert report["fleiss_kappa"]["value"] == pytest.approx(1 / 46)
    assert report["fleiss_kappa"]["raters_per_image"] == [3, 3]

    familiarity = report["familiarity"]
    assert familiarity["none"]["mean_accuracy"] == pytest.approx(0.5)
    assert familiarity["expert"]["mean_accuracy"] == 1.0
    assert familiarity["not given"]["mean_accuracy"] == pytest.approx(4 / 6)
    assert familiarity["some"]["n_participants"] == 0 and familiarity["some"]["mean_accuracy"] is None

    # With the unfinished participant and the simulated one.
    more = analyse(
        _hand_study(), participants, answers, n_boot=10, include_partial=True, include_simulated=True
    )
    assert more["participants"]["analysed"] == 5 and more["contains_simulated"]
    assert more["familiarity"]["some"]["n_participants"] == 2
    assert more["familiarity"]["some"]["mean_accuracy"] == pytest.approx((1.0 + 4 / 6) / 2)
    # Unequal raters per image: h1 now has 5 ratings, the others 4.
    assert more["fleiss_kappa"]["raters_per_image"] == [4, 5]
    assert not report["contains_simulated"]


def test_attention_checks_are_screens_of_their_own_and_never_count_as_accuracy(tmp_path: Path) -> None:
    data = write_split(tmp_path / "data")
    study = create_study(data, tmp_path / "s", per_class=1, size=32, attention_checks=2, seed=0)
    checks = [s for s in study["stimuli"] if s["kind"] == "attention"]
    assert len(checks) == 2 and len(study["stimuli"]) == 5
    assert all(s["expected"] in ANSWERS and s["source"] is None and s["class"] is None for s in checks)
    with Image.open(tmp_path / "s" / STIMULI_DIR / f"{checks[0]['id']}.png") as picture:
        assert picture.size == (256, 256)  # readable, whatever the stimulus size

    order = [s["id"] for s in study["stimuli"]]
    participants = [Participant("good", 0.0, None, False, order), Participant("bad", 1.0, None, False, order)]
    wrong = {"artist": "ai", "ai": "artist", "unsure": "ai"}
    answers = []
    for participant in participants:
        for position, stimulus in enumerate(study["stimuli"]):
            answer = truth_of(stimulus, "human")
            if participant.id == "bad" and stimulus["id"] == checks[0]["id"]:
                answer = wrong[answer]
            answers.append(
                {"participant_id": participant.id, "stimulus_id": stimulus["id"], "answer": answer}
                | {"confidence": None, "response_ms": None, "position": position, "answered_at": 0.0}
                | {"familiarity": None, "simulated": False}
            )
    report = analyse(study, participants, answers, n_boot=10)
    assert [p["accuracy"] for p in report["per_participant"]] == [1.0, 1.0]  # only the 3 images count
    assert [(p["attention_passed"], p["attention_answered"]) for p in report["per_participant"]] == [
        (2, 2),
        (1, 2),
    ]
    assert report["overall"]["n_answers"] == 6 and report["study"]["attention_checks"] == 2
    strict = analyse(study, participants, answers, n_boot=10, exclude_failed_attention=True)
    assert [p["participant_id"] for p in strict["per_participant"]] == ["good"]
    assert strict["participants"]["left_out_attention"] == 1


def test_cli_create_refuses_train_and_report_runs_on_an_empty_study(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from animeprov.cli import app

    data = write_split(tmp_path / "data")
    runner = CliRunner()
    refused = runner.invoke(
        app, ["study", "create", "--data", str(data), "--out", str(tmp_path / "s"), "--split", "train"]
    )
    assert refused.exit_code == 2 and "train split" in refused.output
    assert not (tmp_path / "s" / "study.json").exists()
    args = ["study", "create", "--data", str(data), "--out", str(tmp_path / "s"), "--per-class", "2"]
    created = runner.invoke(app, [*args, "--size", "32", "--generator", "gen-a=g", "--attention-checks", "1"])
    assert created.exit_code == 0, created.output
    assert len(load_study(tmp_path / "s")["stimuli"]) == 7
    reported = runner.invoke(
        app, ["study", "report", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--bootstrap", "10"]
    )
    assert reported.exit_code == 0, reported.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["participants"]["analysed"] == 0 and report["overall"]["mean_participant_accuracy"] is None


def test_answers_survive_a_killed_server_process(study_dir: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "animeprov", "study", "serve", str(study_dir), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--admin-token", "t"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/api/study").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.1)
        state = httpx.post(f"{url}/api/participants", json={"consent": True}).json()
        for answer in ("ai", "artist", "unsure"):
            body = {"participant_id": state["participant_id"], "stimulus_id": state["next"]["stimulus_id"]}
            state = httpx.post(f"{url}/api/answers", json=body | {"answer": answer}).json()["state"]
    finally:
        server.send_signal(signal.SIGKILL)  # no shutdown, no checkpoint
        server.wait(timeout=10)
    stored = open_store(study_dir, load_study(study_dir)).answers()
    assert [a["answer"] for a in stored] == ["ai", "artist", "unsure"]


def test_one_image_per_group_first_and_unreadable_files_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "data" / "human"
    folder.mkdir(parents=True)
    rows = []
    for name, group in (("a", "g1"), ("b", "g1"), ("c", "g1"), ("d", "g2"), ("e", "g3")):
        path = folder / f"{name}.png"
        if name == "e":
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        rows.append({"path": f"human/{name}.png", "class": "human", "group": group, "split": "test"})
    csv_path = tmp_path / "data" / "split.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for seed in range(4):
        two = create_study(csv_path, tmp_path / f"two-{seed}", per_class=2, size=16, seed=seed)
        assert sorted(s["group"] for s in two["stimuli"]) == ["g1", "g2"]
        three = create_study(csv_path, tmp_path / f"three-{seed}", per_class=3, size=16, seed=seed)
        assert sorted(s["group"] for s in three["stimuli"]) == ["g1", "g1", "g2"]  # the broken g3 skipped
    with pytest.raises(ValueError, match="only 4 image"):
        create_study(csv_path, tmp_path / "five", per_class=5, size=16)


def test_nan_and_infinity_in_json_get_a_json_422_not_a_500(study_dir: Path) -> None:
    client = TestClient(create_app(study_dir, admin_token="t"), raise_server_exceptions=False)
    json_header = {"Content-Type": "application/json"}
    for body in ('{"consent": NaN}', '{"consent": true, "familiarity": Infinity}'):
        response = client.post("/api/participants", content=body, headers=json_header)
        assert response.status_code == 422 and response.json()["detail"].startswith("invalid request ("), body
    pid = client.post("/api/participants", json={"consent": True}).json()["participant_id"]
    sid = load_study(study_dir)["stimuli"][0]["id"]
    body = f'{{"participant_id": "{pid}", "stimulus_id": "{sid}", "answer": "ai", "confidence": NaN}}'
    response = client.post("/api/answers", content=body, headers=json_header)
    assert response.status_code == 422 and "confidence" in response.json()["detail"]
    assert client.get(f"/api/participants/{pid}").json()["n_answered"] == 0
