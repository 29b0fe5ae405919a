"""Simulated participants: threads that take the study through the HTTP API like a browser would.

They exist to show the whole flow and the report end to end without people. They are NOT human data:
each is registered with `"simulated": true`, stored so in the database, and marked in the report.

A simulated participant reads the answer key from study.json (which only the server side has) and answers
each image: "unsure" with probability `unsure_rate`, correctly with probability `accuracy`, wrongly
otherwise; so its expected accuracy (unsure counted as wrong) is `accuracy`. It gives every attention
check the answer asked for.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from animeprov.study.create import FAMILIARITY, is_attention, load_study, truth_of


@dataclass(frozen=True)
class SimulatedProfile:
    accuracy: float = 0.6
    unsure_rate: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.accuracy <= 1 and 0 <= self.unsure_rate <= 1):
            raise ValueError("accuracy and unsure_rate must be in [0, 1]")
        if self.accuracy + self.unsure_rate > 1 + 1e-12:
            raise ValueError(f"accuracy {self.accuracy} + unsure_rate {self.unsure_rate} exceeds 1")


def simulated_answer(truth: str, profile: SimulatedProfile, rng: random.Random) -> str:
    draw = rng.random()
    if draw < profile.unsure_rate:
        return "unsure"
    if draw < profile.unsure_rate + profile.accuracy:
        return truth
    return "ai" if truth == "artist" else "artist"


def run_participant(
    client: httpx.Client,
    key: dict[str, str],
    checks: frozenset[str],
    profile: SimulatedProfile,
    rng: random.Random,
) -> dict[str, Any]:
    """One simulated participant from consent to the last image; returns its id and answer count."""
    familiarity = rng.choice([*FAMILIARITY, None])
    response = client.post(
        "/api/participants", json={"consent": True, "familiarity": familiarity, "simulated": True}
    )
    response.raise_for_status()
    state = response.json()
    participant_id = state["participant_id"]
    submitted = 0
    while not state["done"]:
        stimulus_id = state["next"]["stimulus_id"]
        client.get(f"/api/stimuli/{stimulus_id}").raise_for_status()  # as a browser would load it
        response = client.post(
            "/api/answers",
            json={
                "participant_id": participant_id,
                "stimulus_id": stimulus_id,
                "answer": key[stimulus_id]
                if stimulus_id in checks
                else simulated_answer(key[stimulus_id], profile, rng),
                "confidence": rng.choice([None, 1, 2, 3]),
                "response_ms": int(rng.lognormvariate(7.5, 0.5)),  # a few seconds, right-skewed
            },
        )
        response.raise_for_status()
        state = response.json()["state"]
        submitted += 1
    return {"participant_id": participant_id, "answers": submitted}


def simulate_participants(
    study_dir: str | Path,
    url: str,
    n_participants: int,
    *,
    profile: SimulatedProfile = SimulatedProfile(),
    seed: int = 0,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Run `n_participants` simulated participants concurrently against the server at `url`."""
    if n_participants < 1:
        raise ValueError("n_participants must be >= 1")
    study = load_study(study_dir)
    key = {s["id"]: truth_of(s, study["human_class"]) for s in study["stimuli"]}
    checks = frozenset(s["id"] for s in study["stimuli"] if is_attention(s))

    def one(index: int) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            return run_participant(client, key, checks, profile, random.Random(f"{seed}/{index}"))

    with ThreadPoolExecutor(max_workers=threads or min(n_participants, 32)) as pool:
        return list(pool.map(one, range(n_participants)))
