"""`animeprov evidence` end to end: JSON lines per readable file, bad files reported and skipped."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from animeprov.cli import app


def test_evidence_command_reports_named_generators_and_skips_bad_files(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "NovelAI")
    info.add_text("Source", "Stable Diffusion 81274D13")
    Image.new("RGB", (16, 16), "white").save(tmp_path / "nai.png", pnginfo=info)
    Image.new("RGB", (16, 16), "white").save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")

    result = CliRunner().invoke(app, ["evidence", str(tmp_path)])

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_name = {line["path"].rsplit("/", 1)[-1]: line for line in lines}
    assert set(by_name) == {"nai.png", "plain.png"}
    assert by_name["nai.png"]["named_generators"] == ["NovelAI (Stable Diffusion 81274D13)"]
    assert by_name["nai.png"]["indicates_ai"] is True
    assert by_name["plain.png"]["items"] == []
    assert "broken.png" in result.stderr and "2 files read, 1 skipped" in result.stderr


def test_skipped_file_names_are_printed_verbatim_on_one_line(tmp_path):
    # booru downloads are often named "[artist] title.png": rich markup would drop "[artist]" from the
    # message and fail on a closing tag; a path longer than 80 columns must not be broken across lines
    folder = tmp_path / ("deep-folder-" * 8)
    (folder / "[").mkdir(parents=True)
    names = ["[artist] broken.png", "[/x] broken.png"]  # the second: file "x] broken.png" in folder "["
    for name in names:
        (folder / name).write_bytes(b"not an image")

    result = CliRunner().invoke(app, ["evidence", str(folder)])

    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for name in names:
        assert any(line.startswith(f"skipped {folder / name}:") for line in lines), result.stderr
    assert "0 files read, 2 skipped" in result.stderr


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs need POSIX")
def test_evidence_skips_links_fifos_and_unlistable_folders_with_reasons(tmp_path, monkeypatch):
    Image.new("RGB", (16, 16), "white").save(tmp_path / "plain.png")
    os.symlink("loop-b.png", tmp_path / "loop-a.png")
    os.symlink("loop-a.png", tmp_path / "loop-b.png")
    os.mkfifo(tmp_path / "pipe.png")  # read_bytes() would block for ever
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # root ignores mode 000, so simulate a folder this user may not list
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = CliRunner().invoke(app, ["evidence", str(tmp_path)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "symbolic link loop" in said and "not a regular file (a FIFO)" in said
    assert "locked: cannot list this folder" in said and "1 file read, 4 skipped" in said
