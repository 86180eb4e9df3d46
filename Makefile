# Two commands for a newcomer: `make install` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1

.PHONY: install test lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev]'
	$(VENV)/bin/adaclip --help > /dev/null
	touch $@

test: install
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check adaclip pipelines train serve tests benchmarks
	$(VENV)/bin/ruff format --check adaclip pipelines train serve tests benchmarks
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix adaclip pipelines train serve tests benchmarks
	$(VENV)/bin/ruff format adaclip pipelines train serve tests benchmarks

clean:
	rm -rf $(VENV) .adaclip build *.egg-info
