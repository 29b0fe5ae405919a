"""Saving and loading runs: safetensors for tensors, JSON for everything else, never pickles.

A run folder holds:
    config.json         the resolved run config (variant, classes, size, data hash, seed, versions, ...)
    model.safetensors   best weights (by validation accuracy), stem statistics included
    last.safetensors    last finished epoch: weights + optimizer tensors, with the training state as JSON
                        metadata, in ONE file so a kill can never leave weights and state out of step
    metrics.jsonl       one line per finished epoch
    train.log           the log
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from animeprov.models import create_model

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "model.safetensors"
LAST_STATE = "last.safetensors"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a kill or a power cut leaves the old file or the new one."""
    _atomic_write(path, text, "x", encoding="utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write_text` for bytes."""
    _atomic_write(path, data, "xb")


def _atomic_write(path: Path, data: str | bytes, mode: str, encoding: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with open(tmp, mode, encoding=encoding) as handle:  # created as any file is: the umask applies
            handle.write(data)
        _replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb"):  # created as any new file is, so that its mode follows the umask
            pass
        mode = stat.S_IMODE(tmp.stat().st_mode)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes 0600 whatever the umask
        _replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary_name(path: Path) -> Path:
    """A new name beside `path`. Not tempfile's: its files are 0600 whatever the umask, so a run trained
    by one user could not be read by another (e.g. a service account running `serve`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _replace_durably(tmp: Path, path: Path) -> None:
    """fsync the new file, rename it over `path`, fsync the folder (the rename): without both, a power cut
    can leave an empty or missing file although the rename had returned."""
    _fsync(tmp)
    os.replace(tmp, path)
    if os.name == "posix":  # folders cannot be opened for fsync on Windows
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb"):  # safetensors reports any failure to open as "No such file"; this says why
        pass
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    _atomic_save_tensors(model.state_dict(), path, {"format": "pt"})


def save_average(model: torch.nn.Module, path: Path, count: int) -> None:
    """Fold the model's weights into the running mean stored at `path`, which holds the mean of
    `count - 1` earlier snapshots (count 1 starts it). Integer buffers (BatchNorm's batch counter) keep
    the latest value."""
    current = model.state_dict()
    if count > 1:
        previous, _ = _read_tensors(path)
        current = {
            key: previous[key] + (value.detach().cpu().to(previous[key].dtype) - previous[key]) / count
            if value.is_floating_point()
            else value
            for key, value in current.items()
        }
    _atomic_save_tensors(current, path, {"format": "pt"})


def write_config(run: Path, config: dict[str, Any]) -> None:
    atomic_write_text(run / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a run folder (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def load_model(run: str | Path, *, weights: str = BEST_WEIGHTS, device: str | torch.device = "cpu"):
    """Rebuild the model a run describes and load its weights (stem statistics included), in eval mode."""
    run = Path(run)
    config = read_config(run)
    model = create_model(config["variant"], len(config["classes"]), config["size"])
    tensors, _ = _read_tensors(run / weights)
    state = {
        key.removeprefix("model."): value for key, value in tensors.items() if not key.startswith("optim.")
    }
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), config


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Weights, optimizer and scheduler state and loop counters, in one atomically replaced file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in optim_state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    metadata = {
        "state": json.dumps(state),
        "optimizer_param_groups": json.dumps(optim_state["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    _atomic_save_tensors(tensors, path, metadata)


def load_training_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    tensors, metadata = _read_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    optim_entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            optim_entries.setdefault(int(param_id), {})[name] = value
    for param_id, entries in json.loads(metadata["optimizer_scalars"]).items():
        optim_entries.setdefault(int(param_id), {}).update(entries)
    optimizer.load_state_dict(
        {"state": optim_entries, "param_groups": json.loads(metadata["optimizer_param_groups"])}
    )
    # The file holds contiguous tensors; give moments the layout of their (e.g. channels_last) parameter,
    # which fused Adam silently assumes: with mismatched strides it pairs the wrong elements.
    for param, entries in optimizer.state.items():
        for name, value in entries.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                entries[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    return json.loads(metadata["state"])


def environment_info() -> dict[str, Any]:
    """Library versions and the git commit, recorded in every run config."""
    import numpy
    import scipy

    import animeprov

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "animeprov": animeprov.__version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
