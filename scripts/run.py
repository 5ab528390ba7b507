"""``make run``: the whole control plane in the foreground; Ctrl-C stops it all.

1. Migrate the database, collect static files, and bootstrap (admin user, demo
   fabric backed by a real local Git repository, the master beat entry). With
   ``DEMO_CLUSTER=1`` and a cached kube-apiserver, first start the demo fabric's own
   private cluster, seeded with one out-of-band change (``scripts/demo_cluster.py``),
   and let bootstrap connect the demo fabric to it; without, no cluster is needed.
2. Start, under one honcho process manager: the embedded Valkey broker (only when
   ``CELERY_BROKER_URL`` is not set), a Celery worker (queues celery, sync,
   scaling), a one-process worker for the tick's own queue, a threads-pool worker for
   health checks, Celery Beat with django-celery-beat's DatabaseScheduler, and
   gunicorn serving the admin.
3. Print the admin URL. Every process runs under ``scripts/supervise.py``, which
   restarts it with backoff when it exits (a worker hit by kombu's Redis-transport bug
   after a broker restart comes back on its own); Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from honcho.manager import Manager

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def manage(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=True, env=env)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def prepare_var_dir(var_dir: Path) -> None:
    """Create var/ (private: it holds the SQLite database and the secret key) and the key.

    Settings never write files on import; this is the one place the embedded mode's
    files are created. umask 077 makes every file the processes create private too.
    """
    os.umask(0o077)
    var_dir.mkdir(parents=True, exist_ok=True)
    var_dir.chmod(0o700)
    (var_dir / "static").mkdir(exist_ok=True)  # whitenoise warns on every request without it
    key_file = var_dir / "secret_key"
    if "DJANGO_SECRET_KEY" not in os.environ and not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.chdir(ROOT)
    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var"))
    prepare_var_dir(var_dir)
    web_host = os.environ.get("WEB_HOST", "127.0.0.1")
    web_port = int(os.environ.get("WEB_PORT", "8000"))
    processes: dict[str, str] = {}

    if "CELERY_BROKER_URL" not in os.environ:
        broker_port = int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))
        if port_in_use(broker_port):
            print(f"Port {broker_port} is taken: set EMBEDDED_REDIS_PORT or CELERY_BROKER_URL.", file=sys.stderr)
            return 1
        os.environ["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{broker_port}/0"
        processes["broker"] = f"{PYTHON} -m project.embedded --port {broker_port} --dir {var_dir / 'valkey'}"
    if port_in_use(web_port):
        print(f"Port {web_port} is taken: set WEB_PORT.", file=sys.stderr)
        return 1

    manage("migrate", "--noinput", "-v", "0")
    manage("collectstatic", "--noinput", "-v", "0")
    demo: Any = None
    said = ""
    if os.environ.get("DEMO_CLUSTER") == "1":
        # Imported only when asked for: it brings the test harness (and its dependencies) along.
        from demo_cluster import start_if_wanted

        demo, said = start_if_wanted(var_dir, True)
    try:
        if said and demo is None:  # why there is none; a running one is announced with the admin URL
            print(said, flush=True)
        env = dict(os.environ)
        if demo is not None:
            env["DEMO_CLUSTER_FILE"] = str(demo.connection_file)
        manage("bootstrap", env=env)
        if demo is not None:
            demo.forget_connection()  # the token is stored encrypted now
        return serve(processes, web_host, web_port, demo_server=demo.server if demo else "")
    finally:
        if demo is not None:
            demo.stop()


def serve(processes: dict[str, str], web_host: str, web_port: int, demo_server: str = "") -> int:
    """Run the long-lived processes under one honcho manager until one stops or Ctrl-C."""
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    processes["worker"] = (
        f"{PYTHON} -m celery -A project worker --loglevel INFO --concurrency {concurrency} --queues celery,sync,scaling"
    )
    # The tick has a queue and a process of its own, so it starts on time however many
    # syncs wait (the queues are declared in project/settings.py, CELERY_TASK_ROUTES).
    processes["tick"] = (
        f"{PYTHON} -m celery -A project worker --loglevel INFO --concurrency 1 --queues tick --hostname tick@%h"
    )
    # Health checks wait on I/O: a threads pool runs a whole sweep at once, so a sweep
    # lasts as long as its slowest check instead of queueing behind two processes.
    os.environ.setdefault("HEALTH_QUEUE", "health")
    processes["health"] = (
        f"{PYTHON} -m celery -A project worker --loglevel INFO --pool threads --concurrency 16 "
        f"--queues {os.environ['HEALTH_QUEUE']} --hostname health@%h"
    )
    processes["beat"] = (
        f"{PYTHON} -m celery -A project beat --loglevel INFO "
        "--scheduler django_celery_beat.schedulers:DatabaseScheduler"
    )
    processes["web"] = (
        f"{PYTHON} -m gunicorn project.wsgi:application --bind {web_host}:{web_port} "
        "--workers 2 --access-logfile - --graceful-timeout 5"
    )

    # Flower, Celery's own live view of workers and tasks, on the same broker (task events
    # are on). Local only: it shows task arguments and offers worker controls.
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    if flower_port and not port_in_use(flower_port):
        processes["flower"] = (
            f"{PYTHON} -m celery -A project flower --address=127.0.0.1 --port={flower_port} "
            f"--persistent=True --db={Path(os.environ.get('VAR_DIR', ROOT / 'var')) / 'flower.db'}"
        )
    print(f"\n  Admin: http://{web_host}:{web_port}/admin/   (Ctrl-C stops everything)", flush=True)
    if "flower" in processes:
        print(f"  Flower: http://127.0.0.1:{flower_port}/", flush=True)
    if demo_server:
        print(f"  Demo cluster: {demo_server} (the demo fabric shows its drift after the first tick)", flush=True)
    print(flush=True)
    manager = Manager()
    supervise = ROOT / "scripts" / "supervise.py"
    for name, command in processes.items():
        supervised = f"{PYTHON} {supervise} --name {name} -- {command}"
        manager.add_process(name, supervised, env=dict(os.environ), cwd=str(ROOT))
    manager.loop()
    return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
