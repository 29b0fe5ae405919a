"""Data-parallel training with PyTorch's own engine: torch.distributed, launched by `torchrun`.

    torchrun --nproc-per-node 4 -m animeprov train --data split.csv --out runs/x --batch-size 32

Each process ("rank") runs the same training loop on its share of every global batch; DistributedDataParallel
averages the gradients, so all ranks hold identical weights after each step. The group is joined only when
torchrun's WORLD_SIZE is above 1: a plain `animeprov train` never touches torch.distributed.

Every helper below is a no-op (or the identity) in a single process, so the training loop reads the same
either way. Backend: nccl when the ranks train on CUDA, gloo otherwise (CPU, and the test suite).
Collectives carry tensors only (metrics as float64 sums, JSON as bytes), never pickled objects.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from animeprov.engine import select_device


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when run without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the only process that writes files, logs and progress bars."""
    return rank() == 0


def init_if_launched(requested_device: str = "auto") -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1; True when this call joined it (so must leave it).

    On CUDA each rank takes the GPU of its LOCAL_RANK (unless a device index was given) and the group uses
    nccl; on CPU it uses gloo. torchrun's environment (MASTER_ADDR, RANK, ...) supplies the rest.
    """
    if launched_world_size() <= 1 or is_distributed():
        return False
    device = select_device(requested_device)
    if device.type == "cuda":
        index = device.index if device.index is not None else int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(index)
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", index))
    else:
        dist.init_process_group(backend="gloo")
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """`cuda` means this rank's own GPU (set by `init_if_launched`), not GPU 0 for every rank."""
    if is_distributed() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def barrier() -> None:
    """Wait for every rank, e.g. until rank 0 has finished writing a file the others may read."""
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # nccl moves CUDA tensors only; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums over all ranks (float64: counts of images stay exact)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def pooled_mean_var(
    count: int, mean: torch.Tensor, var: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Combine per-rank (count, mean, population variance) into those of all ranks' samples together.

    The parallel form of Chan et al.: mean = sum(n_r * mean_r) / N and
    var = sum(n_r * (var_r + (mean_r - mean)^2)) / N, in float64. Identical on every rank afterwards.
    """
    if not is_distributed():
        return count, mean, var
    device = _comm_device()
    mean = mean.to(device=device, dtype=torch.float64)
    var = var.to(device=device, dtype=torch.float64)
    total = int(all_reduce_sums([count])[0])
    if total == 0:
        raise ValueError("no samples on any rank")
    weighted_sum = mean * count
    dist.all_reduce(weighted_sum, op=dist.ReduceOp.SUM)
    pooled_mean = weighted_sum / total
    spread = (var + (mean - pooled_mean) ** 2) * count
    dist.all_reduce(spread, op=dist.ReduceOp.SUM)
    return total, pooled_mean.cpu(), (spread / total).cpu()


def gather_json(value: Any) -> list[Any]:
    """`value` from every rank (JSON-serialisable), in rank order; [value] in a single process."""
    if not is_distributed():
        return [value]
    device = _comm_device()
    payload = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(payload)], dtype=torch.int64, device=device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(payload)] = payload
    gathered = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return [
        json.loads(bytes(chunk[: int(size.item())].cpu().tolist()).decode())
        for chunk, size in zip(gathered, sizes, strict=True)
    ]


def train_sampler(dataset: Dataset, *, seed: int, epoch: int) -> DistributedSampler | None:
    """This rank's share of a fresh shuffle of `dataset` for `epoch`; None in a single process.

    All ranks draw the same permutation (torch.randperm seeded with seed + epoch) and rank r takes positions
    r, r + W, r + 2W, ... so with a per-rank batch b, the k-th batches of all ranks together are exactly
    positions k*W*b ... (k+1)*W*b - 1 of the permutation: one global batch of W*b. When len(dataset) is not
    a multiple of W, the permutation is padded with its own first items (DistributedSampler's rule), so a
    few images are seen twice per epoch.
    """
    if not is_distributed():
        return None
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def shard_indices(length: int) -> list[int] | None:
    """Rows rank, rank + W, ... of an unshuffled dataset, without padding (for evaluation and statistics,
    where a duplicated row would bias the result); None in a single process."""
    if not is_distributed():
        return None
    return list(range(rank(), length, world_size()))


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks); the model itself otherwise.

    Save and evaluate the unwrapped model: its state_dict has no "module." prefix.
    BatchNorm (Xception) keeps per-rank batch statistics, as plain DDP does.
    """
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def join(model: nn.Module):
    """Lets a rank that runs out of batches early (e.g. all of its last batch failed to load) keep
    answering the others' gradient all-reduces instead of leaving them waiting forever."""
    if isinstance(model, DistributedDataParallel):
        return model.join()
    return contextlib.nullcontext()
