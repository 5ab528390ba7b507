#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: lint, types, migrations, tests,
# on PostgreSQL + Redis when present, else SQLite + a private Valkey (see services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

if [[ -z "${SKIP_LINT:-}" ]]; then
  $BIN/ruff check .
  $BIN/ruff format --check .
  $BIN/mypy .
  $BIN/python manage.py makemigrations --check --dry-run >/dev/null \
    || { echo "missing migrations: run manage.py makemigrations" >&2; exit 1; }
fi
$BIN/pytest "$@"
