"""Streaming per-element mean and variance (Welford / Chan et al.), accumulated in float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RunningMeanStd:
    """Per-element mean and population standard deviation over a stream of samples.

    Each `update(batch)` folds a whole batch in at once with Chan et al.'s parallel combination of
    (count, mean, sum of squared deviations), which is numerically stable like Welford's one-at-a-time
    update but vectorised. Everything is accumulated in float64 on the CPU.
    """

    def __init__(self, shape: Sequence[int], *, min_std: float = 1e-6) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.min_std = min_std
        self.count = 0
        self._mean = torch.zeros(self.shape, dtype=torch.float64)
        self._m2 = torch.zeros(self.shape, dtype=torch.float64)  # sum of squared deviations from the mean

    def update(self, batch: torch.Tensor) -> None:
        """Add the samples of `batch`, shaped (n, *shape)."""
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"expected samples of shape {self.shape}, got batch {tuple(batch.shape)}")
        n = batch.shape[0]
        if n == 0:
            return
        values = batch.detach().to(device="cpu", dtype=torch.float64)
        batch_mean = values.mean(dim=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(dim=0)
        self._combine(n, batch_mean, batch_m2)

    def merge(self, other: RunningMeanStd) -> None:
        """Fold in statistics gathered separately (e.g. by another worker); same result as one pass."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge statistics of shape {other.shape} into {self.shape}")
        if other.count:
            self._combine(other.count, other._mean, other._m2)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        n_a = self.count
        total = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / total)
        self._m2 = self._m2 + m2_b + delta**2 * (n_a * n_b / total)
        self.count = total

    @property
    def mean(self) -> torch.Tensor:
        return self._mean.clone()

    @property
    def var(self) -> torch.Tensor:
        """Population variance (divides by count); zeros before any sample."""
        return self._m2 / max(self.count, 1)

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation floored at `min_std`, so dividing by it is always safe."""
        return self.var.sqrt().clamp_min(self.min_std)
