# Two commands on a fresh machine: `make run` (the whole system) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-embedded chaos bench lint typecheck migrations-check clean

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=python3" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)  ## migrate, bootstrap an admin and a demo fabric, run broker+worker+beat+web
	$(BIN)/python scripts/run.py

test: $(STAMP)  ## lint, type-check, migrations check and the test suite (real services)
	bash scripts/test.sh

test-embedded: $(STAMP)  ## the suite on SQLite and a private Valkey, ignoring local services
	FCP_EMBEDDED=1 bash scripts/test.sh

chaos: $(STAMP)  ## the chaos suite, full profile: real faults on private servers (docs/reliability.md)
	CHAOS_PROFILE=full SKIP_LINT=1 bash scripts/test.sh tests/chaos

bench: $(STAMP)  ## benchmarks (see docs/benchmarks.md)
	bash scripts/bench.sh

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) var/test*.sqlite3* .pytest_cache .mypy_cache .ruff_cache
