"""`animeprov predict` and `predict-merge`: inputs, formats, resuming, thresholds, sharding."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_predict import CLASSES, SIZE, make_run, write_image
from typer.testing import CliRunner

import animeprov.engine
from animeprov.cli import app
from animeprov.cli.predict_command import merge_shards, shard_of, shard_path
from animeprov.evidence import METADATA_CAVEAT


@pytest.fixture(autouse=True)
def _no_global_malloc_settings(monkeypatch):
    # The command tunes glibc malloc for the whole process; not for the test process.
    monkeypatch.setattr(animeprov.engine, "keep_freed_memory", lambda: None)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", calibration={"ai_threshold": 0.5, "artist_threshold": 0.2})


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """imgs/a.png, imgs/b.jpg, imgs/sub/c.png (2x size: tiles), imgs/sub/broken.png, imgs/notes.txt"""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    write_image(root / "a.png", SIZE, SIZE, seed=1)
    write_image(root / "b.jpg", SIZE, SIZE, seed=2, quality=90)
    write_image(root / "sub" / "c.png", 2 * SIZE, 2 * SIZE, seed=3)
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return root


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    result.said = " ".join(result.output.split())  # whitespace-normalised (typer's own error panels wrap)
    return result


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_folders_and_globs_with_a_corrupt_file(run, images, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("predict", run, images / "a.png", images / "sub", str(images / "*.jpg"), "--out", out)
    assert result.exit_code == 0, result.output
    rows = jsonl_rows(out)
    assert [Path(r["source"]).name for r in rows] == ["a.png", "broken.png", "c.png", "b.jpg"]
    broken = rows[1]
    assert "corrupt or truncated" in broken["error"] and broken["probabilities"] == {}
    good = [r for r in rows if not r["error"]]
    assert all(set(r["probabilities"]) == set(CLASSES) for r in good)
    assert all(r["verdict"] in ("artist", "unsure", "ai") for r in good)
    assert rows[2]["view"] == "tiles" and rows[2]["n_views"] == 4
    assert all(r["evidence"]["caveat"] == METADATA_CAVEAT for r in good)
    assert "1 unreadable" in result.said and "never changes its probabilities" in result.said

    missing = invoke("predict", run, images / "nope.png")
    assert missing.exit_code == 2 and "no such file or folder" in missing.said
    no_match = invoke("predict", run, str(images / "*.gif"))
    assert no_match.exit_code == 2 and "no file matches" in no_match.said


def test_formats_agree(run, images, tmp_path):
    invoke("predict", run, images, "--out", tmp_path / "o.jsonl")
    invoke("predict", run, images, "--out", tmp_path / "o.csv")
    rows = jsonl_rows(tmp_path / "o.jsonl")
    with open(tmp_path / "o.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["source"] for r in table] == [r["source"] for r in rows]
    for row, line in zip(rows, table, strict=True):
        assert line["verdict"] == (row["verdict"] or "") and line["error"] == (row["error"] or "")
        for name in CLASSES:
            if not row["error"]:
                assert float(line[f"p_{name}"]) == pytest.approx(row["probabilities"][name], abs=1e-6)

    printed = invoke("predict", run, images, "--format", "table")
    lines = printed.stdout.splitlines()
    assert lines[0].split()[:2] == ["verdict", "generator"] and len(lines) == 1 + len(rows)
    assert any(line.startswith("ERROR") and "broken.png" in line for line in lines)
    # beside the verdict, what the file's metadata says and how it was loaded
    info = PngInfo()
    info.add_text("parameters", "a girl\nSteps: 20, Sampler: Euler a, Model: animagine-xl")
    rgba = np.random.default_rng(3).integers(0, 256, size=(SIZE, SIZE, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "gen.png", pnginfo=info)
    line = invoke("predict", run, tmp_path / "gen.png", "--format", "table").stdout.splitlines()[1]
    assert line.endswith("gen.png  [metadata: AI (animagine-xl)]  [alpha composited on (255, 255, 255)]")
    as_jsonl = invoke("predict", run, images / "a.png", "--format", "jsonl")
    assert json.loads(as_jsonl.stdout)["source"] == str(images / "a.png")
    assert invoke("predict", run, images, "--format", "table", "--out", tmp_path / "t.txt").exit_code == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_out_resumes_after_a_kill(run, images, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    # PyTorch gives these images the same digits in a batch of any size (onnxruntime's last digits vary)
    torch_backend = ("--backend", "torch")
    assert invoke("predict", run, images, "--out", out, *torch_backend).exit_code == 0
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    header = 1 if suffix == ".csv" else 0
    # A kill mid-way: two rows written, the third cut in the middle of its line.
    out.write_text("".join(lines[: header + 2]) + lines[header + 2][:15])
    result = invoke("predict", run, images, "--out", out, *torch_backend)
    assert result.exit_code == 0, result.output
    assert "2 files already written are skipped" in result.said
    assert json.loads((tmp_path / f"out{suffix}.done").read_text())["written"] == 2
    assert out.read_text() == complete  # the half line is gone and each file appears once, in order

    again = invoke("predict", run, images, "--out", out, *torch_backend)
    assert "4 files already written" in again.said and out.read_text() == complete


def test_thresholds_override_the_calibration(run, images, tmp_path):
    def verdicts(*options: str) -> set:
        out = tmp_path / f"v{len(list(tmp_path.glob('v*.jsonl')))}.jsonl"
        assert invoke("predict", run, images, "--out", out, *options).exit_code == 0
        return {(r["verdict"], r["generator"] is not None) for r in jsonl_rows(out) if not r["error"]}

    assert verdicts("--ai-threshold", "0") == {("ai", True)}
    assert verdicts("--ai-threshold", "1.01", "--artist-threshold", "1.0") == {("artist", False)}
    assert verdicts("--ai-threshold", "1.01", "--artist-threshold", "0") == {("unsure", False)}
    bad = invoke("predict", run, images, "--ai-threshold", "0.1", "--artist-threshold", "0.5")
    assert bad.exit_code == 2 and "above the ai threshold" in bad.said


def test_max_tiles_caps_the_tiles_judged_per_image(run, images, tmp_path):
    def views(*options: str) -> dict:
        out = tmp_path / f"t{len(list(tmp_path.glob('t*.jsonl')))}.jsonl"
        assert invoke("predict", run, images, "--out", out, *options).exit_code == 0
        return {Path(r["source"]).name: r["n_views"] for r in jsonl_rows(out) if not r["error"]}

    assert views() == {"a.png": 1, "b.jpg": 1, "c.png": 4}
    assert views("--max-tiles", "2") == {"a.png": 1, "b.jpg": 1, "c.png": 2}
    assert invoke("predict", run, images, "--max-tiles", "-1").exit_code == 2
    write_image(images / "large.png", 5 * SIZE, 5 * SIZE)  # 5 x 5 tiles
    assert views()["large.png"] == 16  # at most 16 by default
    assert views("--max-tiles", "0")["large.png"] == 25  # 0: every tile


def test_max_pixels_refuses_larger_images_and_judges_the_rest(run, images, tmp_path):
    out = tmp_path / "out.jsonl"
    limit = 2 * SIZE * 2 * SIZE - 1  # sub/c.png is one pixel over
    assert invoke("predict", run, images, "--out", out, "--max-pixels", limit).exit_code == 0
    rows = {Path(r["source"]).name: r for r in jsonl_rows(out)}
    assert f"exceeds the limit of {limit:,}" in rows["c.png"]["error"]
    assert not rows["a.png"]["error"] and not rows["b.jpg"]["error"]


def test_backend_onnx_judges_as_torch_does(run, images, tmp_path):
    def judged(*options: str) -> dict:
        out = tmp_path / f"b{len(list(tmp_path.glob('b*.jsonl')))}.jsonl"
        assert invoke("predict", run, images, "--out", out, *options).exit_code == 0
        return {Path(r["source"]).name: r["p_generated"] for r in jsonl_rows(out) if not r["error"]}

    in_torch, in_onnx = judged("--backend", "torch"), judged("--backend", "onnx")
    assert judged() == in_onnx  # auto: onnxruntime, installed here
    assert in_onnx.keys() == in_torch.keys() and len(in_torch) == 3
    assert all(in_onnx[name] == pytest.approx(in_torch[name], abs=1e-5) for name in in_torch)
    assert invoke("predict", run, images, "--backend", "tensorrt").exit_code == 2


def test_shards_partition_the_files():
    sources = [f"imgs/{i:05d}.png" for i in range(400)]
    for shards in (1, 2, 3, 7):
        owners = [shard_of(source, shards) for source in sources]
        assert set(owners) == set(range(shards))  # every shard gets some, each file exactly one
        assert owners == [shard_of(source, shards) for source in sources]  # stable


def test_two_ranks_and_merge_equal_a_single_run(run, images, tmp_path):
    for i in range(8):  # enough files that both shards get some
        write_image(images / f"x{i}.png", SIZE, SIZE, seed=10 + i)
    single = tmp_path / "single.jsonl"
    assert invoke("predict", run, images, "--out", single).exit_code == 0

    out = tmp_path / "sharded.jsonl"
    command = [sys.executable, "-m", "animeprov", "predict", str(run), str(images), "--out", str(out)]
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen(command + ["--workers", "0"], env={**env, "RANK": str(r)}, stderr=subprocess.PIPE)
        for r in range(2)
    ]
    for rank in ranks:
        assert rank.wait(timeout=120) == 0, rank.stderr.read().decode()
    parts = [jsonl_rows(shard_path(out, r, 2)) for r in range(2)]
    assert all(parts) and not {r["source"] for r in parts[0]} & {r["source"] for r in parts[1]}

    # Rank 1 "was killed": its marker is gone and its last row cut short. Merge refuses; rerunning resumes.
    shard_1 = shard_path(out, 1, 2)
    (tmp_path / "sharded.shard-1-of-2.jsonl.done").unlink()
    shard_1.write_text(shard_1.read_text()[:-20])
    assert invoke("predict-merge", out).exit_code == 2
    resumed = invoke("predict", run, images, "--out", out, "--shard", "1/2")
    assert resumed.exit_code == 0 and "already written are skipped" in resumed.said
    merged = invoke("predict-merge", out)
    assert merged.exit_code == 0, merged.output

    expected, got = jsonl_rows(single), jsonl_rows(out)
    assert [r["source"] for r in got] == [r["source"] for r in expected]  # same files, same order, once each
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine["verdict"], mine["error"], mine["n_views"]) == (
            theirs["verdict"],
            theirs["error"],
            theirs["n_views"],
        )
        for name in mine["probabilities"]:
            assert mine["probabilities"][name] == pytest.approx(theirs["probabilities"][name], abs=1e-6)


def test_merge_refuses_missing_shards_and_drops_duplicates(tmp_path):
    out = tmp_path / "r.jsonl"
    for k, sources in ((0, ["a/1.png", "a/3.png"]), (2, ["a/2.png", "a/3.png"])):
        path = shard_path(out, k, 3)
        path.write_text("".join(json.dumps({"source": s}) + "\n" for s in sources))
        (tmp_path / (path.name + ".done")).write_text("{}\n")
    with pytest.raises(ValueError, match=r"\[1\] of 3 missing"):
        merge_shards(out)
    counts = merge_shards(out, allow_incomplete=True)
    assert counts == {"shards": 3, "rows": 3, "duplicates": 1}
    assert [r["source"] for r in jsonl_rows(out)] == ["a/1.png", "a/2.png", "a/3.png"]


def test_heatmaps_option_writes_one_overlay_per_readable_image(run, images, tmp_path, monkeypatch):
    import numpy as np

    import animeprov.heatmap

    monkeypatch.setattr(
        animeprov.heatmap,
        "class_heatmap",
        lambda model, views, index, normalize=True: np.ones((len(views), *views.shape[2:]), np.float32),
    )
    result = invoke("predict", run, images, "--heatmaps", tmp_path / "maps", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    overlays = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "maps").glob("*.png"))
    assert overlays == ["a", "b", "c"]  # broken.png has a row with its error, and no overlay
    assert len(result.stdout.splitlines()) == 4


@pytest.fixture
def odd_names(tmp_path: Path) -> Path:
    """d/a.png, d/b_<0xff>.png (a name that is not UTF-8), d/c.png"""
    folder = tmp_path / "d"
    folder.mkdir()
    for seed, name in enumerate([b"a.png", b"b_\xff.png", b"c.png"]):
        write_image(folder / os.fsdecode(name), SIZE, SIZE, seed=seed)
    return folder


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_name_that_is_not_utf8_is_written_losslessly_and_resumes(run, odd_names, tmp_path, suffix):
    out = tmp_path / f"p{suffix}"
    result = invoke("predict", run, odd_names, "--out", out)  # was UnicodeEncodeError on the second file
    assert result.exit_code == 0, result.output
    if suffix == ".jsonl":
        out.read_bytes().decode("utf-8")  # still valid UTF-8: the byte is a JSON escape (\udcff)
        rows = jsonl_rows(out)
    else:  # the name's own bytes, as the file system has them
        with open(out, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            rows = list(csv.DictReader(handle))
    assert [os.fsencode(row["source"]) for row in rows] == [
        os.fsencode(odd_names / os.fsdecode(name)) for name in (b"a.png", b"b_\xff.png", b"c.png")
    ]
    assert not any(row["error"] for row in rows)
    written = out.read_bytes()
    again = invoke("predict", run, odd_names, "--out", out)
    assert again.exit_code == 0 and "3 files already written" in again.said and out.read_bytes() == written


@pytest.mark.parametrize("fmt", ["table", "csv", "jsonl"])
def test_a_file_name_that_is_not_utf8_goes_to_stdout(run, odd_names, fmt):
    result = invoke("predict", run, odd_names / os.fsdecode(b"b_\xff.png"), "--format", fmt)
    assert result.exit_code == 0, result.output
    shown = {"table": b"b_\\xff.png", "csv": b"b_\xff.png", "jsonl": b"b_\\udcff.png"}[fmt]
    assert shown in result.stdout_bytes


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs need POSIX")
def test_bad_entries_and_unlistable_folders_get_rows_and_the_batch_goes_on(run, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    (folder / "locked").mkdir(parents=True)
    write_image(folder / "good.png", SIZE, SIZE, seed=1)
    write_image(folder / "locked" / "x.png", SIZE, SIZE, seed=2)
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.symlink("gone.png", folder / "dangling.png")
    os.mkfifo(folder / "pipe.png")
    real_scandir = os.scandir

    def scandir(path):  # root ignores mode 000, so simulate a folder this user may not list
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "p.jsonl"
    result = invoke("predict", run, folder, "--out", out)
    assert result.exit_code == 0, result.output
    errors = {Path(row["source"]).name: row["error"] for row in jsonl_rows(out)}
    assert set(errors) == {"locked", "dangling.png", "good.png", "loop-a.png", "loop-b.png", "pipe.png"}
    assert errors["good.png"] is None
    assert "cannot list this folder (Permission denied)" in errors["locked"]
    assert "broken symbolic link" in errors["dangling.png"] and "symbolic link loop" in errors["loop-a.png"]
    assert "not a regular file (a FIFO)" in errors["pipe.png"]
    assert "5 unreadable" in result.said
    again = invoke("predict", run, folder, "--out", out)  # resumes: every row, the folder's too, is written
    assert again.exit_code == 0 and "6 files already written" in again.said


def test_exit_status_3_when_no_file_could_be_judged(run, images, tmp_path):
    out = tmp_path / "p.jsonl"
    nothing = invoke("predict", run, images / "sub" / "broken.png", images / "notes.txt", "--out", out)
    assert nothing.exit_code == 3 and "none of the 2 files could be judged" in nothing.said
    assert len(jsonl_rows(out)) == 2 and (tmp_path / "p.jsonl.done").exists()  # rows written all the same
    assert invoke("predict", run, images / "sub" / "broken.png", images / "a.png").exit_code == 0
    resumed = invoke("predict", run, images / "sub" / "broken.png", images / "notes.txt", "--out", out)
    assert resumed.exit_code == 0  # nothing left to do is not a failure


def test_an_unreadable_run_file_is_a_clear_error(run, images, monkeypatch):
    real_read_text = Path.read_text

    def refusing(path, *args, **kwargs):  # root ignores modes, so simulate another user's 0600 file
        if path.name == "config.json":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refusing)
    result = invoke("predict", run, images / "a.png")  # was a PermissionError traceback
    assert result.exit_code == 2
    assert f"{run / 'config.json'}: permission denied (it must be readable by the user" in result.said
