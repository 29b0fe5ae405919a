"""Leave-one-source-out: folds never share a source, metrics on hand-made predictions, a tiny real run."""

from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animeprov.crossval import (
    CrossvalConfig,
    _check_fold_has_both_kinds,
    assign_folds,
    combine_manifests,
    fold_split,
    per_source,
    pooled_metrics,
    risk_coverage,
    run_crossval,
)
from animeprov.evaluation.calibration import CALIBRATION_FORMAT


def _rows(spec: dict[str, tuple[str, int]]) -> list[dict]:
    """{source: (class, n)} -> manifest rows."""
    return [
        {"path": f"{source}/{i}.png", "class": cls, "source": source, "group": f"{source}-{i}"}
        for source, (cls, n) in spec.items()
        for i in range(n)
    ]


SPEC = {
    "h1": ("human", 10),
    "h2": ("human", 6),
    "h3": ("human", 4),
    "h4": ("human", 3),
    "a1": ("gen-a", 9),
    "a2": ("gen-a", 5),
    "b1": ("gen-b", 7),
    "b2": ("gen-b", 2),
}


def test_loso_holds_out_each_source_once():
    folds = assign_folds(_rows(SPEC), "source", 0, "human")
    assert sorted(s for fold in folds for s in fold) == sorted(SPEC)
    assert all(len(fold) == 1 for fold in folds)


def test_k_folds_are_disjoint_cover_all_and_each_has_both_kinds():
    folds = assign_folds(_rows(SPEC), "source", 2, "human")
    flat = [s for fold in folds for s in fold]
    assert sorted(flat) == sorted(SPEC) and len(flat) == len(set(flat))
    for fold in folds:
        assert any(s.startswith("h") for s in fold) and any(not s.startswith("h") for s in fold)
    # largest first to the lightest fold: h1 (10) alone balances h2 + h3 (10)
    assert "h1" in folds[0] and {"h2", "h3"} <= set(folds[1])
    with pytest.raises(ValueError, match="folds"):
        assign_folds(_rows(SPEC), "source", 1, "human")
    with pytest.raises(ValueError, match="sources"):
        assign_folds(_rows(SPEC), "source", 9, "human")


@pytest.mark.parametrize("val_by", ["source", "group"])
def test_fold_split_never_shares_a_source_between_test_and_training(val_by):
    rows = _rows(SPEC)
    split = fold_split(rows, ["h2", "a1"], "source", "human", val_by=val_by, val_share=0.2, seed=3)
    by_split = {name: {r["source"] for r in split if r["split"] == name} for name in ("train", "val", "test")}
    assert by_split["test"] == {"h2", "a1"}
    assert not by_split["test"] & (by_split["train"] | by_split["val"])
    if val_by == "source":  # whole sources: validation judges sources training never saw
        assert not by_split["val"] & by_split["train"]
        assert any(s.startswith("h") for s in by_split["val"])
    classes = {r["class"] for r in split if r["split"] == "train"}
    assert "human" in classes and len(classes) > 1


def _prediction(source, cls, p, verdict, fold=0, probs=None):
    return {
        "source": source,
        "class": cls,
        "p_generated": p,
        "verdict": verdict,
        "error": None,
        "fold": fold,
        "probabilities": probs or {"human": 1 - p, "gen-a": p * 0.7, "gen-b": p * 0.3},
    }


