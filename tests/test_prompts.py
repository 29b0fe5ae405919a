"""Random prompts from the weighted tag file: reproducible, grouped, weighted, safe-for-work."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from animeprov.cli import app
from animeprov.data.prompts import (
    TagGroup,
    TagSet,
    build_prompt,
    build_prompts,
    is_blocked_tag,
    load_tag_set,
    parse_tag_set,
    read_prompts,
    tags_from_counts,
)

runner = CliRunner()
GROUPS = ("subject", "hair", "eyes", "clothing", "pose", "setting", "style")


def test_default_tag_file_is_grouped_large_and_clean() -> None:
    tag_set = load_tag_set()
    assert tuple(group.name for group in tag_set.groups) == GROUPS
    all_tags = [tag for group in tag_set.groups for tag in group.tags]
    assert 200 <= len(all_tags) == len(set(all_tags))  # a few hundred, each in one group only
    assert not [tag for tag in all_tags if is_blocked_tag(tag)]
    assert all(weight > 0 for group in tag_set.groups for weight in group.weights)


def test_prompts_are_reproducible_and_follow_the_pick_counts() -> None:
    tag_set = load_tag_set()
    first = build_prompts(tag_set, 50, seed=3, style_token="classic disney style")
    assert first == build_prompts(tag_set, 50, seed=3, style_token="classic disney style")
    assert first[:10] == build_prompts(
        tag_set, 10, seed=3, style_token="classic disney style"
    )  # prefix-stable
    assert first != build_prompts(tag_set, 50, seed=4, style_token="classic disney style")
    group_of = {tag: group for group in tag_set.groups for tag in group.tags}
    for prompt in first:
        assert prompt["prompt"].startswith("classic disney style, ")
        counts = Counter(group_of[tag].name for tag in prompt["tags"])
        for group in tag_set.groups:
            assert group.pick[0] <= counts[group.name] <= group.pick[1]
        assert "_" not in prompt["prompt"]  # booru underscores become spaces
    assert len({prompt["seed"] for prompt in first}) == 50


def test_weights_steer_the_draw() -> None:
    tag_set = TagSet((TagGroup("subject", (1, 1), ("common", "rare"), (9.0, 1.0)),))
    drawn = Counter(build_prompt(tag_set, 0, i)["tags"][0] for i in range(2000))
    assert 0.87 < drawn["common"] / 2000 < 0.93  # expected 0.9


def test_tag_file_errors_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an animeprov tag file"):
        parse_tag_set({"groups": {}})
    with pytest.raises(ValueError, match="'pick' must be"):
        parse_tag_set({"format": "animeprov-tags/1", "groups": {"a": {"pick": [2, 1], "tags": {"x": 1}}}})
    with pytest.raises(ValueError, match="positive weight"):
        parse_tag_set({"format": "animeprov-tags/1", "groups": {"a": {"pick": [1, 1], "tags": {"x": 0}}}})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"no": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_prompts(bad)


def test_tags_from_counts_keeps_known_groups_and_files_the_rest_under_other() -> None:
    entries = [
        {"name": "long_hair", "count": 500, "type": 0},
        {"name": "compass", "count": 300, "type": "0"},  # not blocked although it ends in "ass"
        {"name": "nude", "count": 900, "type": 0},
        {"name": "some_character", "count": 800, "type": 4},
        {"name": "ai-generated", "count": 700, "type": 0},
        {"name": "rare_tag", "count": 1, "type": 0},
    ]
    tag_set = tags_from_counts(entries, load_tag_set(), top=10, min_count=2)
    groups = {group.name: (group.pick, group.tags) for group in tag_set.groups}
    assert groups == {"hair": ((1, 2), ("long_hair",)), "other": ((0, 1), ("compass",))}


def test_cli_prompts_writes_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "prompts.jsonl"
    args = [
        "data",
        "prompts",
        "--n",
        "20",
        "--seed",
        "7",
        "--style-token",
        "modern disney style",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 20 and records == read_prompts(out)
    assert records == build_prompts(load_tag_set(), 20, 7, "modern disney style")
