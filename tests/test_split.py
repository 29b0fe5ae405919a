"""Splits: exclusive, class-balanced, whole groups, ratios, seeds; manifest path rebasing."""

from __future__ import annotations

import os
import random
import stat
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from animeprov.data.manifest import (
    file_digest,
    image_path,
    read_columns,
    read_labelled_rows,
    read_rows,
    write_rows,
)
from animeprov.data.split import (
    CrossClassGroupWarning,
    split_by_source,
    split_counts,
    split_manifest,
    split_table,
)


def make_rows(sizes: dict[str, int], group_sizes=(1, 1, 2, 3), seed: int = 0) -> list[dict[str, str]]:
    """`sizes[class]` rows per class, cut into groups whose sizes cycle through `group_sizes`."""
    rng = random.Random(seed)
    rows = []
    for cls, n in sizes.items():
        made, g = 0, 0
        while made < n:
            size = min(group_sizes[g % len(group_sizes)], n - made)
            for k in range(size):
                rows.append({"path": f"{cls}/{g:03d}_{k}.png", "class": cls, "group": f"{cls}-g{g}"})
            made, g = made + size, g + 1
    rng.shuffle(rows)
    return rows


def group_splits(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits[row["group"]].add(row["split"])
    return splits


def test_splits_are_exclusive_balanced_and_keep_groups_whole() -> None:
    rows = make_rows({"human": 70, "novelai": 45, "sd": 52})
    result = split_manifest(rows, seed=3)

    paths = [row["path"] for row in result]
    assert len(paths) == len(set(paths))  # each image once: splits are mutually exclusive
    assert {row["split"] for row in result} == {"train", "val", "test"}
    assert all(len(splits) == 1 for splits in group_splits(result).values())
    per_class = Counter(row["class"] for row in result)
    # Default cap = smallest class (45); whole groups of <= 3 rows leave at most 2 short of it.
    assert per_class["novelai"] == 45
    assert all(43 <= n <= 45 for n in per_class.values())
    # Input groups that were kept are kept entirely.
    sizes_in = Counter(row["group"] for row in rows)
    sizes_out = Counter(row["group"] for row in result)
    assert all(sizes_out[group] == sizes_in[group] for group in sizes_out)


def test_ratios_are_met_per_class() -> None:
    singles = split_manifest(make_rows({"a": 100, "b": 100}, group_sizes=(1,)), ratios=(8, 1, 1))
    assert split_counts(singles) == {
        "a": {"train": 80, "val": 10, "test": 10},
        "b": {"train": 80, "val": 10, "test": 10},
    }
    grouped = split_manifest(make_rows({"a": 200, "b": 230}, group_sizes=(1, 2, 4)), ratios=(6, 2, 2), seed=1)
    for cls, counts in split_counts(grouped).items():
        total = sum(counts.values())
        assert total == 200
        for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[split] - share * total) <= 4, (cls, counts)  # within one largest group


def test_per_class_cap_takes_whole_groups() -> None:
    rows = make_rows({"a": 39, "b": 12}, group_sizes=(3,))
    result = split_manifest(rows, per_class=10, seed=0)
    counts = Counter(row["class"] for row in result)
    assert counts == {"a": 9, "b": 9}  # groups of 3 never cut: 9 is the most that fits under 10
    assert all(len(splits) == 1 for splits in group_splits(result).values())
    # A cap above every class keeps everything.
    assert len(split_manifest(rows, per_class=1000)) == len(rows)


def test_seed_decides_and_input_order_does_not() -> None:
    rows = make_rows({"a": 60, "b": 50, "c": 55})
    first = split_manifest(rows, seed=7)
    shuffled = list(reversed(rows))
    assert split_manifest(shuffled, seed=7) == first
    assert split_manifest(rows, seed=7) == first
    other = split_manifest(rows, seed=8)
    assert [(r["path"], r["split"]) for r in other] != [(r["path"], r["split"]) for r in first]


def test_empty_group_value_is_a_group_of_its_own() -> None:
    rows = [{"path": f"a/{i}.png", "class": "a", "g": ""} for i in range(10)]
    result = split_manifest(rows, group_column="g")
    assert split_counts(result) == {"a": {"train": 8, "val": 1, "test": 1}}