def test_pooled_metrics_on_hand_made_predictions():
    rows = [
        _prediction("h1", "human", 0.1, "artist"),
        _prediction("h1", "human", 0.6, "unsure"),
        _prediction("h2", "human", 0.9, "ai"),  # a false accusation
        _prediction("h2", "human", 0.2, "artist"),
        _prediction("a1", "gen-a", 0.8, "ai"),
        _prediction("a1", "gen-a", 0.4, "unsure"),
        _prediction("b1", "gen-b", 0.7, "ai", probs={"human": 0.3, "gen-a": 0.1, "gen-b": 0.6}),
        _prediction("b1", "gen-b", 0.3, "artist", fold=1),  # fold 1 never trained gen-b: no attribution
        {**_prediction("b1", "gen-b", 0.9, "ai"), "error": "broken"},  # left out
    ]
    metrics = pooled_metrics(rows, "human", {0: {"human", "gen-a", "gen-b"}, 1: {"human", "gen-a"}})
    assert metrics["n"] == 8 and metrics["n_human"] == 4 and metrics["n_generated"] == 4
    # at 0.5: human correct 2/4 (0.1, 0.2), generated found 2/4 (0.8, 0.7)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)
    # ROC-AUC by hand: pairs (generated > human) over 16: 0.8 beats 3, 0.4 beats 2, 0.7 beats 3, 0.3 beats 2
    assert metrics["roc_auc"] == pytest.approx(10 / 16)
    assert metrics["fpr_at_ai_threshold"] == pytest.approx(1 / 4)
    assert metrics["ai_recall_at_ai_threshold"] == pytest.approx(2 / 4)
    assert metrics["coverage"] == pytest.approx(6 / 8)
    assert metrics["committed_accuracy"] == pytest.approx(4 / 6)  # artist 0.1, 0.2 / ai 0.8, 0.7 right
    # attribution over 3 images of trained classes: gen-a (0.8) right, gen-a (0.4) right, gen-b right
    assert metrics["n_attribution"] == 3 and metrics["attribution_accuracy"] == pytest.approx(1.0)
    sources = per_source(rows, "human")
    assert sources["h2"] == {
        "n": 2,
        "classes": ["human"],
        "correct_at_0.5": 0.5,
        "mean_p_generated": pytest.approx(0.55),
        "artist": 1,
        "unsure": 0,
        "ai": 1,
    }
    assert sources["b1"]["n"] == 2  # the unreadable file is not counted


def test_risk_coverage_keeps_the_most_confident_first():
    rows = [
        _prediction("h", "human", 0.05, "artist"),
        _prediction("a", "gen-a", 0.45, "unsure"),
        _prediction("a", "gen-a", 0.99, "ai"),
        _prediction("h", "human", 0.6, "unsure"),
    ]
    curve = risk_coverage(rows, "human", points=5)
    assert curve[-1] == {"coverage": 1.0, "accuracy": 0.5}
    assert curve[1]["accuracy"] == 1.0  # the two most confident (0.99, 0.05) are right


def _write_source_tree(root: Path) -> Path:
    """Three human and three AI sources of 48 px images; AI images carry a 2-px periodic trace."""
    rng = np.random.default_rng(0)
    rows = []
    for source, cls in [
        ("h1", "human"),
        ("h2", "human"),
        ("h3", "human"),
        ("a1", "gen-a"),
        ("a2", "gen-a"),
        ("a3", "gen-a"),
    ]:
        (root / source).mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 200, size=(48, 48, 3)).astype(np.int32)
            if cls != "human":
                image[::2, ::2] += 50
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / source / f"{i}.png")
            rows.append(
                {
                    "path": f"{source}/{i}.png",
                    "class": cls,
                    "source": source,
                    "group": f"{source}{i}",
                    "width": 48,
                    "height": 48,
                }
            )
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_combine_manifests_makes_paths_absolute_and_needs_the_column(tmp_path):
    manifest = _write_source_tree(tmp_path / "set")
    rows = combine_manifests([manifest], tmp_path / "all.csv", "source")
    assert all(Path(row["path"]).is_absolute() and Path(row["path"]).exists() for row in rows)
    assert {row["dataset"] for row in rows} == {"manifest"}
    assert rows[0]["group"] == "manifest:h10"  # another manifest's "h10" is another group
    assert combine_manifests([manifest], tmp_path / "all.csv", "dataset")  # whole manifests held out
    with pytest.raises(ValueError, match="no 'artist' column"):
        combine_manifests([manifest], tmp_path / "all.csv", "artist")


def test_a_fold_of_one_kind_has_no_figures_of_the_other_and_no_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" would be one
        metrics = pooled_metrics([_prediction("h1", "human", 0.2, "artist")], "human", {0: {"human"}})
    assert metrics["human_correct_at_0.5"] == 1.0 and metrics["ai_recall_at_0.5"] is None
    assert metrics["balanced_accuracy"] is None and metrics["roc_auc"] is None


