"""A whole private control plane for one chaos test: its own PostgreSQL, Redis and processes.

``ChaosStack`` starts a PostgreSQL cluster (``initdb``) and a Valkey server of its own,
migrates a database into it, and runs workers, beat and ticks as real processes
pointed at them. Faults (kill, stop, flush, partition) land only on these servers and
processes, never on the machine's shared PostgreSQL and Redis. The test process reads
the invariants from the same database through Django's ORM (``stack.orm()``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

from celery.utils.nodenames import host_format

from tests.chaos.servers import PrivateRedis
from tests.pgcluster import PostgresCluster, use_as_default_database

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Short limits so lease expiry happens within a test (the ordering soft < hard < lease
# < visibility timeout still holds; project.checks refuses anything else).
CHAOS_ENV = {
    "SYNC_SOFT_TIME_LIMIT": "20",
    "SYNC_HARD_TIME_LIMIT": "25",
    "SYNC_LEASE_SECONDS": "30",
    "SYNC_STRANDED_AFTER_SECONDS": "20",
    # Sessions of a cut-off host release their row locks within seconds, not minutes.
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": "10",
    "DATABASE_KEEPALIVE_IDLE": "6",
    "SYNC_RETRY_BACKOFF_MAX": "2",
    # Below the soft time limit, as in production (project.checks).
    "BROKER_SOCKET_TIMEOUT": "10",
    "HEALTH_DOCKER_ENABLED": "false",
}


class Proc:
    """A long-lived process of the stack (worker, beat), in its own session, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.killpg(self.pid, sig)

    def children(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.process is not None
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class Worker(Proc):
    hostname: str

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker logs that it is ready (no broadcast ping: the broker may be the fault)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            if " ready." in self.log(tail=200_000):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout} s:\n{self.log()}")


class ChaosStack:
    def __init__(self, root: Path, pg: PostgresCluster, redis: PrivateRedis, dbname: str = "fcp_chaos") -> None:
        self.root = root
        self.pg = pg
        self.redis = redis
        self.dbname = dbname
        self.procs: list[Proc] = []
        self.overrides: dict[str, str] = {}
        self.db_blocker: Any = None  # pytest-django's blocker, set by the fixture
        self.repos = root / "repos"
        self.repos.mkdir(exist_ok=True)

    # --- set-up -----------------------------------------------------------------------
    @classmethod
    @contextmanager
    def running(cls, root: Path, persist_redis: bool = False, **env: str) -> Iterator[ChaosStack]:
        pg = PostgresCluster.create()
        redis = PrivateRedis(persist=persist_redis)
        stack = cls(root, pg, redis)
        stack.overrides.update(env)
        try:
            redis.start()
            pg.create_database(stack.dbname)
            stack.manage("migrate", "--no-input", timeout=300)
            yield stack
        finally:
            for proc in reversed(stack.procs):
                proc.stop()
            redis.destroy()
            pg.destroy()

    def database_url(self) -> str:
        return self.pg.url(self.dbname)

    def env(self, **overrides: str) -> dict[str, str]:
        var = self.root / "var"
        var.mkdir(exist_ok=True)
        base = {
            **os.environ,
            **CHAOS_ENV,
            "DATABASE_URL": self.database_url(),
            "CELERY_BROKER_URL": self.redis.url(0),
            "CELERY_RESULT_BACKEND": self.redis.url(0),
            "REDIS_URL": self.redis.url(0),
            "VAR_DIR": str(var),
            "PYTHONPATH": str(ROOT),
            "FCP_EMBEDDED": "",
            "SYNC_ALLOWED_LOCAL_ROOTS": str(self.repos),
        }
        base.pop("CACHE_URL", None)
        return {**base, **self.overrides, **overrides}

    def manage(
        self, *args: str, timeout: float = 120, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def tick(self) -> dict[str, Any]:
        """One master tick, run in a fresh process like a worker would run it."""
        return dict(json.loads(self.manage("tick").stdout))

    # --- processes ----------------------------------------------------------------------
    def start_worker(
        self, name: str = "", pool: str = "prefork", concurrency: int = 2, queues: str = "", wait: bool = True,
        as_deployed: bool = False, **env: str,
    ) -> Worker:  # fmt: skip
        """A worker; ``as_deployed`` keeps mingle and gossip on, as make run and production run it."""
        name = name or f"worker{len(self.procs)}"
        hostname = host_format(f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h")
        argv = [PYTHON, "-m", "celery", "-A", "project", "worker", "--pool", pool, "--concurrency", str(concurrency),
                "--loglevel", "INFO", "--hostname", hostname]  # fmt: skip
        if not as_deployed:
            argv += ["--without-mingle", "--without-gossip"]
        if queues:
            argv += ["--queues", queues]
        worker_env = {"SYNC_GIT_CACHE_DIR": str(self.root / f"git-cache-{name}"), **env}
        worker = Worker(name, argv, self.env(**worker_env), self.root / f"{name}.log")
        worker.hostname = hostname
        self.procs.append(worker)
        worker.start()
        if wait:
            worker.wait_ready()
        return worker

    def start_beat(self, name: str = "beat") -> Proc:
        argv = [PYTHON, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO",
                "--schedule", str(self.root / f"{name}-schedule")]  # fmt: skip
        beat = Proc(name, argv, self.env(), self.root / f"{name}.log")
        self.procs.append(beat)
        return beat.start()

    # --- reading the outcome --------------------------------------------------------------
    @contextmanager
    def orm(self) -> Iterator[None]:
        """Django's ORM in the test process, pointed at this stack's database."""
        unblock = self.db_blocker.unblock() if self.db_blocker is not None else nullcontext()
        with unblock, use_as_default_database(self.pg, self.dbname):
            yield
