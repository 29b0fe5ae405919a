"""Analysis of a study's answers: the paper's Table 5 and more, as JSON, Markdown and PNG figures.

Definitions (also written into every report):
- the correct answer is "artist" for the study's human class and "ai" for every other class;
- accuracy counts "unsure" as wrong (as the paper's forced choice would); the unsure rate is shown
  beside it, and "decided accuracy" is the accuracy among the answers that were not unsure;
- per-participant accuracy = correct / answered images (the paper's Table 5); the study's accuracy is the
  mean of the participants' accuracies; per class / generator accuracy pools every answer to its images;
- the confusion matrix has one row per class and the columns artist | ai | unsure (answer counts);
- Fleiss' kappa (Fleiss 1971) treats images as subjects, participants as raters and the three answers as
  categories. With partial participants included, images may have different numbers of raters: each
  image's agreement then uses its own count, and images with fewer than two raters are left out;
- bootstrap 95% intervals are percentile intervals from `n_boot` resamples with a seeded generator:
  participants are resampled for the mean participant accuracy and for each familiarity group; images
  are resampled (with all their answers) for the per-class and per-generator accuracy and for kappa.

By default only participants who answered every image are analysed, and simulated participants are left
out whenever real ones exist; a study with only simulated participants is analysed with a banner saying so.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from animeprov.reports.tables import markdown_table, write_json
from animeprov.study.create import ANSWERS, FAMILIARITY, STIMULI_DIR, is_attention, load_study, truth_of
from animeprov.study.store import Participant, open_store

DEFAULT_BOOTSTRAP = 2000
NOT_GIVEN = "not given"
SIMULATED_BANNER = (
    "**SIMULATED PARTICIPANTS: NOT HUMAN DATA.** Every participant analysed here is a program "
    "(`animeprov study simulate`) answering with a fixed, configured accuracy; the figures show that the "
    "study pipeline works, not how well people tell generated images apart."
)
ANSWER_COLUMNS = (
    "participant_id",
    "simulated",
    "familiarity",
    "stimulus_id",
    "class",
    "generator",
    "truth",
    "answer",
    "correct",
    "confidence",
    "response_ms",
    "position",
    "answered_at",
)


# ---------------------------------------------------------------------------------------------------------
# Statistics


def fleiss_kappa(counts: Sequence[Sequence[int]] | np.ndarray) -> float | None:
    """Fleiss' kappa of a (subjects, categories) table of rating counts; None when undefined.

    Subjects with fewer than two ratings are ignored. Each subject's agreement is
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)) with its own number of ratings n_i (Fleiss' formula when
    every n_i is equal); P_e = sum_j p_j^2 with p_j the share of all ratings in category j. Undefined
    (None) when no subject has two ratings or when every rating falls in one category (P_e = 1).
    """
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"counts must be 2-D (subjects, categories), got shape {table.shape}")
    if np.any(table < 0):
        raise ValueError("counts must be non-negative")
    raters = table.sum(axis=1)
    table, raters = table[raters >= 2], raters[raters >= 2]
    if len(table) == 0:
        return None
    agreement = ((table**2).sum(axis=1) - raters) / (raters * (raters - 1))
    shares = table.sum(axis=0) / raters.sum()
    expected = float((shares**2).sum())
    if np.isclose(expected, 1.0):
        return None
    return float((agreement.mean() - expected) / (1.0 - expected))


def bootstrap_interval(
    n_units: int,
    statistic: Callable[[np.ndarray], float | None],
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> list[float] | None:
    """Percentile 95% interval of `statistic(indices)` over `n_boot` resamples (with replacement) of
    `n_units` units; resamples where the statistic is undefined (None) are skipped. None when n_units < 2."""
    if n_units < 2 or n_boot < 1:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        value = statistic(rng.integers(0, n_units, size=n_units))
        if value is not None:
            values.append(value)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


# ---------------------------------------------------------------------------------------------------------
# Analysis


def select_participants(
    participants: list[Participant],
    answered: Counter[str],
    n_stimuli: int,
    *,
    include_partial: bool = False,
    include_simulated: bool | None = None,
    failed_attention: frozenset[str] = frozenset(),
) -> tuple[list[Participant], dict[str, Any]]:
    """The participants to analyse and a note of who was left out and why.

    `n_stimuli` counts every screen (attention checks too). `include_simulated` None: simulated
    participants only when there are no real ones. Ids in `failed_attention` are left out.
    """
    started = [p for p in participants if answered[p.id] > 0]
    complete = [p for p in started if include_partial or answered[p.id] == n_stimuli]
    attentive = [p for p in complete if p.id not in failed_attention]
    real = [p for p in attentive if not p.simulated]
    if include_simulated is None:
        include_simulated = not real
    chosen = attentive if include_simulated else real
    note = {
        "registered": len(participants),
        "started": len(started),
        "left_out_partial": len(started) - len(complete),
        "left_out_attention": len(complete) - len(attentive),
        "left_out_simulated": len(attentive) - len(chosen),
        "analysed": len(chosen),
        "analysed_simulated": sum(p.simulated for p in chosen),
        "analysed_human": sum(not p.simulated for p in chosen),
        "include_partial": include_partial,
    }
    return chosen, note


def analyse(
    study: dict[str, Any],
    participants: list[Participant],
    answers: list[dict[str, Any]],
    *,
    include_partial: bool = False,
    include_simulated: bool | None = None,
    exclude_failed_attention: bool = False,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    model: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every figure of the report as a JSON-safe dict. `model` maps stimulus id -> {"verdict", ...}.

    Attention checks count towards finishing the study but never towards an accuracy; with
    `exclude_failed_attention` a participant who failed any of them is left out.
    """
    human_class = study["human_class"]
    stimuli = {s["id"]: s for s in study["stimuli"] if not is_attention(s)}
    checks = {s["id"]: s["expected"] for s in study["stimuli"] if is_attention(s)}
    truth = {sid: truth_of(s, human_class) for sid, s in stimuli.items()}
    answered = Counter(a["participant_id"] for a in answers)
    attention: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # participant -> [passed, answered]
    for a in answers:
        if a["stimulus_id"] in checks:
            attention[a["participant_id"]][0] += a["answer"] == checks[a["stimulus_id"]]
            attention[a["participant_id"]][1] += 1
    failed = frozenset(pid for pid, (passed, total) in attention.items() if passed < total)
    chosen, selection = select_participants(
        participants,
        answered,
        len(stimuli) + len(checks),
        include_partial=include_partial,
        include_simulated=include_simulated,
        failed_attention=failed if exclude_failed_attention else frozenset(),
    )
    chosen_ids = {p.id for p in chosen}
    used = [
        {**a, "correct": a["answer"] == truth[a["stimulus_id"]]}
        for a in answers
        if a["participant_id"] in chosen_ids and a["stimulus_id"] in stimuli
    ]

    per_participant = _per_participant(chosen, used, attention)
    accuracies = np.array([p["accuracy"] for p in per_participant if p["accuracy"] is not None])
    classes = list(study["classes"])
    generator_of = {cls: _generator_label(study, cls) for cls in classes}
    by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in used:
        by_image[a["stimulus_id"]].append(a)

    image_ids = sorted(stimuli)
    counts = np.array(
        [[sum(a["answer"] == ans for a in by_image[sid]) for ans in ANSWERS] for sid in image_ids]
    )
    kappa = fleiss_kappa(counts) if len(counts) else None
    raters = counts.sum(axis=1) if len(counts) else np.zeros(0)

    report: dict[str, Any] = {
        "study": {
            key: study.get(key)
            for key in (
                "title",
                "study_id",
                "data",
                "split",
                "seed",
                "per_class",
                "size",
                "classes",
                "human_class",
            )
        }
        | {"n_stimuli": len(stimuli), "attention_checks": len(checks)},
        "participants": selection,
        "simulated_only": selection["analysed"] > 0 and selection["analysed_human"] == 0,
        "contains_simulated": selection["analysed_simulated"] > 0,
        "definitions": {
            "correct": f"'artist' for class {human_class!r}, 'ai' for every other class",
            "accuracy": "correct / answered; unsure counts as wrong",
            "decided_accuracy": "correct / answers that are not unsure",
            "study_accuracy": "mean of the participants' accuracies",
            "class_accuracy": "all answers to the class's images pooled",
            "kappa": "Fleiss' kappa: images = subjects, participants = raters, categories artist|ai|unsure",
        },
        "bootstrap": {
            "n": n_boot,
            "seed": seed,
            "interval": "percentile 95%",
            "participants_resampled_for": ["mean participant accuracy", "familiarity groups"],
            "images_resampled_for": ["class accuracy", "generator accuracy", "Fleiss' kappa"],
        },
        "per_participant": per_participant,
        "overall": {
            "n_answers": len(used),
            "mean_participant_accuracy": float(accuracies.mean()) if len(accuracies) else None,
            "ci95": bootstrap_interval(
                len(accuracies), lambda idx: float(accuracies[idx].mean()), n_boot=n_boot, seed=seed
            ),
            "pooled_accuracy": _ratio(sum(a["correct"] for a in used), len(used)),
            "unsure_rate": _ratio(sum(a["answer"] == "unsure" for a in used), len(used)),
            "decided_accuracy": _ratio(
                sum(a["correct"] for a in used), sum(a["answer"] != "unsure" for a in used)
            ),
        },
        "per_class": {
            cls: _group_accuracy(
                [sid for sid in image_ids if stimuli[sid]["class"] == cls], by_image, n_boot, seed
            )
            for cls in classes
        },
        "per_generator": {
            generator: _group_accuracy(
                [sid for sid in image_ids if generator_of[stimuli[sid]["class"]] == generator],
                by_image,
                n_boot,
                seed,
            )
            for generator in dict.fromkeys(generator_of[cls] for cls in classes)
        },
        "confusion": {
            "rows": classes,
            "columns": list(ANSWERS),
            "counts": [
                [
                    sum(a["answer"] == ans for a in used if stimuli[a["stimulus_id"]]["class"] == cls)
                    for ans in ANSWERS
                ]
                for cls in classes
            ],
        },
        "confusion_truth": {
            "rows": ["artist", "ai"],
            "columns": list(ANSWERS),
            "counts": [
                [sum(a["answer"] == ans for a in used if truth[a["stimulus_id"]] == t) for ans in ANSWERS]
                for t in ("artist", "ai")
            ],
        },
        "fleiss_kappa": {
            "value": kappa,
            "ci95": bootstrap_interval(
                len(counts), lambda idx: fleiss_kappa(counts[idx]), n_boot=n_boot, seed=seed
            ),
            "n_images": int((raters >= 2).sum()),
            "raters_per_image": [int(raters.min()), int(raters.max())] if len(raters) else None,
        },
        "familiarity": _familiarity_groups(per_participant, n_boot, seed),
    }
    if model is not None:
        report["model"] = _model_side_by_side(study, model, by_image, truth)
    return report


