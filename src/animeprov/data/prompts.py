"""Random prompts from weighted booru tags (the paper's "random prompts from popular Safebooru tags").

A tag file is JSON:

    {"format": "animeprov-tags/1", "source": "...",
     "groups": {"subject": {"pick": [1, 1], "tags": {"1girl": 100, "1boy": 30, ...}},
                "hair": {"pick": [1, 2], "tags": {...}}, ...}}

Each prompt draws, from every group in file order, between pick[0] and pick[1] distinct tags with
probability proportional to their weights, then joins them with ", " (underscores become spaces, as
prompts for SD 1.x anime models are written). A style token (e.g. "classic disney style" for
nitrosocke's models) goes first. Prompt i depends only on (seed, i) and the tag file, so the same seed
gives the same prompts, and a longer run starts with the prompts of a shorter one.

`tags_from_counts` builds the same format from a booru's tag list (name, count, type): tags already in
a known group keep that group; other general tags go to the group "other" (drawn 0..1 per prompt).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from animeprov.data.collect import is_ai_tag

TAG_FORMAT = "animeprov-tags/1"
DEFAULT_TAGS_RESOURCE = "default_tags.json"
OTHER_GROUP = "other"
OTHER_PICK = (0, 1)
# Words that keep a tag out of a generated tag file: explicit or suggestive content, and deliberate
# artefacts (signatures, watermarks, text). Matched against the tag's words (split on _ - ( )).
BLOCKED_TAG_WORDS = frozenset(
    "nude naked nsfw sex breasts breast cleavage panties pantsu underwear lingerie bikini swimsuit ass butt "
    "crotch nipples penis pussy cum bdsm bondage gore blood guro death corpse loli shota lolicon shotacon "
    "signature watermark text username censored lowres highres absurdres artifacts jpeg".split()
)


def is_blocked_tag(tag: str) -> bool:
    """Whether a tag may never reach a prompt: a blocked word, or a tag marking AI generation."""
    words = {word for word in re.split(r"[_\-()]+", tag.lower()) if word}
    return bool(words & BLOCKED_TAG_WORDS) or is_ai_tag(tag)


@dataclass(frozen=True)
class TagGroup:
    name: str
    pick: tuple[int, int]  # how many tags a prompt draws from this group: min, max (inclusive)
    tags: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class TagSet:
    groups: tuple[TagGroup, ...]
    source: str = ""

    def to_json(self) -> dict:
        return {
            "format": TAG_FORMAT,
            "source": self.source,
            "groups": {
                group.name: {
                    "pick": list(group.pick),
                    "tags": dict(zip(group.tags, group.weights, strict=True)),
                }
                for group in self.groups
            },
        }


def parse_tag_set(data: object, where: str = "<tags>") -> TagSet:
    """A TagSet from decoded JSON, or ValueError saying what is wrong and where."""
    if not isinstance(data, dict) or data.get("format") != TAG_FORMAT:
        raise ValueError(f'{where}: not an animeprov tag file (expected "format": "{TAG_FORMAT}")')
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise ValueError(f"{where}: 'groups' must be a non-empty object")
    groups = []
    for name, body in raw_groups.items():
        here = f"{where}: group {name!r}"
        if not isinstance(body, dict):
            raise ValueError(f"{here}: expected an object with 'pick' and 'tags'")
        pick = body.get("pick")
        if (
            not isinstance(pick, list)
            or len(pick) != 2
            or not all(isinstance(v, int) and v >= 0 for v in pick)
            or pick[0] > pick[1]
        ):
            raise ValueError(f"{here}: 'pick' must be [min, max] with 0 <= min <= max")
        tags = body.get("tags")
        if not isinstance(tags, dict) or not tags:
            raise ValueError(f"{here}: 'tags' must be a non-empty object of tag -> weight")
        for tag, weight in tags.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
                raise ValueError(f"{here}: tag {tag!r} needs a positive weight, got {weight!r}")
        groups.append(
            TagGroup(
                name=str(name),
                pick=(int(pick[0]), int(pick[1])),
                tags=tuple(str(tag) for tag in tags),
                weights=tuple(float(weight) for weight in tags.values()),
            )
        )
    return TagSet(tuple(groups), str(data.get("source", "")))


def load_tag_set(path: str | Path | None = None) -> TagSet:
    """The tag file at `path`, or the default one shipped with the package."""
    if path is None:
        text = resources.files("animeprov.data").joinpath("tags", DEFAULT_TAGS_RESOURCE).read_text("utf-8")
        where = f"animeprov/data/tags/{DEFAULT_TAGS_RESOURCE}"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    return parse_tag_set(data, where)


def tag_to_text(tag: str) -> str:
    """A booru tag as prompt text: `long_hair` -> `long hair`; emoticon tags such as `:d` stay."""
    return tag.replace("_", " ")


def prompt_seed(seed: int, index: int) -> int:
    """The generation seed of prompt `index` (fits in 63 bits, as torch.Generator.manual_seed wants)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(1, index)).generate_state(1, np.uint64)
    return int(state[0]) & (2**63 - 1)


