"""Per-image parity of an exported ONNX model: where the probability differences come from.

Runs the 8 parity images of `animeprov export` (`animeprov.export.parity_images`: 0-3 uniform noise, 4-7
flat-coloured blocks) through three paths and prints, per image, the largest |probability difference| of
each pair:

- onnxruntime vs PyTorch's CPU prediction path (scipy DCT in DCT stems);
- onnxruntime vs PyTorch with the matrix DCT the export uses (`exportable_copy`): the exporter's own error;
- PyTorch matrix DCT vs scipy DCT: the float32 rounding difference between the two DCT implementations.

Export the run first (`animeprov export RUN --onnx MODEL.onnx`). docs/export.md's per-image figures came from

    .venv/bin/animeprov export /work/runs/six/runs/xception-dct-mask --onnx six-xception-dct-mask.onnx
    .venv/bin/python benchmarks/export_parity.py /work/runs/six/runs/xception-dct-mask \\
        six-xception-dct-mask.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from animeprov.checkpoint import load_model
from animeprov.export import exportable_copy, parity_images, read_metadata


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="the run folder the ONNX file was exported from")
    parser.add_argument("onnx", type=Path, help="the exported .onnx file")
    args = parser.parse_args()

    model, config = load_model(args.run)
    images = parity_images(config["size"])
    session = onnxruntime.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    onnx_probabilities = session.run(["probabilities"], {"images": images.numpy()})[0]
    # The graph's probabilities are softmax(logits / T), T the run's calibration temperature: use the same T.
    temperature = float(read_metadata(args.onnx)["temperature"])
    with torch.no_grad():
        scipy_probabilities = torch.softmax(model(images) / temperature, 1).numpy()
        matrix_probabilities = torch.softmax(exportable_copy(model)(images) / temperature, 1).numpy()

    def largest_difference(a: np.ndarray, b: np.ndarray) -> str:
        return np.array2string(np.abs(a - b).max(1), precision=2)

    print("images 0-3 noise, 4-7 flat blocks")
    print("onnxruntime vs PyTorch scipy DCT :", largest_difference(onnx_probabilities, scipy_probabilities))
    print("onnxruntime vs PyTorch matrix DCT:", largest_difference(onnx_probabilities, matrix_probabilities))
    print("PyTorch matrix vs scipy DCT      :", largest_difference(matrix_probabilities, scipy_probabilities))


if __name__ == "__main__":
    main()
