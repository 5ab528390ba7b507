"""Settings for the fabric control plane: deployment here, tuning in each app's ``conf.py``.

Every value is read from the environment (one parser: ``core.env``) with a default
that serves the embedded mode (SQLite + a private Valkey started by ``make run``).
Production sets ``DATABASE_URL`` (PostgreSQL), ``CELERY_BROKER_URL`` (Redis) and
``DJANGO_SECRET_KEY``; the code paths are the same. Tuning defaults live beside the
code they tune (``core/conf.py``, ``sync/conf.py``, ``scaling/conf.py``,
``resilience/conf.py``) and are loaded at the end of this module. The README's
configuration table lists every variable, split into deployment and tuning.

Importing settings has no side effects: nothing is created or written. ``make run``
and ``manage.py bootstrap`` create ``var/`` and its files.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from kombu import Exchange, Queue

from core.env import env_bool, env_float, env_int, env_list, env_str
from sync.conf import SYNC_HARD_TIME_LIMIT as _SYNC_HARD_TIME_LIMIT
from sync.conf import SYNC_QUEUE as _SYNC_QUEUE
from sync.conf import SYNC_SOFT_TIME_LIMIT as _SYNC_SOFT_TIME_LIMIT

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))


def _secret_key() -> str:
    """DJANGO_SECRET_KEY, else the key ``make run`` keeps under var/, else a per-process one.

    A per-process key only serves one-off commands (sessions would not survive a
    restart or be shared between web workers); the system check project.W005 says so.
    """
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    key_file = VAR_DIR / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    return "ephemeral-" + secrets.token_urlsafe(50)


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
    "core",
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

# --- HTTPS -------------------------------------------------------------------------------
# Behind TLS (a reverse proxy that sets X-Forwarded-Proto), DJANGO_HTTPS=true turns on
# what `manage.py check --deploy` asks for: redirect to HTTPS, secure session and CSRF
# cookies, and HSTS (a year by default; DJANGO_HSTS_SECONDS=0 while trying it out).
HTTPS = env_bool("DJANGO_HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Submitting a domain to the browsers' preload list is an organisation's decision
        # that is hard to undo, not something a deployment should opt into by default.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Database -------------------------------------------------------------------------
# PostgreSQL in production; SQLite in WAL mode for the embedded default. WAL lets the
# web server read while a worker writes; IMMEDIATE transactions take the write lock up
# front so two worker processes never deadlock upgrading a read lock; the timeout
# makes a writer wait for the lock instead of failing with "database is locked".
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
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
    # A client that vanishes mid-transaction (a worker host cut off, a killed process
    # whose socket lingers) must not hold its row locks for TCP's two hours: the tick's
    # reaper would block on them. PostgreSQL ends a session idle inside a transaction
    # after DATABASE_IDLE_IN_TRANSACTION_TIMEOUT s, and both ends probe a silent peer
    # after DATABASE_KEEPALIVE_IDLE s (dead after three unanswered probes). Keepalives
    # only probe an idle connection: a query sent into a partition would wait for TCP's
    # retransmissions (about 15 minutes), so the client also gives up on data left
    # unacknowledged for as long as the probes take (libpq's tcp_user_timeout).
    _idle_tx = env_int("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 60)
    _keepalive = env_int("DATABASE_KEEPALIVE_IDLE", 15)
    _probe = max(1, _keepalive // 3)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "keepalives": 1,
            "keepalives_idle": _keepalive,
            "keepalives_interval": _probe,
            "keepalives_count": 3,
            "tcp_user_timeout": (_keepalive + 3 * _probe) * 1000,
            "options": f"-c idle_in_transaction_session_timeout={_idle_tx * 1000} -c tcp_keepalives_idle={_keepalive} "
            f"-c tcp_keepalives_interval={_probe} -c tcp_keepalives_count=3",
        }
    )
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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Broker, cache ---------------------------------------------------------------------
# The embedded default is the private Valkey that ``make run`` starts on this port.
EMBEDDED_REDIS_PORT = env_int("EMBEDDED_REDIS_PORT", 6390)
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
# kombu's Redis transport with a guard that keeps workers alive across Redis restarts
# (project/broker.py). Plain redis:// only: rediss:// keeps kombu's own TLS set-up.
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "project.broker:Transport"
# The Redis for everything that is not the broker: the cache, breaker state, scaling
# locks and metric windows. Every client comes from core.clients.
REDIS_URL = env_str("REDIS_URL", env_str("CACHE_URL", CELERY_BROKER_URL))

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "fcp"),
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
}

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
# After a broker connection drop, let running tasks finish. Celery's alternative
# (cancelling them) exists so a late-acked message that comes back is not run twice;
# here the sync lease already makes a redelivery harmless (it finds its claim gone or
# held and drops or waits), while a cancelled sync costs a whole lease (issue 10).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_SOFT_TIME_LIMIT = _SYNC_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = _SYNC_HARD_TIME_LIMIT
# Redelivery of unacked messages happens after this; it must exceed the lease and any
# retry countdown (bounded by SYNC_RETRY_BACKOFF_MAX) or Redis re-runs tasks in a loop.
BROKER_VISIBILITY_TIMEOUT = 7200
# A connection the broker can no longer answer on (a firewall or load balancer that
# dropped its state, a failover, a half-open TCP connection) must fail, not block: with
# kombu's default of no socket timeout a worker waited forever in a synchronous command
# (restoring unacked messages after a reset) and consumed nothing again (issue 10).
# Keepalives find a dead peer on an idle connection; kombu's BRPOP health check
# (health_check_interval, 25 s) drops a consumer connection whose reply is overdue.
BROKER_SOCKET_TIMEOUT = env_float("BROKER_SOCKET_TIMEOUT", 30.0)
BROKER_SOCKET_CONNECT_TIMEOUT = env_float("BROKER_SOCKET_CONNECT_TIMEOUT", 5.0)
# A worker that failed ("Unrecoverable error") kills its pool and exits this long after,
# if its warm shutdown has not finished: a broken pool can keep it up forever, and a
# restart policy only replaces a process that has exited (project/worker_exit.py).
WORKER_FAILURE_EXIT_SECONDS = env_float("WORKER_FAILURE_EXIT_SECONDS", 30.0)
_BROKER_SOCKET_OPTIONS: dict[str, Any] = {
    "socket_timeout": BROKER_SOCKET_TIMEOUT,
    "socket_connect_timeout": BROKER_SOCKET_CONNECT_TIMEOUT,
    "socket_keepalive": True,
}
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    **_BROKER_SOCKET_OPTIONS,
}
# The same for the result backend (Celery's own settings; its default read timeout is 120 s).
CELERY_REDIS_SOCKET_TIMEOUT = BROKER_SOCKET_TIMEOUT
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = BROKER_SOCKET_CONNECT_TIMEOUT
CELERY_REDIS_SOCKET_KEEPALIVE = True
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
# One queue per concern, so the tick never waits behind a backlog of syncs and each
# concern can get workers of its own (deploy/compose.yaml). A worker started without
# --queues consumes all of them, so a single plain `celery worker` still runs everything.
CELERY_TASK_ROUTES = {
    "project.master_scheduler": {"queue": "tick"},
    "sync.*": {"queue": _SYNC_QUEUE},
    "scaling.*": {"queue": "scaling"},
}
# The pool-restart heal action needs it.
CELERY_WORKER_POOL_RESTARTS = True
# The beat entry lives in the database (django-celery-beat), so operators see and
# can disable it in the admin; project.schedule upserts it.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Deployment settings of the features ------------------------------------------------
# Fernet keys for stored credentials (core/credentials.py), comma-separated: the first
# encrypts, all decrypt. Unset: one key derived from SECRET_KEY (check --deploy warns).
CREDENTIALS_KEYS = env_list("CREDENTIALS_KEYS", "")
# Where fabric Git caches live, and the folders local-path Git sources may come from.
SYNC_GIT_CACHE_DIR = Path(env_str("SYNC_GIT_CACHE_DIR", str(VAR_DIR / "git-cache")))
SYNC_ALLOWED_LOCAL_ROOTS = env_list("SYNC_ALLOWED_LOCAL_ROOTS", str(VAR_DIR / "repos"))
# The one Docker engine the scaler, the container checks and healing talk to
# (DOCKER_HOST is honoured like the docker CLI does), and its per-call timeout.
DOCKER_URL = env_str("DOCKER_URL", env_str("DOCKER_HOST", "unix:///var/run/docker.sock"))
DOCKER_TIMEOUT = env_int("DOCKER_TIMEOUT", 10)
# Docker checks run when an engine is configured; containers opt in with this label.
HEALTH_DOCKER_ENABLED = env_bool(
    "HEALTH_DOCKER_ENABLED",
    not DOCKER_URL.startswith("unix://") or Path(DOCKER_URL.removeprefix("unix://")).exists(),
)
HEALTH_CONTAINER_LABEL = env_str("HEALTH_CONTAINER_LABEL", "fcp.health.managed")
# Checks wait on I/O: point this at a queue served by a threads-pool worker
# (celery worker -Q health -P threads -c 16) so a sweep lasts as long as its slowest check.
HEALTH_QUEUE = env_str("HEALTH_QUEUE", CELERY_TASK_DEFAULT_QUEUE)
# Every queue a task may be routed to; a worker without --queues consumes them all.
CELERY_TASK_QUEUES = [
    Queue(name, Exchange(name), routing_key=name)
    for name in dict.fromkeys([CELERY_TASK_DEFAULT_QUEUE, "tick", _SYNC_QUEUE, "scaling", "health", HEALTH_QUEUE])
]
HEALTH_TOKEN = env_str("HEALTH_TOKEN", "")  # Bearer token that shows monitors /health/ components
METRICS_TOKEN = env_str("METRICS_TOKEN", "")  # bearer token for Prometheus scrapes of /metrics (else HEALTH_TOKEN)
API_TOKEN = env_str("API_TOKEN", "")  # bearer token for the JSON API (docs/api.md); empty: staff sessions only
# The service name the response-time middleware records this process's requests under.
SCALING_RESPONSE_TIME_SERVICE = env_str("SCALING_RESPONSE_TIME_SERVICE", "backend")
# Shared breaker state lives under this key prefix in REDIS_URL.
BREAKER_KEY_PREFIX = env_str("BREAKER_KEY_PREFIX", "fcp:breaker")

# --- Admin bootstrap (make run) ---------------------------------------------------------
ADMIN_USERNAME = env_str("ADMIN_USERNAME", "admin")

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "core.redaction.RedactingFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Tuning: each app's defaults, in one place each --------------------------------------
# Django reads only upper-case names, so the helpers these modules import are harmless.
from core.conf import *  # noqa: E402, F403
from core.retention_conf import *  # noqa: E402, F403
from resilience.conf import *  # noqa: E402, F403
from scaling.conf import *  # noqa: E402, F403
from sync.conf import *  # noqa: E402, F403
