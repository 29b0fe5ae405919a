"""benchmarks/augment_patch_speed.py: both ways run over every view of a manifest and report in JSON."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
from conftest import load_benchmark
from PIL import Image

from animeprov.data import dataset

augment_patch_speed = load_benchmark("augment_patch_speed")


def test_reports_both_ways_and_leaves_the_dataset_setting_as_it_was(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i, (height, width) in enumerate(((420, 400), (256, 256), (60, 50))):  # the last is too small
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / name)
        rows.append({"path": name, "class": "human" if i else "gen"})
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "class"])
        writer.writeheader()
        writer.writerows(rows[:2])
    before = dataset.NEIGHBOURHOOD_AREA_RATIO
    argv = ["augment_patch_speed", str(manifest), "--repeats", "1", "--profile", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    augment_patch_speed.main()
    report = json.loads(capsys.readouterr().out)
    assert dataset.NEIGHBOURHOOD_AREA_RATIO == before
    assert report["images"] == 2 and report["longer_side_px"] == {"min": 256, "median": 338.0, "max": 420}
    assert report["patch_px"] == 64 and report["views_per_image"] == 4
    for way in ("neighbourhood", "whole_image"):
        assert len(report[way]["passes"]) == 1 and report[way]["views_per_second"] > 0
    assert report["speedup"] > 0
    costly = report["costliest_functions"]
    assert len(costly) == 3 and all(0 < f["share"] <= 1 and f["calls"] >= 1 for f in costly)
    assert costly[0]["share"] >= costly[-1]["share"]
    # a file that cannot give a view stops the benchmark with its name and the reason
    with open(manifest, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=["path", "class"]).writerow(rows[2])
    try:
        augment_patch_speed.main()
    except SystemExit as stop:
        assert "2.png" in str(stop) and "smaller" in str(stop)
    else:
        raise AssertionError("a 50x60 image gave a 64 px patch")
    assert dataset.NEIGHBOURHOOD_AREA_RATIO == before
