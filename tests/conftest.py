"""Shared fixtures: tiny image trees built inside each test, never real data."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_split(
    root: Path, classes=("human", "gen-a", "gen-b"), per_class: int = 10, size: int = 32, seed: int = 0
) -> Path:
    """An ImageFolder of class-dependent images plus a split CSV (6 train / 2 val / 2 test per class).

    Each class adds a different periodic pattern to random content, so a model can learn something.
    """
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 200, size=(size, size, 3)).astype(np.int32)
            if label:
                base[:: label + 1, :: label + 1] += 55
            path = root / name / f"{i:03d}.png"
            Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(path)
            rows.append(
                {
                    "path": f"{name}/{path.name}",
                    "class": name,
                    "sha256": "",
                    "width": size,
                    "height": size,
                    "format": "PNG",
                    "group": f"{name}-{i}",
                    "split": splits[i % len(splits)],
                }
            )
    csv_path = root / "split.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


@pytest.fixture(autouse=True, scope="session")
def _cache_of_this_session(tmp_path_factory):
    """What animeprov caches (exported inference graphs, reconstructions) goes to a folder of this test
    session, never the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ANIMEPROV_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()


@pytest.fixture
def tiny_split(tmp_path: Path) -> Path:
    return write_tiny_split(tmp_path / "data")


# --- Browser tests --------------------------------------------------------------------------------------
# pytest-playwright drives Debian's chromium (never a downloaded browser). Tests that take the `page`
# fixture are skipped, with the reason, when that binary is missing; `make test` installs it when it can.
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not installed (make test installs it as root)")
    for item in items:
        if "page" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


# --- Live HTTP servers -------------------------------------------------------------------------------------
@pytest.fixture
def live_server():
    """Start an ASGI app with uvicorn on a free localhost port in a thread; returns its base URL.

    Usage: `url = live_server(app)`. Every server started is shut down when the test ends.
    """
    import socket
    import threading
    import time

    import uvicorn

    servers = []

    def start(app) -> str:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