def _generator_label(study: dict[str, Any], cls: str) -> str:
    """The generator a class belongs to ("human" for the human class)."""
    if cls == study["human_class"]:
        return "human"
    return next((s["generator"] or cls for s in study["stimuli"] if s.get("class") == cls), cls)


def _per_participant(
    chosen: list[Participant], used: list[dict[str, Any]], attention: dict[str, list[int]]
) -> list[dict[str, Any]]:
    by_participant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in used:
        by_participant[a["participant_id"]].append(a)
    rows = []
    for number, participant in enumerate(chosen, start=1):
        mine = by_participant[participant.id]
        n = len(mine)
        correct = sum(a["correct"] for a in mine)
        unsure = sum(a["answer"] == "unsure" for a in mine)
        times = [a["response_ms"] for a in mine if a["response_ms"] is not None]
        rows.append(
            {
                "participant": f"P{number}",
                "participant_id": participant.id,
                "simulated": participant.simulated,
                "familiarity": participant.familiarity or NOT_GIVEN,
                "n_answered": n,
                "n_correct": correct,
                "accuracy": _ratio(correct, n),  # None only for a partial participant with no image answered
                "unsure_rate": _ratio(unsure, n),
                "decided_accuracy": _ratio(correct, n - unsure),
                "median_response_ms": round(statistics.median(times)) if times else None,
                "attention_passed": attention[participant.id][0] if participant.id in attention else None,
                "attention_answered": attention[participant.id][1] if participant.id in attention else 0,
            }
        )
    return rows


