"""Training loop, checkpoints and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from animeprov import checkpoint as ckpt
from animeprov import train as train_module
from animeprov.evaluation.calibration import load_calibration
from animeprov.models import create_model
from animeprov.train import RunExistsError, TrainConfig, train


def _config(data, **overrides) -> TrainConfig:
    values = dict(data=str(data), variant="cnn-dct-mask", size=32, epochs=3, batch_size=8, lr=1e-3, seed=1)
    values.update(overrides)
    return TrainConfig(**values)


def killed_during_epoch(epoch: int, monkeypatch, config: TrainConfig, out) -> None:
    """Train `config` into `out` and kill it (KeyboardInterrupt) as epoch `epoch` starts."""
    real_epoch = train_module.train_one_epoch
    calls = {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config, out)
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn-dct-mask", 3, 32)
    model.stem.set_statistics(torch.randn(3, 32, 32), torch.rand(3, 32, 32) + 0.5)
    ckpt.write_config(tmp_path, {"variant": "cnn-dct-mask", "classes": ["a", "b", "c"], "size": 32})
    ckpt.save_weights(model, tmp_path / ckpt.BEST_WEIGHTS)
    loaded, config = ckpt.load_model(tmp_path)
    images = torch.rand(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert torch.equal(loaded.stem.mean, model.stem.mean)
    assert config["classes"] == ["a", "b", "c"]


def test_training_writes_the_documented_run_folder(tiny_split, tmp_path):
    run = tmp_path / "run"
    summary = train(_config(tiny_split, epochs=2), run)
    assert summary["epochs_done"] == 2
    for name in ("model.safetensors", "last.safetensors", "config.json", "metrics.jsonl", "train.log"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["variant"] == "cnn-dct-mask" and config["classes"] == ["gen-a", "gen-b", "human"]
    assert len(config["data_sha256"]) == 64 and config["environment"]["torch"] == torch.__version__
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    # each epoch's own learning rate on the cosine schedule (not the next epoch's: the last is not 0)
    assert [line["lr"] for line in lines] == [pytest.approx(1e-3), pytest.approx(5e-4)]
    # The DCT statistics were fitted on the training split and travel with the weights.
    weights = load_file(run / "model.safetensors")
    assert weights["stem.std"].shape == (3, 32, 32) and not torch.all(weights["stem.std"] == 1)
    # Verdict thresholds were fitted on the val split for exactly these weights.
    calibration = load_calibration(run)
    assert summary["calibration"].startswith("calibrated")
    assert list(calibration.class_names) == ["gen-a", "gen-b", "human"]
    assert calibration.measured["n_images"] == 6  # 2 val images per class


def test_existing_run_is_never_overwritten(tiny_split, tmp_path):
    train(_config(tiny_split, epochs=1), tmp_path / "run")
    with pytest.raises(RunExistsError):
        train(_config(tiny_split, epochs=1), tmp_path / "run")


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_split, tmp_path, monkeypatch):
    train(_config(tiny_split), tmp_path / "full")

    killed_during_epoch(2, monkeypatch, _config(tiny_split), tmp_path / "killed")
    summary = train(_config(tiny_split), tmp_path / "killed", resume=True)

    assert summary["epochs_done"] == 3
    full = load_file(tmp_path / "full" / "last.safetensors")
    resumed = load_file(tmp_path / "killed" / "last.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)
    epochs = [
        json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]


def test_a_broken_file_is_skipped_and_reported(tiny_split, tmp_path):
    broken = tiny_split.parent / "human" / "000.png"
    broken.write_bytes(b"not an image at all")
    summary = train(_config(tiny_split, epochs=1, variant="cnn-pixel"), tmp_path / "run")
    assert list(summary["skipped"]) == [str(broken)]
    assert "000.png" in (tmp_path / "run" / "train.log").read_text()


def test_cli_train_then_evaluate_writes_the_reports(tiny_split, tmp_path):
    from typer.testing import CliRunner

    from animeprov.cli import app

    run, out = tmp_path / "run", tmp_path / "eval"
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_split),
            "--recipe",
            "paper",
            "--variant",
            "cnn-dct",
            "--size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(run),
        ],
    )
    assert trained.exit_code == 0, trained.output
    again = runner.invoke(
        app, ["train", "--data", str(tiny_split), "--recipe", "paper", "--epochs", "1", "--out", str(run)]
    )
    assert again.exit_code == 2 and "--resume" in again.output

    evaluated = runner.invoke(app, ["evaluate", str(run), "--data", str(tiny_split), "--out", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 6 and sum(map(sum, report["confusion_matrix"])) == 6
    assert report["detection"]["n_human"] == 2 and report["variant"] == "cnn-dct"
    assert (out / "report.md").read_text().startswith("# cnn-dct on test")
    assert (out / "confusion.png").stat().st_size > 1000


def test_resume_refuses_other_data_or_settings_unless_allowed(tiny_split, tmp_path):
    run = tmp_path / "run"
    train(_config(tiny_split, epochs=1), run)
    other = tiny_split.with_name("split2.csv")
    other.write_text(tiny_split.read_text().replace("train", "val", 1))  # one row moved: other data
    with pytest.raises(ValueError, match="data_sha256 was .*--allow-changes"):
        train(_config(other, epochs=2), run, resume=True)
    with pytest.raises(ValueError, match="lr was 0.001, now 0.01"):
        train(_config(tiny_split, epochs=1, lr=1e-2), run, resume=True)
    train(_config(tiny_split, epochs=1, workers=0, device="cpu"), run, resume=True)  # runtime only: fine
    train(_config(other, epochs=2), run, resume=True, allow_changes=True)
    config = ckpt.read_config(run)
    assert config["epochs"] == 2 and config["data"] == str(other)
    (record,) = config["resumed_with_changes"]
    assert record["after_epoch"] == 1 and set(record["changed"]) == {"epochs", "data_sha256"}


def test_patch_recipe_trains_with_source_sampling_binary_loss_and_tiles(tiny_split, tmp_path):
    import csv

    rows = list(csv.DictReader(open(tiny_split)))
    for i, row in enumerate(rows):
        row["source"] = f"{row['class']}-{i % 2}"
    with open(tiny_split, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = _config(
        tiny_split,
        variant="pooled-npr",
        size=16,
        view="random",
        views_per_image=3,
        skip_flat=True,
        eval_view="tiles",
        sampling="source",
        binary_weight=1.0,
        epochs=2,
    )
    summary = train(config, tmp_path / "run")
    saved = ckpt.read_config(tmp_path / "run")
    assert saved["view"] == "random" and saved["sampling"] == "source" and saved["binary_weight"] == 1.0
    assert summary["epochs_done"] == 2 and "calibrated" in summary["calibration"]
    assert (tmp_path / "run" / "familiarity.safetensors").exists()


def test_cli_train_without_a_recipe_uses_the_default_one(tmp_path, monkeypatch):
    from conftest import write_tiny_split
    from typer.testing import CliRunner

    from animeprov.cli import app
    from animeprov.recipe import DEFAULT_RECIPE, RECIPES

    monkeypatch.setenv("ANIMEPROV_CACHE", str(tmp_path / "cache"))
    split = write_tiny_split(tmp_path / "data", size=72, per_class=10)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(split), "--epochs", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = ckpt.read_config(run)
    assert config["recipe"] == DEFAULT_RECIPE
    assert {key: config[key] for key in RECIPES[DEFAULT_RECIPE]} == {**RECIPES[DEFAULT_RECIPE], "epochs": 1}
    if RECIPES[DEFAULT_RECIPE]["pairs"]:  # the human images' reconstructions are a class of their own
        assert "decoder-trace" in config["classes"] and any((tmp_path / "cache" / "taef2").iterdir())


def test_a_human_class_not_in_the_data_is_said_before_training(tiny_split, tmp_path, capsys):
    summary = train(_config(tiny_split, epochs=1, human_class="artist"), tmp_path / "run")
    said = capsys.readouterr().err
    assert "warning: the human class 'artist' is not among the training classes (gen-a, gen-b, human)" in said
    assert said.index("warning:") < said.index("epoch 1/1") and "not calibrated" in summary["calibration"]


def test_early_stopping_is_said_and_logged(tiny_split, tmp_path, monkeypatch, capsys):
    accuracies = iter([0.9, 0.5, 0.6, 0.7])  # the best at epoch 1, then two epochs without better
    monkeypatch.setattr(train_module, "_all_ranks_val_metrics", lambda val: (1.0, next(accuracies), []))
    run = tmp_path / "run"
    summary = train(_config(tiny_split, epochs=4, patience=2), run)
    assert summary["epochs_done"] == 3 and summary["best_epoch"] == 1
    said = "stopped early after epoch 3: 2 epochs without a better val_accuracy (patience 2)"
    assert said in capsys.readouterr().err and said in (run / "train.log").read_text()


def test_select_on_detection_auc_keeps_the_epoch_with_the_best_val_auc(tiny_split, tmp_path, monkeypatch):
    # Scripted validation figures: accuracy peaks at epoch 1, detection AUC at epoch 2.
    accuracies, aucs = iter([0.9, 0.5, 0.6, 0.7]), iter([0.6, 0.9, 0.7, 0.8])
    monkeypatch.setattr(train_module, "_all_ranks_val_metrics", lambda val: (1.0, next(accuracies), []))
    monkeypatch.setattr(train_module, "_all_ranks_detection_auc", lambda val, human: next(aucs))
    run = tmp_path / "run"
    summary = train(_config(tiny_split, epochs=4, patience=4, select_on="detection_auc"), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["val_detection_auc"] for row in rows] == [0.6, 0.9, 0.7, 0.8]
    assert summary["best_epoch"] == 2 and summary["selected_on"] == "detection_auc"
    assert summary["best_val_accuracy"] == 0.5  # the val accuracy of the selected epoch
    assert not torch.equal(
        load_file(run / "model.safetensors")["backbone.head.1.weight"],
        load_file(run / "last.safetensors")["model.backbone.head.1.weight"],
    )
    with pytest.raises(ValueError, match="select_on"):
        train(_config(tiny_split, select_on="loss"), tmp_path / "other")


def test_val_detection_auc_is_the_roc_auc_of_p_generated():
    from animeprov.engine import Predictions

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)  # human is class 0
    val = Predictions(probs, np.array([0, 1, 1, 0]), np.arange(4), [], 0.0)
    # P(generated) 0.1, 0.8 | 0.4, 0.7: generated images 0.8 and 0.4 against human 0.1 and 0.7 -> 3 of 4 pairs
    assert train_module._all_ranks_detection_auc(val, 0) == pytest.approx(0.75)
    assert train_module._all_ranks_detection_auc(val, None) is None


def test_average_from_saves_the_mean_of_the_later_epochs_weights_and_resumes(
    tiny_split, tmp_path, monkeypatch
):
    snapshots = []
    real_save = train_module._save_epoch

    def recording_save(run, model, *args):
        snapshots.append({key: value.clone() for key, value in model.state_dict().items()})
        return real_save(run, model, *args)

    monkeypatch.setattr(train_module, "_save_epoch", recording_save)
    summary = train(_config(tiny_split, average_from=2), tmp_path / "full")
    assert summary["averaged_epochs"] == 2 and len(snapshots) == 3
    saved = load_file(tmp_path / "full" / "model.safetensors")
    for key, value in saved.items():
        if value.is_floating_point():  # epochs 2 and 3, not epoch 1
            torch.testing.assert_close(value, (snapshots[1][key] + snapshots[2][key]) / 2, msg=key)
        else:  # an integer buffer (BatchNorm's batch count) keeps the latest value
            assert torch.equal(value, snapshots[2][key]), key
    assert not torch.equal(saved["backbone.head.1.weight"], snapshots[2]["backbone.head.1.weight"])
    assert load_calibration(tmp_path / "full") is not None  # calibrated for the averaged weights

    # Killed during epoch 3, the resumed run goes on from the mean of epoch 2 kept on disk.
    killed_during_epoch(3, monkeypatch, _config(tiny_split, average_from=2), tmp_path / "killed")
    train(_config(tiny_split, average_from=2), tmp_path / "killed", resume=True)
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    for key in saved:
        torch.testing.assert_close(resumed[key], saved[key], msg=key)


def test_average_from_outside_the_epochs_is_refused(tiny_split, tmp_path):
    with pytest.raises(ValueError, match="average_from"):
        train(_config(tiny_split, average_from=4), tmp_path / "run")
