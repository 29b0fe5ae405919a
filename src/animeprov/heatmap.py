"""Which regions of an image drive a class decision: occlusion maps (any variant), Grad-CAM (pixel variants).

For DCT variants every convolution after the stem works on the 2-D DCT of the whole view: a position in those
feature maps is a FREQUENCY, not a place in the image, so Grad-CAM on the last convolutional stage of a DCT
model is a map of frequencies and would be a lie drawn over the picture. Occlusion asks the image-plane
question directly for any model: blur some regions (fine detail, where generator fingerprints live, removed;
colours and shapes kept, so the image stays plausible) and measure how the log-odds of the class,
log(p / (1 - p)), change. Grad-CAM is offered for pixel variants, where it is one forward + backward pass
instead of hundreds of forwards. See docs/heatmap.md for what the maps can and cannot show.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from animeprov.transforms.stem import DCTStem, PixelStem

METHODS = ("auto", "occlusion", "gradcam")

# Occlusion: 8 x 8 cells (32 px at 256), 192 random half-blurred copies per image: about 3 per unknown of
# the least-squares fit, and three batches of 64 forwards (1.2-1.4 s for cnn-dct-mask at 256 px on 2 CPU
# cores, docs/heatmap.md).
DEFAULT_GRID = 8
DEFAULT_SAMPLES = 192
DEFAULT_BATCH_SIZE = 64
# Occlusion effects below this many nats of log-odds are float32 rounding noise (logits of size ~10 are
# resolved to ~1e-6), not evidence.
NEGLIGIBLE_NATS = 1e-4

# Anchor colours of the overlay's colour map (dark blue -> blue -> cyan -> yellow -> red), evenly spaced in
# heat: a perceptually ordered ramp in the spirit of "jet", without matplotlib.
COLOUR_ANCHORS = np.array(
    [[0, 0, 96], [0, 64, 255], [0, 224, 224], [255, 224, 0], [224, 0, 0]],
    dtype=np.float32,
)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _class_indices(class_index: int | Sequence[int], n: int, num_classes: int | None) -> torch.Tensor:
    indices = [int(class_index)] * n if isinstance(class_index, (int, np.integer)) else list(class_index)
    if len(indices) != n:
        raise ValueError(f"got {len(indices)} class indices for {n} images")
    for index in indices:
        if index < 0 or (num_classes is not None and index >= num_classes):
            raise ValueError(f"class index {index} out of range for {num_classes} classes")
    return torch.tensor(indices, dtype=torch.long)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")


def resolve_method(model: nn.Module, method: str) -> str:
    """The method "auto" stands for: "gradcam" for a pixel-stem Classifier, else "occlusion".

    Raises ValueError for "gradcam" on a model whose feature maps are not in the image plane.
    """
    if method not in METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; choose one of {', '.join(METHODS)}")
    stem = getattr(model, "stem", None)
    pixel_plane = isinstance(stem, PixelStem) and hasattr(getattr(model, "backbone", None), "features")
    if method == "auto":
        return "gradcam" if pixel_plane else "occlusion"
    if method == "gradcam" and not pixel_plane:
        what = "DCT (frequency) domain" if isinstance(stem, DCTStem) else "unknown layout"
        raise ValueError(
            f"gradcam needs a pixel-stem Classifier; this model's feature maps are in the {what}, so "
            "Grad-CAM would not map image regions: use method='occlusion'"
        )
    return method


def class_log_odds(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of each row's class: its logit minus the logsumexp of the other logits.

    Unlike log p it does not saturate: a model 50 nats sure of a class has log p == 0.0 in float64 whatever a
    patch does to it, while the log-odds still move.
    """
    logits = logits.double()
    own = logits.gather(1, classes.view(-1, 1))[:, 0]
    others = logits.scatter(1, classes.view(-1, 1), float("-inf"))
    return own - torch.logsumexp(others, dim=1)