def _group_accuracy(
    image_ids: list[str], by_image: dict[str, list[dict[str, Any]]], n_boot: int, seed: int
) -> dict[str, Any]:
    correct = np.array([sum(a["correct"] for a in by_image[sid]) for sid in image_ids], dtype=np.float64)
    total = np.array([len(by_image[sid]) for sid in image_ids], dtype=np.float64)
    answer_counts = Counter(a["answer"] for sid in image_ids for a in by_image[sid])
    n = int(total.sum())
    return {
        "n_images": len(image_ids),
        "n_answers": n,
        "accuracy": _ratio(correct.sum(), n),
        "ci95": bootstrap_interval(
            len(image_ids), lambda idx: _ratio(correct[idx].sum(), total[idx].sum()), n_boot=n_boot, seed=seed
        ),
        "unsure_rate": _ratio(answer_counts["unsure"], n),
        "answers": {ans: answer_counts[ans] for ans in ANSWERS},
    }


def _familiarity_groups(per_participant: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    groups = {}
    for name in (*FAMILIARITY, NOT_GIVEN):
        values = np.array(
            [p["accuracy"] for p in per_participant if p["familiarity"] == name and p["accuracy"] is not None]
        )
        groups[name] = {
            "n_participants": len(values),
            "mean_accuracy": float(values.mean()) if len(values) else None,
            "ci95": bootstrap_interval(
                len(values), lambda idx, v=values: float(v[idx].mean()), n_boot=n_boot, seed=seed
            ),
        }
    return groups


def _majority(answers: list[dict[str, Any]]) -> str | None:
    """The most common answer, "tie" when two lead equally, None without answers."""
    counts = Counter(a["answer"] for a in answers).most_common()
    if not counts:
        return None
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def _model_side_by_side(
    study: dict[str, Any],
    model: dict[str, dict[str, Any]],
    by_image: dict[str, list[dict[str, Any]]],
    truth: dict[str, str],
) -> dict[str, Any]:
    pictures = [s for s in study["stimuli"] if not is_attention(s)]
    images = []
    for stimulus in sorted(pictures, key=lambda s: (s["class"], s["id"])):
        sid = stimulus["id"]
        answers = by_image[sid]
        verdict = model[sid].get("verdict")
        images.append(
            {
                "stimulus_id": sid,
                "class": stimulus["class"],
                "truth": truth[sid],
                "people_accuracy": _ratio(sum(a["correct"] for a in answers), len(answers)),
                "people_majority": _majority(answers),
                "model_verdict": verdict,
                "model_correct": verdict == truth[sid],
                "model_generator": model[sid].get("generator"),
                "p_generated": model[sid].get("p_generated"),
                "error": model[sid].get("error"),
            }
        )
    per_class = {}
    for cls in study["classes"]:
        mine = [row for row in images if row["class"] == cls]
        per_class[cls] = {
            "model_accuracy": _ratio(sum(row["model_correct"] for row in mine), len(mine)),
            "model_unsure_rate": _ratio(sum(row["model_verdict"] == "unsure" for row in mine), len(mine)),
        }
    comparable = [row for row in images if row["people_majority"] not in (None, "tie")]
    return {
        "n_images": len(images),
        "accuracy": _ratio(sum(row["model_correct"] for row in images), len(images)),
        "unsure_rate": _ratio(sum(row["model_verdict"] == "unsure" for row in images), len(images)),
        "verdicts": dict(Counter(row["model_verdict"] for row in images)),
        "agreement_with_people_majority": _ratio(
            sum(row["model_verdict"] == row["people_majority"] for row in comparable), len(comparable)
        ),
        "per_class": per_class,
        "images": images,
    }


# ---------------------------------------------------------------------------------------------------------
# The model's verdicts on the stimuli


def model_verdicts(
    run: str | Path, study_dir: str | Path, study: dict[str, Any], *, device: str = "auto"
) -> dict:
    """{"verdicts": {stimulus id: {"verdict", "generator", "p_generated", "error"}}, "info": Predictor.info()}
    from the run's calibrated Predictor."""
    from animeprov.predict import Predictor

    predictor = Predictor.from_checkpoint(run, device=device)
    if predictor.calibration is None:
        raise ValueError(
            f"{run} has no calibration.json, so no artist/ai/unsure verdicts; run `animeprov calibrate`"
        )
    ids = [s["id"] for s in study["stimuli"] if not is_attention(s)]
    paths = [Path(study_dir) / STIMULI_DIR / f"{sid}.png" for sid in ids]
    results = {}
    for sid, prediction in zip(ids, predictor.predict_many(paths), strict=True):
        results[sid] = {
            "verdict": prediction.verdict,
            "generator": prediction.generator,
            "p_generated": prediction.p_generated if prediction.error is None else None,
            "error": prediction.error,
        }
    return {"verdicts": results, "info": predictor.info()}


# ---------------------------------------------------------------------------------------------------------
# Writing the report


def write_report(
    study_dir: str | Path,
    out: str | Path,
    *,
    model_run: str | Path | None = None,
    include_partial: bool = False,
    include_simulated: bool | None = None,
    exclude_failed_attention: bool = False,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    export_csv: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Write report.md, report.json and figures (and answers.csv with `export_csv`) into `out`."""
    study_dir, out = Path(study_dir), Path(out)
    study = load_study(study_dir)
    store = open_store(study_dir, study)
    participants, answers = store.participants(), store.answers()
    model = model_verdicts(model_run, study_dir, study, device=device) if model_run is not None else None
    report = analyse(
        study,
        participants,
        answers,
        include_partial=include_partial,
        include_simulated=include_simulated,
        exclude_failed_attention=exclude_failed_attention,
        n_boot=n_boot,
        seed=seed,
        model=model["verdicts"] if model else None,
    )
    if model:
        report["model"]["run"] = str(model_run)
        report["model"]["info"] = model["info"]
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(report, out)
    report["figures"] = [path.name for path in figures]
    write_json(report, out / "report.json")
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    if export_csv:
        export_answers(study, answers, out / "answers.csv")
    return report


def export_answers(study: dict[str, Any], answers: list[dict[str, Any]], path: Path) -> Path:
    """Every stored answer (all participants, simulated marked) with its image's class and truth."""
    stimuli = {s["id"]: s for s in study["stimuli"]}
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ANSWER_COLUMNS))
        writer.writeheader()
        for a in answers:
            stimulus = stimuli[a["stimulus_id"]]
            truth = truth_of(stimulus, study["human_class"])
            writer.writerow(
                {
                    "participant_id": a["participant_id"],
                    "simulated": int(a["simulated"]),
                    "familiarity": a["familiarity"] or "",
                    "stimulus_id": a["stimulus_id"],
                    "class": "attention check" if is_attention(stimulus) else stimulus["class"],
                    "generator": stimulus["generator"] or "",
                    "truth": truth,
                    "answer": a["answer"],
                    "correct": int(a["answer"] == truth),
                    "confidence": "" if a["confidence"] is None else a["confidence"],
                    "response_ms": "" if a["response_ms"] is None else a["response_ms"],
                    "position": a["position"],
                    "answered_at": f"{a['answered_at']:.3f}",
                }
            )
    return path