def test_group_spanning_classes_is_kept_whole_with_a_warning() -> None:
    rows = make_rows({"human": 20, "ai": 20}, group_sizes=(1,))
    rows.append({"path": "human/dup.png", "class": "human", "group": "shared"})
    rows.append({"path": "ai/dup.png", "class": "ai", "group": "shared"})
    with pytest.warns(CrossClassGroupWarning, match="shared"):
        result = split_manifest(rows, seed=0)
    dup_splits = {row["split"] for row in result if row["group"] == "shared"}
    assert len(dup_splits) <= 1
    assert all(n <= 21 for n in Counter(row["class"] for row in result).values())


def test_drop_conflicts_leaves_out_groups_spanning_classes() -> None:
    rows = make_rows({"human": 20, "ai": 20}, group_sizes=(1,))
    rows.append({"path": "human/dup.png", "class": "human", "group": "shared"})
    rows.append({"path": "ai/dup.png", "class": "ai", "group": "shared"})
    with pytest.warns(CrossClassGroupWarning, match="left out"):
        result = split_manifest(rows, seed=0, drop_conflicts=True)
    assert "shared" not in {row["group"] for row in result}
    assert Counter(row["class"] for row in result) == {"human": 20, "ai": 20}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratios": (8, 1)}, "ratios"),
        ({"ratios": (8, -1, 1)}, "ratios"),
        ({"ratios": (0, 0, 0)}, "ratios"),
        ({"per_class": 0}, "per_class"),
        ({"group_column": "artist"}, "artist"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_manifest(make_rows({"a": 5}), **kwargs)


def test_zero_ratio_split_stays_empty() -> None:
    counts = split_counts(split_manifest(make_rows({"a": 30}), ratios=(3, 1, 0)))
    assert counts["a"]["test"] == 0 and counts["a"]["val"] > 0


def test_split_table_lists_classes_and_totals() -> None:
    from rich.console import Console

    counts = split_counts(split_manifest(make_rows({"a": 10, "b": 10}, group_sizes=(1,))))
    console = Console(width=100, record=True)
    console.print(split_table(counts, {"a": 10, "b": 12}))
    text = console.export_text()
    assert "a" in text and "all" in text and "22" in text  # 22 = available total


# -- manifest files ---------------------------------------------------------------------------------


def test_split_csv_written_elsewhere_still_points_at_the_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for i in range(5):
        (data / "a" / f"{i}.png").write_bytes(b"x%d" % i)
    manifest = data / "manifest.csv"
    rows = [{"path": f"a/{i}.png", "class": "a", "group": ""} for i in range(5)]
    write_rows(manifest, rows, ["path", "class", "group"])

    out = tmp_path / "runs" / "exp1" / "split.csv"
    split = split_manifest(read_rows(manifest), ratios=(3, 1, 1))
    write_rows(out, split, [*read_columns(manifest), "split"], source_csv=manifest)

    originals = {image_path(manifest, row).resolve() for row in read_rows(manifest)}
    rebased = list(read_rows(out))
    assert {image_path(out, row).resolve() for row in rebased} == originals
    assert all(row["path"].startswith("../../data/a/") and "\\" not in row["path"] for row in rebased)
    # Written next to the source, paths are left as they were.
    write_rows(data / "split.csv", split, [*read_columns(manifest), "split"], source_csv=manifest)
    assert [row["path"] for row in read_rows(data / "split.csv")] == [row["path"] for row in split]


def test_file_column_reads_as_path_and_digest_tracks_content(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("file,class,extra\nx/1.png,x,e1\nx/2.png,x,\n")
    assert read_columns(csv_path) == ["path", "class", "extra"]
    assert list(read_rows(csv_path))[0] == {"path": "x/1.png", "class": "x", "extra": "e1"}
    digest = file_digest(csv_path)
    assert len(digest) == 64 and digest == file_digest(csv_path)
    csv_path.write_text("file,class,extra\nx/1.png,x,e2\nx/2.png,x,\n")
    assert file_digest(csv_path) != digest

    (tmp_path / "bad.csv").write_text("name,class\na,b\n")
    with pytest.raises(ValueError, match="path"):
        list(read_rows(tmp_path / "bad.csv"))


def test_write_rows_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "m.csv"
    write_rows(out, [{"path": "a.png", "class": "a"}], ["path", "class"])
    before = out.read_bytes()

    def failing_rows():
        yield {"path": "b.png", "class": "b"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_rows(out, failing_rows(), ["path", "class"])
    assert out.read_bytes() == before  # the old file survives an interrupted write
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left behind


def test_labelled_rows_need_a_class_on_every_row(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    write_rows(good, [{"path": "a.png", "class": "x"}, {"path": "b.png", "class": "y"}], ["path", "class"])
    assert [row["class"] for row in read_labelled_rows(good)] == ["x", "y"]
    unnamed = tmp_path / "label.csv"
    write_rows(unnamed, [{"path": "a.png", "label": "x"}], ["path", "label"])
    with pytest.raises(ValueError, match=r"label.csv: no 'class' column; columns are path, label"):
        read_labelled_rows(unnamed)
    blank = tmp_path / "blank.csv"
    write_rows(blank, [{"path": "a.png", "class": "x"}, {"path": "b.png", "class": " "}], ["path", "class"])
    with pytest.raises(ValueError, match=r"blank.csv: 1 row\(s\) with an empty 'class', e.g. b.png"):
        read_labelled_rows(blank)


def test_written_rows_follow_the_umask(tmp_path: Path) -> None:
    # tempfile's files are 0600 whatever the umask: another account could not read the manifest
    previous = os.umask(0o022)
    try:
        write_rows(tmp_path / "m.csv", [{"path": "a.png", "class": "a"}], ["path", "class"])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m.csv").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------------
# Whole sources held out (split_by_source)

SOURCES = {  # source: (class, images)
    "h1": ("human", 40), "h2": ("human", 12), "h3": ("human", 10), "h4": ("human", 9), "h5": ("human", 8),
    "n1": ("novelai", 30), "n2": ("novelai", 3), "n3": ("novelai", 4),
    "s1": ("sd", 12), "s2": ("sd", 10), "s3": ("sd", 8),
}  # fmt: skip


def source_rows() -> list[dict[str, str]]:
    return [
        {"path": f"{source}/{i:03d}.png", "class": cls, "source": source}
        for source, (cls, n) in SOURCES.items()
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(8))
def test_split_by_source_holds_whole_sources_out_and_keeps_every_image(seed: int) -> None:
    rows = source_rows()
    result = split_by_source(rows, ratios=(6, 2, 2), seed=seed)
    assert sorted(r["path"] for r in result) == sorted(r["path"] for r in rows)  # every image, once
    sources = {name: {r["source"] for r in result if r["split"] == name} for name in ("train", "val", "test")}
    assert not sources["val"] & sources["train"] and not sources["test"] & (sources["train"] | sources["val"])
    assert sources["val"] and sources["test"]
    # a human and an AI share held out where sources allow; every class still trains
    assert {s[0] for s in sources["test"]} >= {"h"} and {s[0] for s in sources["test"]} - {"h"}
    classes = Counter(r["class"] for r in result)
    trained = Counter(r["class"] for r in result if r["split"] == "train")
    assert set(trained) == set(classes)
    # n1 holds 30 of novelai's 37 images: never held out (at most half of what is left of a class)
    assert "n1" in sources["train"]
    assert split_by_source(list(reversed(rows)), ratios=(6, 2, 2), seed=seed) == result  # order-free


def test_split_by_source_refuses_rows_without_a_source_and_bad_ratios() -> None:
    rows = source_rows()
    rows[5] = {**rows[5], "source": ""}
    with pytest.raises(ValueError, match="1 row\\(s\\) without a 'source' value"):
        split_by_source(rows)
    with pytest.raises(ValueError, match="ratios"):
        split_by_source(source_rows(), ratios=(1, -1, 1))
    only_train = split_by_source(source_rows(), ratios=(1, 0, 0))
    assert {r["split"] for r in only_train} == {"train"}
