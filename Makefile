# Two commands for a newcomer: `make install` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install system-packages test test-slow lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(MAKE) system-packages
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	$(VENV)/bin/adaclip --help > /dev/null
	touch $@

# Debian packages the tests use: Chromium (the search page test) and ffmpeg (benchmarks).
system-packages:
	@if ! command -v chromium >/dev/null || ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium ffmpeg >/dev/null; \
	  else echo "note: install chromium and ffmpeg (apt) for the browser test and benchmarks"; fi; \
	fi

# The everyday suite (~20 min on 2 cores); test-slow: the long end-to-end and learning-
# quality tests and the multi-node ones (the demo, a trained model's ranking, the elastic
# run that loses a node, ...), which CI runs too.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: install
	$(PY) -m pytest -q -p no:cacheprovider -m slow

lint: install
	$(VENV)/bin/ruff check adaclip pipelines train serve demo tests benchmarks
	$(VENV)/bin/ruff format --check adaclip pipelines train serve demo tests benchmarks
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix adaclip pipelines train serve demo tests benchmarks
	$(VENV)/bin/ruff format adaclip pipelines train serve demo tests benchmarks

clean:
	rm -rf $(VENV) .adaclip build *.egg-info
