"""Predictor: views (crop vs tiles), aggregation, calibrated verdicts, inputs of every kind, streaming."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from scipy.special import log_softmax, softmax

from animeprov import checkpoint as ckpt
from animeprov.config import DEFAULT_MAX_TILES
from animeprov.evaluation.calibration import Calibration, apply_temperature, save_calibration
from animeprov.io import ImageError, load_image, make_views
from animeprov.models import create_model
from animeprov.predict import (
    STABILITY_CHECKS,
    ImagePrediction,
    Predictor,
    choose_view,
)

CLASSES = ["gen-a", "gen-b", "human"]
SIZE = 32


def make_run(folder: Path, *, seed: int = 0, calibration: dict | None = None) -> Path:
    """A run folder with an untrained (seeded) cnn-dct-mask at 32 px and, optionally, calibration.json."""
    torch.manual_seed(seed)
    model = create_model("cnn-dct-mask", len(CLASSES), SIZE)
    model.stem.set_statistics(torch.randn(3, SIZE, SIZE) * 0.1, torch.rand(3, SIZE, SIZE) + 0.5)
    with torch.no_grad():  # a head with large weights, so the classes are far from uniform
        model.backbone.head[-1].weight.mul_(30)
    config = {"variant": "cnn-dct-mask", "classes": CLASSES, "size": SIZE, "human_class": "human"}
    ckpt.write_config(folder, config)
    ckpt.save_weights(model, folder / ckpt.BEST_WEIGHTS)
    if calibration is not None:
        values = {
            "temperature": 1.0,
            "detection_temperature": 1.0,
            "ai_threshold": 0.5,
            "artist_threshold": 0.2,
            "unknown_threshold": 0.0,
        }
        values.update(calibration)
        save_calibration(
            folder,
            Calibration(
                class_names=tuple(CLASSES),
                human_class="human",
                target_fpr=0.01,
                target_fnr=0.05,
                known_pass_rate=0.95,
                **values,
            ),
        )
    return folder


def write_image(path: Path, height: int, width: int, seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return path


def model_log_probs(run: Path, views: list[np.ndarray]) -> np.ndarray:
    """The reference: the saved model run on each view on its own, straight from the checkpoint."""
    model, _ = ckpt.load_model(run)
    rows = []
    with torch.no_grad():
        for view in views:
            tensor = torch.from_numpy(view).permute(2, 0, 1)[None].float() / 255
            rows.append(log_softmax(model(tensor).double().numpy(), axis=1)[0])
    return np.array(rows)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def test_choose_view_tiles_only_images_larger_than_the_model():
    assert choose_view(32, 32, 32) == "crop"
    assert choose_view(64, 64, 32) == "tiles"
    assert choose_view(33, 32, 32) == "tiles"
    assert choose_view(20, 20, 32) == "crop"  # too small: crop then refuses it
    assert choose_view(20, 500, 32) == "crop"  # one side too small: no tile fits
    assert choose_view(64, 64, 32, "crop") == "crop"
    with pytest.raises(ValueError, match="unknown view"):
        choose_view(64, 64, 32, "stretch")


def pooled_by_hand(log_probs: np.ndarray, human: int) -> np.ndarray:
    """P(generated) = sigmoid(mean over views of log P(generated) - log P(human)); the generators share it
    as the softmax of their mean log-probabilities."""
    p = np.exp(log_probs)
    detection = np.log(1 - p[:, human]) - np.log(p[:, human])
    p_generated = 1 / (1 + np.exp(-detection.mean()))
    generators = [k for k in range(p.shape[1]) if k != human]
    shares = softmax(log_probs[:, generators].mean(axis=0))
    out = np.empty(p.shape[1])
    out[human], out[generators] = 1 - p_generated, p_generated * shares
    return out


def test_tiles_aggregate_by_hand_and_crop_uses_only_the_centre(run, tmp_path):
    path = write_image(tmp_path / "big.png", 2 * SIZE, 2 * SIZE)
    pixels = load_image(path).pixels
    predictor = Predictor.from_checkpoint(run, backend="torch")  # by hand below: PyTorch, to float rounding

    tiled = predictor.predict(path)
    assert (tiled.view, tiled.n_views) == ("tiles", 4)  # a 2x-size image gets 4 tiles
    tiles = [pixels[t : t + SIZE, s : s + SIZE] for t in (0, SIZE) for s in (0, SIZE)]
    by_hand = pooled_by_hand(model_log_probs(run, tiles), CLASSES.index("human"))
    np.testing.assert_allclose([tiled.probabilities[c] for c in CLASSES], by_hand, atol=1e-6)
    assert tiled.p_generated == pytest.approx(1 - by_hand[CLASSES.index("human")], abs=1e-6)

    cropped = predictor.predict(path, view="crop")
    assert (cropped.view, cropped.n_views) == ("crop", 1)
    centre = pixels[SIZE // 2 : SIZE // 2 + SIZE, SIZE // 2 : SIZE // 2 + SIZE]
    expected = np.exp(model_log_probs(run, [centre])[0])
    np.testing.assert_allclose([cropped.probabilities[c] for c in CLASSES], expected, atol=1e-6)
    assert not np.allclose(expected, by_hand, atol=1e-3)  # the two views really differ here


def test_model_size_image_is_cropped_and_a_too_small_one_is_refused(run, tmp_path):
    predictor = Predictor.from_checkpoint(run)
    exact = predictor.predict(write_image(tmp_path / "exact.png", SIZE, SIZE))
    assert (exact.view, exact.n_views) == ("crop", 1)
    assert sum(exact.probabilities.values()) == pytest.approx(1.0)
    small = write_image(tmp_path / "small.png", 20, 20)
    with pytest.raises(ImageError, match="smaller than the 32x32 view"):
        predictor.predict(small)
    assert predictor.predict(small, view="pad").n_views == 1


def test_path_bytes_pil_and_loaded_image_give_identical_results(run, tmp_path):
    info = PngInfo()
    info.add_text("parameters", "a girl\nSteps: 20, Sampler: Euler a, Model: animagine-xl")
    rgba = np.random.default_rng(3).integers(0, 256, size=(40, 50, 4), dtype=np.uint8)
    path = tmp_path / "gen.png"
    Image.fromarray(rgba, "RGBA").save(path, pnginfo=info)
    predictor = Predictor.from_checkpoint(run)

    from_path = predictor.predict(path)
    from_bytes = predictor.predict(path.read_bytes(), name=str(path))
    with Image.open(path) as image:
        from_pil = predictor.predict(image)
    from_loaded = predictor.predict(load_image(path))
    assert from_path.notes == ["alpha composited on (255, 255, 255)"]
    assert from_path.evidence["named_generators"] == ["animagine-xl"]
    for other in (from_bytes, from_pil, from_loaded):
        assert other.source == str(path)
        assert other.probabilities == from_path.probabilities
        assert (other.view, other.n_views, other.notes) == (
            from_path.view,
            from_path.n_views,
            from_path.notes,
        )
        assert other.evidence == from_path.evidence
    assert predictor.predict(path.read_bytes()).source == "<bytes>"


def test_pil_image_gets_exif_orientation_like_the_file(run, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view: a 32x64 stored image is 64x32 upright
    path = write_image(tmp_path / "turned.jpg", SIZE, 2 * SIZE, exif=exif, quality=95)
    predictor = Predictor.from_checkpoint(run)
    with Image.open(path) as image:
        from_pil = predictor.predict(image)
    from_path = predictor.predict(path)
    assert from_path.notes == ["EXIF orientation 6 applied"] == from_pil.notes
    assert from_pil.probabilities == from_path.probabilities and from_path.n_views == 2


def test_calibrated_probabilities_and_verdicts(tmp_path):
    raw_run = make_run(tmp_path / "raw")
    path = write_image(tmp_path / "x.png", SIZE, SIZE)
    raw = Predictor.from_checkpoint(raw_run).predict(path)
    assert raw.verdict is None and raw.generator is None
    raw_probs = np.array([[raw.probabilities[c] for c in CLASSES]])
    # checks=(): the stability checks' extra views would share the model's batch, and another batch size may
    # take other float kernels (1e-7 differences); the arithmetic of calibration is what is tested here.

    # By hand: P(generated)'s logit over the detection temperature 0.5; the generators share it as the
    # softmax at temperature 2 shares them.
    raw_generated = 1 - raw_probs[0, 2]
    p_generated = 1 / (1 + np.exp(-np.log(raw_generated / (1 - raw_generated)) / 0.5))
    share = apply_temperature(raw_probs[:, :2], 2.0)[0]
    calibration = {"temperature": 2.0, "detection_temperature": 0.5}
    calibrated_run = make_run(
        tmp_path / "cal",
        calibration={**calibration, "ai_threshold": p_generated - 1e-6, "artist_threshold": 0.0},
    )
    judged = Predictor.from_checkpoint(calibrated_run, checks=()).predict(path)
    np.testing.assert_allclose(
        [judged.probabilities[c] for c in CLASSES], [*(p_generated * share), 1 - p_generated], atol=1e-9
    )
    assert judged.p_generated == pytest.approx(p_generated)
    best = CLASSES[int(np.argmax(raw_probs[0, :2]))]
    assert (judged.verdict, judged.generator) == ("ai", best)

    above = Predictor.from_checkpoint(
        calibrated_run, checks=(), thresholds={"ai": p_generated + 1e-6}
    ).predict(path)
    assert (above.verdict, above.generator) == ("unsure", None)
    artist = Predictor.from_checkpoint(
        calibrated_run, checks=(), thresholds={"ai": 1.0, "artist": 0.9999}
    ).predict(path)
    assert artist.verdict == "artist"
    unknown = Predictor.from_checkpoint(calibrated_run, checks=(), thresholds={"unknown": 1.01}).predict(path)
    assert (unknown.verdict, unknown.generator) == ("ai", "unknown")
    overrides = Predictor.from_checkpoint(calibrated_run, checks=(), thresholds={"ai": 0.7}).info()[
        "thresholds"
    ]
    assert overrides["ai"] == 0.7 and overrides["overrides"]["ai_threshold"]["now"] == 0.7


def test_thresholds_without_calibration_need_both_bands(run, tmp_path):
    with pytest.raises(ValueError, match="no calibration.json"):
        Predictor.from_checkpoint(run, thresholds={"ai": 0.5})
    with pytest.raises(ValueError, match="unknown threshold"):
        Predictor.from_checkpoint(run, thresholds={"fpr": 0.5})
    by_hand = Predictor.from_checkpoint(run, thresholds={"ai": 0.0, "artist": 0.0})
    assert by_hand.predict(write_image(tmp_path / "x.png", SIZE, SIZE)).verdict == "ai"
    assert by_hand.info()["calibrated"] is False


def test_a_tile_budget_judges_the_spread_sub_grid_everywhere(tmp_path):
    calibrated_run = make_run(
        tmp_path / "cal", calibration={"temperature": 1.0, "ai_threshold": 0.0, "artist_threshold": 0.0}
    )
    path = write_image(tmp_path / "big.png", 4 * SIZE, 4 * SIZE)
    pixels = load_image(path).pixels
    every = Predictor.from_checkpoint(calibrated_run, max_tiles=None, backend="torch")
    budget = Predictor.from_checkpoint(calibrated_run, max_tiles=4, checks=STABILITY_CHECKS, backend="torch")
    assert (every.info()["max_tiles"], budget.info()["max_tiles"]) == (None, 4)
    assert Predictor.from_checkpoint(calibrated_run).info()["max_tiles"] == DEFAULT_MAX_TILES == 16

    one = budget.predict(path)
    # the image's 4 x 4 tiles -> its four corner tiles (each check's copy is cut the same way)
    assert one.view == "tiles" and one.n_views == 4 and set(one.checks) >= {"jpeg:90", "shift:4"}
    corners = [pixels[t : t + SIZE, s : s + SIZE] for t in (0, 3 * SIZE) for s in (0, 3 * SIZE)]
    human = CLASSES.index("human")
    by_hand = 1 - pooled_by_hand(model_log_probs(calibrated_run, corners), human)[human]
    assert one.p_generated == pytest.approx(by_hand, abs=1e-6)
    judged_whole = every.predict(path)
    assert judged_whole.n_views == 16 and judged_whole.p_generated != pytest.approx(by_hand, abs=1e-4)
    for workers in (0, 2):
        (many,) = budget.predict_many([path], workers=workers)
        assert many.n_views == one.n_views and many.p_generated == pytest.approx(one.p_generated, abs=1e-6)
        assert many.checks["shift:4"]["p_generated"] == pytest.approx(
            one.checks["shift:4"]["p_generated"], abs=1e-5
        )
    with pytest.raises(ValueError, match="max_tiles must be at least 1"):
        Predictor.from_checkpoint(calibrated_run, max_tiles=0)


def test_predict_many_streams_in_order_and_reports_bad_files(run, tmp_path):
    shapes = [(SIZE, SIZE), (2 * SIZE, 3 * SIZE), (SIZE, 2 * SIZE), (3 * SIZE, SIZE)]
    paths = [write_image(tmp_path / f"{i}.png", h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(paths[0].read_bytes()[:100])
    items = [paths[0], corrupt, paths[1], tmp_path / "missing.png", paths[2], paths[3]]
    predictor = Predictor.from_checkpoint(run)
    singles = {str(p): predictor.predict(p) for p in paths}

    for workers in (0, 2):
        # batch_size 4: the 6 tiles of image 1 straddle batches shared with other images' views
        results = list(predictor.predict_many(items, batch_size=4, workers=workers))
        assert [r.source for r in results] == [str(p) for p in items]
        assert "corrupt or truncated" in results[1].error and "file not found" in results[3].error
        assert results[1].probabilities == {} and results[1].n_views == 0
        for result in (results[0], results[2], results[4], results[5]):
            single = singles[result.source]
            assert result.error is None and result.n_views == single.n_views
            for name in CLASSES:
                assert result.probabilities[name] == pytest.approx(single.probabilities[name], abs=1e-6)


def test_predict_many_takes_items_lazily(run, tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", SIZE, SIZE, seed=i) for i in range(6)]
    taken = []

    def items():
        for path in paths:
            taken.append(path)
            yield path

    stream = Predictor.from_checkpoint(run).predict_many(items(), batch_size=2)
    next(stream)
    assert len(taken) == 2  # the first result came after one batch, not after reading everything
    assert len(list(stream)) == 5


def test_predict_raises_on_bad_input(run, tmp_path):
    predictor = Predictor.from_checkpoint(run)
    with pytest.raises(ImageError, match="not a recognised image"):
        predictor.predict(b"plain text", name="upload.png")
    with pytest.raises(ImageError, match="is a directory"):
        predictor.predict(tmp_path)
    with pytest.raises(ValueError, match="unknown view"):
        predictor.predict(b"x", view="stretch")


def test_heatmap_of_tiles_is_stitched_onto_the_image_on_one_scale(run, tmp_path, monkeypatch):
    import animeprov.heatmap

    calls = []

    def fake_class_heatmap(model, images, class_index, *, normalize=True):
        # view k's map is k + 1 everywhere, on the raw (unnormalised) scale
        calls.append((tuple(images.shape), class_index, normalize))
        return np.stack([np.full(images.shape[2:], k + 1.0, np.float32) for k in range(len(images))])

    monkeypatch.setattr(animeprov.heatmap, "class_heatmap", fake_class_heatmap)
    path = write_image(
        tmp_path / "wide.png", SIZE + 6, 2 * SIZE
    )  # 1 x 2 tiles, 3 rows uncovered top and bottom
    predictor = Predictor.from_checkpoint(run)
    result = predictor.predict(path, heatmap=True)
    top = CLASSES.index(max(result.probabilities, key=result.probabilities.get))
    assert calls == [((2, 3, SIZE, SIZE), top, False)]
    assert result.heatmap.shape == (SIZE + 6, 2 * SIZE) and result.heatmap.dtype == np.float32
    assert not result.heatmap[:3].any() and not result.heatmap[-3:].any()  # no view covers these rows
    np.testing.assert_array_equal(result.heatmap[3:-3, :SIZE], 0.5)  # tile 1 of 2, scaled by the image's peak
    np.testing.assert_array_equal(result.heatmap[3:-3, SIZE:], 1.0)
    assert "heatmap" not in result.to_dict()
    assert predictor.predict(path).heatmap is None


def test_to_dict_is_json_safe_and_failed_rows_are_empty():
    import json

    failed = ImagePrediction.failed("x.png", "x.png: file not found")
    data = json.loads(json.dumps(failed.to_dict()))
    assert (
        data["error"] == "x.png: file not found" and data["probabilities"] == {} and data["verdict"] is None
    )


def test_info_names_the_model_and_its_weights(run):
    info = Predictor.from_checkpoint(run).info()
    assert info["classes"] == CLASSES and info["size"] == SIZE and info["variant"] == "cnn-dct-mask"
    assert info["human_class"] == "human" and len(info["weights_sha256"]) == 64 and info["thresholds"] is None


def test_pil_bytes_round_trip_keeps_pixels_for_uncommon_modes(run):
    from animeprov.predict import load_item

    cmyk = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8), "CMYK")
    loaded, raw = load_item(cmyk)
    assert raw is None and loaded.pixels.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(loaded.pixels, np.array(cmyk.convert("RGB")))
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    assert (load_image(buffer.getvalue()).pixels == loaded.pixels).all()
    assert make_views(loaded.pixels, SIZE)[0].shape == (SIZE, SIZE, 3)


def test_calibration_for_other_weights_is_refused(tmp_path):
    import json
    import shutil

    from animeprov.evaluation.calibration import StaleCalibrationError

    run = make_run(tmp_path / "run", calibration={})
    calibration = json.loads((run / "calibration.json").read_text())
    calibration["source"] = {"weights": "model.safetensors"}
    (run / "calibration.json").write_text(json.dumps(calibration))
    shutil.copy(run / "model.safetensors", run / "last.safetensors")
    assert Predictor.from_checkpoint(run).calibration is not None
    with pytest.raises(StaleCalibrationError, match="fitted for model.safetensors, not last.safetensors"):
        Predictor.from_checkpoint(run, weights="last.safetensors")


def test_stability_checks_run_only_when_they_can_change_a_committed_verdict(tmp_path, monkeypatch):
    from animeprov import predict as predict_module

    calibrated_run = make_run(
        tmp_path / "cal", calibration={"temperature": 1.0, "ai_threshold": 0.0, "artist_threshold": 0.0}
    )
    paths = [write_image(tmp_path / f"{i}.png", 2 * SIZE + 4, 2 * SIZE + 4, seed=i) for i in range(3)]
    encoded = []
    real_variant = predict_module.stability_variant
    monkeypatch.setattr(
        predict_module,
        "stability_variant",
        lambda pixels, check, size: encoded.append(check) or real_variant(pixels, check, size),
    )
    # ai threshold 0: every image is judged "ai"
    committed = Predictor.from_checkpoint(calibrated_run, checks=STABILITY_CHECKS)
    assert Predictor.from_checkpoint(calibrated_run).checks == ()  # the checks are asked for, not default
    single = [committed.predict(path) for path in paths]
    assert encoded == list(predict_module.STABILITY_CHECKS) * 3
    for result in single:
        assert set(result.checks) == {"jpeg:90", "webp:90", "shift:4"} and result.n_views == 4
        assert all(check["verdict"] in ("ai", "unsure", "artist") for check in result.checks.values())
    # predict_many queues the same check views behind the image's own ones, batched with other images;
    # with workers the copies are made in threads beside the model: the same results, in input order
    for workers in (0, 2):
        encoded.clear()
        streamed = list(committed.predict_many(paths, batch_size=3, workers=workers))
        assert sorted(encoded) == sorted(predict_module.STABILITY_CHECKS * 3)
        assert [r.source for r in streamed] == [str(p) for p in paths]
        assert [r.checks.keys() for r in streamed] == [r.checks.keys() for r in single]
        for one, many in zip(single, streamed, strict=True):
            assert one.p_generated == pytest.approx(many.p_generated, abs=1e-6)
            assert one.n_views == many.n_views and one.verdict == many.verdict
            for name, check in one.checks.items():
                assert check["p_generated"] == pytest.approx(many.checks[name]["p_generated"], abs=1e-5)
    # between the thresholds the verdict is "unsure" whatever a re-encoding says: no check is run
    encoded.clear()
    undecided = Predictor.from_checkpoint(
        calibrated_run, thresholds={"ai": 1.0, "artist": 0.0}, checks=STABILITY_CHECKS
    )
    results = [undecided.predict(paths[0]), *undecided.predict_many(paths)]
    assert encoded == [] and all(r.verdict == "unsure" and r.checks == {} for r in results)


def test_a_check_that_cannot_be_made_is_skipped_with_a_note(tmp_path):
    # WebP holds at most 16383 px a side: a long webtoon strip cannot be re-encoded as WebP
    calibrated_run = make_run(
        tmp_path / "cal", calibration={"temperature": 1.0, "ai_threshold": 0.0, "artist_threshold": 0.0}
    )
    strip = write_image(tmp_path / "strip.png", 16400, SIZE + 8)
    predictor = Predictor.from_checkpoint(calibrated_run, checks=STABILITY_CHECKS)
    for result in (predictor.predict(strip), *predictor.predict_many([strip, strip])):
        assert result.error is None and set(result.checks) == {"jpeg:90", "shift:4"}
        assert any(note.startswith("stability check webp:90 skipped: ValueError") for note in result.notes)


def test_the_onnx_backend_gives_the_torch_backends_results(tmp_path):
    calibrated_run = make_run(
        tmp_path / "cal", calibration={"temperature": 1.0, "ai_threshold": 0.0, "artist_threshold": 0.0}
    )
    big = write_image(tmp_path / "big.png", 2 * SIZE + 5, 3 * SIZE)  # 2 x 3 tiles
    crop = write_image(tmp_path / "crop.png", SIZE, SIZE)
    in_torch = Predictor.from_checkpoint(calibrated_run, backend="torch", checks=STABILITY_CHECKS)
    in_onnx = Predictor.from_checkpoint(calibrated_run, backend="onnx", checks=STABILITY_CHECKS)
    assert (in_torch.info()["backend"], in_onnx.info()["backend"]) == ("torch", "onnx")
    for item in (big, crop):
        expected, got = in_torch.predict(item), in_onnx.predict(item)
        assert (got.n_views, got.verdict, set(got.checks)) == (
            expected.n_views,
            expected.verdict,
            set(expected.checks),
        )
        for name in CLASSES:
            assert got.probabilities[name] == pytest.approx(expected.probabilities[name], abs=1e-5)
    streamed = list(in_onnx.predict_many([big, crop], workers=2))
    assert [r.p_generated for r in streamed] == pytest.approx(
        [in_onnx.predict(big).p_generated, in_onnx.predict(crop).p_generated], abs=1e-6
    )
    # the graph's second output is the model's embedding, which the familiarity check reads
    views = np.stack(make_views(load_image(big).pixels, SIZE, "tiles"))
    _, features = in_onnx._session.run(None, {"views": views})
    with torch.no_grad():
        embedded = in_torch.model.embed(torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(features, embedded.numpy(), atol=1e-4)


def test_a_backend_is_checked_before_any_image(run):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Predictor.from_checkpoint(run, backend="tensorrt")
    with pytest.raises(ValueError, match="onnx backend runs float32 on the CPU, not bf16"):
        Predictor.from_checkpoint(run, backend="onnx", precision="bf16")


def test_auto_runs_onnxruntime_where_it_can(run, monkeypatch):
    import importlib.util

    from animeprov.predict import choose_backend

    cpu = torch.device("cpu")
    assert Predictor.from_checkpoint(run).backend == "onnx"  # onnxruntime is installed here
    assert choose_backend("auto", cpu, "fp32") == "onnx"
    assert (
        choose_backend("auto", cpu, "bf16") == choose_backend("auto", torch.device("cuda"), "auto") == "torch"
    )
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a),
    )
    assert choose_backend("auto", cpu, "auto") == "torch"  # without the export extra


def test_auto_runs_a_model_the_exporter_cannot_take_in_pytorch(run, tmp_path, monkeypatch):
    from animeprov import export

    def refuse(model, size):
        raise RuntimeError("the exporter cannot take this model")

    monkeypatch.setenv("ANIMEPROV_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(export, "_export_views_graph", refuse)
    image = write_image(tmp_path / "x.png", 2 * SIZE, 2 * SIZE)
    fallen_back = Predictor.from_checkpoint(run)
    assert fallen_back.backend == fallen_back.info()["backend"] == "torch"
    expected = Predictor.from_checkpoint(run, backend="torch").predict(image).p_generated
    assert fallen_back.predict(image).p_generated == expected
    with pytest.raises(RuntimeError, match="cannot take this model"):  # asked for by name: the error
        Predictor.from_checkpoint(run, backend="onnx")


def test_an_exported_graph_is_cached_and_a_stale_or_broken_one_is_made_again(tmp_path, monkeypatch):
    from animeprov import export

    monkeypatch.setenv("ANIMEPROV_CACHE", str(tmp_path / "cache"))
    first, other = make_run(tmp_path / "a", seed=0), make_run(tmp_path / "b", seed=1)
    graphs_made = {}  # weights digest -> graph: exporting again would give the same bytes, slowly
    exports = []
    real_export = export._export_views_graph

    def export_once(model, size):
        key = export.views_graph_key(model, size)
        exports.append(key)
        if key not in graphs_made:
            graphs_made[key] = real_export(model, size)
        return graphs_made[key]

    monkeypatch.setattr(export, "_export_views_graph", export_once)
    image = write_image(tmp_path / "x.png", 2 * SIZE, 2 * SIZE)
    expected = Predictor.from_checkpoint(first, backend="onnx").predict(image).p_generated
    assert len(exports) == 1 and len(list((tmp_path / "cache" / "onnx").glob("views-*.onnx"))) == 1
    again = Predictor.from_checkpoint(first, backend="onnx")  # from the cache: no export
    assert len(exports) == 1 and again.predict(image).p_generated == pytest.approx(expected, abs=1e-7)
    Predictor.from_checkpoint(other, backend="onnx")  # other weights, another graph
    assert len(exports) == 2
    graphs = sorted((tmp_path / "cache" / "onnx").glob("views-*.onnx"))
    assert len(graphs) == 2
    # a graph that is not the model's under its name (stale), then a broken file: each is exported again
    contents = [path.read_bytes() for path in graphs]
    for path, content in zip(graphs, reversed(contents), strict=True):
        path.write_bytes(content)
    for content in (None, b"not onnx"):
        if content is not None:
            for path in graphs:
                path.write_bytes(content)
        redone = Predictor.from_checkpoint(first, backend="onnx")
        assert redone.predict(image).p_generated == pytest.approx(expected, abs=1e-7)
    assert len(exports) == 4
    # a cache that cannot be written costs the export, not the prediction
    monkeypatch.setenv("ANIMEPROV_CACHE", str(image))  # a file: no folder can be made under it
    assert Predictor.from_checkpoint(first, backend="onnx").predict(image).p_generated == pytest.approx(
        expected, abs=1e-7
    )
    assert len(exports) == 5
