"""The parts of the generalising recipe: residual stems, patches, flat skip, sampling, the detection loss,
decoder-trace pairs and abstention, each against a reference worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from animeprov.config import DEFAULT_MAX_TILES
from animeprov.data.dataset import ImageDataset, is_flat, source_balanced_weights
from animeprov.engine import ClassAndDetectionLoss, Predictions, pool_views
from animeprov.io import load_image, make_views
from animeprov.perturb import Augmenter, perturb
from animeprov.transforms.stem import RESIDUAL_SCALE, create_stem, highpass_residual, npr_residual


def test_npr_residual_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])[None, None]
    # each 2x2 block minus its top-left pixel; the odd last row/column is its own block's top-left
    expected = torch.tensor([[0.0, 1.0, 0.0], [3.0, 4.0, 3.0], [0.0, 1.0, 0.0]])[None, None]
    assert torch.equal(npr_residual(x), expected)
    up = torch.arange(4.0).reshape(1, 1, 2, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.equal(npr_residual(up), torch.zeros_like(up))  # a nearest 2x upsampling leaves nothing


def test_highpass_residual_by_hand():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 9.0
    out = highpass_residual(x)
    assert out[0, 0, 2, 2] == pytest.approx(8.0)  # 9 - 9/9
    assert out[0, 0, 1, 1] == pytest.approx(-1.0)  # 0 - 9/9
    assert out[0, 0, 0, 0] == 0.0
    assert torch.allclose(
        highpass_residual(torch.full((1, 3, 4, 4), 0.3)), torch.zeros(1, 3, 4, 4), atol=1e-7
    )


def test_residual_and_residual_dct_stems_match_references():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(create_stem("npr", 8)(x), npr_residual(x) * RESIDUAL_SCALE)
    stem = create_stem("npr-dct", 8)
    reference = np.log(np.abs(scipy.fft.dctn(npr_residual(x).numpy(), axes=(-2, -1), norm="ortho")) + 1e-6)
    np.testing.assert_allclose(stem.log_dct(x).numpy(), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown stem"):
        create_stem("sobel", 8)


def test_is_flat_counts_exact_neighbour_equality():
    patch = np.zeros((4, 4, 3), np.uint8)
    assert is_flat(patch)
    patch[:, ::2] = 7  # every pixel differs from its right neighbour
    assert not is_flat(patch)


def _tree(tmp_path, n=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = np.full((32, 32, 3), 255, np.uint8)
        image[8:16, 8:16] = rng.integers(0, 255, (8, 8, 3))  # one textured corner on white
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "class": "human" if i % 2 else "gen", "width": 32, "height": 32})
    return tmp_path / "x.csv", rows


def test_random_patches_change_per_epoch_avoid_flat_fills_and_tiles_cover_the_grid(tmp_path):
    csv_path, rows = _tree(tmp_path)
    patches = ImageDataset(
        csv_path, rows, ["gen", "human"], 8, view="random", views_per_image=3, skip_flat=True
    )
    assert len(patches) == 12 and patches.item_rows()[:4] == [0, 0, 0, 1]
    first = [patches[i][0] for i in range(12)]
    assert sum(is_flat(view) for view in first) < 6  # 1 of 16 positions is textured; retries find it
    patches.set_epoch(1)
    assert any(not np.array_equal(a, patches[i][0]) for i, a in enumerate(first))
    plain = ImageDataset(csv_path, rows, ["gen", "human"], 8, view="random", views_per_image=3)
    assert sum(is_flat(plain[i][0]) for i in range(12)) > sum(is_flat(v) for v in first)
    tiles = ImageDataset(csv_path, rows, ["gen", "human"], 8, view="tiles")
    assert len(tiles) == 4 * 16 and {tiles[i][2] for i in range(16)} == {0}
    # larger images: at most predict's budget of tiles, the same sub-grid it judges
    assert DEFAULT_MAX_TILES == 16
    spread = ImageDataset(csv_path, rows, ["gen", "human"], 4, view="tiles")  # 8 x 8 tiles of 4 px
    assert len(spread) == 4 * 16
    pixels = np.asarray(load_image(str(tmp_path / "0.png")).pixels)
    expected = make_views(pixels, 4, "tiles", max_tiles=DEFAULT_MAX_TILES)
    assert all(np.array_equal(spread[i][0], view) for i, view in enumerate(expected))


def test_large_images_augment_only_the_patch_neighbourhood_with_the_same_draws(tmp_path):
    """A large image's random patch comes from the draws that augmenting it whole would use: the same
    perturbation and offsets, the same pixels for blur and JPEG. Small images take the whole-image path."""
    from PIL import Image

    rng = np.random.default_rng(0)
    big = np.clip(rng.normal(128, 40, (300, 280, 3)), 0, 255).astype(np.uint8)
    small = big[:256, :256]
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(small).save(tmp_path / "small.png")
    rows = [{"path": "big.png", "class": "gen"}, {"path": "small.png", "class": "human"}]
    augment = Augmenter(("blur", "jpeg", "resize"), p=1.0, min_side=16)
    data = ImageDataset(
        tmp_path / "x.csv", rows, ["gen", "human"], 16, view="random", views_per_image=6, augment=augment
    )
    assert data._augments_neighbourhood(big.shape[:2]) and not data._augments_neighbourhood((80, 80))
    for index in range(6):  # the big image's views
        draws = np.random.default_rng([0, 0, 0, index])
        perturbation = augment.sample(big.shape[:2], draws)
        whole = perturb(big, perturbation)
        top = int(draws.integers(0, whole.shape[0] - 15))
        left = int(draws.integers(0, whole.shape[1] - 15))
        expected = whole[top : top + 16, left : left + 16]
        if perturbation.family != "resize":  # resizing: within a pixel's shift (test_perturb)
            assert np.array_equal(data[index][0], expected), perturbation.spec
    # 256 px with 64 px patches, as the development sets and the reference model's training: whole image
    dev = ImageDataset(tmp_path / "x.csv", rows[1:], ["gen", "human"], 64, view="random", augment=augment)
    assert not dev._augments_neighbourhood(small.shape[:2])
    draws = np.random.default_rng([0, 0, 0, 0])
    augmented = augment(small, draws)
    top, left = (
        int(draws.integers(0, augmented.shape[0] - 63)),
        int(draws.integers(0, augmented.shape[1] - 63)),
    )
    assert np.array_equal(dev[0][0], augmented[top : top + 64, left : left + 64])


def test_pair_keys_give_twins_the_same_patch(tmp_path):
    csv_path, rows = _tree(tmp_path, n=2)
    twin = {**rows[0], "class": "gen"}
    data = ImageDataset(csv_path, [rows[0], twin], ["gen", "human"], 8, view="random", pair_keys=[0, 0])
    assert np.array_equal(data[0][0], data[1][0])


def test_source_balanced_weights_by_hand():
    sources = ["h1", "h1", "h1", "h2", "a1", "a2", "a2"]
    generated = [False, False, False, False, True, True, True]
    weights = source_balanced_weights(sources, generated).numpy()
    # halves 1/2 each; two sources per half 1/4 each; split among their items
    np.testing.assert_allclose(weights, [1 / 12, 1 / 12, 1 / 12, 1 / 4, 1 / 4, 1 / 8, 1 / 8])
    assert weights.sum() == pytest.approx(1.0)


def test_detection_loss_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    labels = torch.tensor([1, 0])  # human is class 0: a generated image, then a human one
    plain = ClassAndDetectionLoss(0)(logits, labels)
    assert plain.item() == pytest.approx(-(np.log(0.3) + np.log(0.1)) / 2, rel=1e-6)
    both = ClassAndDetectionLoss(0, binary_weight=2.0)(logits, labels)
    binary = -(np.log(0.5) + np.log(0.1)) / 2  # P(generated) = 0.3 + 0.2 for the first, P(human) 0.1
    assert both.item() == pytest.approx(plain.item() + 2 * binary, rel=1e-6)
    with pytest.raises(ValueError):
        ClassAndDetectionLoss(None, binary_weight=1.0)


def test_pooling_views_by_row_pools_detection_logits_and_generator_shares_apart():
    # classes: human, gen-a, gen-b; image 5 has two views that agree on "generated", not on the generator
    probs = np.array([[0.3, 0.69, 0.01], [0.3, 0.01, 0.69], [0.3, 0.3, 0.4]], np.float32)
    pooled = Predictions(probs, np.array([1, 1, 2]), np.array([5, 5, 2]), [], 0.0).pool_by_row(human=0)
    assert pooled.indices.tolist() == [5, 2] and pooled.labels.tolist() == [1, 2]
    # each view says P(generated) 0.7: so does the image; the generators split it evenly (by symmetry)
    np.testing.assert_allclose(pooled.probs[0], [0.3, 0.35, 0.35], rtol=1e-6)
    # pooling every class at once would have put this image on the human side: exp(mean log p) renormalised
    geometric = np.exp(np.log(probs[:2]).mean(axis=0))
    assert (geometric / geometric.sum())[0] > 0.5
    np.testing.assert_allclose(pooled.probs[1], probs[2], rtol=1e-6)  # one view: its own probabilities
    # without a human class: the softmax of the mean log-probabilities
    plain = Predictions(probs, np.array([1, 1, 2]), np.array([5, 5, 2]), [], 0.0).pool_by_row(human=None)
    np.testing.assert_allclose(plain.probs[0], geometric / geometric.sum(), rtol=1e-6)


def test_pooled_p_generated_is_the_sigmoid_of_the_mean_detection_logit():
    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(4), size=5))  # 5 views, human is class 2
    pooled = pool_views(log_probs, np.zeros(5, dtype=int), human=2)[0]
    p = np.exp(log_probs)
    logit = np.log(1 - p[:, 2]) - np.log(p[:, 2])
    assert 1 - pooled[2] == pytest.approx(1 / (1 + np.exp(-logit.mean())), rel=1e-9)
    shares = np.exp(log_probs[:, [0, 1, 3]].mean(axis=0))
    np.testing.assert_allclose(pooled[[0, 1, 3]] / (1 - pooled[2]), shares / shares.sum(), rtol=1e-9)
    assert pooled.sum() == pytest.approx(1.0)


def test_taef2_loads_strictly_reconstructs_closely_and_caches(tmp_path):
    from PIL import Image

    from animeprov.pairs import PAIR_CLASS, TinyAutoencoder, add_decoder_pairs

    yy, xx = np.mgrid[0:36, 0:44]
    smooth = np.stack([xx * 5, yy * 6, (xx + yy) * 3], axis=2).clip(0, 255).astype(np.uint8)
    out = TinyAutoencoder().reconstruct(smooth)
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8  # sides cut to multiples of 8
    mse = ((out.astype(float) - smooth[:32, :40]) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 20  # a near copy, not noise
    Image.fromarray(smooth).save(tmp_path / "h.png")
    Image.fromarray(smooth[:4, :4]).save(tmp_path / "tiny.png")
    rows = [
        {"path": "h.png", "class": "human", "source": "s"},
        {"path": "tiny.png", "class": "human", "source": "s"},
        {"path": "h.png", "class": "gen", "source": "g"},
    ]
    cache = tmp_path / "cache"
    pairs, keys, failed = add_decoder_pairs(rows, tmp_path / "x.csv", human_class="human", cache=cache)
    assert [r["class"] for r in pairs] == ["human", "human", "gen", PAIR_CLASS]
    assert pairs[3]["source"] == f"s+{PAIR_CLASS}" and keys == [0, 1, 2, 0]
    assert len(failed) == 1 and "tiny.png" in failed[0][0]
    made = list(cache.iterdir())
    stamp = made[0].stat().st_mtime_ns
    add_decoder_pairs(rows, tmp_path / "x.csv", human_class="human", cache=cache)
    assert made[0].stat().st_mtime_ns == stamp  # cached: not made again


def test_familiarity_flags_features_far_from_every_class():
    from animeprov.evaluation.familiarity import fit_familiarity

    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(5, 1, (200, 4))])
    labels = np.repeat([0, 1], 200)
    val = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(5, 1, (50, 4))])
    familiarity = fit_familiarity(train, labels, val, quantile=0.99)
    assert familiarity.is_familiar(np.array([[0.1, -0.2, 0.3, 0.0], [5, 5, 5, 5]])).all()
    assert not familiarity.is_familiar(np.array([[20.0, -20, 20, -20]])).any()
    # by hand: standardised RMS distance to the nearest mean
    score = familiarity.scores(np.array([[2.5, 2.5, 2.5, 2.5]]))[0]
    expected = min(np.sqrt(((2.5 - m) ** 2 / familiarity.var).mean()) for m in familiarity.means)
    assert score == pytest.approx(expected)


def _calibration():
    from animeprov.evaluation.calibration import Calibration

    return Calibration(("gen", "human"), "human", 1.0, 1.0, 0.8, 0.2, 0.0, 0.01, 0.05, 0.95)


@pytest.mark.parametrize(
    ("judged", "checks", "expected"),
    [
        ({"verdict": "ai", "p_generated": 0.9}, {"jpeg:90": {"verdict": "ai", "p_generated": 0.85}}, None),
        (
            {"verdict": "ai", "p_generated": 0.9},
            {"webp:90": {"verdict": "unsure", "p_generated": 0.6}},
            "unstable: ai (P 0.90) but webp:90 gives unsure (P 0.60)",
        ),
        (
            {"verdict": "artist", "p_generated": 0.1},
            {"familiarity": {"distance": 3.0, "threshold": 2.0}},
            "unfamiliar: unlike the training images (distance 3.00 > 2.00)",
        ),
        (
            {"verdict": "artist", "p_generated": 0.1},
            {"familiarity": {"distance": 1.0, "threshold": 2.0}},
            None,
        ),
        (
            {"verdict": "unsure", "p_generated": 0.5},
            {"shift:4": {"verdict": "ai", "p_generated": 0.81}},
            "between the thresholds: P(generated) 0.50 is above the artist threshold 0.20 and below the ai "
            "threshold 0.80",
        ),
    ],
)
def test_abstention_reasons_on_constructed_cases(judged, checks, expected):
    from animeprov.predict import abstention_reason

    assert abstention_reason(judged, checks, _calibration()) == expected


def test_reason_kinds_name_each_reason_of_a_combined_abstention():
    from animeprov.predict import abstention_reason, reason_kinds

    checks = {
        "familiarity": {"distance": 3.0, "threshold": 2.0},
        "jpeg:90": {"verdict": "artist", "p_generated": 0.1},
    }
    reason = abstention_reason({"verdict": "ai", "p_generated": 0.9}, checks, _calibration())
    assert reason_kinds(reason) == ["unfamiliar", "unstable"]
    assert reason_kinds(None) == []


def test_stability_variants():
    from animeprov.predict import stability_variant

    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    assert np.array_equal(stability_variant(pixels, "shift:4", 32), pixels[4:, 4:])
    assert stability_variant(pixels, "shift:4", 40) is None  # no room to shift a full-size view
    jpeg = stability_variant(pixels, "jpeg:90", 32)
    assert jpeg.shape == pixels.shape and not np.array_equal(jpeg, pixels)
    with pytest.raises(ValueError, match="unknown stability check"):
        stability_variant(pixels, "rotate:90", 32)


def test_loading_the_autoencoder_leaves_the_callers_random_stream_alone():
    from animeprov.pairs import TinyAutoencoder

    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    TinyAutoencoder()
    assert torch.equal(torch.rand(3), expected)


def test_tiles_of_an_image_that_no_longer_matches_its_manifest_are_an_error_not_a_crash(tmp_path):
    csv_path, rows = _tree(tmp_path, n=1)
    rows[0]["width"] = rows[0]["height"] = 64  # the manifest says 64 px, the file is 32 px
    tiles = ImageDataset(csv_path, rows, ["gen", "human"], 16, view="tiles")
    assert len(tiles) == 16
    view, _, _, error = tiles[15]
    assert view is None and "does not match" in error[1]