def test_a_fold_without_validation_sources_of_both_kinds_says_why():
    rows = fold_split(_rows({"h1": ("human", 5), "h2": ("human", 5), "a1": ("gen-a", 5)}), ["h2"],
                      "source", "human", val_by="source", val_share=0.3, seed=0)  # fmt: skip
    config = CrossvalConfig(manifests=("m.csv",), recipe="traces")
    why = r"leaves the val split .*\(no images there\); validation takes whole sources, only of a class"
    with pytest.raises(ValueError, match=why):
        _check_fold_has_both_kinds(rows, config, ["h2"])


def test_crossval_runs_end_to_end_and_resumes(tmp_path):
    manifest = _write_source_tree(tmp_path / "set")
    config = CrossvalConfig(
        manifests=(str(manifest),),
        recipe="paper",
        overrides={"variant": "cnn-dct", "size": 32, "epochs": 2, "batch_size": 8},
        folds=3,
        seeds=(0,),
        device="cpu",
    )
    out = tmp_path / "cv"
    report = run_crossval(config, out)
    assert [len(fold["held_out"]) for fold in report["folds"]] == [2, 2, 2]
    assert report["per_seed"]["0"]["n"] == 36
    assert set(report["sources"]) == {"h1", "h2", "h3", "a1", "a2", "a3"}
    for fold in range(3):
        split = list(csv.DictReader(open(out / f"fold-{fold:02d}" / "seed-0" / "split.csv")))
        test_sources = {r["source"] for r in split if r["split"] == "test"}
        assert test_sources == set(report["folds"][fold]["held_out"])
        assert not test_sources & {r["source"] for r in split if r["split"] != "test"}
    assert (out / "report.md").exists() and (out / "sources.png").exists()
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# Sources held out: recipe `paper`")  # K folds, not one source per fold
    assert "3 folds over the `source` column" in markdown
    assert "| h2 | human | 6 | 0.50 | 0.50 | 0 | 6 | 0 |" in markdown  # one seed: whole counts
    before = (out / "fold-00" / "seed-0" / "predictions.jsonl").stat().st_mtime_ns
    again = run_crossval(config, out)  # resumes: nothing retrained or re-predicted
    assert (out / "fold-00" / "seed-0" / "predictions.jsonl").stat().st_mtime_ns == before
    assert json.dumps(again["pooled"]) == json.dumps(report["pooled"])
    # A fold predicted under calibration format 1 is calibrated and predicted again; its training is kept.
    done = out / "fold-01" / "seed-0" / "crossval-done.json"
    done.write_text(json.dumps({"held_out": report["folds"][1]["held_out"]}))
    weights = (out / "fold-01" / "seed-0" / "run" / "model.safetensors").read_bytes()
    predicted = (out / "fold-01" / "seed-0" / "predictions.jsonl").stat().st_mtime_ns
    run_crossval(config, out)
    assert (out / "fold-01" / "seed-0" / "predictions.jsonl").stat().st_mtime_ns != predicted
    assert json.loads(done.read_text())["calibration_format"] == CALIBRATION_FORMAT
    assert (out / "fold-01" / "seed-0" / "run" / "model.safetensors").read_bytes() == weights
    assert (out / "fold-00" / "seed-0" / "predictions.jsonl").stat().st_mtime_ns == before
    changed = CrossvalConfig(**{**config.__dict__, "folds": 2})
    with pytest.raises(ValueError, match="other settings"):
        run_crossval(changed, out)
    only = run_crossval(CrossvalConfig(**{**config.__dict__, "only": ("a2",)}), tmp_path / "only")
    (fold,) = only["folds"]  # just the fold holding out a2, under its number in the full list
    assert "a2" in fold["held_out"] and (tmp_path / "only" / f"fold-{fold['fold']:02d}").is_dir()
    with pytest.raises(ValueError, match="no 'source' value zz"):
        run_crossval(CrossvalConfig(**{**config.__dict__, "only": ("zz",)}), tmp_path / "zz")


