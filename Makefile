# previewbot: `make run` starts everything on this machine; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps, so `make run` installs only what the program needs and `make test` adds the test
# tools; a stamp newer than pyproject.toml makes a repeated run instant.
RUNTIME := $(VENV)/.installed-runtime
TEST_TOOLS := $(VENV)/.installed-test

.PHONY: install run signin test bench soak browser-deps bench-deps clean

install: $(RUNTIME)

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_TOOLS): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(RUNTIME)
	$(BIN)/previewbot run

# A one-time sign-in link for the dashboard of the database in this directory.
signin: $(RUNTIME)
	@$(BIN)/previewbot signin

# Headless Chromium for the dashboard tests comes from Debian's packages.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(TEST_TOOLS) browser-deps
	$(BIN)/pytest -q

# wrk, the load tool of the throughput benchmark; without it (no apt) the benchmark falls back
# to a Python closed loop that takes CPU from the servers it measures, and says so.
bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		echo "installing Debian's wrk for the throughput benchmark"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
		|| echo "could not install wrk: the benchmark uses its Python load loop"; }

bench: $(TEST_TOOLS) bench-deps
	$(BIN)/python -m tests.bench

soak: $(TEST_TOOLS)
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) test-output .pytest_cache previewbot.db* .previewbot
