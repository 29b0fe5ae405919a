"""Group-aware, class-balanced train/val/test splits of a manifest.

Rules (each one checked by tests/test_split.py):
- a group (see data/index.py) is never divided: all its rows land in one split;
- every class is capped at `per_class` rows (default: the size of the smallest class), taking or
  leaving whole groups, so classes are balanced; rows left out by the cap are not in the output;
- inside each class the splits come as close to `ratios` as whole groups allow;
- the result depends only on the rows' content and `seed`, not on their order.

How: per class, the groups are sorted by id and shuffled with a generator seeded by (seed, class);
the cap keeps the shuffled groups that still fit. The kept groups, largest first (ties in shuffled
order), each go to the split whose per-class target is furthest from being met.

A group whose rows carry different classes (e.g. one image filed under two classes) is a label
conflict; it is kept whole under the class of most of its rows and reported with a warning, or
left out entirely with `drop_conflicts=True`.

`split_by_source` splits by where images came from instead: val and test are whole sources never seen in
training (the split that calibration and evaluation need to say anything about unseen sources), every
image kept, no class cap.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from rich.table import Table

from animeprov.data.manifest import SPLIT_COLUMN, SPLITS

# Held-out sources (`pick_sources`) may take at most this share of a class's images: one large source can
# hold most of a class (86 of the 88 NovelAI images come from one), and a model must still train on it.
MAX_HELD_OUT_CLASS_SHARE = 0.5


class CrossClassGroupWarning(UserWarning):
    """A split group holds rows of more than one class."""


def split_manifest(
    rows: Iterable[dict[str, str]],
    *,
    ratios: Sequence[float] = (8, 1, 1),
    per_class: int | None = None,
    seed: int = 0,
    group_column: str = "group",
    drop_conflicts: bool = False,
) -> list[dict[str, str]]:
    """The selected rows, each copied with a `split` column (train/val/test), sorted by path.

    A row with an empty `group_column` value is a group of its own. Raises ValueError for bad
    ratios, a non-positive `per_class`, or rows lacking `path`, `class` or `group_column`.
    """
    ratios = _check_ratios(ratios)
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")

    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        missing = [name for name in ("path", "class", group_column) if name not in row]
        if missing:
            raise ValueError(f"row {row.get('path', row)!r} lacks column(s) {', '.join(missing)}")
        # The NUL prefix keeps path-keyed singletons apart from real group ids.
        groups[row[group_column] or f"\0{row['path']}"].append(row)
    _warn_cross_class(groups, group_column, dropped=drop_conflicts)
    if drop_conflicts:
        groups = {key: members for key, members in groups.items() if len({r["class"] for r in members}) == 1}
    if not groups:
        return []

    class_sizes = Counter(row["class"] for members in groups.values() for row in members)
    cap = per_class if per_class is not None else min(class_sizes.values())
    home_class = {key: _home_class(members) for key, members in groups.items()}

    # 1. Cap: per class, shuffled groups are kept while every class they touch stays within the cap.
    rank: dict[str, int] = {}  # position in its class's shuffled order: the tie-break below
    kept: list[str] = []
    taken: Counter[str] = Counter()
    for cls in sorted(class_sizes):
        keys = sorted(key for key in groups if home_class[key] == cls)
        random.Random(f"{seed}/{cls}").shuffle(keys)
        for position, key in enumerate(keys):
            rank[key] = position
            sizes = Counter(row["class"] for row in groups[key])
            if all(taken[name] + n <= cap for name, n in sizes.items()):
                taken.update(sizes)
                kept.append(key)

    # 2. Assign: largest groups first, each to the split furthest below its per-class target.
    total = sum(ratios)
    target = {cls: [taken[cls] * ratio / total for ratio in ratios] for cls in taken}
    assigned = {cls: [0] * len(SPLITS) for cls in taken}
    split_of: dict[str, str] = {}
    for key in sorted(kept, key=lambda key: (-len(groups[key]), home_class[key], rank[key])):
        sizes = Counter(row["class"] for row in groups[key])
        deficit = [
            sum(n * (target[cls][s] - assigned[cls][s]) for cls, n in sizes.items())
            for s in range(len(SPLITS))
        ]
        best = max(range(len(SPLITS)), key=lambda s: (ratios[s] > 0, deficit[s], -s))
        split_of[key] = SPLITS[best]
        for cls, n in sizes.items():
            assigned[cls][best] += n

    selected = [{**row, SPLIT_COLUMN: split_of[key]} for key in kept for row in groups[key]]
    return sorted(selected, key=lambda row: row["path"])


def split_counts(rows: Iterable[dict[str, str]]) -> dict[str, dict[str, int]]:
    """{class: {split: n}} with every split present (0 when empty), classes sorted."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        per_split = counts.setdefault(row["class"], dict.fromkeys(SPLITS, 0))
        per_split[row[SPLIT_COLUMN]] = per_split.get(row[SPLIT_COLUMN], 0) + 1
    return dict(sorted(counts.items()))


