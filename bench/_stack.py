"""The pieces of a real stack a worker benchmark runs: Git repositories, the project's
environment, Celery processes (workers, beat) and waiting on them.

Shared by ``bench/throughput.py`` and ``bench/sustained.py``. Imported before
``django.setup()``: ``project_environment`` points the settings at the benchmark's
private servers, so nothing here imports Django models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIT_IDENTITY = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"]


def make_repos(root: Path, count: int) -> list[Path]:
    """``count`` small repositories, three Switch manifests each, on branch main."""
    paths = []
    for r in range(count):
        path = root / f"repo-{r:02}"
        (path / "manifests").mkdir(parents=True)
        docs = "---\n".join(
            f"apiVersion: fabric.example/v1\nkind: Switch\nmetadata:\n  name: leaf{i}\nspec:\n  asn: {65000 + i}\n"
            for i in range(3)
        )
        (path / "manifests" / "switches.yaml").write_text(docs)
        for args in (["init", "--quiet", "-b", "main"], ["add", "--all"], ["commit", "--quiet", "-m", "switches"]):
            subprocess.run(["git", *GIT_IDENTITY, *args], cwd=path, check=True, capture_output=True)
        paths.append(path)
    return paths


def project_environment(work: Path, broker_url: str, database_url: str, repos_root: Path) -> dict[str, str]:
    """The project's settings for a benchmark's private servers, set in ``os.environ`` too.

    Returned so the Celery processes started afterwards get the same settings.
    """
    env = {
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "REDIS_URL": broker_url,
        "SYNC_ALLOWED_LOCAL_ROOTS": str(repos_root),
        "SYNC_GIT_CACHE_DIR": str(work / "git-cache"),
        "VAR_DIR": str(work / "var"),
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    os.environ.update(env)
    os.environ.pop("CACHE_URL", None)
    return {**{k: v for k, v in os.environ.items() if k != "CACHE_URL"}, "PYTHONPATH": str(ROOT)}


def hostname(name: str) -> str:
    return f"{name}-{os.getpid()}@bench"


class CeleryProcess:
    """One ``celery`` command in a session of its own, its output in ``log``."""

    def __init__(self, name: str, arguments: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.hostname = hostname(name)
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", *arguments], cwd=ROOT, env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.hostname} exited:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


class Worker(CeleryProcess):
    """``celery -A app worker --pool prefork --concurrency 2``, optionally on named queues."""

    def __init__(
        self, name: str, app: str, env: dict[str, str], log: Path, include: str = "", queues: str = ""
    ) -> None:
        arguments = [
            "-A", app, "worker", "--pool", "prefork", "--concurrency", "2",
            "--without-mingle", "--without-gossip", "--hostname", hostname(name),
            "--loglevel", os.environ.get("BENCH_LOGLEVEL", "WARNING"),
        ]  # fmt: skip
        if include:
            arguments += ["--include", include]
        if queues:
            arguments += ["--queues", queues]
        super().__init__(name, arguments, env, log)

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [self.process.pid, *(int(pid) for pid in out.stdout.split())]

    def rss_mb(self) -> dict[str, float]:
        """VmRSS of the main process and each pool child, in MB."""
        sizes: dict[str, float] = {}
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            sizes["main" if pid == self.process.pid else f"child-{pid}"] = round(kb / 1024, 1)
        return sizes

    def cpu_seconds(self) -> float:
        """User + system CPU of the main process and its pool children so far."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


def wait(
    predicate: Callable[[], Any], timeout: float, what: str, processes: Sequence[CeleryProcess], interval: float = 0.2
) -> Any:
    """Poll ``predicate`` until it is truthy; fail early when one of ``processes`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        for process in processes:
            process.check_alive()
        time.sleep(interval)
    logs = "\n".join(f"--- {p.hostname}:\n{p.log_path.read_text(errors='replace')[-3000:]}" for p in processes)
    raise TimeoutError(f"{what} not within {timeout} s\n{logs}")
