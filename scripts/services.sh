# Sourced by scripts/test.sh and scripts/bench.sh: pick the database and broker.
#
# PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when they answer
# (or when DATABASE_URL / CELERY_BROKER_URL are set). Otherwise: SQLite and a private
# valkey-server started here and stopped on exit. FCP_EMBEDDED=1 forces the latter.
# With CI=true both real services are required.
BIN=${BIN:-.venv/bin}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -n "${FCP_EMBEDDED:-}" ]]; then
  unset DATABASE_URL CELERY_BROKER_URL CACHE_URL CELERY_RESULT_BACKEND
else
  if [[ -z "${DATABASE_URL:-}" ]] && port_open 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/${FCP_PG_DATABASE:-test}"
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
mkdir -p "$VAR_DIR/static"  # settings create nothing on import
if [[ -z "${CELERY_BROKER_URL:-}" ]]; then
  _valkey_port=$($BIN/python -c 'from project.embedded import free_port; print(free_port())')
  $BIN/python -m project.embedded --port "$_valkey_port" --dir "$VAR_DIR/test-valkey" --no-persist &
  _valkey_pid=$!
  trap 'kill $_valkey_pid 2>/dev/null || true' EXIT
  export CELERY_BROKER_URL="redis://127.0.0.1:$_valkey_port/0"
  $BIN/python -c "from project.embedded import wait_until_listening; wait_until_listening($_valkey_port)"
fi
echo "services: database=${DATABASE_URL:-sqlite (embedded)} broker=${CELERY_BROKER_URL}"
