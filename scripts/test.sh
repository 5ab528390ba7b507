#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: lint, types, migrations, tests,
# on PostgreSQL + Redis when present, else SQLite + a private Valkey (see services.sh).
# Two runs at once never share anything: each has its own Redis database and key
# namespace (services.sh) and its own test database (below).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

# A test database named after this run unless DATABASE_TEST_NAME / SQLITE_TEST_NAME say
# otherwise. pytest-django creates it and drops it at the end (no --reuse-db in
# pyproject.toml); the exit actions drop it too when pytest could not (killed, crashed).
if [[ -z "${DATABASE_TEST_NAME:-}" ]]; then
  export DATABASE_TEST_NAME="test_fcp_$$"
  if [[ "${DATABASE_URL:-}" == postgres* ]]; then
    _services_cleanup+=("pg_admin drop $DATABASE_TEST_NAME")
  fi
fi
if [[ -z "${SQLITE_TEST_NAME:-}" ]]; then
  mkdir -p "$VAR_DIR"
  export SQLITE_TEST_NAME="$VAR_DIR/test-$$.sqlite3"
  _services_cleanup+=("rm -f '$SQLITE_TEST_NAME' '$SQLITE_TEST_NAME-wal' '$SQLITE_TEST_NAME-shm'")
fi

if [[ -z "${SKIP_LINT:-}" ]]; then
  $BIN/ruff check .
  $BIN/ruff format --check .
  $BIN/mypy .
  $BIN/python manage.py makemigrations --check --dry-run >/dev/null \
    || { echo "missing migrations: run manage.py makemigrations" >&2; exit 1; }
fi
$BIN/pytest "$@"
