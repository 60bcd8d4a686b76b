# Two entry points do all set-up on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench setup browser clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# torch==2.13.0 first, on its own: the local CPU wheel, never a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet -c requirements.lock torch==2.13.0
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[dev,lab]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bench run

# The HTML report is checked in real headless Chromium (Debian's package); installed when we are root.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser check of the HTML report will be skipped"; }

test: $(STAMP) browser
	$(VENV)/bin/python -m pytest tests

bench: $(STAMP)
	$(VENV)/bin/python -m pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV)
