"""Keep one process running: restart it when it exits, with backoff; stop it on SIGTERM.

    python scripts/supervise.py [--name worker] -- celery -A project worker ...

``make run`` wraps every long-running process in this, so a worker that exits (the
kombu Redis-transport bug after a broker restart, an OOM kill) comes back on its own
instead of leaving the system half up. Restarts back off like Kubernetes' (1 s
doubling to 30 s), and the backoff resets once the process has run for 60 s.
SIGTERM / SIGINT are passed on to the process, and the supervisor exits when it has
stopped. (The production topology uses the process manager's own restart policy:
systemd ``Restart=always`` or compose ``restart: unless-stopped``.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

INITIAL_BACKOFF = float(os.environ.get("SUPERVISE_INITIAL_BACKOFF", "1"))
MAX_BACKOFF = float(os.environ.get("SUPERVISE_MAX_BACKOFF", "30"))
HEALTHY_AFTER = float(os.environ.get("SUPERVISE_HEALTHY_AFTER", "60"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="process")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    backoff = INITIAL_BACKOFF
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        if stopping:
            return 0
        if time.monotonic() - started >= HEALTHY_AFTER:
            backoff = INITIAL_BACKOFF
        print(f"supervise: {args.name} exited with {code}; restarting in {backoff:g} s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return 0
        backoff = min(backoff * 2, MAX_BACKOFF)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
