"""Flower runs against the project's broker and sees its workers and tasks (issue 12).

Real: ``celery -A project flower`` (the command ``make run`` and deploy/compose.yaml
start) in a subprocess on a free port, a real worker on this session's broker, and a
real task; Flower's HTTP answers are read with httpx.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, WorkerProcess, wait_for

pytestmark = pytest.mark.worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def flower(settings: Any, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "project", "flower", "--address=127.0.0.1", f"--port={port}",
         f"--db={tmp_path / 'flower.db'}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{url}/healthcheck") == "OK", timeout=60, message=(tmp_path / "flower.log").read_text())
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _get(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def test_flower_lists_the_worker_and_counts_its_tasks(flower: str, celery_worker: WorkerProcess) -> None:
    celery_worker.wait_ready()
    from project.celery_app import app

    # Flower learns of workers from their events (task events are on in settings).
    wait_for(lambda: celery_worker.hostname in _get(f"{flower}/workers"), timeout=60,
             message="the worker never showed up in Flower")  # fmt: skip
    app.send_task("resilience.housekeeping")
    received = 'flower_events_total{task="resilience.housekeeping",type="task-received"'
    wait_for(lambda: received in _get(f"{flower}/metrics"), timeout=60, message="Flower saw no task event")
