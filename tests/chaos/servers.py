"""Servers a chaos test owns: a private Valkey (Redis protocol) to kill, flush and restart.

Never the machine's shared Redis: every fault lands on a server this test started.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from project.embedded import free_port, server_command, wait_until_listening


class PrivateRedis:
    """One valkey-server on a free port; ``persist`` keeps an append-only file across restarts."""

    def __init__(self, persist: bool = False) -> None:
        self.persist = persist
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fcp-chaos-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5)

    def start(self) -> None:
        command = server_command(self.port, self.dir, self.persist)
        if self.persist:
            command += ["--appendfsync", "always"]  # a kill -9 loses nothing acknowledged
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_listening(self.port)

    def kill(self) -> None:
        """SIGKILL: what an OOM kill or a host crash does (no shutdown save)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
