"""Dataset index: duplicate / near-duplicate / group-by groups, carried columns, bad files."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from animeprov.data import index as index_module
from animeprov.data.index import build_index, skipped_csv_path
from animeprov.data.manifest import MANIFEST_COLUMNS, image_path, read_columns, read_rows


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random picture (upscaled 6x6 noise): its perceptual hash survives small edits."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def save(pixels: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def rows_by_name(csv_path: Path) -> dict[str, dict[str, str]]:
    return {Path(row["path"]).name: row for row in read_rows(csv_path)}


@pytest.fixture
def duplicate_tree(tmp_path: Path) -> Path:
    """human/: a base image, its byte copy, a one-pixel edit, a noisy copy and a distinct image;
    ai/: a JPEG of the base and another distinct image.

    The one-pixel edit and the JPEG keep the base's perceptual hash; the noise moves it by a few bits.
    """
    root = tmp_path / "tree"
    base = smooth_image(0)
    save(base, root / "human" / "a.png")
    shutil.copy(root / "human" / "a.png", root / "human" / "a_copy.png")
    edited = base.copy()
    edited[10, 10] = 255 - edited[10, 10]
    save(edited, root / "human" / "sub" / "a_pixel.png")  # nested: class is still the first folder
    save(base, root / "ai" / "a_q95.jpg", quality=95)
    noise = np.random.default_rng(0).normal(0, 12, base.shape)
    save(np.clip(base + noise, 0, 255).astype(np.uint8), root / "human" / "a_noisy.png")
    save(smooth_image(1), root / "human" / "b.png")
    save(smooth_image(2), root / "ai" / "c.png")
    return root


def test_exact_and_near_duplicates_share_a_group(duplicate_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "manifest.csv"
    result = build_index(duplicate_tree, out)

    assert result.rows == 7 and result.skipped == []
    assert result.class_counts == {"ai": 2, "human": 5}
    rows = rows_by_name(out)
    base_group = rows["a.png"]["group"]
    near = ("a_copy.png", "a_pixel.png", "a_q95.jpg", "a_noisy.png")
    assert {rows[name]["group"] for name in near} == {base_group}
    assert len({base_group, rows["b.png"]["group"], rows["c.png"]["group"]}) == 3
    assert result.groups == 3 and result.multi_member_groups == 1
    assert result.cross_class_groups == [base_group]  # the JPEG copy is filed under "ai"

    # Computed columns describe the file; paths resolve from the CSV's own folder.
    assert read_columns(out) == list(MANIFEST_COLUMNS)
    assert rows["a_pixel.png"]["class"] == "human" and rows["a_q95.jpg"]["class"] == "ai"
    for row in rows.values():
        file = image_path(out, row)
        assert file.resolve().is_relative_to(duplicate_tree.resolve())
        assert row["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert (row["width"], row["height"]) == ("64", "64")
    assert result.skipped_csv.read_text().strip() == "path,reason"  # written, empty
    assert rows["a_q95.jpg"]["format"] == "JPEG" and rows["a.png"]["format"] == "PNG"


def test_group_ids_are_numbered_in_path_order_and_reproducible(duplicate_tree: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "1" / "m.csv", tmp_path / "2" / "m.csv"
    build_index(duplicate_tree, first)
    build_index(duplicate_tree, second)
    assert first.read_bytes() == second.read_bytes()
    groups = [row["group"] for row in read_rows(first)]
    seen = list(dict.fromkeys(groups))  # first appearance order
    assert seen == [f"g{n:05d}" for n in range(len(seen))]


def test_near_dup_bits_sets_the_hamming_threshold(duplicate_tree: Path, tmp_path: Path) -> None:
    def phash_distance(a: str, b: str) -> int:
        return imagehash.phash(Image.open(duplicate_tree / a)) - imagehash.phash(
            Image.open(duplicate_tree / b)
        )

    distance = phash_distance("human/a.png", "human/a_noisy.png")
    assert 1 <= distance <= 6  # the fixture's premise: a near (not identical) perceptual hash
    out = tmp_path / "m.csv"
    build_index(duplicate_tree, out, near_dup_bits=distance)
    assert rows_by_name(out)["a_noisy.png"]["group"] == rows_by_name(out)["a.png"]["group"]
    build_index(duplicate_tree, out, near_dup_bits=distance - 1)
    strict = rows_by_name(out)
    assert strict["a_noisy.png"]["group"] != strict["a.png"]["group"]
    assert strict["a_copy.png"]["group"] == strict["a.png"]["group"]  # same bytes
    with pytest.raises(ValueError, match="near_dup_bits"):
        build_index(duplicate_tree, out, near_dup_bits=-1)


def write_root_manifest(root: Path, rows: list[dict[str, str]]) -> None:
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_root_manifest_columns_are_carried_over(tmp_path: Path) -> None:
    root = tmp_path / "set"
    save(smooth_image(3), root / "human" / "x.png")
    save(smooth_image(4), root / "novelai" / "y.png")
    save(smooth_image(5), root / "novelai" / "unlisted.png")
    # The shared sets' style: `file` instead of `path`, and columns that clash with ours.
    write_root_manifest(
        root,
        [
            {
                "file": "human/x.png",
                "class": "human",
                "generator": "human",
                "sha256": "stale",
                "license": "PD",
            },
            {
                "file": "novelai/y.png",
                "class": "novelai",
                "generator": "nai-v1",
                "sha256": "stale",
                "license": "",
            },
        ],
    )
    out = tmp_path / "m.csv"
    result = build_index(root, out)

    assert read_columns(out) == [*MANIFEST_COLUMNS, "generator", "license"]
    assert result.carried_columns == ["generator", "license"]
    rows = rows_by_name(out)
    assert rows["x.png"]["generator"] == "human" and rows["x.png"]["license"] == "PD"
    assert rows["y.png"]["generator"] == "nai-v1"
    assert rows["unlisted.png"]["generator"] == ""
    assert all(row["sha256"] != "stale" for row in rows.values())  # our computed value wins


def test_group_by_merges_rows_with_equal_values(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for name, seed in (("t1", 6), ("t2", 7), ("t3", 8), ("t4", 9)):
        save(smooth_image(seed), root / "gan" / f"{name}.png")
    write_root_manifest(
        root,
        [
            {"file": "gan/t1.png", "original_path": "grid-A.png"},
            {"file": "gan/t2.png", "original_path": "grid-A.png"},
            {"file": "gan/t3.png", "original_path": "grid-B.png"},
            {"file": "gan/t4.png", "original_path": ""},  # empty values never merge
        ],
    )
    out = tmp_path / "m.csv"
    assert build_index(root, out).groups == 4
    result = build_index(root, out, group_by=["original_path"])
    rows = rows_by_name(out)
    assert rows["t1.png"]["group"] == rows["t2.png"]["group"]
    assert len({rows[name]["group"] for name in ("t1.png", "t3.png", "t4.png")}) == 3
    assert result.groups == 3
    with pytest.raises(ValueError, match="artist"):
        build_index(root, out, group_by=["artist"])


def test_bad_files_are_skipped_with_reasons_and_listed(tmp_path: Path) -> None:
    root = tmp_path / "set"
    good = save(smooth_image(10), root / "human" / "good.png")
    truncated = root / "human" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / "human" / "notes.jpg").write_text("this is not a picture\n")
    (root / "ai" / "empty.png").parent.mkdir()
    (root / "ai" / "empty.png").write_bytes(b"")
    save(smooth_image(11), root / "ai" / "fine.webp", lossless=True)
    save(smooth_image(12), root / "loose.png")  # not inside a class folder
    (root / "human" / "readme.txt").write_text("ignored: not an image extension")

    out = tmp_path / "m.csv"
    result = build_index(root, out)

    assert result.rows == 2 and result.class_counts == {"ai": 1, "human": 1}
    reasons = {Path(file).name: reason for file, reason in result.skipped}
    assert set(reasons) == {"truncated.png", "notes.jpg", "empty.png", "loose.png"}
    assert all(reasons.values())
    assert "empty" in reasons["empty.png"] and "class folder" in reasons["loose.png"]

    assert result.skipped_csv == skipped_csv_path(out) == tmp_path / "m.skipped.csv"
    listed = {Path(row["path"]).name: row["reason"] for row in read_rows(result.skipped_csv)}
    assert listed == reasons
    assert all(image_path(result.skipped_csv, row).exists() for row in read_rows(result.skipped_csv))


def test_progress_reports_every_file(duplicate_tree: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    build_index(
        duplicate_tree, tmp_path / "m.csv", on_progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(n, 7) for n in range(1, 8)]


def test_near_pairs_matches_a_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked numpy search finds exactly the pairs a double loop finds (2-word hashes)."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(120, 2), dtype=np.uint64)
    for n_flips, i in enumerate(range(0, 112, 7)):  # plant pairs 0..15 bits apart, across both words
        source = hashes[i + 3].copy()
        for bit in rng.choice(128, size=n_flips, replace=False):
            source[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        hashes[i] = source
    reference = {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(hashes[i], hashes[j], strict=True)) <= 8
    }
    monkeypatch.setattr(index_module, "_BLOCK_ELEMENTS", 500)  # force many small blocks
    found = list(index_module._near_pairs(hashes, 8))
    assert len(reference) >= 9  # the planted pairs with <= 8 flips
    assert sorted(found) == sorted(reference)


def test_bad_arguments_are_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_index(tmp_path / "missing", tmp_path / "m.csv")
    with pytest.raises(ValueError, match="near_dup_bits"):
        build_index(tmp_path, tmp_path / "m.csv", near_dup_bits=-1)
    with pytest.raises(ValueError, match="hash_size"):
        build_index(tmp_path, tmp_path / "m.csv", hash_size=1)
    assert not (tmp_path / "m.csv").exists()


def test_a_file_name_that_is_not_utf8_is_indexed_and_read_back(tmp_path: Path) -> None:
    root = tmp_path / "set"
    odd = root / "human" / os.fsdecode(b"b_\xff.png")
    save(smooth_image(20), odd)
    save(smooth_image(21), root / "ai" / "a.png")
    result = build_index(root, tmp_path / "m.csv")  # used to fail as a whole (UnicodeEncodeError)
    assert result.rows == 2 and result.skipped == []
    rows = list(read_rows(tmp_path / "m.csv"))
    assert os.fsencode(rows[1]["path"]) == b"set/human/b_\xff.png"  # its own bytes, read back as written
    assert image_path(tmp_path / "m.csv", rows[1]).read_bytes() == odd.read_bytes()


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs need POSIX")
def test_bad_entries_and_unlistable_folders_are_skipped_with_reasons(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "set"
    save(smooth_image(30), root / "human" / "good.png")
    save(smooth_image(31), root / "ai" / "locked" / "x.png")
    os.symlink("loop-b.png", root / "human" / "loop-a.png")
    os.symlink("loop-a.png", root / "human" / "loop-b.png")
    os.symlink("gone.png", root / "human" / "dangling.png")
    os.mkfifo(root / "human" / "pipe.png")
    real_scandir = os.scandir

    def scandir(path):  # root ignores mode 000, so simulate a folder this user may not list
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = build_index(root, tmp_path / "m.csv")  # used to raise OSError from the walk
    assert result.rows == 1
    reasons = {Path(file).name: reason for file, reason in result.skipped}
    assert set(reasons) == {"locked", "loop-a.png", "loop-b.png", "dangling.png", "pipe.png"}
    assert reasons["locked"].startswith("cannot list this folder (Permission denied)")
    assert reasons["pipe.png"] == "not a regular file (a FIFO)"
    listed = {Path(row["path"]).name for row in read_rows(result.skipped_csv)}
    assert listed == set(reasons)