def _normalise(raw: torch.Tensor) -> np.ndarray:
    """Per image: divided by its maximum, so the strongest evidence is 1; an all-zero map stays all zero."""
    raw = raw.double()
    peak = raw.amax(dim=(1, 2), keepdim=True)
    heat = torch.where(peak > 0, raw / peak.clamp(min=1e-300), torch.zeros_like(raw))
    return heat.float().cpu().numpy()


def blurred_copy(images: torch.Tensor, kernel: int) -> torch.Tensor:
    """Two passes of a kernel x kernel box blur (close to a Gaussian), reflect-padded so edges keep colour."""
    pad = kernel // 2
    out = images
    for _ in range(2):
        out = F.avg_pool2d(F.pad(out, (pad, pad, pad, pad), mode="reflect"), kernel, stride=1)
    return out


def random_keep_masks(samples: int, grid: int, seed: int) -> torch.Tensor:
    """(2 * (samples // 2), grid * grid) 0/1 float64: which cells stay sharp. Half the rows are random (each
    cell kept with probability 1/2), the other half their complements: every cell is kept exactly half of
    the time, which makes the fit's intercept independent of the cell coefficients."""
    generator = torch.Generator().manual_seed(seed)
    random = (torch.rand(samples // 2, grid * grid, generator=generator) < 0.5).double()
    return torch.cat([random, 1 - random])


@torch.no_grad()
def occlusion_map(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    *,
    grid: int = DEFAULT_GRID,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Raw (N, S, S) effect, in nats of class log-odds, of keeping each grid cell's fine detail.

    Each image is scored `samples` times with a random half of its grid x grid cells replaced by a blurred
    copy; a least-squares fit of the class log-odds on the 0/1 "cell kept" indicators gives one coefficient
    per cell: how much that cell's detail adds on average over many contexts. Positive: the cell's detail
    supports the class. Single-patch occlusion measures the cell in just one context (everything else
    intact), and for DCT models that context misleads: the spectrum is global and the log makes it
    non-additive, so on a trained toy, blurring one patch of the evidence RAISED the class log-odds by up to
    8.8 nats (docs/heatmap.md). The coefficient map is bilinearly upsampled to S.
    """
    n, _, size, _ = images.shape
    if not 1 <= grid <= size:
        raise ValueError(f"grid must be in 1..{size} cells per side, got {grid}")
    if samples < grid * grid + 2:
        raise ValueError(f"{grid}x{grid} cells need at least {grid * grid + 2} samples, got {samples}")
    keep = random_keep_masks(samples, grid, seed).to(images.device)
    design = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
    cell_side = max(1, size // grid)
    blurred = blurred_copy(images, max(3, (cell_side // 4) | 1))
    coefficients = []
    for i in range(n):
        scores = []
        for first in range(0, len(keep), batch_size):
            chunk = keep[first : first + batch_size].float().view(-1, 1, grid, grid)
            masks = F.interpolate(chunk, size=(size, size), mode="nearest")
            mixed = torch.lerp(blurred[i], images[i], masks)  # mask 1: the sharp original
            scores.append(class_log_odds(model(mixed), classes[i].expand(len(mixed))))
        # gelsd (SVD): the minimum-norm solution, deterministic even for a rank-deficient design (few
        # samples); torch's default gelsy is not.
        fit = torch.linalg.lstsq(design.cpu(), torch.cat(scores).cpu().view(-1, 1), driver="gelsd").solution
        coefficients.append(fit[1:, 0].view(1, grid, grid))
    cells = torch.stack(coefficients).to(images.device)
    return F.interpolate(cells, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def gradcam_map(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Raw (N, S, S) class-activation map on `model.backbone.features`, bilinearly upsampled to S.

    The HiResCAM form of Grad-CAM (Draelos & Carin 2020): gradient x activation summed over channels at each
    position, not Grad-CAM's spatially averaged gradient. For Xception's global-average-pooled head the two
    are the same (the gradient is constant over positions); for the small CNN, whose linear head sees every
    position separately, averaging the gradient would mix positions, while gradient x activation summed
    over the map is exactly the class score's linear part. The target is the class log-odds rather than
    the bare logit, so the map shows evidence for this class over the others, as occlusion does.
    """
    with torch.enable_grad():
        # An input that requires grad makes the features require it even when the caller froze the weights.
        images = images.detach().requires_grad_(True)
        features = model.backbone.features(model.attention(model.stem(images)))
        target = class_log_odds(model.backbone.head(features), classes).sum()
        (gradients,) = torch.autograd.grad(target, features)
    cam = (gradients * features.detach()).sum(dim=1, keepdim=True)
    size = images.shape[-1]
    return F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def class_heatmap(
    model: nn.Module,
    images: torch.Tensor,
    class_index: int | Sequence[int],
    *,
    method: str = "auto",
    normalize: bool = True,
    grid: int = DEFAULT_GRID,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> np.ndarray:
    """(N, S, S) float32 heat in [0, 1] for `class_index` (one int, or one per image) on (N, 3, S, S) images.

    `method`: "auto" (Grad-CAM for pixel variants, occlusion for DCT variants and any other model),
    "occlusion" (any model) or "gradcam" (pixel variants only; ValueError otherwise). Each image's map is
    scaled so its strongest positive evidence is 1; evidence against the class, and occlusion effects
    below NEGLIGIBLE_NATS, are 0. With `normalize=False` the unscaled maps are returned instead
    (occlusion: each cell's effect on the class log-odds in nats; Grad-CAM: gradient x activation), e.g.
    to stitch tiles on one scale.
    `grid` (cells per side), `samples` and `seed` set the occlusion fit (see `occlusion_map`); the same
    seed gives the same map. The model is used in eval mode and left in the mode it was in.
    """
    _check_images(images)
    method = resolve_method(model, method)
    device = _model_device(model)
    images = images.detach().to(device=device, dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        classes = _class_indices(class_index, images.shape[0], getattr(model, "num_classes", None)).to(device)
        if images.shape[0] == 0:
            return np.zeros((0, images.shape[2], images.shape[3]), dtype=np.float32)
        if method == "gradcam":
            raw = gradcam_map(model, images, classes)
        else:
            raw = occlusion_map(
                model, images, classes, grid=grid, samples=samples, seed=seed, batch_size=batch_size
            )
    finally:
        model.train(was_training)
    # Evidence against the class shows as 0, and so does an occlusion effect too small to be more than
    # rounding noise: scaled up to 1 it would draw evidence that is not there.
    floor = NEGLIGIBLE_NATS if method == "occlusion" else 0.0
    raw = torch.where(raw > floor, raw, torch.zeros_like(raw))
    if normalize:
        return _normalise(raw)
    return raw.float().cpu().numpy()


def colour_map(heat: np.ndarray) -> np.ndarray:
    """HxW heat in [0, 1] -> HxWx3 uint8 colours by linear interpolation between COLOUR_ANCHORS."""
    position = np.clip(heat, 0.0, 1.0) * (len(COLOUR_ANCHORS) - 1)
    low = np.minimum(position.astype(np.int64), len(COLOUR_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    colours = COLOUR_ANCHORS[low] * (1 - fraction) + COLOUR_ANCHORS[low + 1] * fraction
    return np.rint(colours).astype(np.uint8)


def overlay_heatmap(pixels: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45) -> Image.Image:
    """RGB picture: (1 - alpha) * pixels + alpha * colour_map(heat). pixels HxWx3 uint8, heat HxW in [0, 1].

    NaN heat counts as 0 and values outside [0, 1] are clipped.
    """
    pixels = np.asarray(pixels)
    heat = np.asarray(heat, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be an HxWx3 uint8 array, got {pixels.shape} {pixels.dtype}")
    if heat.shape != pixels.shape[:2]:
        raise ValueError(f"heat {heat.shape} does not match the image {pixels.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colour_map(np.nan_to_num(heat, nan=0.0)).astype(np.float32)
    blended = (1.0 - alpha) * pixels.astype(np.float32) + alpha * colours
    return Image.fromarray(np.rint(blended).clip(0, 255).astype(np.uint8))
