"""Generated images with diffusers' StableDiffusionPipeline: the paper's generator classes.

`PRESETS` names the paper's models (and SD v1.4 / v1.5 for generalisation sets); `--model` also takes
any Hugging Face repo id or a local diffusers folder (or one .safetensors file). Weights are loaded
with `use_safetensors=True`: pickled checkpoints (.ckpt, .bin) are never loaded, so a repo or local
model that only ships pickles must be converted to safetensors first.

Every image is written as PNG with an AUTOMATIC1111-style `parameters` text chunk (prompt, negative
prompt, steps, sampler, CFG scale, seed, size, model), which `animeprov evidence` reads, and a row in
`OUT/manifest.csv` with the same settings. Image i uses the seed of its prompt (from
`animeprov data prompts`), drawn from a CPU torch.Generator so that the starting noise does not
depend on the device or on the batch it was made in.

Safety checker: OFF by default. The paper's models are SD 1.x, whose checker replaces an image it
flags with a black one; for a detection data set that silently adds black images (or, if skipped, a
content bias). The prompts are built from safe-for-work tags (see prompts.py) and a negative prompt
with "nsfw" is the default. `safety_checker=True` loads the checker; flagged images are then NOT
saved and are counted (reason "flagged by safety checker").

Resuming: finished images are journaled in `OUT/.generate-journal.jsonl` with their settings;
a rerun with the same settings keeps every image whose sha256 still matches and generates only the
rest (the pipeline is not even loaded when nothing is left to do).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from animeprov import __version__
from animeprov.data.manifest import MANIFEST_COLUMNS, write_rows
from animeprov.data.prompts import prompt_seed
from animeprov.io import sha256_file

GENERATE_VERSION = 1
MANIFEST_NAME = "manifest.csv"
JOURNAL_NAME = ".generate-journal.jsonl"
DEFAULT_NEGATIVE_PROMPT = "nsfw, lowres, bad anatomy, text, error, signature, watermark, jpeg artifacts"
MANIFEST_EXTRA_COLUMNS = (
    "generator",
    "model",
    "prompt_id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "scheduler",
    "dtype",
    "safety_checker",
)


@dataclass(frozen=True)
class Preset:
    """A generator of the paper: its class name, where the weights come from, and its style token."""

    name: str
    model: str | None  # Hugging Face repo id; None: a local checkpoint must be given
    style_token: str  # the words the fine-tune was trained to respond to ("" if none)
    note: str


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "classic-anim-diffusion",
            "nitrosocke/classic-anim-diffusion",
            "classic disney style",
            "SD 1.x fine-tuned on classic animation stills",
        ),
        Preset(
            "mo-di-diffusion",
            "nitrosocke/mo-di-diffusion",
            "modern disney style",
            "SD 1.5 fine-tuned on modern animation stills",
        ),
        Preset("waifu-diffusion", "hakurei/waifu-diffusion", "", "SD 1.4 fine-tuned on Danbooru images"),
        Preset(
            "novelai",
            None,
            "",
            "NovelAI-compatible SD 1.x checkpoint: give a local diffusers folder or .safetensors file with "
            "--model PATH --class novelai",
        ),
        Preset("sd-v1-4", "CompVis/stable-diffusion-v1-4", "", "Stable Diffusion v1.4 (generalisation set)"),
        Preset(
            "sd-v1-5",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "",
            "Stable Diffusion v1.5 (generalisation set); the original runwayml/stable-diffusion-v1-5 repo "
            "was withdrawn in 2024, this is its maintained mirror",
        ),
    )
}

# Scheduler choices: diffusers class name and the sampler name AUTOMATIC1111 shows for it.
SCHEDULERS: dict[str, tuple[str, str]] = {
    "pndm": ("PNDMScheduler", "PLMS"),
    "ddim": ("DDIMScheduler", "DDIM"),
    "euler": ("EulerDiscreteScheduler", "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", "Euler a"),
    "lms": ("LMSDiscreteScheduler", "LMS"),
    "dpm++2m": ("DPMSolverMultistepScheduler", "DPM++ 2M"),
}


class GenerateDependencyError(ImportError):
    pass


class ModelUnavailableError(RuntimeError):
    """The generator's weights cannot be loaded here (offline and not cached, or not a pipeline)."""


def import_diffusers():
    """diffusers, or a GenerateDependencyError saying how to install it."""
    try:
        import diffusers  # noqa: F401  (heavy: imported only when generating)
        import transformers  # noqa: F401
    except ImportError as error:
        raise GenerateDependencyError(
            f"image generation needs diffusers and transformers ({error}); "
            "install them with: pip install 'animeprov[generate]'"
        ) from None
    return diffusers


@dataclass(frozen=True)
class ModelChoice:
    model: str  # repo id or local path, as diffusers loads it
    class_name: str  # the manifest's class (the generator's name)
    style_token: str


