"""Run files: written atomically and durably (fsync of the file and its folder), with the user's umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from animeprov import checkpoint as ckpt


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_run_files_respect_the_umask(tmp_path: Path, umask_027) -> None:
    # tempfile's files are 0600 whatever the umask: a service account could not read another user's run.
    ckpt.write_config(tmp_path, {"variant": "x"})
    ckpt.save_weights(torch.nn.Linear(2, 2), tmp_path / ckpt.BEST_WEIGHTS)
    for name in (ckpt.CONFIG_FILE, ckpt.BEST_WEIGHTS):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.CONFIG_FILE, ckpt.BEST_WEIGHTS]  # no temp left


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc (Linux)")
def test_run_files_are_synced_before_and_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_replace = os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    for write in (
        lambda: ckpt.atomic_write_text(tmp_path / "metrics.jsonl", "{}\n"),
        lambda: ckpt.save_weights(torch.nn.Linear(2, 2), tmp_path / ckpt.BEST_WEIGHTS),
    ):
        events.clear()
        write()
        kinds = [kind for kind, _ in events]
        assert kinds == ["fsync", "replace", "fsync"], events  # the new file, the rename, the folder
        assert events[0][1].endswith(".tmp") and events[2][1] == str(tmp_path)


def test_unreadable_weights_say_permission_denied_not_missing(tmp_path: Path, monkeypatch) -> None:
    ckpt.save_weights(torch.nn.Linear(2, 2), tmp_path / ckpt.BEST_WEIGHTS)

    def refuse(file, *args, **kwargs):  # root ignores modes, so simulate another user's 0600 file
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr("animeprov.checkpoint.open", refuse, raising=False)
    # safetensors alone reports any failure to open as "No such file or directory".
    with pytest.raises(PermissionError) as caught:
        ckpt._read_tensors(tmp_path / ckpt.BEST_WEIGHTS)
    assert caught.value.filename == str(tmp_path / ckpt.BEST_WEIGHTS)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_really_unreadable_weights_say_permission_denied(tmp_path: Path) -> None:
    ckpt.save_weights(torch.nn.Linear(2, 2), tmp_path / ckpt.BEST_WEIGHTS)
    (tmp_path / ckpt.BEST_WEIGHTS).chmod(0)
    with pytest.raises(PermissionError):
        ckpt._read_tensors(tmp_path / ckpt.BEST_WEIGHTS)


def test_resumed_adam_continues_exactly_on_channels_last_weights(tmp_path: Path) -> None:
    # The file stores contiguous moments; fused Adam on a channels_last weight silently pairs the wrong
    # elements unless the loader gives each moment its parameter's layout.
    def make():
        conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(conv.parameters(), lr=0.1, fused=True)
        return conv, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1)

    def step(conv, optimizer, seed):
        optimizer.zero_grad()
        x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
        conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
        optimizer.step()

    torch.manual_seed(0)
    conv, optimizer, scheduler = make()
    step(conv, optimizer, 1)
    ckpt.save_training_state(tmp_path / "last.safetensors", conv, optimizer, scheduler, {"epoch": 1})
    step(conv, optimizer, 2)

    resumed, resumed_optimizer, resumed_scheduler = make()
    ckpt.load_training_state(tmp_path / "last.safetensors", resumed, resumed_optimizer, resumed_scheduler)
    moments = resumed_optimizer.state[resumed.weight]
    assert moments["exp_avg"].stride() == resumed.weight.stride() == conv.weight.stride()
    step(resumed, resumed_optimizer, 2)
    torch.testing.assert_close(resumed.weight, conv.weight, rtol=0, atol=0)
