# One virtual environment in .venv; every target installs what is missing first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# mypy cannot follow setuptools' editable-install finder: it checks a link tree that carries the
# installed names (blindgate/shared -> shared/, ...), rebuilt on every run.
TYPES  := build/typecheck

.PHONY: demo test check bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m blindgate.device.demo $(ARGS)

# Lint, format and type checks: part of `make test`, so CI fails on a regression.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@rm -rf $(TYPES) && mkdir -p $(TYPES)/blindgate
	@for part in shared device cloud; do ln -s "$(CURDIR)/$$part" "$(TYPES)/blindgate/$$part"; done
	cd $(TYPES) && MYPYPATH=. "$(CURDIR)/$(VENV)/bin/mypy" --config-file "$(CURDIR)/pyproject.toml" -p blindgate

test: check
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) bench/matching.py

clean:
	rm -rf $(VENV) build *.egg-info
