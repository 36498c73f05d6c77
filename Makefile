# The README's two commands: `make demo` and `make test`. Each works alone on a fresh clone
# with only Python 3.11 present (first run: ~4 minutes to install, ~5.5 GB in .venv).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint venv chromium bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (archsearch's make targets need Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the pins: nothing may resolve an unpinned (multi-GB) torch
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Headless Chromium for the report's browser test and kaleido PNG export.
chromium:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (browser tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The main job: search unet_mobile (first run also trains the built-in teacher), then
# reports/unet_mobile/index.html. A second `make demo` continues the same study.
demo: venv
	@if [ -f reports/unet_mobile/study.db ]; then \
	  $(VENV)/bin/archsearch run search_spaces/unet_mobile.yaml --resume; \
	else \
	  $(VENV)/bin/archsearch run search_spaces/unet_mobile.yaml; \
	fi

# Benchmarks print figures (README); none of them is part of `make test`.
bench: venv
	$(PY) benchmarks/bench_predictor.py --skip-build --n 50
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_proxy.py --threads 1

# The whole suite (CI runs exactly this): lint, then every test on two cores (pytest-xdist;
# a test module runs whole on one worker, so its module fixtures are built once).
test: venv chromium lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

TEST_WORKERS ?= 2

# The edit loop: no slow or browser tests (2 minutes here).
test-fast: venv lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow and not browser"

lint: venv
	$(VENV)/bin/ruff check archsearch tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
