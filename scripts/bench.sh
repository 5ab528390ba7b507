#!/usr/bin/env bash
# `make bench`: every benchmark under bench/, on the same services as the tests,
# in a database of its own (fcp_bench on PostgreSQL, var/bench.sqlite3 on SQLite).
set -euo pipefail
cd "$(dirname "$0")/.."
FCP_PG_DATABASE=fcp_bench
source scripts/services.sh
if [[ "${DATABASE_URL:-}" == postgres* ]]; then
  $BIN/python - <<'PY'
import psycopg
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
    if not conn.execute("select 1 from pg_database where datname = 'fcp_bench'").fetchone():
        conn.execute("create database fcp_bench")
PY
else
  export DATABASE_URL="sqlite:///$VAR_DIR/bench.sqlite3"
fi
$BIN/python manage.py migrate --noinput -v 0
status=0
for bench in bench/*.py; do
  [[ "$(basename "$bench")" == _* ]] && continue
  echo "== $bench"
  $BIN/python "$bench" || status=1
done
exit $status