def build_prompt(tag_set: TagSet, seed: int, index: int, style_token: str | None = None) -> dict:
    """Prompt `index` of the run with `seed`: {"id", "prompt", "tags", "seed", "style_token"}."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0, index)))
    chosen: list[str] = []
    for group in tag_set.groups:
        low, high = group.pick
        count = min(int(rng.integers(low, high + 1)), len(group.tags))
        if count == 0:
            continue
        weights = np.asarray(group.weights, dtype=np.float64)
        picked = rng.choice(len(group.tags), size=count, replace=False, p=weights / weights.sum())
        chosen += [group.tags[i] for i in sorted(picked)]
    parts = ([style_token.strip()] if style_token and style_token.strip() else []) + [
        tag_to_text(tag) for tag in chosen
    ]
    return {
        "id": f"p{index:06d}",
        "prompt": ", ".join(parts),
        "tags": chosen,
        "seed": prompt_seed(seed, index),
        "style_token": style_token or "",
    }


def build_prompts(tag_set: TagSet, n: int, seed: int, style_token: str | None = None) -> list[dict]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return [build_prompt(tag_set, seed, index, style_token) for index in range(n)]


def write_prompts(path: str | Path, prompts: Iterable[dict]) -> int:
    """Write prompts as JSON lines; return how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps(prompt, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_prompts(path: str | Path) -> list[dict]:
    """Prompts from a JSON-lines file; each line needs a string "prompt" (id and seed are optional)."""
    prompts = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}: line {number} has no string 'prompt'")
            seed = record.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
                raise ValueError(f"{path}: line {number}: 'seed' must be a non-negative integer")
            record.setdefault("id", f"p{len(prompts):06d}")
            prompts.append(record)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


# Booru tag types (Gelbooru/Safebooru "type" field): only general tags (0) describe what is drawn; artist
# (1), copyright (3), character (4) and meta (5) tags would tie prompts to particular works or people.
GENERAL_TAG_TYPE = 0


def tags_from_counts(
    entries: Sequence[dict],
    known: TagSet | None = None,
    *,
    top: int = 300,
    min_count: int = 1,
    source: str = "",
) -> TagSet:
    """A tag set from a booru tag list: entries {"name", "count", "type"} (type may be missing).

    Keeps the `top` most-used general tags with at least `min_count` posts, never a blocked one
    (`is_blocked_tag`). A tag in a group of `known` joins that group (with that group's pick);
    every other tag goes to group "other" (pick 0..1). Weights are the post counts.
    """
    group_of = {tag: group for group in (known.groups if known else ()) for tag in group.tags}
    candidates: dict[str, int] = {}
    for entry in entries:
        name = str(entry.get("name", "")).strip()
        try:
            count = int(entry.get("count", 0))
            kind = int(entry.get("type", GENERAL_TAG_TYPE))
        except (TypeError, ValueError):
            continue
        if not name or kind != GENERAL_TAG_TYPE or count < min_count or is_blocked_tag(name):
            continue
        candidates[name] = max(count, candidates.get(name, 0))
    ranked = sorted(candidates.items(), key=lambda item: (-item[1], item[0]))[:top]
    if not ranked:
        raise ValueError("no usable general tags in the tag list")
    members: dict[str, list[tuple[str, int]]] = {}
    for name, count in ranked:
        group = group_of.get(name)
        members.setdefault(group.name if group else OTHER_GROUP, []).append((name, count))
    order = [group.name for group in (known.groups if known else ()) if group.name in members]
    if OTHER_GROUP in members:
        order.append(OTHER_GROUP)
    picks = {group.name: group.pick for group in (known.groups if known else ())}
    groups = tuple(
        TagGroup(
            name=name,
            pick=picks.get(name, OTHER_PICK),
            tags=tuple(tag for tag, _ in members[name]),
            weights=tuple(float(count) for _, count in members[name]),
        )
        for name in order
    )
    return TagSet(groups, source)


def write_tag_set(path: str | Path, tag_set: TagSet) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tag_set.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
