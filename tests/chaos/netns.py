"""Hosts for a chaos test: network namespaces joined to the root namespace by veth pairs.

``Network`` creates one namespace per host, each with a veth pair on its own /30 of
10.231.0.0/16: the root end gets the first address (where the private PostgreSQL and
Valkey listen for that host), the host end the second. A partition takes the link
down (both ends lose carrier: packets are dropped, open TCP connections hang as on a
pulled cable, new ones fail); healing brings it back up and the same connections
carry on. Names carry the test's pid and the /30 is allocated under a file lock, so
parallel test runs never collide; everything is deleted on exit, on failure too, and
leftovers of a run that was killed (its pid gone) are swept on the next start.

``serve_hosts`` reconfigures a ``ChaosStack``'s private PostgreSQL and Valkey to also
listen on the root-side addresses (a workaround until ``tests/pgcluster.py`` and
``tests/chaos/servers.py`` take a bind parameter).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.chaos.stack import ChaosStack

SUBNET = ipaddress.IPv4Network("10.231.0.0/16")
PREFIX = "fcp"  # every namespace and veth this module creates starts with it
LOCK_FILE = Path("/run/lock/fcp-chaos-netns.lock") if Path("/run/lock").is_dir() else Path("/tmp/fcp-chaos-netns.lock")
_NAME = re.compile(rf"^{PREFIX}(\d+)[nr]\d+$")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command) for network namespaces"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}n99"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL what still runs inside: a namespace outlives ``ip netns delete`` while it has processes."""
    for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep_leftovers() -> None:
    """Delete namespaces and veths of earlier runs whose process is gone (killed before cleanup)."""
    namespaces = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = re.findall(rf"^\d+: ({PREFIX}\d+r\d+)[@:]", _ip("-o", "link", "show", check=False).stdout, re.M)
    for name in namespaces + links:
        match = _NAME.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        if name in namespaces:
            _kill_namespace_processes(name)
            _ip("netns", "delete", name, check=False)
        else:
            _ip("link", "delete", name, check=False)


