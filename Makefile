# The README's two commands: `make demo` and `make test`. Each works alone on a fresh clone
# with only Python 3.11 present (first run: ~4 minutes to install, ~5.5 GB in .venv).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv chromium clean

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

demo: venv
	$(VENV)/bin/archsearch show search_spaces/unet_mobile.yaml --samples 2
	$(VENV)/bin/archsearch sample search_spaces/unet_mobile.yaml -n 3 --seed 0 -o reports/demo_candidates
	$(VENV)/bin/archsearch build "$$(ls reports/demo_candidates/*.yaml | head -n 1)"

test: venv chromium
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
