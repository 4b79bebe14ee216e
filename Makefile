# The two commands: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install browser netns demo test lint typecheck pytest bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install wiremesh with what tests need

DEMO   ?= examples/ipaas

# Ctrl-C must reach `wiremesh run` alone: make, interrupted too, would end with
# "Interrupt" and status 130 after a clean drain. On a terminal the recipe's shell runs
# it as a job of its own (set -m) in the terminal's foreground; make, in the background,
# gets no SIGINT and ends with wiremesh's status (0 after a drain).
demo: install  ## run the ipaas demo mesh (Ctrl-C drains and stops it; DEMO=folder for another)
	cd $(DEMO) && { if [ -t 0 ]; then set -m; fi; $(abspath $(BIN))/wiremesh run; }

lint: install  ## ruff (lint and formatting) and the import check (cycles, arrows between folders)
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/python tools/import_cycles.py

typecheck: install  ## mypy --strict on the package
	$(BIN)/mypy src

browser:  ## Debian's chromium for the browser tests (installed when missing and run as root)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq chromium >/dev/null; } || \
	    echo "make: chromium is missing and cannot be installed here (needs root): browser tests will be skipped"

netns:  ## ip and nftables for the multi-host tests (installed when missing and run as root)
	@{ command -v ip && command -v nft; } >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq iproute2 nftables >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq iproute2 nftables >/dev/null; }; }; } || \
	    echo "make: ip or nft is missing and cannot be installed here (needs root): multihost tests will be skipped"

pytest: install browser netns  ## the test suite
	$(BIN)/pytest

test: lint typecheck pytest  ## everything CI runs

bench: install  ## every benchmark; writes docs/benchmarks.md
	$(BIN)/python benchmarks/run_all.py

proto: install  ## regenerate src/wiremesh/proto from proto/
	$(BIN)/python tools/gen_proto.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache examples/ipaas/.wiremesh
