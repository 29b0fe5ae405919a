"""Does the WebP stability check depend on libwebp's encoder effort (`method`)? JSON on stdout.

The check (`predict.STABILITY_CHECKS`, "webp:90") re-encodes an image as WebP 90 and asks whether the verdict
survives. This compares, with the reference model on the development images (../shared/data beside the
checkout: the 256 px sets), the check's outcome when the re-encode uses method 0 (fastest), 1 or 2 against
method 4 (libwebp's and Pillow's default), next to quality 89 and 91 against 90 at method 4 as a yardstick
of how much the outcome moves anyway, plus the encode time of each method on 512 px JPEG mosaics.

For each image: its own verdict, and the verdict and P(generated) of each re-encoded copy (all of its 64 px
tiles through the model, averaged as `predict` does). "flag" = the copy's verdict differs from the image's
own, counted over images with a committed verdict (artist or ai): that is when the check turns a verdict
into "unsure".

    .venv/bin/python benchmarks/webp_check_method.py [--images 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("anime-real-256", "anime-more-256", "anime-sd1-postproc-256", "anime-vn-256")
VARIANTS = {"m0": (0, 90), "m1": (1, 90), "m2": (2, 90), "m4": (4, 90), "m4_q89": (4, 89), "m4_q91": (4, 91)}


def webp(pixels: np.ndarray, method: int, quality: int) -> np.ndarray:
    from animeprov.perturb import decode, encode_webp

    return decode(encode_webp(pixels, quality, method=method))


def encode_ms(images: list[np.ndarray], method: int, repeats: int = 3) -> float:
    from animeprov.perturb import encode_webp

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for pixels in images:
            encode_webp(pixels, 90, method=method)
        times.append((time.perf_counter() - start) / len(images) * 1000)
    return round(float(np.median(times)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="At most this many images (every k-th).")
    args = parser.parse_args()
    from animeprov.evaluation.calibration import verdicts
    from animeprov.io import load_image, make_views, read_file
    from animeprov.predict import Predictor

    files = sorted(f for name in SETS for f in (SHARED / name).rglob("*.png"))
    if not files:
        sys.exit(f"no images under {SHARED}")
    files = files[:: max(1, len(files) // args.images)]
    torch.set_num_threads(1)
    predictor = Predictor.reference(device="cpu", checks=())

    def judge(pixels: np.ndarray) -> tuple[str, float]:
        log_probs = predictor.log_probs(np.stack(make_views(pixels, predictor.size, "tiles")))
        judged = verdicts(predictor.pool(log_probs), predictor.calibration)[0]
        return judged["verdict"], judged["p_generated"]

    rows = []
    for path in files:
        pixels = load_image(read_file(str(path)), name=str(path)).pixels
        if min(pixels.shape[:2]) < predictor.size:
            continue
        row = {"own": judge(pixels)}
        for name, (method, quality) in VARIANTS.items():
            row[name] = judge(webp(pixels, method, quality))
        rows.append(row)
    committed = [row for row in rows if row["own"][0] != "unsure"]

    def flagged(row: dict, name: str) -> bool:
        return row[name][0] != row["own"][0]

    against_m4 = {}
    for name in VARIANTS:
        if name == "m4":
            continue
        against_m4[name] = {
            "check_outcome_differs_on_committed": round(
                sum(flagged(r, name) != flagged(r, "m4") for r in committed) / max(len(committed), 1), 4
            ),
            "verdict_differs": round(sum(r[name][0] != r["m4"][0] for r in rows) / len(rows), 4),
            "mean_abs_p_generated_difference": round(
                float(np.mean([abs(r[name][1] - r["m4"][1]) for r in rows])), 4
            ),
        }
    mosaics = []
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from predict_throughput import make_jpegs

    with tempfile.TemporaryDirectory() as folder:
        for path in make_jpegs(Path(folder), 8, 512):
            mosaics.append(np.asarray(Image.open(path).convert("RGB")))
    report = {
        "images": len(rows),
        "committed": len(committed),
        "flags_on_committed": {name: sum(flagged(r, name) for r in committed) for name in VARIANTS},
        "against_method_4_quality_90": against_m4,
        "image_vs_m4_mean_abs_p_generated_difference": round(
            float(np.mean([abs(r["own"][1] - r["m4"][1]) for r in rows])), 4
        ),
        "encode_ms_per_512px_image": {f"method_{m}": encode_ms(mosaics, m) for m in range(7)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
