"""benchmarks/tile_budget.py: an image's P(generated) over the tiles that `--max-tiles` keeps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_benchmark

from animeprov.io import tile_grid

tile_budget = load_benchmark("tile_budget")


def image(generated: bool, corner_log_odds: float, seed: int = 0) -> dict:
    """A 128 px image of 4 x 4 tiles of 32 px, two classes (human first): its four corner tiles say
    generated with log-odds `corner_log_odds`, the twelve others human with log-odds 2."""
    corners = tile_grid(128, 128, 32)
    log_probs = []
    for top, left in corners:
        odds = corner_log_odds if top in (0, 96) and left in (0, 96) else -2.0
        log_probs.append([-np.logaddexp(0, odds), -np.logaddexp(0, -odds)])  # log P(human), log P(gen)
    return {
        "seed": seed,
        "path": f"{generated}-{corner_log_odds}",
        "generated": generated,
        "human": 0,
        "shape": (128, 128),
        "size": 32,
        "corners": corners,
        "log_probs": np.array(log_probs),
    }


def test_a_budget_of_four_judges_the_four_corner_tiles_only():
    one = image(True, corner_log_odds=3.0)
    assert tile_budget.p_generated(one, 4) == pytest.approx(1 / (1 + np.exp(-3.0)))
    mean_log_odds = (4 * 3.0 + 12 * -2.0) / 16  # every tile: the softmax of the mean logits
    assert tile_budget.p_generated(one, None) == pytest.approx(1 / (1 + np.exp(-mean_log_odds)))


def test_figures_pool_per_seed_and_count_the_tiles_kept():
    images = [image(True, 3.0, seed) for seed in (0, 1)] + [image(False, -3.0, seed) for seed in (0, 1)]
    every, budget = tile_budget.figures(images, None), tile_budget.figures(images, 4)
    assert every["tiles_per_image"] == [16] and budget["tiles_per_image"] == [4]
    # over every tile both images lean human: half right; over the corners both are right
    assert every["balanced_accuracy"]["mean"] == 0.5 and budget["balanced_accuracy"]["mean"] == 1.0
    assert budget["roc_auc"] == {"mean": 1.0, "sd": 0.0, "n_seeds": 2}


def test_a_mosaic_is_four_images_of_one_source_side_by_side_with_their_tiles():
    def of(source: str, i: int, generated: bool = True) -> dict:
        return {**image(generated, float(i)), "fold": "fold-00", "source": source, "path": f"{source}/{i}"}

    five = [of("a", i) for i in range(5)]  # the fifth has no three others to go with
    made = tile_budget.mosaics([*five, of("b", 0, False), of("b", 1, False)])
    assert len(made) == 1  # source b has only two images
    mosaic = made[0]
    assert mosaic["shape"] == (256, 256) and len(mosaic["corners"]) == 64 == len(set(mosaic["corners"]))
    assert mosaic["corners"] == sorted(mosaic["corners"], key=lambda c: (c[0] >= 128, c[1] >= 128))
    assert set(mosaic["corners"]) == set(tile_grid(256, 256, 32))
    np.testing.assert_array_equal(mosaic["log_probs"], np.concatenate([i["log_probs"] for i in five[:4]]))
    # the bottom-right quarter's tiles are the fourth image's, in its own order
    assert mosaic["corners"][48:] == [(top + 128, left + 128) for top, left in five[3]["corners"]]


def test_pooling_per_class_lets_generators_that_disagree_lose_to_human():
    # three classes (human first); two tiles both 70% generated, one says gen-a, the other gen-b
    one = {
        "seed": 0,
        "path": "x",
        "generated": True,
        "human": 0,
        "shape": (32, 64),
        "size": 32,
        "corners": tile_grid(32, 64, 32),
        "log_probs": np.log([[0.3, 0.69, 0.01], [0.3, 0.01, 0.69]]),
    }
    assert tile_budget.p_generated(one, None) == pytest.approx(0.7)
    geometric = np.sqrt([0.09, 0.69 * 0.01, 0.01 * 0.69])
    assert tile_budget.p_generated(one, None, per_class=True) == pytest.approx(
        1 - geometric[0] / geometric.sum()
    )
    assert tile_budget.p_generated(one, None, per_class=True) < 0.5


def test_seed_ensemble_averages_the_seeds_pooled_logits():
    images = [image(True, 3.0, 0), image(True, 10.0, 1), image(False, -3.0, 0), image(False, -3.0, 1)]
    for one in images:
        one["path"] = str(one["generated"])  # the same image under both seeds
    ensemble = tile_budget.seed_ensemble(images)
    # the generated image: seeds' pooled log-odds (4*3 - 24)/16 = -0.75 (human side alone) and
    # (4*10 - 24)/16 = 1: mean 0.125, judged generated; the human one: (4*-3 - 24)/16 < 0
    assert ensemble == {
        "seeds": 2,
        "n": 2,
        "roc_auc": 1.0,
        "balanced_accuracy": 1.0,
        "best_threshold_balanced_accuracy": 1.0,
    }


def test_the_best_threshold_is_a_ceiling_on_balanced_accuracy():
    generated = np.array([True, True, True, False, False, False])
    p = np.array([0.45, 0.4, 0.9, 0.3, 0.2, 0.1])  # ranked perfectly, two AI images below 0.5
    figures = tile_budget.detection_figures(generated, p)
    assert figures["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert figures["best_threshold_balanced_accuracy"] == 1.0 and figures["roc_auc"] == 1.0


def test_a_dealt_ensemble_judges_each_kept_tile_with_one_model_in_turn():
    def dealt_to(seed: int, generated: bool, budget: int | None) -> dict:
        """Seed `seed`'s model says generated (log-odds 4) on the tiles dealt to it in turn, and strongly
        human (-100) on the others: right only if each tile goes to its own model."""
        one = image(generated, 0.0, seed)
        kept = tile_grid(128, 128, 32, budget)
        mine = set(kept[seed::2])
        odds = [4.0 if corner in mine else -100.0 for corner in one["corners"]]
        if not generated:
            odds = [-3.0] * len(odds)
        one["log_probs"] = np.array([[-np.logaddexp(0, o), -np.logaddexp(0, -o)] for o in odds])
        one["path"] = str(generated)
        return one

    for budget in (None, 4):
        images = [dealt_to(seed, generated, budget) for seed in (0, 1) for generated in (True, False)]
        assert tile_budget.dealt_seed_ensemble(images, budget) == {
            "seeds": 2,
            "n": 2,
            "roc_auc": 1.0,
            "balanced_accuracy": 1.0,
            "best_threshold_balanced_accuracy": 1.0,
        }
        # either model alone, or both over every tile, is swayed by the -100s: the generated image passes
        assert tile_budget.figures(images, budget)["balanced_accuracy"]["mean"] == 0.5
        assert tile_budget.seed_ensemble(images)["balanced_accuracy"] == 0.5