def _interval(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"


def report_markdown(report: dict[str, Any]) -> str:
    study, selection, overall = report["study"], report["participants"], report["overall"]
    lines = [f"# Study report: {study['title']}"]
    if report["simulated_only"]:
        lines.append(SIMULATED_BANNER)
    elif report["contains_simulated"]:
        lines.append(
            f"**Includes {selection['analysed_simulated']} SIMULATED participant(s): not human data** "
            "(marked in the table)."
        )
    lines.append(
        markdown_table(
            ["setting", "value"],
            [
                (
                    "images",
                    f"{study['n_stimuli']} ({study['per_class']} per class, {study['size']}x{study['size']})",
                ),
                ("classes", ", ".join(study["classes"])),
                ("human (artist) class", study["human_class"]),
                ("source", f"{study['data']} (split {study['split']}, seed {study['seed']})"),
                (
                    "participants analysed",
                    f"{selection['analysed']} (real: {selection['analysed_human']}, "
                    f"simulated: {selection['analysed_simulated']})",
                ),
                (
                    "left out",
                    f"{selection['left_out_partial']} unfinished, "
                    f"{selection['left_out_attention']} failed an attention check, "
                    f"{selection['left_out_simulated']} simulated",
                ),
            ],
            align=["left", "left"],
        )
    )
    lines.append("## Definitions\n\n" + "\n".join(f"- {k}: {v}." for k, v in report["definitions"].items()))
    boot = report["bootstrap"]
    lines.append(
        f"Intervals: {boot['interval']} bootstrap, {boot['n']} resamples, seed {boot['seed']}; participants "
        f"resampled for {', '.join(boot['participants_resampled_for'])}; images (with all their answers) "
        f"resampled for {', '.join(boot['images_resampled_for'])}."
    )
    lines.append("## Overall")
    lines.append(
        markdown_table(
            ["measure", "value"],
            [
                ("mean participant accuracy (unsure = wrong)", overall["mean_participant_accuracy"]),
                ("95% interval (participants resampled)", _interval(overall["ci95"])),
                ("pooled accuracy over all answers", overall["pooled_accuracy"]),
                ("unsure rate", overall["unsure_rate"]),
                ("accuracy among decided answers", overall["decided_accuracy"]),
                ("Fleiss' kappa (artist/ai/unsure)", report["fleiss_kappa"]["value"]),
                ("kappa 95% interval (images resampled)", _interval(report["fleiss_kappa"]["ci95"])),
                ("answers", overall["n_answers"]),
            ],
            align=["left", "right"],
        )
    )
    lines.append("## Per participant (the paper's Table 5)")
    lines.append(
        markdown_table(
            [
                "participant",
                "id",
                "simulated",
                "familiarity",
                "answered",
                "accuracy",
                "unsure",
                "decided acc.",
                "median ms",
                "attention checks passed",
            ],
            [
                (
                    p["participant"],
                    p["participant_id"],
                    "yes" if p["simulated"] else "no",
                    p["familiarity"],
                    p["n_answered"],
                    p["accuracy"],
                    p["unsure_rate"],
                    p["decided_accuracy"],
                    p["median_response_ms"],
                    f"{p['attention_passed']}/{p['attention_answered']}"
                    if p["attention_answered"]
                    else "n/a",
                )
                for p in report["per_participant"]
            ],
        )
    )
    for title, key in (("Per class", "per_class"), ("Per generator", "per_generator")):
        lines.append(f"## {title}")
        lines.append(
            markdown_table(
                [
                    "group",
                    "images",
                    "answers",
                    "accuracy",
                    "95% interval",
                    "unsure",
                    *[f"said {a}" for a in ANSWERS],
                ],
                [
                    (
                        name,
                        g["n_images"],
                        g["n_answers"],
                        g["accuracy"],
                        _interval(g["ci95"]),
                        g["unsure_rate"],
                        *g["answers"].values(),
                    )
                    for name, g in report[key].items()
                ],
            )
        )
    confusion = report["confusion"]
    lines.append("## Confusion (rows: true class; columns: answers)")
    lines.append(
        markdown_table(
            ["class \\ answer", *confusion["columns"]],
            [(cls, *row) for cls, row in zip(confusion["rows"], confusion["counts"], strict=True)],
        )
    )
    truth_table = report["confusion_truth"]
    lines.append(
        markdown_table(
            ["truth \\ answer", *truth_table["columns"]],
            [(t, *row) for t, row in zip(truth_table["rows"], truth_table["counts"], strict=True)],
        )
    )
    lines.append("## By familiarity with anime art")
    lines.append(
        markdown_table(
            ["familiarity", "participants", "mean accuracy", "95% interval"],
            [
                (name, g["n_participants"], g["mean_accuracy"], _interval(g["ci95"]))
                for name, g in report["familiarity"].items()
            ],
        )
    )
    if "model" in report:
        lines.append(_model_markdown(report))
    lines.append("## Figures\n\n" + "\n".join(f"![{name}]({name})" for name in report.get("figures", [])))
    return "\n\n".join(lines) + "\n"


def _model_markdown(report: dict[str, Any]) -> str:
    model = report["model"]
    parts = [
        f"## Model side by side\n\nRun `{model.get('run', '?')}`: the calibrated three-way verdict "
        "(artist | ai | unsure) from calibration.json on the same images; unsure counts as wrong for the "
        "model too."
    ]
    parts.append(
        markdown_table(
            ["measure", "people", "model"],
            [
                ("accuracy", report["overall"]["pooled_accuracy"], model["accuracy"]),
                ("unsure rate", report["overall"]["unsure_rate"], model["unsure_rate"]),
            ]
            + [
                (f"accuracy, {cls}", report["per_class"][cls]["accuracy"], m["model_accuracy"])
                for cls, m in model["per_class"].items()
            ],
        )
    )
    parts.append(
        f"Model verdict equals the people's majority answer on "
        f"{_fmt(model['agreement_with_people_majority'])} of the images without a tie."
    )
    parts.append(
        markdown_table(
            ["image", "class", "truth", "people correct", "people majority", "model", "P(generated)"],
            [
                (
                    row["stimulus_id"],
                    row["class"],
                    row["truth"],
                    row["people_accuracy"],
                    row["people_majority"],
                    row["model_verdict"] or f"error: {row['error']}",
                    row["p_generated"],
                )
                for row in model["images"]
            ],
        )
    )
    return "\n\n".join(parts)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_figures(report: dict[str, Any], out: Path) -> list[Path]:
    """participants.png (Table 5 as bars), classes.png (accuracy per class, model beside people when
    present), confusion.png (class x answer), familiarity.png."""
    suffix = "\n(SIMULATED participants: not human data)" if report["contains_simulated"] else ""
    paths = []

    people = report["per_participant"]
    fig = Figure(figsize=(max(5.0, 0.35 * len(people) + 2), 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.bar([p["participant"] for p in people], [p["accuracy"] or 0.0 for p in people], color="#4a6fa5")
    mean = report["overall"]["mean_participant_accuracy"]
    if mean is not None:
        ax.axhline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
        ax.legend()
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (unsure = wrong)")
    ax.set_title("Accuracy per participant" + suffix)
    ax.tick_params(axis="x", rotation=90)
    paths.append(_save(fig, out / "participants.png"))

    classes = list(report["per_class"])
    fig = Figure(figsize=(max(5.0, 0.7 * len(classes) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    values = [report["per_class"][c]["accuracy"] or 0.0 for c in classes]
    errors = np.array(
        [
            [v - (ci or [v, v])[0], (ci or [v, v])[1] - v]
            for v, ci in zip(values, (report["per_class"][c]["ci95"] for c in classes), strict=True)
        ]
    ).T
    width = 0.4 if "model" in report else 0.7
    ax.bar(
        x - (width / 2 if "model" in report else 0),
        values,
        width,
        yerr=errors,
        capsize=3,
        label="participants",
    )
    if "model" in report:
        model_values = [report["model"]["per_class"][c]["model_accuracy"] or 0.0 for c in classes]
        ax.bar(x + width / 2, model_values, width, label="model", color="#c0504d")
    ax.set_xticks(x, labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (unsure = wrong)")
    ax.set_title("Accuracy per class" + suffix)
    ax.legend()
    paths.append(_save(fig, out / "classes.png"))

    confusion = report["confusion"]
    counts = np.array(confusion["counts"], dtype=np.float64).reshape(len(confusion["rows"]), len(ANSWERS))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = Figure(figsize=(5.5, 1.2 + 0.5 * len(classes)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="share of the class's answers")
    ax.set_xticks(range(len(ANSWERS)), labels=list(ANSWERS))
    ax.set_yticks(range(len(classes)), labels=classes)
    for r in range(counts.shape[0]):
        for c in range(counts.shape[1]):
            ax.text(
                c,
                r,
                f"{int(counts[r, c])}\n{shares[r, c]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[r, c] > 0.5 else "black",
            )
    ax.set_xlabel("answer")
    ax.set_ylabel("true class")
    ax.set_title("Answers per class" + suffix)
    paths.append(_save(fig, out / "confusion.png"))

    groups = {k: v for k, v in report["familiarity"].items() if v["n_participants"]}
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(
        [f"{k}\n(n={v['n_participants']})" for k, v in groups.items()],
        [v["mean_accuracy"] for v in groups.values()],
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean accuracy")
    ax.set_title("By familiarity with anime art" + suffix)
    paths.append(_save(fig, out / "familiarity.png"))
    return paths


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    return path
