"""The training and inference loops; the only module that decides devices, AMP and memory format."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import expit, logsumexp, softmax
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from animeprov.data.dataset import Batch, collate_samples


def select_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    # channels_last is 2-4x faster for these convnets on CPU as well as on CUDA.
    return model.to(device=device, memory_format=torch.channels_last)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast(device: torch.device, precision: str = "auto"):
    """auto: float16 AMP on CUDA, float32 elsewhere. bf16 on CPU is opt-in: it trained Xception 1.7x faster
    on one CPU but 0.76x on another (both AVX-512 BF16; it pays only where bf16 matrix products are much
    faster than fp32 ones), lost about 0.03 of accuracy over three seeds on real images, and makes the
    default recipe's EfficientNet slower (docs/results/README.md, "Training throughput")."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def keep_freed_memory() -> None:
    """glibc only: serve allocations from the heap (no mmap) and never trim it.

    PyTorch's CPU allocator is plain malloc; by default glibc mmaps every block over 32 MiB and unmaps it on
    free, so each step's activations are page-faulted in afresh (a third of a 512 px CPU training step).
    Keeping freed memory gives 1.6-1.85x at 512 px; the price is that the process keeps its peak memory.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    workers: int = 0,
    device: torch.device | None = None,
    sampler: Sampler | Iterable[int] | None = None,
) -> DataLoader:
    """Shuffling is seeded by the caller (seed + epoch), so every epoch's order is reproducible on resume.

    `sampler` (e.g. this rank's share under torchrun, see `animeprov.distributed`) replaces `shuffle`.
    Images are decoded and cropped in `workers` processes; for a CUDA `device` batches land in pinned memory,
    so `_to_device`'s non_blocking copies overlap with the GPU's work.
    """
    if sampler is not None and shuffle:
        raise ValueError("pass either shuffle=True or a sampler, not both")
    # Also for a sampler: the loader then draws its worker seeds from here, not from torch's global RNG.
    generator = torch.Generator().manual_seed(seed) if shuffle or sampler is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        collate_fn=collate_samples,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=False,
    )


def _to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch.images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return images, batch.labels.to(device, non_blocking=True)


class ClassAndDetectionLoss(nn.Module):
    """Cross-entropy over the classes, plus `binary_weight` x the negative log-likelihood of the detection
    question alone: P(generated) = 1 - P(human) from the same softmax, true for every non-human label.

    The binary term rewards putting mass on ANY generator class for a generated image, so a model can learn
    what generators share (a decoder's trace) even where telling them apart is hard.
    """

    def __init__(
        self, human_index: int | None, binary_weight: float = 0.0, class_weights: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if binary_weight < 0:
            raise ValueError(f"binary_weight must be >= 0, got {binary_weight}")
        if binary_weight > 0 and human_index is None:
            raise ValueError("a detection loss needs a human class")
        self.cross_entropy = nn.CrossEntropyLoss(weight=class_weights)
        self.human_index = human_index
        self.binary_weight = binary_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, labels)
        if self.binary_weight == 0:
            return loss
        log_probs = torch.log_softmax(logits, dim=1)
        log_human = log_probs[:, self.human_index]
        others = torch.cat([log_probs[:, : self.human_index], log_probs[:, self.human_index + 1 :]], dim=1)
        log_generated = torch.logsumexp(others, dim=1)
        is_human = labels == self.human_index
        binary = -torch.where(is_human, log_human, log_generated).mean()
        return loss + self.binary_weight * binary


@dataclass
class EpochResult:
    loss: float
    accuracy: float
    images: int
    seconds: float
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


ProgressHook = Callable[[int, str], None]  # (images just done, short status text)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    precision: str = "auto",
    scaler: torch.amp.GradScaler | None = None,
    on_batch: ProgressHook | None = None,
) -> EpochResult:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    errors: list[tuple[str, str]] = []
    start = time.perf_counter()
    for batch in loader:
        errors.extend(batch.errors)
        if len(batch.labels) == 0:
            continue
        images, labels = _to_device(batch, device)
        with autocast(device, precision):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = len(labels)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        if on_batch is not None:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            on_batch(n, f"loss {total_loss / seen:.3f} acc {correct / seen:.3f} {rate:.0f} img/s")
    seconds = time.perf_counter() - start
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), seen, seconds, errors)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, classes) softmax
    labels: np.ndarray  # (N,) true labels as the dataset gives them
    indices: np.ndarray  # (N,) dataset row of each prediction (failed files are absent)
    errors: list[tuple[str, str]]
    seconds: float

    def loss(self) -> float:
        picked = self.probs[np.arange(len(self.labels)), self.labels]
        return float(-np.log(np.clip(picked, 1e-12, None)).mean()) if len(picked) else float("nan")

    def accuracy(self) -> float:
        return float((self.probs.argmax(1) == self.labels).mean()) if len(self.labels) else float("nan")

    def pool_by_row(self, human: int | None) -> Predictions:
        """One prediction per dataset row from several views of it (tiles, patches), pooled as `predict`
        pools tiles (`pool_views`; `human` is the human class's index, None without one). Rows keep their
        first-seen order; errors appear once."""
        if len(np.unique(self.indices)) == len(self.indices):
            return self
        rows, first, inverse = np.unique(self.indices, return_index=True, return_inverse=True)
        order = np.argsort(first)
        log_probs = np.log(np.clip(self.probs.astype(np.float64), 1e-12, None))
        pooled = pool_views(log_probs, inverse, human)
        errors = list(dict.fromkeys(map(tuple, self.errors)))
        return Predictions(
            pooled[order].astype(np.float32), self.labels[first][order], rows[order], errors, self.seconds
        )


def pool_views(log_probs: np.ndarray, groups: np.ndarray, human: int | None) -> np.ndarray:
    """Class probabilities (G, C) of G images from their views' log-probabilities (N, C); `groups` (N,)
    numbers each view's image 0..G-1.

    Detection and attribution are pooled apart. P(generated) is the sigmoid of the mean over the views of
    each view's detection logit, log P(generated) - log P(human): evidence for "generated" counts whichever
    generator a view points at. The generator classes share P(generated) as the softmax of their mean
    log-probabilities. (Pooling every class at once, as a softmax of the mean log-probabilities, is a
    geometric mean per class: when views disagree on the generator, each generator's mean drops and the
    human class wins: under leave-one-source-out it left more unseen AI images on the human side of 0.5,
    docs/results/generalisation.md.) One view gives back its own probabilities. Without a human class: the
    softmax of the mean log-probabilities.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    counts = np.bincount(groups)
    mean_log_probs = np.zeros((len(counts), log_probs.shape[1]))
    np.add.at(mean_log_probs, groups, log_probs)
    mean_log_probs /= counts[:, None]
    if human is None or log_probs.shape[1] < 2:
        return softmax(mean_log_probs, axis=1)
    generators = np.delete(np.arange(log_probs.shape[1]), human)
    detection = logsumexp(log_probs[:, generators], axis=1) - log_probs[:, human]
    mean_detection = np.bincount(groups, weights=detection) / counts
    pooled = np.empty_like(mean_log_probs)
    pooled[:, human] = expit(-mean_detection)
    pooled[:, generators] = expit(mean_detection)[:, None] * softmax(mean_log_probs[:, generators], axis=1)
    return pooled


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    precision: str = "auto",
    on_batch: ProgressHook | None = None,
) -> Predictions:
    model.eval()
    probs, labels, indices, errors = [], [], [], []
    start = time.perf_counter()
    for batch in loader:
        errors.extend(batch.errors)
        if len(batch.labels) == 0:
            continue
        images, _ = _to_device(batch, device)
        with autocast(device, precision):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(batch.labels.numpy())
        indices.append(batch.indices.numpy())
        if on_batch is not None:
            on_batch(len(batch.labels), "")
    num_classes = getattr(model, "num_classes", 0)
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, num_classes), dtype=np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        indices=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        errors=errors,
        seconds=time.perf_counter() - start,
    )


def stem_batches(loader: DataLoader, errors: list[tuple[str, str]]):
    """Images only (CPU, contiguous), for fitting the stem's normalisation statistics."""
    for batch in loader:
        errors.extend(batch.errors)
        if len(batch.labels):
            yield batch.images
