# previewbot: `make run` starts everything on this machine; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench soak browser-deps bench-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/previewbot run

# Headless Chromium for the dashboard tests comes from Debian's packages.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser-deps
	$(BIN)/pytest -q

# wrk, the load tool of the throughput benchmark; without it (no apt) the benchmark falls back
# to a Python closed loop that takes CPU from the servers it measures, and says so.
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "installing Debian's wrk for the throughput benchmark"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
		|| echo "could not install wrk: the benchmark uses its Python load loop"; }

bench: $(STAMP) bench-deps
	$(BIN)/python -m tests.bench

soak: $(STAMP)
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) test-output .pytest_cache previewbot.db* .previewbot
