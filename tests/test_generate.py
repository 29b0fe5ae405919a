"""`animeprov data generate` against a tiny, randomly initialised Stable Diffusion pipeline (offline)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.data.generate import (
    PRESETS,
    GenerationSettings,
    a1111_parameters,
    generate_images,
    load_pipeline,
    resolve_model,
)
from animeprov.data.manifest import MANIFEST_COLUMNS, read_columns, read_rows
from animeprov.evidence import read_evidence
from animeprov.io import load_image

runner = CliRunner()


def _byte_vocab() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what CLIPTokenizer's BPE works on)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    chars = []
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_pipeline(folder: Path) -> Path:
    """A randomly initialised SD pipeline of a few thousand parameters, saved as safetensors."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = _byte_vocab()
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer_dir = folder / "tokenizer-src"
    tokenizer_dir.mkdir(parents=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")  # no merges: characters
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=16
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = folder / "tiny-sd"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import torch

    offline = pytest.MonkeyPatch()
    offline.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded in these tests
    offline.setenv("TRANSFORMERS_OFFLINE", "1")
    # The tiny model's ops take microseconds; on a busy machine, waking several threads per op costs more.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield write_tiny_pipeline(tmp_path_factory.mktemp("model"))
    torch.set_num_threads(threads)
    offline.undo()


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model: Path):
    """The tiny pipeline loaded once (loading dominates the run time of these tests)."""
    return load_pipeline(_settings(tiny_model), "cpu")


PROMPTS = [
    {"id": "p0", "prompt": "1girl, long hair, smile", "seed": 11},
    {"id": "p1", "prompt": "1boy, short hair, outdoors", "seed": 22},
    {"id": "p2", "prompt": "cat, simple background", "seed": 33},
]


def _settings(model: Path, **changes) -> GenerationSettings:
    values = {"model": str(model), "class_name": "tiny", "size": 32, "steps": 2, "guidance": 5.0}
    return GenerationSettings(**{**values, **changes})


def test_generate_writes_images_manifest_and_a1111_parameters(
    tiny_model: Path, tiny_pipe, tmp_path: Path
) -> None:
    settings = _settings(tiny_model)
    out = tmp_path / "gen"
    loads = []

    def load():
        loads.append(1)
        return tiny_pipe

    result = generate_images(out, settings, PROMPTS, 3, load=load, batch_size=2)
    assert (result.generated, result.reused, len(loads)) == (3, 0, 1)
    rows = list(read_rows(out / "manifest.csv"))
    assert read_columns(out / "manifest.csv")[: len(MANIFEST_COLUMNS)] == list(MANIFEST_COLUMNS)
    assert [row["seed"] for row in rows] == ["11", "22", "33"]
    assert {row["class"] for row in rows} == {"tiny"} and {row["scheduler"] for row in rows} == {
        "PNDMScheduler"
    }
    assert {row["model"] for row in rows} == {tiny_model.name}  # a shared manifest holds no local path
    for row in rows:
        raw = (out / row["path"]).read_bytes()
        loaded = load_image(raw)
        assert (loaded.width, loaded.height) == (32, 32)
        parameters = loaded.metadata["parameters"]
        assert parameters.splitlines()[0] == row["prompt"]
        assert (
            f"Seed: {row['seed']}" in parameters
            and "Steps: 2" in parameters
            and "CFG scale: 5.0" in parameters
        )
        # animeprov's own evidence reader recognises the files as generated, naming the model.
        evidence = read_evidence(loaded, raw)
        assert any(item.source == "a1111-parameters" and item.indicates_ai for item in evidence)
        assert any(item.generator == tiny_model.name for item in evidence)  # no local path leaks

    # Resume: nothing left to do, so the pipeline is not even loaded.
    again = generate_images(
        out, settings, PROMPTS, 3, load=lambda: pytest.fail("must not load"), batch_size=2
    )
    assert (again.generated, again.reused) == (0, 3)

    # A deleted image is made again, alone in its batch, from the same seed: the same picture.
    before = np.asarray(Image.open(out / rows[1]["path"]).convert("RGB"), dtype=np.int16)
    (out / rows[1]["path"]).unlink()
    third = generate_images(out, settings, PROMPTS, 3, load=load, batch_size=2)
    assert (third.generated, third.reused) == (1, 2)
    after = np.asarray(Image.open(out / rows[1]["path"]).convert("RGB"), dtype=np.int16)
    assert np.abs(after - before).max() <= 2  # batch of 2 vs batch of 1: float rounding only

    # Other settings do not reuse the images of this run.
    other = generate_images(out, _settings(tiny_model, steps=3), PROMPTS, 1, load=load, batch_size=1)
    assert other.generated == 1


