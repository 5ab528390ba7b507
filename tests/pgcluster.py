"""A private PostgreSQL cluster a test starts, stops and throws away itself.

Tests that take PostgreSQL down must not touch the machine's server: other test
sessions (and other people) use it. ``PostgresCluster`` runs ``initdb`` and ``pg_ctl``
in a temporary directory, on a free loopback port, with trust authentication and
durability switched off (it lives for one test). ``initdb`` refuses to run as root, so
under root the cluster belongs to the ``postgres`` system user and every command runs
through ``runuser``.

``use_as_default_database`` points Django's default connection at one of its
databases for the length of a ``with`` block, so the code under test really talks to
the server the test is about to stop.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest

from project.embedded import free_port

# Used when running as root: initdb refuses root, and the data directory must belong
# to the user the server runs as.
SERVICE_USER = "postgres"


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl live: $PG_BINDIR, then PATH, then the newest Debian install."""
    if configured := os.environ.get("PG_BINDIR"):
        return Path(configured)
    if on_path := shutil.which("initdb"):
        return Path(on_path).parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name), reverse=True
    )
    return installed[0].parent if installed else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot be created here, or None when it can."""
    bindir = find_bindir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        return "needs the PostgreSQL server binaries (initdb, pg_ctl; set PG_BINDIR)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root needs a {SERVICE_USER!r} user for initdb"
        if shutil.which("runuser") is None:
            return "running as root needs runuser to drop privileges for initdb"
    return None


class PostgresCluster:
    """One throw-away PostgreSQL server: ``create()``, ``start()``, ``stop()``, ``restart()``, ``url()``."""

    def __init__(self, root: Path, bindir: Path, port: int) -> None:
        self.root = root
        self.bindir = bindir
        self.port = port
        self.data = root / "data"
        self.logfile = root / "server.log"
        self.user = "postgres"  # the superuser initdb creates (-U)

    @classmethod
    def create(cls, attempts: int = 3) -> PostgresCluster:
        """initdb in a new temporary directory and start the server on a free port."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        bindir = find_bindir()
        assert bindir is not None
        root = Path(tempfile.mkdtemp(prefix="fcp-pgcluster-"))
        if os.geteuid() == 0:
            service = pwd.getpwnam(SERVICE_USER)
            os.chown(root, service.pw_uid, service.pw_gid)
        cluster = cls(root, bindir, free_port())
        try:
            cluster._run("initdb", "-D", str(cluster.data), "-U", cluster.user, "-A", "trust", "-E", "UTF8",
                         "--no-sync", "--no-instructions")  # fmt: skip
            for attempt in range(attempts):
                cluster._configure()
                try:
                    cluster.start()
                    return cluster
                except subprocess.CalledProcessError:
                    # Another process took the port between free_port() and the bind: try another.
                    if attempt == attempts - 1:
                        raise
                    cluster.port = free_port()
        except BaseException:
            cluster.destroy()
            raise
        raise AssertionError("unreachable")

    def _configure(self) -> None:
        # Written last in the file, so these win over initdb's defaults.
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
        }
        conf = self.data / "postgresql.auto.conf"
        self._run("sh", "-c", f"cat > {conf}", stdin="".join(f"{k} = {v}\n" for k, v in settings.items()))

    def _run(self, program: str, *args: str, stdin: str | None = None, timeout: float = 120) -> None:
        executable = str(self.bindir / program) if (self.bindir / program).exists() else program
        command = [executable, *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, input=stdin, timeout=timeout, cwd=self.root)

    def start(self, timeout: int = 60) -> None:
        """Start the server and return once it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", str(timeout), "start",
                  timeout=timeout + 10)  # fmt: skip
        self.wait_until_accepting(timeout)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` ends open sessions, as an operator's restart would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=70)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", timeout: int = 2) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=dbname, connect_timeout=timeout, autocommit=True
        )

    def wait_until_accepting(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def log(self) -> str:
        with suppress(OSError):
            return self.logfile.read_text(errors="replace")[-4000:]
        return ""

    def destroy(self) -> None:
        """Stop the server if it runs (immediately: nothing in it is worth keeping) and delete its files."""
        if self.is_running():
            with suppress(subprocess.SubprocessError, OSError):
                self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def use_as_default_database(cluster: PostgresCluster, dbname: str) -> Iterator[None]:
    """Point Django's ``default`` connection (in every thread) at ``dbname`` on ``cluster``.

    Django builds each thread's connection from the one settings dict of the alias, so
    changing that dict moves new connections; the old ones are closed first. The
    original settings come back on exit, whatever happened.
    """
    from django.db import connections

    settings_dict = connections["default"].settings_dict
    saved = dict(settings_dict)
    connections.close_all()
    settings_dict.update(HOST="127.0.0.1", PORT=str(cluster.port), USER=cluster.user, PASSWORD="", NAME=dbname)
    try:
        yield
    finally:
        with suppress(Exception):
            connections.close_all()
        settings_dict.clear()
        settings_dict.update(saved)


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running private PostgreSQL cluster for this test; stopped and deleted afterwards."""
    from tests.conftest import require

    reason = unavailable_reason()
    require(reason is None, reason or "")
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()
