"""Data-parallel training under torchrun (2 processes, gloo on CPU) against a single-process reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from animeprov import distributed
from animeprov.train import TrainConfig, train

PER_RANK_BATCH = 4
WORLD = 2
# Same global batches, different float summation order (two half-batch gradients summed by all-reduce and
# halved, pooled DCT statistics): after 6 Adam steps the weights differ by ~6e-8. A run that sees the same
# images in another order differs by ~7e-3, so this tolerance separates the two by orders of magnitude.
WEIGHTS_TOLERANCE = dict(rtol=1e-4, atol=1e-5)

# Runs the real CLI under torchrun, records every file each rank creates or replaces inside the run folder
# (Python audit events, appended as they happen), and dies at the start of epoch 2 like a killed job.
KILLED_IN_EPOCH_2 = textwrap.dedent(
    """
    import os, sys

    RUN = os.path.abspath(sys.argv[sys.argv.index("--out") + 1])
    LOG = os.path.join(os.path.dirname(RUN), f"writes-rank{os.environ['RANK']}.txt")
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def record(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        elif event in ("os.rename", "os.mkdir"):
            path, writing = args[1] if event == "os.rename" else args[0], True
        else:
            return
        if writing and isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(RUN):
            with open(LOG, "a") as handle:
                handle.write(f"{event} {path}\\n")

    sys.addaudithook(record)

    import animeprov.train as train_module

    real_epoch, calls = train_module.train_one_epoch, []

    def killed_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated kill in epoch 2")
        return real_epoch(*args, **kwargs)

    train_module.train_one_epoch = killed_in_second_epoch
    from animeprov.cli import main

    sys.argv = ["animeprov", *sys.argv[1:]]
    main()
    """
)


def _torchrun(target: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command + target, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _train_args(data: Path, out: Path) -> list[str]:
    return [
        "train",
        f"--data={data}",
        "--recipe=paper",
        "--variant=cnn-dct-mask",
        "--size=32",
        "--epochs=2",
        f"--batch-size={PER_RANK_BATCH}",
        "--seed=1",
        "--no-calibrate",
        "--out",
        str(out),
    ]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def data(tiny_split):
    """The tiny split with one unreadable validation file: every rank must report what any rank skipped."""
    (tiny_split.parent / "human" / "006.png").write_bytes(b"not an image")  # row 6 of each class is val
    return tiny_split


@pytest.fixture
def reference(data, tmp_path, monkeypatch):
    """One process, global batch 2 x 4 = 8, fed the same permutation DistributedSampler gives the ranks
    (positions k*8 ... k*8+7 of randperm(seed + epoch) are global batch k either way)."""

    def whole_permutation(dataset, *, seed, epoch):
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

    monkeypatch.setattr(distributed, "train_sampler", whole_permutation)
    run = tmp_path / "reference"
    config = TrainConfig(
        data=str(data),
        variant="cnn-dct-mask",
        size=32,
        epochs=2,
        batch_size=PER_RANK_BATCH * WORLD,
        seed=1,
        calibrate=False,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(
        1
    )  # as each torchrun rank (OMP_NUM_THREADS=1): same kernels, and fast on a busy machine
    try:
        train(config, run)
    finally:
        torch.set_num_threads(threads)
    return run


def test_two_processes_match_one_and_resume_after_a_kill(data, tmp_path, reference):
    run = tmp_path / "ddp"
    script = tmp_path / "killed_in_epoch_2.py"
    script.write_text(KILLED_IN_EPOCH_2)
    killed = _torchrun([str(script), *_train_args(data, run)], cwd=tmp_path)
    assert killed.returncode != 0 and "simulated kill in epoch 2" in killed.stderr

    # Only rank 0 wrote into the run folder; rank 1 wrote nothing at all.
    assert not (tmp_path / "writes-rank1.txt").exists()
    written = {
        Path(line.split(" ", 1)[1]).name for line in (tmp_path / "writes-rank0.txt").read_text().splitlines()
    }
    assert {"config.json", "train.log", "model.safetensors", "last.safetensors", "metrics.jsonl"} <= written
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == WORLD and config["global_batch_size"] == PER_RANK_BATCH * WORLD
    assert [row["epoch"] for row in _metrics(run)] == [1]  # the kill came before epoch 2 was saved

    resumed = _torchrun(["-m", "animeprov", *_train_args(data, run), "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in (run / "train.log").read_text()

    # Killed + resumed on 2 ranks == 2 epochs straight in one process (weights, Adam state, stem statistics).
    expected, got = load_file(reference / "last.safetensors"), load_file(run / "last.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **WEIGHTS_TOLERANCE, msg=key)
    # Training and validation metrics are all-reduced over both ranks: they equal the single-process ones.
    for ours, theirs in zip(_metrics(run), _metrics(reference), strict=True):
        assert ours["epoch"] == theirs["epoch"]
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-5), name
        assert ours["skipped_files"] == theirs["skipped_files"] == 1
    assert "skipped " + str(data.parent / "human" / "006.png") in (run / "train.log").read_text()


def test_without_torchrun_every_helper_is_the_single_process_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_if_launched("cpu") is False and not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model
    assert distributed.train_sampler([1, 2, 3], seed=0, epoch=1) is None
    assert distributed.shard_indices(5) is None
    assert distributed.all_reduce_sums([1.5, 2]) == [1.5, 2.0]
    assert distributed.gather_json([["a.png", "broken"]]) == [[["a.png", "broken"]]]
    mean, var = torch.rand(3), torch.rand(3)
    assert distributed.pooled_mean_var(4, mean, var) == (4, mean, var)
    distributed.barrier()  # returns at once


def test_a_loader_takes_a_sampler_or_shuffles_never_both():
    from animeprov.engine import make_loader

    with pytest.raises(ValueError, match="not both"):
        make_loader(list(range(4)), 2, shuffle=True, sampler=[0, 1])