def test_a_shorter_run_keeps_the_rest_of_the_journal(tiny_model: Path, tiny_pipe, tmp_path: Path) -> None:
    settings, out = _settings(tiny_model), tmp_path / "gen"
    assert generate_images(out, settings, PROMPTS, 3, load=lambda: tiny_pipe, batch_size=3).generated == 3
    short = generate_images(out, settings, PROMPTS, 1, load=lambda: pytest.fail("must not load"))
    assert (short.generated, short.reused) == (0, 1)
    # Images 1 and 2 are still on disk and journaled: the full run again generates nothing.
    full = generate_images(out, settings, PROMPTS, 3, load=lambda: pytest.fail("must not load"))
    assert (full.generated, full.reused) == (0, 3)
    assert not list(out.glob("*.tmp"))


def test_different_seeds_give_different_images_and_schedulers_are_recorded(
    tiny_model: Path, tmp_path: Path
) -> None:
    settings = _settings(tiny_model, scheduler="euler-a", negative_prompt="")
    prompts = [
        {"id": "a", "prompt": "same prompt", "seed": 1},
        {"id": "b", "prompt": "same prompt", "seed": 2},
    ]
    generate_images(tmp_path, settings, prompts, 2, load=lambda: load_pipeline(settings, "cpu"), batch_size=2)
    rows = list(read_rows(tmp_path / "manifest.csv"))
    first, second = (np.asarray(Image.open(tmp_path / row["path"])) for row in rows)
    assert not np.array_equal(first, second)
    assert rows[0]["scheduler"] == "EulerAncestralDiscreteScheduler" and rows[0]["negative_prompt"] == ""
    parameters = load_image(tmp_path / rows[0]["path"]).metadata["parameters"]
    assert "Negative prompt" not in parameters and "Sampler: Euler a" in parameters


def test_cli_generate_resolves_local_model_and_style_token(tiny_model: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:2]), encoding="utf-8")
    out = tmp_path / "out"
    args = ["data", "generate", "--model", str(tiny_model), "--class", "mo-di-diffusion", "--prompts",
            str(prompts), "--n", "2", "--size", "32", "--steps", "1", "--batch-size", "2",
            "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(read_rows(out / "manifest.csv"))
    assert [row["class"] for row in rows] == ["mo-di-diffusion"] * 2
    assert all(row["prompt"].startswith("modern disney style, ") for row in rows)  # the preset's token
    assert rows[0]["dtype"] == "float32" and rows[0]["safety_checker"] == "off"


def test_presets_and_model_resolution(tmp_path: Path) -> None:
    assert resolve_model("classic-anim-diffusion").style_token == "classic disney style"
    assert resolve_model("nitrosocke/mo-di-diffusion").class_name == "mo-di-diffusion"
    assert resolve_model("someone/custom-model").class_name == "custom-model"
    assert PRESETS["sd-v1-4"].model == "CompVis/stable-diffusion-v1-4"
    with pytest.raises(ValueError, match="no public weights"):
        resolve_model("novelai")
    with pytest.raises(ValueError, match="not a preset"):
        resolve_model("no-such-thing")
    local = tmp_path / "nai.safetensors"
    local.write_bytes(b"x")
    assert resolve_model(str(local), "novelai").class_name == "novelai"
    pickled = tmp_path / "model.ckpt"
    pickled.write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        load_pipeline(_settings(pickled), "cpu")


def test_a1111_parameters_quote_values_with_commas() -> None:
    settings = GenerationSettings(model="a/b", class_name="x", negative_prompt="bad,\nworse")
    text = a1111_parameters("1girl,\nsmile", settings, 5)
    prompt, negative, line = text.splitlines()
    assert prompt == "1girl, smile" and negative == "Negative prompt: bad, worse"
    assert line.startswith("Steps: 30, Sampler: PLMS, CFG scale: 7.5, Seed: 5, Size: 512x512, Model: a/b")


def test_weights_that_cannot_be_had_offline_are_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the Hub: nothing cached
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1girl"}\n', encoding="utf-8")
    args = ["data", "generate", "--model", "waifu-diffusion", "--prompts", str(prompts), "--n", "1",
            "--out", str(tmp_path / "out")]  # fmt: skip
    result = runner.invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "cannot load hakurei/waifu-diffusion" in said, result.output
    assert "or give a local diffusers folder or .safetensors file" in said and "Traceback" not in said


def test_missing_diffusers_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1girl"}\n', encoding="utf-8")
    args = ["data", "generate", "--model", "waifu-diffusion", "--prompts", str(prompts), "--n", "1",
            "--out", str(tmp_path / "out")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "animeprov[generate]" in result.output
    assert not (tmp_path / "out").exists()