def split_table(counts: dict[str, dict[str, int]], available: dict[str, int] | None = None) -> Table:
    """A Rich table of images per class and split; `available` adds the class sizes before the cap
    (and lists classes of which nothing was selected)."""
    table = Table(title="images per class and split")
    table.add_column("class")
    for name in (*SPLITS, "total"):
        table.add_column(name, justify="right")
    if available is not None:
        table.add_column("available", justify="right")
    totals: Counter[str] = Counter()
    empty = dict.fromkeys(SPLITS, 0)
    for cls in sorted({*counts, *(available or {})}):
        per_split = counts.get(cls, empty)
        cells = [str(per_split.get(name, 0)) for name in SPLITS] + [str(sum(per_split.values()))]
        if available is not None:
            cells.append(str(available.get(cls, 0)))
        table.add_row(cls, *cells)
        totals.update(per_split)
    footer = [str(totals[name]) for name in SPLITS] + [str(sum(totals.values()))]
    if available is not None:
        footer.append(str(sum(available.values())))
    table.add_section()
    table.add_row("all", *footer)
    return table


def _check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(ratio) for ratio in ratios)
    if len(values) != len(SPLITS) or any(value < 0 for value in values) or sum(values) <= 0:
        raise ValueError(
            f"ratios must be {len(SPLITS)} non-negative numbers ({'/'.join(SPLITS)}) with a positive sum, "
            f"got {tuple(ratios)}"
        )
    return values


def _home_class(members: list[dict[str, str]]) -> str:
    """The class of most rows in a group (ties: the first name in sorted order)."""
    counts = Counter(row["class"] for row in members)
    return min(counts, key=lambda cls: (-counts[cls], cls))


def _warn_cross_class(groups: dict[str, list[dict[str, str]]], group_column: str, dropped: bool) -> None:
    mixed = {
        key: sorted({row["class"] for row in members})
        for key, members in groups.items()
        if len({row["class"] for row in members}) > 1
    }
    if mixed:
        examples = "; ".join(f"{key} ({', '.join(classes)})" for key, classes in sorted(mixed.items())[:5])
        more = " ..." if len(mixed) > 5 else ""
        warnings.warn(
            f"{len(mixed)} group(s) in column {group_column!r} span several classes (a label conflict?) and "
            + ("were left out" if dropped else "were kept whole under the class of most of their rows")
            + f": {examples}{more}",
            CrossClassGroupWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------------
# Whole sources held out


def source_kinds(rows: list[dict], by: str, human_class: str) -> dict[str, str]:
    """'human' or 'ai' per source: a source is human when all its rows are; mixed sources count as ai."""
    classes: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        classes[row[by]].add(row["class"])
    return {name: "human" if found == {human_class} else "ai" for name, found in sorted(classes.items())}


def pick_sources(
    rows: list[dict],
    by: str,
    human_class: str,
    share: float,
    rng: random.Random,
    max_class_share: float = 1.0,
) -> set[str]:
    """Whole values of `by` taking about `share` of the human images and `share` of the AI images, in
    `rng`'s shuffled order. A source is taken only if every class of it keeps another source among the
    rest (a model must train on every class it is judged on) and the taken ones then hold at most
    `max_class_share` of each class's images."""
    kinds = source_kinds(rows, by, human_class)
    sizes = Counter(row[by] for row in rows)
    class_sizes = Counter(row["class"] for row in rows)
    source_class_sizes = Counter((row[by], row["class"]) for row in rows)
    classes_of: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        classes_of[row[by]].add(row["class"])
    picked: set[str] = set()
    in_picked: Counter[str] = Counter()
    for kind in ("human", "ai"):
        names = sorted(n for n in sizes if kinds[n] == kind)
        rng.shuffle(names)
        total, taken = sum(sizes[n] for n in names), 0
        for name in names:
            if taken >= share * total:
                break
            remaining = {c for n in sizes if n not in picked and n != name for c in classes_of[n]}
            within_share = all(
                in_picked[c] + source_class_sizes[name, c] <= max_class_share * class_sizes[c]
                for c in classes_of[name]
            )
            if classes_of[name] <= remaining and within_share:
                picked.add(name)
                taken += sizes[name]
                in_picked.update({c: source_class_sizes[name, c] for c in classes_of[name]})
    return picked


def split_by_source(
    rows: Iterable[dict[str, str]],
    *,
    ratios: Sequence[float] = (8, 1, 1),
    seed: int = 0,
    source_column: str = "source",
    human_class: str = "human",
    max_class_share: float = MAX_HELD_OUT_CLASS_SHARE,
) -> list[dict[str, str]]:
    """Every row, copied with a `split` column, sorted by path: test and then val are whole sources
    (`pick_sources`: about their ratio's share of the human and of the AI images, each taking at most
    `max_class_share` of what is left of a class), train the rest. Raises ValueError for bad ratios or a
    row without a `source_column` value."""
    rows = list(rows)
    train_ratio, val_ratio, test_ratio = _check_ratios(ratios)
    test_share = test_ratio / (train_ratio + val_ratio + test_ratio)
    missing = [row.get("path", row) for row in rows if not row.get(source_column)]
    if missing:
        raise ValueError(f"{len(missing)} row(s) without a {source_column!r} value, e.g. {missing[0]!r}")
    rng = random.Random(seed)
    test = (
        pick_sources(rows, source_column, human_class, test_share, rng, max_class_share)
        if test_ratio
        else set()
    )
    rest = [row for row in rows if row[source_column] not in test]
    val_share = val_ratio / (train_ratio + val_ratio)
    val = (
        pick_sources(rest, source_column, human_class, val_share, rng, max_class_share)
        if val_ratio
        else set()
    )
    split_of = {name: "test" for name in test} | {name: "val" for name in val}
    out = [{**row, SPLIT_COLUMN: split_of.get(row[source_column], "train")} for row in rows]
    return sorted(out, key=lambda row: row["path"])
