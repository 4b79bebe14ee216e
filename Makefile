# The two commands: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
#: wiremesh alone, what the demo needs (a .venv made for the tests has it too)
DEMO_STAMP := $(VENV)/.installed

.PHONY: install install-demo browser netns node demo test lint typecheck pytest bench docs proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

install: $(STAMP)  ## create .venv and install wiremesh with what tests need

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[speed]'
	touch $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)  ## create .venv and install wiremesh alone (no test or lint tools)

DEMO   ?= examples/ipaas

# Ctrl-C must reach `wiremesh run` alone: make, interrupted too, would end with
# "Interrupt" and status 130 after a clean drain. On a terminal the recipe's shell runs
# it as a job of its own (set -m) in the terminal's foreground; make, in the background,
# gets no SIGINT and ends with wiremesh's status (0 after a drain).
demo: install-demo  ## run the ipaas demo mesh (Ctrl-C drains and stops it; DEMO=folder for another)
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

VALIDATOR := tests/gateway/asyncapi_validator

# the validator's packages again whenever its lock file is newer than what is installed
node:  ## node and npm for the AsyncAPI test (installed when missing and run as root), and its validator's packages
	@{ command -v node && command -v npm; } >/dev/null 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && { apt-get install -y -qq nodejs npm >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }; }; } || \
	    echo "make: node or npm is missing and cannot be installed here (needs root): the AsyncAPI test will be skipped"
	@! command -v npm >/dev/null 2>&1 || \
	    [ $(VALIDATOR)/node_modules/.package-lock.json -nt $(VALIDATOR)/package-lock.json ] || \
	    npm ci --prefix $(VALIDATOR) --ignore-scripts --no-audit --no-fund --silent || \
	    echo "make: npm ci failed in $(VALIDATOR): the AsyncAPI test will try again"

pytest: install browser netns node  ## the test suite
	$(BIN)/pytest

test: lint typecheck pytest  ## everything CI runs

bench: install  ## every benchmark; writes docs/benchmarks.md and its charts (docs/benchmarks/)
	$(BIN)/python benchmarks/run_all.py

# NO_MKDOCS_2_WARNING: Material's notice about MkDocs 2, printed on every build
docs: install  ## the docs site from docs/ and the docstrings, into site/ (read it with: python -m http.server -d site)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

proto: install  ## regenerate src/wiremesh/proto from proto/
	$(BIN)/python tools/gen_proto.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .mypy_cache .ruff_cache examples/*/.wiremesh
	rm -rf $(VALIDATOR)/node_modules
