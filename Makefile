# Two entry points do all set-up on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench setup clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch==2.13.0 first, on its own: the local CPU wheel, never a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet -c requirements.lock torch==2.13.0
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bench run

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

bench: $(STAMP)
	$(VENV)/bin/python -m pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV)