def test_validation_sources_never_take_a_class_out_of_training():
    # c1 is the only source of gen-c: holding it out for validation would leave the model without gen-c
    spec = {**SPEC, "c1": ("gen-c", 30)}
    for seed in range(10):
        split = fold_split(_rows(spec), ["h1"], "source", "human", val_by="source", val_share=0.5, seed=seed)
        assert {r["class"] for r in split if r["split"] == "val"} <= {
            r["class"] for r in split if r["split"] == "train"
        }
        assert "c1" not in {r["source"] for r in split if r["split"] == "val"}


def test_validation_keeps_at_most_the_given_share_of_each_class():
    # c1 holds 20 of gen-c's 22 images: without a cap some seeds validate on it and leave 2 to train
    spec = {**SPEC, "c1": ("gen-c", 20), "c2": ("gen-c", 2)}
    uncapped, capped = set(), set()
    for seed in range(20):
        kwargs = dict(val_by="source", val_share=0.5, seed=seed)
        uncapped |= {
            r["source"]
            for r in fold_split(_rows(spec), [], "source", "human", **kwargs)
            if r["split"] == "val"
        }
        split = fold_split(_rows(spec), [], "source", "human", max_class_share=0.5, **kwargs)
        val = Counter(r["class"] for r in split if r["split"] == "val")
        total = Counter(r["class"] for r in split)
        assert all(val[c] <= 0.5 * total[c] for c in total), (seed, val)
        capped |= {r["source"] for r in split if r["split"] == "val"}
        assert not {r["source"] for r in split if r["split"] == "test"}  # nothing held out: no test split
    assert "c1" in uncapped and "c1" not in capped


def test_a_folder_made_before_the_class_share_limit_resumes_only_with_the_old_settings(tmp_path):
    from animeprov.crossval import _check_settings

    config = CrossvalConfig(manifests=("m.csv",), recipe="traces")
    _check_settings(tmp_path, config, "digest")
    recorded = json.loads((tmp_path / "crossval.json").read_text())
    assert recorded["max_val_class_share"] == 0.5 and recorded["stability"] is False
    # as written before the settings existed: no class limit, predictions with the stability checks
    del recorded["max_val_class_share"], recorded["stability"]
    (tmp_path / "crossval.json").write_text(json.dumps(recorded))
    with pytest.raises(
        ValueError, match="max_val_class_share, stability.*--max-val-class-share 1 --stability"
    ):
        _check_settings(tmp_path, config, "digest")
    with pytest.raises(
        ValueError, match=r"\(stability\); choose another --out \(or resume it with --stability\)"
    ):
        _check_settings(tmp_path, CrossvalConfig(**{**config.__dict__, "max_val_class_share": 1.0}), "digest")
    old = CrossvalConfig(**{**config.__dict__, "max_val_class_share": 1.0, "stability": True})
    _check_settings(tmp_path, old, "digest")
    with pytest.raises(
        ValueError, match=r"\(recipe\); choose another --out$"
    ):  # no flag brings back a recipe
        _check_settings(tmp_path, CrossvalConfig(**{**old.__dict__, "recipe": "paper"}), "digest")


def test_seed_ensemble_pools_each_images_probability_on_the_logit():
    from animeprov.crossval import ensemble_metrics

    def rows(ps):
        return [{**_prediction("s", cls, p, None), "path": f"{i}"} for i, (cls, p) in enumerate(ps)]

    classes = ["human", "human", "gen-a", "gen-a"]
    by_seed = [(0.2, 0.1, 0.8, 0.9), (0.3, 0.2, 0.8, 0.9), (0.1, 0.3, 0.01, 0.9)]
    metrics = ensemble_metrics(
        {seed: rows(zip(classes, ps, strict=True)) for seed, ps in enumerate(by_seed)}, "human"
    )
    # the third image: mean logit (2 * 1.386 - 4.595) / 3 < 0, so 0.35 and missed at 0.5 (the mean of the
    # probabilities, 0.54, would have caught it); still above both human images (0.19, 0.19): ranks right
    assert metrics == {"n": 4, "seeds": 3, "roc_auc": 1.0, "balanced_accuracy": 0.75}
