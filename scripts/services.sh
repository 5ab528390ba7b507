# Sourced by scripts/test.sh and scripts/bench.sh: pick the database and broker.
#
# PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when they answer
# (or when DATABASE_URL / CELERY_BROKER_URL are set). Otherwise: SQLite and a private
# valkey-server started here and stopped on exit. FCP_EMBEDDED=1 forces the latter.
# With CI=true both real services are required.
#
# Several sessions may share those services at once (two `make test`, a `make bench`):
# each session gets a Redis database of its own (see claim_redis_db below) and a key
# namespace, FCP_TEST_NAMESPACE, for its cache and breaker keys. Nothing here or in the
# tests purges or flushes a Redis database the session did not claim.
BIN=${BIN:-.venv/bin}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Cleanup actions run once on exit, in order; INT and TERM exit through them too.
_services_cleanup=()
_services_exit() {
  local action
  for action in "${_services_cleanup[@]}"; do eval "$action" || true; done
}
trap _services_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A Redis database of this session's own, so its messages, workers, pings and keys never
# meet another session's (Kombu prefixes fanout channels, and so pings, with the
# database number). Steps, for each candidate database (TEST_REDIS_DB, else 1 to 15):
#   1. Read its claim key. A claim by a process of this host that has since died (pid
#      gone, or reused by a process with another start time) is stale.
#   2. In one Lua script (atomic): a stale claim is replaced and the database emptied;
#      a live claim refuses; an unclaimed database is claimed only if it is empty
#      (someone else's keys mean someone else uses it), unless TEST_REDIS_DB named it.
#   3. On exit, if the claim is still ours: empty the database if it was empty when we
#      claimed it (everything in it is ours), else only drop the claim.
# Prints "<db> <created: 1|0> <owner>" for claim; release takes those back.
_redis_claim_py=$(cat <<'PY'
import json, socket, sys
import redis

CLAIM_KEY = "fcp:test-session"
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder == ARGV[2] then
  redis.call('FLUSHDB')
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
if holder then return -1 end
local empty = redis.call('DBSIZE') == 0
if not empty and ARGV[3] ~= '1' then return -2 end
redis.call('SET', KEYS[1], ARGV[1])
if empty then return 1 end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then redis.call('FLUSHDB') else redis.call('DEL', KEYS[1]) end
return 1
"""


def start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner(pid):
    return json.dumps({"host": socket.gethostname(), "pid": pid, "start": start_time(pid)}, separators=(",", ":"))


def stale(holder):
    try:
        claim = json.loads(holder)
        return claim["host"] == socket.gethostname() and start_time(int(claim["pid"])) != claim["start"]
    except (ValueError, KeyError, TypeError):
        return False


def client(base, db):
    return redis.Redis.from_url(f"{base}/{db}", socket_timeout=5, socket_connect_timeout=5)


def claim(base, pid, wanted):
    me = owner(int(pid))
    for db in [int(wanted)] if wanted else range(1, 16):
        try:
            conn = client(base, db)
            holder = (conn.get(CLAIM_KEY) or b"").decode()
            got = conn.eval(CLAIM, 1, CLAIM_KEY, me, holder if holder and stale(holder) else "", "1" if wanted else "0")
        except redis.ResponseError:  # past the server's last database
            break
        if got >= 0:
            print(db, got, me)
            return 0
        if wanted:
            print(f"Redis database {db} is in use by another test session ({holder}): "
                  "pick another TEST_REDIS_DB or leave it unset", file=sys.stderr)
            return 1
    print("no free Redis database on this server: every one holds another session's or someone's keys",
          file=sys.stderr)
    return 1


def release(base, db, created, me):
    client(base, db).eval(RELEASE, 1, CLAIM_KEY, me, created)
    return 0


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    sys.exit(claim(*args) if mode == "claim" else release(*args))
PY
)

export FCP_TEST_BROKER_PRIVATE=0
if [[ -n "${FCP_EMBEDDED:-}" ]]; then
  unset DATABASE_URL CELERY_BROKER_URL CACHE_URL REDIS_URL CELERY_RESULT_BACKEND
else
  if [[ -z "${DATABASE_URL:-}" ]] && port_open 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/${FCP_PG_DATABASE:-test}"
  fi
  if [[ -z "${CELERY_BROKER_URL:-}" ]] && port_open 6379; then
    _redis_base="redis://127.0.0.1:6379"
    _claim=$($BIN/python -c "$_redis_claim_py" claim "$_redis_base" "$$" "${TEST_REDIS_DB:-}") || exit 1
    read -r _redis_db _redis_created _redis_owner <<<"$_claim"
    _services_cleanup+=("$BIN/python -c \"\$_redis_claim_py\" release $_redis_base $_redis_db $_redis_created '$_redis_owner'")
    export CELERY_BROKER_URL="$_redis_base/$_redis_db" FCP_TEST_BROKER_PRIVATE=1
  fi
  if [[ "${CI:-}" == "true" ]]; then
    [[ "${DATABASE_URL:-}" == postgres* ]] || { echo "CI: PostgreSQL on 127.0.0.1:5432 is required" >&2; exit 1; }
    [[ -n "${CELERY_BROKER_URL:-}" ]] || { echo "CI: Redis on 127.0.0.1:6379 is required" >&2; exit 1; }
  fi
fi

export VAR_DIR="${VAR_DIR:-$PWD/var}"
mkdir -p "$VAR_DIR/static"  # settings create nothing on import; whitenoise warns without it
if [[ -z "${CELERY_BROKER_URL:-}" ]]; then
  _valkey_port=$($BIN/python -c 'from project.embedded import free_port; print(free_port())')
  $BIN/python -m project.embedded --port "$_valkey_port" --dir "$VAR_DIR/test-valkey" --no-persist &
  _valkey_pid=$!
  _services_cleanup+=("kill $_valkey_pid 2>/dev/null")
  export CELERY_BROKER_URL="redis://127.0.0.1:$_valkey_port/0" FCP_TEST_BROKER_PRIVATE=1
  $BIN/python -c "from project.embedded import wait_until_listening; wait_until_listening($_valkey_port)"
fi

# Cache and breaker keys of this session only (they share the broker's Redis database
# unless REDIS_URL/CACHE_URL say otherwise).
export FCP_TEST_NAMESPACE="${FCP_TEST_NAMESPACE:-fcp-test-$$-$(date +%s)}"
# One secret key for the session's test process and the workers it starts, so a
# credential encrypted by one (keys derived from it) can be read by the other.
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-$FCP_TEST_NAMESPACE-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"
export CACHE_KEY_PREFIX="${CACHE_KEY_PREFIX:-$FCP_TEST_NAMESPACE}"
export BREAKER_KEY_PREFIX="${BREAKER_KEY_PREFIX:-$FCP_TEST_NAMESPACE:breaker}"

# pg_admin ensure|drop NAME: create (if missing) or drop (if present) database NAME on
# the PostgreSQL server of DATABASE_URL, through that server's maintenance database.
pg_admin() {
  $BIN/python - "$1" "$2" <<'PY'
import os, sys
import dj_database_url, psycopg
from psycopg import sql

action, name = sys.argv[1:]
db = dj_database_url.parse(os.environ["DATABASE_URL"])
params = {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432, "user": db["USER"] or None,
          "password": db["PASSWORD"] or None, "dbname": "postgres", "connect_timeout": 10}
with psycopg.connect(**params, autocommit=True) as conn:
    exists = conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone()
    if action == "ensure" and not exists:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    elif action == "drop" and exists:
        conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
PY
}
echo "services: database=${DATABASE_URL:-sqlite (embedded)} broker=${CELERY_BROKER_URL} namespace=$FCP_TEST_NAMESPACE"