def resolve_model(model: str, class_name: str | None = None) -> ModelChoice:
    """A preset name, a local path or a repo id -> what to load and which class its images get."""
    preset = PRESETS.get(model)
    if preset is not None:
        if preset.model is None:
            raise ValueError(f"preset {model!r} has no public weights: {preset.note}")
        return ModelChoice(preset.model, class_name or preset.name, preset.style_token)
    by_repo = next((p for p in PRESETS.values() if p.model == model), None)
    if by_repo is not None:
        return ModelChoice(model, class_name or by_repo.name, by_repo.style_token)
    path = Path(model)
    if path.exists():
        default_class = path.stem if path.is_file() else path.name
        known = PRESETS.get(class_name or "")
        return ModelChoice(str(path), class_name or default_class, known.style_token if known else "")
    if model.count("/") != 1:
        choices = ", ".join(PRESETS)
        raise ValueError(f"{model!r} is not a preset ({choices}), an existing path or a repo id (owner/name)")
    return ModelChoice(model, class_name or model.split("/")[1], "")


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    class_name: str
    size: int = 512
    steps: int = 30
    guidance: float = 7.5
    scheduler: str = "pndm"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    style_token: str = ""  # added in front of a prompt that does not contain it yet
    seed: int = 0  # seeds of images beyond the prompts' own (when n > number of prompts)
    dtype: str = "float32"  # "float16" on CUDA
    safety_checker: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        if self.size < 8 or self.size % 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


def pick_device(device: str | None = None) -> tuple[str, str]:
    """(device, dtype name): CUDA with float16 when available, else CPU with float32."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, "float16" if device.startswith("cuda") else "float32"


def load_pipeline(settings: GenerationSettings, device: str):
    """A StableDiffusionPipeline for `settings.model` on `device`, safetensors only."""
    import torch

    diffusers = import_diffusers()
    kwargs: dict = {"torch_dtype": getattr(torch, settings.dtype), "use_safetensors": True}
    if not settings.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    path = Path(settings.model)
    try:
        if path.is_file():
            if path.suffix.lower() != ".safetensors":
                raise ValueError(
                    f"{path}: only .safetensors single-file checkpoints are loaded (pickled .ckpt/.bin "
                    "files can run code); convert it to safetensors first"
                )
            pipe = diffusers.StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        else:
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(settings.model, **kwargs)
    except OSError as error:  # not downloadable here, not in the cache, or not a diffusers folder
        # diffusers' own message, less its pointer to a stack trace that is not shown
        sentences = re.split(r"(?<=\.)\s+", str(error).splitlines()[0] if str(error) else repr(error))
        reason = " ".join(sentence for sentence in sentences if "stacktrace" not in sentence)
        raise ModelUnavailableError(
            f"cannot load {settings.model}: {reason} Download it where the Hugging Face Hub is reachable "
            "(it is then cached), or give a local diffusers folder or .safetensors file"
        ) from None
    scheduler_class = getattr(diffusers, SCHEDULERS[settings.scheduler][0])
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def a1111_parameters(prompt: str, settings: GenerationSettings, seed: int) -> str:
    """The `parameters` text AUTOMATIC1111 writes, so that existing tools (and animeprov evidence) read it."""
    import diffusers

    lines = [_one_line(prompt)]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {_one_line(settings.negative_prompt)}")
    class_name, sampler = SCHEDULERS[settings.scheduler]
    fields = {
        "Steps": settings.steps,
        "Sampler": sampler,
        "CFG scale": settings.guidance,
        "Seed": seed,
        "Size": f"{settings.size}x{settings.size}",
        "Model": model_label(settings.model),
        "Scheduler": class_name,
        "Version": f"animeprov {__version__}, diffusers {diffusers.__version__}",
    }
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)


def model_label(model: str) -> str:
    """The model as written into images: a repo id, or a local model's name (never its full path)."""
    path = Path(model)
    return path.name if path.is_absolute() or path.exists() else model


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quote(value: object) -> str:
    text = _one_line(str(value))
    return json.dumps(text) if "," in text or ":" in text else text  # A1111 quotes values with commas


def with_style_token(prompt: str, token: str) -> str:
    if not token or token.lower() in prompt.lower():
        return prompt
    return f"{token}, {prompt}" if prompt else token


@dataclass(frozen=True)
class _Job:
    index: int
    prompt_id: str
    prompt: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.index:05d}.png"


def plan_jobs(prompts: Sequence[dict], n: int, settings: GenerationSettings) -> list[_Job]:
    """Image i uses prompt i mod len(prompts); its seed is the prompt's own on the first pass."""
    jobs = []
    for index in range(n):
        record = prompts[index % len(prompts)]
        own_seed = record.get("seed")
        seed = (
            own_seed if own_seed is not None and index < len(prompts) else prompt_seed(settings.seed, index)
        )
        prompt = with_style_token(str(record["prompt"]), settings.style_token)
        jobs.append(_Job(index, str(record.get("id", index)), prompt, int(seed)))
    return jobs


@dataclass
class GenerateResult:
    manifest: Path
    generated: int
    reused: int
    flagged: int


