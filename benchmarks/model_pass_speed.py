"""The reference model's CPU fast paths, each switched on in turn against the previous code, in one process;
JSON on stdout.

`same_padding`: EfficientNet's symmetric TF "SAME" padding as the convolution's own against a padded copy
of the input first (as it was); also timed on one training step of the architecture (`train_step_ms`:
effnet-pixel at 64 px, batch 32, forward, backward and AdamW, as the default recipe trains).

Per 256 tiles of 64 px (from 512 px JPEG mosaics, as predict_throughput.py makes them): `Predictor._forward`
with the code before the fast paths (`old`: NPR by 2-D upsampling, the plain DCT stem, PyTorch's avg_pool2d),
then with the NPR by rows, plus the stem's `_cpu_inference`, the pooling alone, and all of them, at
`--batch` views a call; then `predict_many` over the mosaics with and without stability checks, old (also
WebP method 4 for the check, batch 32) against new (defaults). Timings are interleaved, median of `--reps`;
max |log-probability difference| to `old` is reported for each setting.

    .venv/bin/python benchmarks/model_pass_speed.py --threads 1
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/model_pass_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import animeprov.models.cnn as cnn
import animeprov.predict as predict
import animeprov.transforms.stem as stem
from animeprov.engine import keep_freed_memory
from animeprov.io import make_views
from animeprov.models import create_model
from animeprov.models.efficientnet import SameConv2d

NEW = {
    "npr": stem.npr_residual,
    "stem": stem.DCTStem._inference_on_cpu,
    "pool": cnn.AvgPool2x2.forward,
    "webp": predict.CHECK_WEBP_METHOD,
}


def npr_by_upsampling(x: torch.Tensor) -> torch.Tensor:
    """npr_residual as it was: the anchors upsampled 2x both ways."""
    anchors = x[..., ::2, ::2]
    upsampled = anchors.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return x - upsampled[..., : x.shape[-2], : x.shape[-1]]


# Models whose SameConv2d layers `switch` sets (they are per-module settings, not functions).
PADDED_MODELS: list[nn.Module] = []


def own_same_padding(own: bool) -> None:
    """SameConv2d as now (symmetric padding is the conv's own) or as it was (every padding a padded copy)."""
    for model in PADDED_MODELS:
        for conv in model.modules():
            if isinstance(conv, SameConv2d):
                if not hasattr(conv, "own_padding"):
                    conv.own_padding = (conv.padding, conv.pad)
                padding, pad = conv.own_padding
                if own or not any(padding):
                    conv.padding, conv.pad = padding, pad
                else:
                    conv.padding, conv.pad = (0, 0), (padding[0], padding[0], padding[1], padding[1])


def switch(
    npr: bool = True, stem_path: bool = True, pool: bool = True, webp: bool = True, same_padding: bool = True
) -> None:
    stem.RESIDUALS["npr"] = NEW["npr"] if npr else npr_by_upsampling
    stem.DCTStem._inference_on_cpu = NEW["stem"] if stem_path else (lambda self, x: False)
    cnn.AvgPool2x2.forward = NEW["pool"] if pool else nn.AvgPool2d.forward
    predict.CHECK_WEBP_METHOD = NEW["webp"] if webp else 4
    own_same_padding(same_padding)


OLD = {"npr": False, "stem_path": False, "pool": False, "webp": False, "same_padding": False}
SETTINGS = {
    "old": OLD,
    "npr_by_rows": {**OLD, "npr": True},
    "npr_and_stem": {**OLD, "npr": True, "stem_path": True},
    "pool_only": {**OLD, "pool": True},
    "same_padding_only": {**OLD, "same_padding": True},
    "all": {},
}


def train_steps(reps: int) -> tuple[dict[str, float], float]:
    """Milliseconds per training step of effnet-pixel at 64 px with and without the conv's own padding, and
    the largest difference of their logits (same weights, same batch)."""
    torch.manual_seed(0)
    model = create_model("effnet-pixel", 6, 64).to(memory_format=torch.channels_last)
    PADDED_MODELS.append(model)
    batch = torch.rand(32, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    with torch.no_grad():
        model.eval()
        own_same_padding(False)
        before = model(batch)
        own_same_padding(True)
        difference = float((model(batch) - before).abs().max())
        model.train()

    def step(own: bool):
        def run() -> None:
            own_same_padding(own)
            loss = model(batch).logsumexp(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return run

    steps = {"padded_copy": step(False), "own_padding": step(True)}
    for run in steps.values():
        run()  # warm-up
    return {name: 1000 * t for name, t in interleaved(steps, reps).items()}, difference


def interleaved(functions: dict, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(reps):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=32, help="Views per call in the model-pass part.")
    parser.add_argument("--images", type=int, default=48, help="512 px mosaics for predict_many.")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict_throughput import make_jpegs

    keep_freed_memory()  # as the predict command does
    torch.set_num_threads(args.threads)
    with_checks = predict.Predictor.reference(device="cpu")
    without = predict.Predictor.reference(device="cpu", checks=())
    PADDED_MODELS.extend([with_checks.model, without.model])
    with tempfile.TemporaryDirectory() as folder:
        files = make_jpegs(Path(folder), args.images, 512)
        pixels = [np.asarray(predict.load_item(str(path))[0].pixels) for path in files[:4]]
        tiles = np.stack([view for image in pixels for view in make_views(image, 64, "tiles")])

        def model_pass(setting: dict):
            def run() -> np.ndarray:
                switch(**setting)
                return np.concatenate(
                    [without._forward(tiles[i : i + args.batch])[0] for i in range(0, len(tiles), args.batch)]
                )

            return run

        passes = {name: model_pass(setting) for name, setting in SETTINGS.items()}
        reference = passes["old"]()
        difference = {name: float(np.abs(run() - reference).max()) for name, run in passes.items()}
        ms = {name: 1000 * t * 256 / len(tiles) for name, t in interleaved(passes, args.reps).items()}

        checked: dict[str, float] = {}

        def stream(predictor, setting: dict, batch: int | None, name: str):
            def run() -> None:
                switch(**setting)
                results = list(predictor.predict_many(files, batch_size=batch))
                checked[name] = sum(any(c != "familiarity" for c in r.checks) for r in results) / len(results)

            return run

        streams = {
            "old_checks": stream(with_checks, OLD, 32, "old_checks"),
            "new_checks": stream(with_checks, {}, None, "new_checks"),
            "old_no_checks": stream(without, OLD, 32, "old_no_checks"),
            "new_no_checks": stream(without, {}, None, "new_no_checks"),
        }
        for run in streams.values():
            run()  # warm-up
        rates = {name: len(files) / t for name, t in interleaved(streams, max(args.reps // 2, 3)).items()}
    step_ms, step_difference = train_steps(args.reps)
    switch()
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "model_pass_ms_per_256_tiles": {name: round(v, 2) for name, v in ms.items()},
                "model_pass_speedup_vs_old": {name: round(ms["old"] / v, 3) for name, v in ms.items()},
                "max_abs_log_prob_difference_vs_old": difference,
                "predict_many_images_per_s": {name: round(v, 2) for name, v in rates.items()},
                "predict_many_speedup": {
                    "checks": round(rates["new_checks"] / rates["old_checks"], 3),
                    "no_checks": round(rates["new_no_checks"] / rates["old_no_checks"], 3),
                },
                "share_of_images_checked": {name: round(v, 3) for name, v in checked.items()},
                "train_step_ms": {name: round(v, 1) for name, v in step_ms.items()},
                "train_step_speedup": round(step_ms["padded_copy"] / step_ms["own_padding"], 3),
                "train_step_max_abs_logit_difference": step_difference,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
