"""Shared fixtures: real Git repositories, real Celery worker processes, service gates.

Tests never run Celery in eager mode. ``celery_worker`` starts a real
``celery worker`` process (prefork) against the same broker and the same test
database as the test process, so every message is serialised, published to Redis
and consumed by another process, exactly as in production.

Each test session owns its broker: ``scripts/test.sh`` claims a Redis database no
other session uses (or starts a private Valkey) and says so in
``FCP_TEST_BROKER_PRIVATE``; its cache and breaker keys carry the session's
``FCP_TEST_NAMESPACE``. So a session's workers, pings and purges never meet another
session's, and nothing here touches a broker the session does not own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.utils.nodenames import host_format
from django.conf import settings
from django.db import connection

from tests.gitrepo import GitRepo
from tests.kube import kube_cluster, kube_namespace  # noqa: F401  (fixtures: a real kube-apiserver)
from tests.pgcluster import postgres_cluster  # noqa: F401  (a fixture, offered to every test)

ROOT = Path(__file__).resolve().parent.parent
# In CI a missing service fails the run; the extra embedded pass (FCP_EMBEDDED=1) runs
# without PostgreSQL on purpose, so there a missing service skips as on a laptop.
IN_CI = os.environ.get("CI") == "true" and not os.environ.get("FCP_EMBEDDED")


def require(condition: bool, reason: str) -> None:
    """Skip when a service is missing on a developer machine; fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture(autouse=True)
def _forget_dependency_breakers() -> Iterator[None]:
    """After each test, forget the shared breakers of real dependencies (Git hosts, the
    Docker engine, Kubernetes API servers). Their state lives in the session's Redis, so
    one test's failures on 127.0.0.1 would otherwise add up with the next test's."""
    yield
    from core import guards
    from core.breaker import REDIS_TIMEOUT, CircuitBreaker, channel_for
    from core.breaker_redis import known_breakers

    try:
        names = known_breakers(channel_for(settings.REDIS_URL, REDIS_TIMEOUT), settings.BREAKER_KEY_PREFIX)
        for name in names:
            if name.startswith(("git:", "docker:", "k8s:")):
                CircuitBreaker(name).forget()
    except Exception:  # a test that pointed Redis at a closed port: nothing shared to forget
        pass
    guards.forget_handles()


@pytest.fixture
def postgres_only(db: None) -> None:
    require(is_postgres(), "needs PostgreSQL (set DATABASE_URL)")


def broker_is_private() -> bool:
    """True when this session owns its broker database (scripts/services.sh claimed or started it)."""
    return os.environ.get("FCP_TEST_BROKER_PRIVATE") == "1"


@pytest.fixture
def private_broker() -> None:
    """For tests that need to know every worker on the broker: only this session's can answer."""
    require(broker_is_private(), "needs a broker of this session's own (run through scripts/test.sh)")


def purge_session_queues() -> None:
    """Drop the messages waiting in this session's queues, so a new worker starts on an empty queue.

    Only on a broker the session owns: on a shared one, the messages may be someone else's.
    """
    from project.celery_app import app

    if broker_is_private():
        app.control.purge()


@pytest.fixture(scope="session")
def repos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root for test repositories; allowed as a local Git source for test and worker."""
    root = tmp_path_factory.mktemp("repos")
    os.environ["SYNC_ALLOWED_LOCAL_ROOTS"] = f"{root},{settings.VAR_DIR / 'repos'}"
    return root


@pytest.fixture(autouse=True)
def _allow_test_repos(settings: Any, repos_root: Path) -> None:
    settings.SYNC_ALLOWED_LOCAL_ROOTS = [str(repos_root), str(settings.VAR_DIR / "repos")]


@pytest.fixture
def git_repo(repos_root: Path, request: pytest.FixtureRequest) -> Callable[..., GitRepo]:
    """Factory for real Git repositories with manifests: ``git_repo("name")``."""
    created = 0

    def make(name: str | None = None, branch: str = "main") -> GitRepo:
        nonlocal created
        created += 1
        label = name or f"{request.node.name[:40]}-{created}"
        return GitRepo.create(repos_root / f"{label}-{time.monotonic_ns()}", branch=branch)

    return make


@pytest.fixture(autouse=True)
def _isolated_git_cache(settings: Any, tmp_path: Path) -> None:
    settings.SYNC_GIT_CACHE_DIR = tmp_path / "git-cache"


# --- A real Celery worker --------------------------------------------------------------

WORKER_ENV_DEFAULTS = {
    # Short limits so lease expiry and SIGKILL recovery happen within a test.
    "SYNC_SOFT_TIME_LIMIT": "20",
    "SYNC_HARD_TIME_LIMIT": "25",
    "SYNC_LEASE_SECONDS": "30",
    "SYNC_RETRY_BACKOFF_MAX": "2",
}


def worker_database_url() -> str:
    """A URL for the test database the test process is using right now."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"


class WorkerProcess:
    def __init__(self, env: dict[str, str], concurrency: int, log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.concurrency = concurrency
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        # Its own node name, so readiness waits for this worker's answer, not an earlier one's.
        self.hostname = host_format(f"test-{os.getpid()}-{time.monotonic_ns()}@%h")

    def start(self) -> None:
        # Earlier tests of this session may have left messages no worker took (ticks
        # without a worker); a worker of this test must not run them against its data.
        purge_session_queues()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "project", "worker",
                "--pool", "prefork", "--concurrency", str(self.concurrency),
                "--loglevel", "INFO", "--without-mingle", "--without-gossip",
                "--hostname", self.hostname, *self.args,
            ],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        from project.celery_app import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()}")

    def child_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def worker_factory(
    transactional_db: None, repos_root: Path, tmp_path: Path, settings: Any
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes that share this test's database and broker."""
    workers: list[WorkerProcess] = []

    def start(concurrency: int = 2, args: tuple[str, ...] = (), **env_overrides: str) -> WorkerProcess:
        env = {
            **os.environ,
            **WORKER_ENV_DEFAULTS,
            "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "SYNC_ALLOWED_LOCAL_ROOTS": ",".join(settings.SYNC_ALLOWED_LOCAL_ROOTS),
            "SYNC_GIT_CACHE_DIR": str(tmp_path / f"worker-git-cache-{len(workers)}"),
            "VAR_DIR": str(settings.VAR_DIR),
            "PYTHONPATH": str(ROOT),
            **env_overrides,
        }
        worker = WorkerProcess(env, concurrency, tmp_path / f"worker-{len(workers)}.log", args)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_worker(worker_factory: Callable[..., WorkerProcess]) -> WorkerProcess:
    return worker_factory()


def tick_with_broker_down() -> subprocess.CompletedProcess[str]:
    """Run ``manage.py tick`` in a process whose broker and cache point at a closed port."""
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        "CACHE_URL": "redis://127.0.0.1:1/0",
    }
    return subprocess.run(
        [sys.executable, "manage.py", "tick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (for cross-process effects)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout} s")
