#!/usr/bin/env bash
# `make bench`: every benchmark under bench/, on the same services as the tests, in a
# database of its own: BENCH_DATABASE (default fcp_bench) on the PostgreSQL server of
# DATABASE_URL, or var/bench.sqlite3 on SQLite. The broker is a Redis database this run
# claims (services.sh); the benchmarks publish to queues of their own and never purge.
# Arguments name benchmarks to run (`bash scripts/bench.sh bench/throughput.py`); none: all.
set -euo pipefail
cd "$(dirname "$0")/.."
FCP_PG_DATABASE=${BENCH_DATABASE:-fcp_bench}
source scripts/services.sh
if [[ "${DATABASE_URL:-}" == postgres* ]]; then
  # Same server and credentials as DATABASE_URL, but never its database: the benchmarks
  # delete every fabric in the database they run on.
  DATABASE_URL=$($BIN/python - "$FCP_PG_DATABASE" <<'PY'
import os, sys
from urllib.parse import urlsplit, urlunsplit

url = urlsplit(os.environ["DATABASE_URL"])
print(urlunsplit(url._replace(path="/" + sys.argv[1])))
PY
)
  export DATABASE_URL
  pg_admin ensure "$FCP_PG_DATABASE"
else
  mkdir -p "$VAR_DIR"
  export DATABASE_URL="sqlite:///$VAR_DIR/bench.sqlite3"
fi
$BIN/python manage.py migrate --noinput -v 0
status=0
benches=("$@")
[[ ${#benches[@]} -eq 0 ]] && benches=(bench/*.py)
for bench in "${benches[@]}"; do
  [[ "$(basename "$bench")" == _* ]] && continue
  echo "== $bench"
  $BIN/python "$bench" || status=1
done
exit $status