def generate_images(
    out: str | Path,
    settings: GenerationSettings,
    prompts: Sequence[dict],
    n: int,
    *,
    load: Callable[[], object],
    batch_size: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Write n images to `out/<class>/<index>.png` and `out/manifest.csv`; return what was done.

    `load()` returns the pipeline and is called only if something is left to generate.
    `on_progress(k)` is called with the number of images just finished (reused ones included).
    """
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be at least 1")
    if not prompts:
        raise ValueError("no prompts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(prompts, n, settings)
    header = {"generate_version": GENERATE_VERSION, **asdict(settings)}
    entries = _journal_entries(out, header)
    done = _reusable(out, entries, jobs, settings.class_name)
    planned = {job.index for job in jobs}
    # Images beyond this run's n stay journaled: a later, longer run with these settings reuses them.
    beyond = [entry for index, entry in sorted(entries.items()) if index not in planned]
    if done and on_progress is not None:
        on_progress(len(done))
    todo = [job for job in jobs if job.index not in done]
    result = GenerateResult(out / MANIFEST_NAME, generated=0, reused=len(done), flagged=0)

    # Rewritten under another name and renamed: a kill while writing never loses the earlier journal.
    rewritten = out / f"{JOURNAL_NAME}.tmp"
    rewritten.write_text("".join(json.dumps(line) + "\n" for line in [header, *done.values(), *beyond]))
    os.replace(rewritten, out / JOURNAL_NAME)
    with (out / JOURNAL_NAME).open("a", encoding="utf-8") as journal:
        pipe = load() if todo else None
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for job, (image, flagged) in zip(batch, _run_batch(pipe, batch, settings), strict=True):
                if flagged:
                    entry = {"index": job.index, "status": "flagged", "seed": job.seed}
                    result.flagged += 1
                else:
                    entry = {"index": job.index, "status": "kept", "row": _save(out, job, image, settings)}
                    result.generated += 1
                done[job.index] = entry
                journal.write(json.dumps(entry) + "\n")
            journal.flush()
            if on_progress is not None:
                on_progress(len(batch))

    rows = [done[job.index]["row"] for job in jobs if done[job.index]["status"] == "kept"]
    write_rows(result.manifest, rows, list(MANIFEST_COLUMNS) + list(MANIFEST_EXTRA_COLUMNS))
    return result


def _run_batch(pipe, batch: Sequence[_Job], settings: GenerationSettings) -> list[tuple[Image.Image, bool]]:
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in batch]
    output = pipe(
        prompt=[job.prompt for job in batch],
        negative_prompt=[settings.negative_prompt] * len(batch) if settings.negative_prompt else None,
        height=settings.size,
        width=settings.size,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance,
        generator=generators,
        output_type="pil",
    )
    flags = getattr(output, "nsfw_content_detected", None) or [False] * len(batch)
    return [(image, bool(flag)) for image, flag in zip(output.images, flags, strict=True)]


def _save(out: Path, job: _Job, image: Image.Image, settings: GenerationSettings) -> dict:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(job.prompt, settings, job.seed))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    relative = f"{settings.class_name}/{job.path}"
    target = out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)
    return {
        "path": relative,
        "class": settings.class_name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": image.width,
        "height": image.height,
        "format": "PNG",
        "group": f"{settings.class_name}-{job.prompt_id}",  # one prompt, one group (repeats look alike)
        "generator": settings.class_name,
        "model": model_label(settings.model),  # a shared manifest names a local model, not its path
        "prompt_id": job.prompt_id,
        "prompt": job.prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": job.seed,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "scheduler": SCHEDULERS[settings.scheduler][0],
        "dtype": settings.dtype,
        "safety_checker": "on" if settings.safety_checker else "off",
    }


def _journal_entries(out: Path, header: dict) -> dict[int, dict]:
    """index -> entry of an earlier run's journal with the same settings; {} for other settings."""
    try:
        lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
        if not lines or json.loads(lines[0]) != header:
            return {}
    except (OSError, ValueError):
        return {}
    entries: dict[int, dict] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            entries[int(entry["index"])] = entry
        except (ValueError, KeyError, TypeError):  # torn last line of an interrupted run
            continue
    return entries


def _reusable(out: Path, entries: dict[int, dict], jobs: Sequence[_Job], class_name: str) -> dict[int, dict]:
    """The journal entries of `jobs` whose image is intact (or was flagged) for the same seed and prompt."""
    reusable = {}
    for job in jobs:
        entry = entries.get(job.index)
        if entry is None:
            continue
        if entry.get("status") == "flagged" and entry.get("seed") == job.seed:
            reusable[job.index] = entry
            continue
        row = entry.get("row") or {}
        path = out / f"{class_name}/{job.path}"
        if (
            row.get("seed") == job.seed
            and row.get("prompt") == job.prompt
            and _sha256(path) == row.get("sha256")
        ):
            reusable[job.index] = entry
    return reusable


def _sha256(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
