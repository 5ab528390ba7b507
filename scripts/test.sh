#!/usr/bin/env bash
# The test command behind `make test` and .ci/run: lint, types, migrations, tests.
#
# Services: PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when
# they answer (or when DATABASE_URL / CELERY_BROKER_URL are set). Otherwise the
# suite runs on SQLite and a private valkey-server started here. With CI=true both
# real services are required: a missing one fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -n "${FCP_EMBEDDED:-}" ]]; then
  unset DATABASE_URL CELERY_BROKER_URL CACHE_URL CELERY_RESULT_BACKEND
else
  if [[ -z "${DATABASE_URL:-}" ]] && port_open 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
  fi
  if [[ -z "${CELERY_BROKER_URL:-}" ]] && port_open 6379; then
    export CELERY_BROKER_URL="redis://127.0.0.1:6379/${TEST_REDIS_DB:-15}"
  fi
  if [[ "${CI:-}" == "true" ]]; then
    [[ "${DATABASE_URL:-}" == postgres* ]] || { echo "CI: PostgreSQL on 127.0.0.1:5432 is required" >&2; exit 1; }
    [[ -n "${CELERY_BROKER_URL:-}" ]] || { echo "CI: Redis on 127.0.0.1:6379 is required" >&2; exit 1; }
  fi
fi

export VAR_DIR="${VAR_DIR:-$PWD/var}"
if [[ -z "${CELERY_BROKER_URL:-}" ]]; then
  port=$($BIN/python -c 'from project.embedded import free_port; print(free_port())')
  $BIN/python -m project.embedded --port "$port" --dir "$VAR_DIR/test-valkey" --no-persist &
  valkey_pid=$!
  trap 'kill $valkey_pid 2>/dev/null || true' EXIT
  export CELERY_BROKER_URL="redis://127.0.0.1:$port/0"
  $BIN/python -c "from project.embedded import wait_until_listening; wait_until_listening($port)"
fi
echo "test services: database=${DATABASE_URL:-sqlite (embedded)} broker=${CELERY_BROKER_URL}"

if [[ -z "${SKIP_LINT:-}" ]]; then
  $BIN/ruff check .
  $BIN/ruff format --check .
  $BIN/mypy .
  DJANGO_SETTINGS_MODULE=project.settings $BIN/python manage.py makemigrations --check --dry-run >/dev/null \
    || { echo "missing migrations: run manage.py makemigrations" >&2; exit 1; }
fi
$BIN/pytest "$@"
