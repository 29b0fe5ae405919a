"""Every registered variant: shapes, gradients, parameter counts, FLOPs, saved statistics, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from animeprov.config import VARIANTS
from animeprov.models import Classifier, create_model, model_summary
from animeprov.models.cnn import DEFAULT_WIDTHS
from animeprov.models.registry import count_parameters, forward_flops
from animeprov.transforms.stem import fit_stem_statistics

SIZE = 64
XCEPTION_PARAMS_5_CLASSES = 20_817_197  # the reference (Keras / Cadene) Xception with a 5-way fc


def _images(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_shape_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, 5, SIZE)
    assert isinstance(model, Classifier) and model.spec.name == name
    assert (model.num_classes, model.size) == (5, SIZE)
    images = _images(4)
    fit_stem_statistics(model.stem, [images])
    logits = model(images)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", list(VARIANTS))
def test_eval_mode_is_deterministic_and_state_dict_carries_the_stem(name):
    torch.manual_seed(0)
    model = create_model(name, 3, SIZE).eval()
    images = _images(2, seed=1)
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
    keys = set(model.state_dict())
    if model.spec.stem == "dct":
        assert {"stem.mean", "stem.std", "stem.fitted"} <= keys
        assert model.state_dict()["stem.mean"].shape == (3, SIZE, SIZE)
    assert any(k.startswith("attention.") for k in keys) == model.spec.attention


@pytest.mark.parametrize("num_classes", [2, 5, 7])
def test_xception_has_the_reference_parameter_count(num_classes):
    model = create_model("xception-dct", num_classes, 32)
    assert count_parameters(model) == XCEPTION_PARAMS_5_CLASSES + (num_classes - 5) * 2049
    # CBAM on 3 channels adds a handful of parameters, nothing else changes.
    assert (
        count_parameters(create_model("xception-dct-mask", num_classes, 32)) - count_parameters(model) < 200
    )


def test_flop_count_matches_the_analytic_count():
    size = 32
    macs, spatial, cin = 0, size, 3
    for i, width in enumerate(DEFAULT_WIDTHS):
        macs += spatial * spatial * width * cin * 9
        cin = width
        if i < len(DEFAULT_WIDTHS) - 1:
            spatial //= 2
    macs += cin * spatial * spatial * 5  # the linear head
    pixel = forward_flops(create_model("cnn-pixel", 5, size))
    assert pixel == 2 * macs
    # The matrix DCT: C @ x @ C.T per channel is 2 * size^3 multiply-adds.
    dct = forward_flops(create_model("cnn-dct", 5, size))
    assert dct - pixel == 3 * 2 * 2 * size**3
    # CBAM: the direct 7x7 conv on 2 descriptor maps, and the 3 -> 4 -> 3 MLP on 2 pooled descriptors.
    assert forward_flops(create_model("cnn-dct-mask", 5, size)) - dct == 2 * (2 * 49 * size**2 + 2 * 24)


def test_model_summary_lists_all_variants():
    rows = model_summary(32)
    assert [row["name"] for row in rows] == list(VARIANTS)
    by_name = {row["name"]: row for row in rows}
    assert by_name["xception-pixel"]["params"] == XCEPTION_PARAMS_5_CLASSES
    assert by_name["xception-pixel"]["gflops"] > 10 * by_name["cnn-pixel"]["gflops"] > 0
    assert by_name["cnn-dct-mask"]["dct_gflops"] > 0 == by_name["cnn-pixel"]["dct_gflops"]


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        create_model("resnet-dct", 5, SIZE)
    with pytest.raises(ValueError, match="at least"):
        create_model("xception-dct", 5, 16)
    with pytest.raises(ValueError, match="at least"):
        create_model("cnn-dct", 5, 4)
    with pytest.raises(ValueError, match="2 classes"):
        create_model("cnn-dct", 1, SIZE)
    model = create_model("cnn-pixel", 5, SIZE)
    with pytest.raises(ValueError, match="expects input"):
        model(torch.rand(1, 3, SIZE, SIZE + 1))


def test_cnn_dct_mask_memorises_two_random_label_batches():
    torch.manual_seed(0)
    size = 32
    model = create_model("cnn-dct-mask", 5, size)
    batches = [_images(8, size, seed=s) for s in (10, 11)]
    labels = [torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(s)) for s in (20, 21)]
    fit_stem_statistics(model.stem, batches)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for images, target in zip(batches, labels, strict=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), target).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in zip(batches, labels, strict=True))
    assert correct == 16
