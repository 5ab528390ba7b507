"""Settings for the fabric control plane.

Every value is read from the environment with a default that serves the embedded
mode (SQLite + a private Valkey started by ``make run``). Production sets
``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis); the code paths are
the same. The README's configuration table lists every variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, else a key generated once and kept under var/ (embedded mode)."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "project",
    "sync",
    "scaling",
    "resilience",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # First after security: times every request for the response-time scaling metric.
    "scaling.middleware.ResponseTimeMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# PostgreSQL in production; SQLite in WAL mode for the embedded default. WAL lets the
# web server read while a worker writes; IMMEDIATE transactions take the write lock up
# front so two worker processes never deadlock upgrading a read lock; the timeout
# makes a writer wait for the lock instead of failing with "database is locked".
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES: dict[str, Any] = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not :memory:, so that Celery worker processes started by the tests
    # share the test database with the test process.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("SQLITE_TEST_NAME", str(VAR_DIR / "test.sqlite3"))}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if test_name := os.environ.get("DATABASE_TEST_NAME"):
        DATABASES["default"]["TEST"] = {"NAME": test_name}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns on every request when it is missing
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Broker, cache ---------------------------------------------------------------------
# The embedded default is the private Valkey that ``make run`` starts on this port.
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 6390)
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CACHE_URL = os.environ.get("CACHE_URL", CELERY_BROKER_URL)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "fcp"),
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

# --- Fabric sync -----------------------------------------------------------------------
# Ordering that must hold (checked at start-up by project.checks):
#   soft time limit < hard time limit < lease < Redis visibility timeout.
# The soft limit lets a sync record its own timeout; the hard limit kills a stuck
# process; the lease outlives the hard limit, so a lease only expires once its holder
# is certainly dead; the visibility timeout outlives the lease, so Redis never
# redelivers a message whose sync may still be running.
SYNC_SOFT_TIME_LIMIT = env_int("SYNC_SOFT_TIME_LIMIT", 240)
SYNC_HARD_TIME_LIMIT = env_int("SYNC_HARD_TIME_LIMIT", 300)
SYNC_LEASE_SECONDS = env_int("SYNC_LEASE_SECONDS", 360)
# How long a claimed fabric waits for a worker to pick its message up before the
# claim is released and the next tick may dispatch it again (with a new token, so
# the stale message is dropped when it finally arrives).
SYNC_QUEUE_LEASE_SECONDS = env_int("SYNC_QUEUE_LEASE_SECONDS", 900)
BROKER_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT", 7200)

SYNC_MAX_RETRIES = env_int("SYNC_MAX_RETRIES", 3)  # transient failures, within one due sync
SYNC_RETRY_BACKOFF_MAX = env_int("SYNC_RETRY_BACKOFF_MAX", 600)
SYNC_MAX_DELIVERIES = env_int("SYNC_MAX_DELIVERIES", 3)  # poison-message guard
SYNC_FAILURE_BACKOFF_MAX = env_int("SYNC_FAILURE_BACKOFF_MAX", 3600)
SYNC_SUSPEND_AFTER_FAILURES = env_int("SYNC_SUSPEND_AFTER_FAILURES", 10)
SYNC_MAX_MANIFEST_BYTES = env_int("SYNC_MAX_MANIFEST_BYTES", 1024 * 1024)
SYNC_MAX_MANIFESTS = env_int("SYNC_MAX_MANIFESTS", 20000)
SYNC_GIT_TIMEOUT = env_int("SYNC_GIT_TIMEOUT", 120)
SYNC_GIT_CACHE_DIR = Path(os.environ.get("SYNC_GIT_CACHE_DIR", VAR_DIR / "git-cache"))
# Local-path (and file://) sources are only accepted below these folders.
SYNC_ALLOWED_LOCAL_ROOTS = env_list("SYNC_ALLOWED_LOCAL_ROOTS", str(VAR_DIR / "repos"))
# Fabrics per fan-out message: the tick publishes one message per chunk and a worker
# expands it into one task per fabric, so the tick stays fast at 10,000 fabrics.
SYNC_DISPATCH_CHUNK = env_int("SYNC_DISPATCH_CHUNK", 250)

# --- Celery ------------------------------------------------------------------------------
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# JSON only: no pickle, so a message can never execute code on a worker.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# Acknowledge after the task ran, and requeue when the worker process dies, so a
# killed worker loses no sync. The database lease plus a delivery counter on the
# fabric (SYNC_MAX_DELIVERIES) stop a poison message from looping forever.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: a sync can take minutes, and prefetched
# messages would wait behind it instead of going to an idle worker.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# After a broker connection drop, late-acked messages come back; cancel the running
# copies instead of running them twice.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_TASK_SOFT_TIME_LIMIT = SYNC_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = SYNC_HARD_TIME_LIMIT
# Redelivery of unacked messages happens after this; it must exceed the lease and any
# retry countdown (bounded by SYNC_RETRY_BACKOFF_MAX) or Redis re-runs tasks in a loop.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": BROKER_VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    # Celery's default (20 retries, 1 s apart) would stall a tick for 20 s when Redis is down.
    "retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
}
# A publish to an unreachable broker fails within a few seconds instead of stalling the
# tick; the tick then releases the claims it could not dispatch.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_DEFAULT_QUEUE = "celery"
# The beat entry lives in the database (django-celery-beat), so operators see and
# can disable it in the admin; project.schedule upserts it.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Admin bootstrap (make run) ---------------------------------------------------------
ADMIN_USERNAME = os.environ.get("ADMIN_USERNAME", "admin")

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "sync.redaction.RedactingFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Scaling ---------------------------------------------------------------------------
# Docker services scaled by scaling policies (see scaling/). Every number has an
# environment override; the defaults follow Kubernetes' HPA (docs/architecture.md).
# The engine the scaler talks to; DOCKER_HOST is honoured like the docker CLI does.
SCALING_DOCKER_URL = os.environ.get("SCALING_DOCKER_URL", os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
SCALING_DOCKER_TIMEOUT = env_int("SCALING_DOCKER_TIMEOUT", 10)  # seconds per Engine API call
# Stats calls take ~1 s each (the engine waits for a second CPU sample): run them in parallel.
SCALING_STATS_WORKERS = env_int("SCALING_STATS_WORKERS", 32)
# A metric older than two ticks is stale: it may vote to scale up, never down.
SCALING_TICK_SECONDS = env_int("SCALING_TICK_SECONDS", 60)
SCALING_METRIC_STALE_SECONDS = env_int("SCALING_METRIC_STALE_SECONDS", 2 * SCALING_TICK_SECONDS)
# Request durations: the middleware records this process's requests under this service
# name into a rolling window of cache buckets (Redis), read back by the collector.
SCALING_RESPONSE_TIME_SERVICE = os.environ.get("SCALING_RESPONSE_TIME_SERVICE", "backend")
SCALING_RESPONSE_TIME_WINDOW = env_int("SCALING_RESPONSE_TIME_WINDOW", 60)
SCALING_RESPONSE_TIME_BUCKET = env_int("SCALING_RESPONSE_TIME_BUCKET", 10)
# Draining a Celery worker waits for its active tasks up to the task soft time limit, and
# stopping it gives it at least that long before SIGKILL (docker-py overrides StopTimeout).
SCALING_WORKER_SOFT_TIME_LIMIT = env_int("SCALING_WORKER_SOFT_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT)
SCALING_DRAIN_POLL_SECONDS = float(os.environ.get("SCALING_DRAIN_POLL_SECONDS", "1.0"))
# One evaluation may drain and stop several workers: its limits cover that, and the
# per-service lock outlives the hard limit, so a lock only expires once its holder is dead.
# Order (checked by scaling.checks): drain < soft limit < hard limit < lock.
SCALING_TASK_SOFT_TIME_LIMIT = env_int("SCALING_TASK_SOFT_TIME_LIMIT", 2 * SCALING_WORKER_SOFT_TIME_LIMIT + 60)
SCALING_TASK_TIME_LIMIT = env_int("SCALING_TASK_TIME_LIMIT", SCALING_TASK_SOFT_TIME_LIMIT + 30)
SCALING_LOCK_SECONDS = env_int("SCALING_LOCK_SECONDS", SCALING_TASK_TIME_LIMIT + 30)
# The per-service lock lives in Redis (SET NX PX + compare-and-delete).
SCALING_REDIS_URL = os.environ.get("SCALING_REDIS_URL", CACHE_URL)
# Stabilisation rows older than this are pruned (the window itself is per policy).
SCALING_RECOMMENDATION_RETENTION = env_int("SCALING_RECOMMENDATION_RETENTION", 3600)

# --- Resilience ---------------------------------------------------------------------------
# Circuit breakers, health checks, auto-healing and resilient calls (resilience/,
# docs/resilience.md says where each default comes from). Everything below this line
# up to the end-of-block marker belongs to the resilience app.


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


# Breaker state is shared through this Redis (the cache's by default).
BREAKER_REDIS_URL = os.environ.get("BREAKER_REDIS_URL", CACHE_URL)
BREAKER_KEY_PREFIX = os.environ.get("BREAKER_KEY_PREFIX", "fcp:breaker")
# Short: a dead Redis must not stall calls; the breaker falls back to per-process state.
BREAKER_REDIS_TIMEOUT = _env_float("BREAKER_REDIS_TIMEOUT", 0.5)
BREAKER_REDIS_RETRY_SECONDS = _env_float("BREAKER_REDIS_RETRY_SECONDS", 5.0)
# Hystrix' 20-call volume and 50 % error rate, pybreaker's run of 5 failures (our
# dependencies are low-volume, so resilience4j's 100-call minimum would never trip).
BREAKER_FAILURE_RATE_THRESHOLD = _env_float("BREAKER_FAILURE_RATE_THRESHOLD", 50.0)
BREAKER_WINDOW_SIZE = env_int("BREAKER_WINDOW_SIZE", 20)
BREAKER_MINIMUM_CALLS = env_int("BREAKER_MINIMUM_CALLS", 20)
BREAKER_CONSECUTIVE_FAILURES = env_int("BREAKER_CONSECUTIVE_FAILURES", 5)
# 30 s in OPEN, doubling on each failed recovery up to 5 min.
BREAKER_WAIT_SECONDS = _env_float("BREAKER_WAIT_SECONDS", 30.0)
BREAKER_WAIT_MULTIPLIER = _env_float("BREAKER_WAIT_MULTIPLIER", 2.0)
BREAKER_MAX_WAIT_SECONDS = _env_float("BREAKER_MAX_WAIT_SECONDS", 300.0)
# The whole fleet sends at most 3 trial calls to a recovering dependency; 3 successes close.
BREAKER_HALF_OPEN_CALLS = env_int("BREAKER_HALF_OPEN_CALLS", 3)
BREAKER_SUCCESS_THRESHOLD = env_int("BREAKER_SUCCESS_THRESHOLD", 3)
BREAKER_TRIAL_TIMEOUT = _env_float("BREAKER_TRIAL_TIMEOUT", 30.0)
# A process that just saw CLOSED skips the admission round trip for this long (capped
# at half the OPEN wait, so trial calls stay exactly gated); see resilience.breaker_redis.
BREAKER_CLOSED_TTL = _env_float("BREAKER_CLOSED_TTL", 0.5)

# Health checks: django-health-check's 5 s per check; 2 failures before UNHEALTHY and
# 2 successes before HEALTHY again, so one blip neither pages nor heals.
HEALTH_CHECK_TIMEOUT = _env_float("HEALTH_CHECK_TIMEOUT", 5.0)
HEALTH_WORKER_PING_TIMEOUT = _env_float("HEALTH_WORKER_PING_TIMEOUT", 1.0)
HEALTH_BEAT_MAX_AGE = env_int("HEALTH_BEAT_MAX_AGE", 180)  # three missed 60 s ticks
HEALTH_DISK_DEGRADED_PERCENT = _env_float("HEALTH_DISK_DEGRADED_PERCENT", 10.0)
HEALTH_DISK_UNHEALTHY_PERCENT = _env_float("HEALTH_DISK_UNHEALTHY_PERCENT", 5.0)
HEALTH_LEASE_GRACE_SECONDS = env_int("HEALTH_LEASE_GRACE_SECONDS", 180)
HEALTH_GIT_TIMEOUT = env_int("HEALTH_GIT_TIMEOUT", 10)
HEALTH_MAX_GIT_SOURCES = env_int("HEALTH_MAX_GIT_SOURCES", 50)
# Docker checks run when an engine is configured; containers opt in with this label.
HEALTH_DOCKER_ENABLED = env_bool(
    "HEALTH_DOCKER_ENABLED", "DOCKER_HOST" in os.environ or Path("/var/run/docker.sock").exists()
)
HEALTH_DOCKER_TIMEOUT = env_int("HEALTH_DOCKER_TIMEOUT", 3)
HEALTH_CONTAINER_LABEL = os.environ.get("HEALTH_CONTAINER_LABEL", "fcp.health.managed")
# The check tasks of a sweep are dropped if still queued when the next tick comes.
HEALTH_SWEEP_EXPIRES_SECONDS = env_int("HEALTH_SWEEP_EXPIRES_SECONDS", 55)
# Checks wait on I/O: point this at a queue served by a threads-pool worker
# (celery worker -Q health -P threads -c 16) so a sweep lasts as long as its slowest check.
HEALTH_QUEUE = os.environ.get("HEALTH_QUEUE", CELERY_TASK_DEFAULT_QUEUE)
# Components no check reported for this long (removed containers, deleted fabrics) are pruned.
HEALTH_PRUNE_AFTER_SECONDS = env_int("HEALTH_PRUNE_AFTER_SECONDS", 24 * 3600)
HEALTH_TASK_SOFT_TIME_LIMIT = env_int("HEALTH_TASK_SOFT_TIME_LIMIT", 45)

# Healing: after 3 failing sweeps; Kubernetes' backoff (10 s doubling to 5 min, reset
# after 10 healthy minutes); at most 5 attempts an hour, then "needs attention".
HEAL_AFTER_FAILURES = env_int("HEAL_AFTER_FAILURES", 3)
HEAL_BACKOFF_INITIAL_SECONDS = env_int("HEAL_BACKOFF_INITIAL_SECONDS", 10)
HEAL_BACKOFF_MAX_SECONDS = env_int("HEAL_BACKOFF_MAX_SECONDS", 300)
HEAL_RESET_AFTER_SECONDS = env_int("HEAL_RESET_AFTER_SECONDS", 600)
HEAL_MAX_ATTEMPTS = env_int("HEAL_MAX_ATTEMPTS", 5)
HEAL_WINDOW_SECONDS = env_int("HEAL_WINDOW_SECONDS", 3600)
HEAL_LOCK_SECONDS = env_int("HEAL_LOCK_SECONDS", 120)  # outlives one action; a dead healer's lock expires
HEAL_CONTAINER_STOP_TIMEOUT = env_int("HEAL_CONTAINER_STOP_TIMEOUT", 10)
# The "restart a worker's pool" heal action uses Celery's pool_restart control command.
CELERY_WORKER_POOL_RESTARTS = env_bool("CELERY_WORKER_POOL_RESTARTS", True)

# Resilient HTTP calls (resilience.rpc): per-attempt timeout, attempts, one overall deadline.
RPC_TIMEOUT = _env_float("RPC_TIMEOUT", 5.0)
RPC_DEADLINE = _env_float("RPC_DEADLINE", 15.0)
RPC_MAX_ATTEMPTS = env_int("RPC_MAX_ATTEMPTS", 3)
RPC_BACKOFF_BASE = _env_float("RPC_BACKOFF_BASE", 0.2)
RPC_BACKOFF_MAX = _env_float("RPC_BACKOFF_MAX", 5.0)
# --- end of Resilience ---
