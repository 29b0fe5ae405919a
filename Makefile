# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what is missing. torch is pinned to the CPU wheel here, before the
# package itself, because the package only asks for a range and a plain resolve could pull a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test lint bench clean browser check-reference

setup: $(STAMP)

# Browser tests drive Debian's chromium headless. Installed when missing and we may (root); without it
# those tests are skipped with a message saying so, everything else still runs.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get install -y -qq chromium >/dev/null 2>&1 \
			|| (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) ; } \
		|| echo "chromium not installed: browser tests will be skipped"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/animeprov demo --out runs/demo

# One test process per core (at most 4, to bound memory), each with one torch thread: most tests are short
# and single-threaded, so two processes keep both cores busy where one left half of them idle.
test: $(STAMP) browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --maxprocesses 4

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Rebuild the shipped reference model and compare it byte for byte (about 5 min, one thread; needs the
# development sets of ../shared/data and gives the same bytes only on the build's CPU and library versions).
# Run it after any change to training code: nothing in `make test` notices a stale bundle.
check-reference: $(STAMP)
	$(BIN)/python benchmarks/build_reference.py --check --work runs/reference-check

clean:
	rm -rf $(VENV) runs .pytest_cache