def _used_slots() -> set[int]:
    """The /30 slots of SUBNET that some interface in the root namespace already uses."""
    used = set()
    for address in re.findall(r"inet (10\.231\.\d+\.\d+)/", _ip("-o", "-4", "addr", "show", check=False).stdout):
        used.add((int(ipaddress.IPv4Address(address)) - int(SUBNET.network_address)) // 4)
    return used


@dataclass
class Host:
    """One namespace: ``address`` is the host's own, ``server_address`` the root end it reaches."""

    name: str  # the namespace, and the host end of the pair inside it
    veth: str  # the root end of the pair
    address: str
    server_address: str
    partitioned: bool = False

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def pids(self) -> list[int]:
        return [int(pid) for pid in _ip("netns", "pids", self.name, check=False).stdout.split()]


class Network:
    """Hosts of one test: ``with Network.create(n) as network``; deleted on exit whatever happened."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []

    @classmethod
    @contextmanager
    def create(cls, count: int) -> Iterator[Network]:
        network = cls()
        try:
            network._add_hosts(count)
            yield network
        finally:
            network.destroy()

    def _add_hosts(self, count: int) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        # The lock makes "find free /30s, then assign them" atomic across parallel runs.
        with LOCK_FILE.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sweep_leftovers()
            used = _used_slots()
            slots = SUBNET.num_addresses // 4
            slot = os.getpid() % slots
            for index in range(count):
                while slot in used or slot == 0:
                    slot = (slot + 1) % slots
                used.add(slot)
                host = self._plan_host(index, slot)
                # Recorded before it exists, so destroy() removes a half-built host too.
                self.hosts.append(host)
                self._build(host)

    @staticmethod
    def _plan_host(index: int, slot: int) -> Host:
        base = int(SUBNET.network_address) + 4 * slot
        pid = os.getpid()
        # At most 15 characters for an interface name: "fcp" + pid (≤ 7) + "r"/"n" + index.
        return Host(name=f"{PREFIX}{pid}n{index}", veth=f"{PREFIX}{pid}r{index}",
                    server_address=str(ipaddress.IPv4Address(base + 1)),
                    address=str(ipaddress.IPv4Address(base + 2)))  # fmt: skip

    @staticmethod
    def _build(host: Host) -> None:
        inner = host.name
        _ip("netns", "add", host.name)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inner, "netns", host.name)
        _ip("addr", "add", f"{host.server_address}/30", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        _ip("-n", host.name, "addr", "add", f"{host.address}/30", "dev", inner)
        _ip("-n", host.name, "link", "set", inner, "up")
        _ip("-n", host.name, "link", "set", "lo", "up")

    def partition(self, host: Host) -> None:
        """Cut ``host`` off: its link goes down, packets in flight and new ones are dropped."""
        _ip("link", "set", host.veth, "down")
        host.partitioned = True

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")
        host.partitioned = False
        # Wait for carrier on both ends, so "healed" means packets flow again.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = _ip("-o", "link", "show", host.veth, check=False).stdout
            if "LOWER_UP" in state and "NO-CARRIER" not in state:
                return
            time.sleep(0.05)
        raise TimeoutError(f"link {host.veth} has no carrier 10 s after healing")

    def destroy(self) -> None:
        """Kill what runs inside each namespace, then delete it and its veth; never raises."""
        for host in self.hosts:
            with suppress(Exception):
                _kill_namespace_processes(host.name)
            _ip("netns", "delete", host.name, check=False)
            # Deleting the namespace deletes its end of the pair, and with it ours; this
            # is for a host whose namespace could not be created.
            _ip("link", "delete", host.veth, check=False)
        self.hosts = []


def serve_hosts(stack: ChaosStack, network: Network) -> None:
    """Make the stack's private PostgreSQL and Valkey reachable from every host of ``network``.

    Both listen on loopback only (``tests/pgcluster.py``, ``tests/chaos/servers.py``);
    they now also listen on each host's root-side veth address, and PostgreSQL trusts
    exactly those hosts' addresses. Both are restarted, so call this before starting
    processes (the stack has migrated; nothing is queued yet).
    """
    from project.embedded import server_command, wait_until_listening

    servers = [host.server_address for host in network.hosts]
    pg = stack.pg
    listen = ",".join(["127.0.0.1", *servers])
    # ALTER SYSTEM writes postgresql.auto.conf, which is read after postgresql.conf.
    with pg.connect() as conn:
        conn.execute(f"ALTER SYSTEM SET listen_addresses = '{listen}'")
        row = conn.execute("SHOW hba_file").fetchone()
    assert row is not None
    rules = "".join(f"host all all {host.address}/32 trust\n" for host in network.hosts)
    pg._run("sh", "-c", f"cat >> {row[0]}", stdin=rules)
    pg.restart()

    redis = stack.redis
    redis.kill()
    command = server_command(redis.port, redis.dir, redis.persist)
    # "--bind 127.0.0.1" becomes "--bind 127.0.0.1 <server addresses>". Protected mode
    # refuses every non-loopback client of a server without a password; it goes, as the
    # server listens only on loopback and on veth ends no other machine can reach.
    at = command.index("--bind") + 2
    command[at:at] = servers
    command[command.index("--protected-mode") + 1] = "no"
    if redis.persist:
        command += ["--appendfsync", "always"]
    redis.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_listening(redis.port)


def host_env(stack: ChaosStack, host: Host, **overrides: str) -> dict[str, str]:
    """``stack.env`` for a process on ``host``: the servers at the host's root-side address."""
    database = stack.database_url().replace("@127.0.0.1:", f"@{host.server_address}:")
    broker = f"redis://{host.server_address}:{stack.redis.port}/0"
    return stack.env(
        DATABASE_URL=database, CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker, REDIS_URL=broker, **overrides
    )
