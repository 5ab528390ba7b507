"""A real Kubernetes API server (and its etcd) that the test session starts and owns.

No stand-in: ``KubeCluster.launch()`` starts Debian's ``etcd`` and the kube-apiserver
that ``scripts/kube-apiserver.sh build`` built and cached, both on free loopback ports,
with their data in a temporary directory:

1. Credentials are made here with ``cryptography``: a CA and a serving certificate it
   signed (SAN 127.0.0.1 and localhost), the service-account signing key pair, and a
   static token file with one admin in ``system:masters``.
2. etcd starts, then the apiserver (RBAC, audit log at level Metadata); both run in
   their own process groups and die with the test process (PR_SET_PDEATHSIG).
3. ``/readyz`` answers ok; the Hedgehog CRDs from ``sync/live/crds/`` are created and
   waited on until their condition ``Established`` is true.

The session fixture ``kube_cluster`` yields one such cluster; the fixture
``kube_namespace`` gives each test a fresh namespace in it. Without the binary (or
etcd) the tests skip on a laptop and fail in CI (``tests.conftest.require``).

The test owns the instance, so it may stop the apiserver (``stop_apiserver``) and start
it again (``start_apiserver``) on the same port, with etcd (and so every object) kept.
Requests are counted from the audit log: ``audit_mark()`` then ``audit_counts(since=...)``.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from project.embedded import free_port
from tests.kube_api import ROOT, KubeApi
from tests.kube_pki import cert_pem, key_pem, make_ca, make_serving_cert, service_account_keys

SCRIPT = ROOT / "scripts" / "kube-apiserver.sh"
ADMIN_USER = "fcp-admin"

# The apiserver's own loopback client would fill the log; only outside callers count.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  - level: None
    users: ["system:apiserver"]
  - level: None
    nonResourceURLs: ["/readyz*", "/healthz*", "/livez*"]
  - level: Metadata
"""


# --- Finding the binaries -----------------------------------------------------------------


def apiserver_binary() -> Path | None:
    """$KUBE_APISERVER, else the binary ``scripts/kube-apiserver.sh build`` cached."""
    if configured := os.environ.get("KUBE_APISERVER"):
        return Path(configured) if os.access(configured, os.X_OK) else None
    out = subprocess.run(["bash", str(SCRIPT), "path"], capture_output=True, text=True, check=False)
    path = out.stdout.strip()
    return Path(path) if out.returncode == 0 and path else None


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if apiserver_binary() is None:
        return "needs a kube-apiserver binary: run `bash scripts/kube-apiserver.sh build` (or set KUBE_APISERVER)"
    if shutil.which("etcd") is None:
        return "needs etcd (Debian package etcd-server; `bash scripts/kube-apiserver.sh build` installs it)"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes, however it goes."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --- The cluster ----------------------------------------------------------------------------


class KubeCluster(KubeApi):
    """One private etcd + kube-apiserver. See the module docstring for the life cycle."""

    def __init__(self, root: Path, binary: Path) -> None:
        self.root = root
        self.binary = binary
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.audit_log = root / "audit.log"
        self.etcd_process: subprocess.Popen[bytes] | None = None
        self.apiserver_process: subprocess.Popen[bytes] | None = None
        ca_pem = self._write_credentials()
        super().__init__(f"https://127.0.0.1:{self.port}", ca_pem, secrets.token_urlsafe(32), ADMIN_USER)
        # token,user,uid,"group1,group2"
        (root / "tokens.csv").write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')

    # Life cycle ---------------------------------------------------------------------------

    @classmethod
    def launch(cls) -> KubeCluster:
        """Start etcd and the apiserver in a new temporary directory, and install the CRDs."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        binary = apiserver_binary()
        assert binary is not None
        cluster = cls(Path(tempfile.mkdtemp(prefix="fcp-kube-")), binary)
        try:
            cluster.start_etcd()
            cluster.start_apiserver()
            cluster.install_crds()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _write_credentials(self) -> str:
        """Write the apiserver's certificate, keys and audit policy; return the CA's PEM."""
        ca, ca_key = make_ca()
        cert, key = make_serving_cert(ca, ca_key)
        ca_pem = cert_pem(ca)
        self.ca_file = self.root / "ca.crt"
        self.ca_file.write_text(ca_pem)
        (self.root / "apiserver.crt").write_text(cert_pem(cert) + ca_pem)
        (self.root / "apiserver.key").write_bytes(key_pem(key))
        (self.root / "apiserver.key").chmod(0o600)
        sa_private, sa_public = service_account_keys()
        (self.root / "sa.key").write_bytes(sa_private)
        (self.root / "sa.pub").write_bytes(sa_public)
        (self.root / "audit-policy.yaml").write_text(AUDIT_POLICY)
        return ca_pem

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip

    def start_etcd(self, timeout: float = 30) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd_process = self._spawn(
            "etcd",
            [
                "etcd", "--name", "fcp-test", "--data-dir", str(self.root / "etcd"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"fcp-test={peer}", "--initial-cluster-state", "new",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.etcd_process.poll() is not None:
                raise RuntimeError(f"etcd exited early:\n{self.log('etcd')}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    return
            time.sleep(0.1)
        raise TimeoutError(f"etcd not healthy after {timeout} s:\n{self.log('etcd')}")

    def apiserver_argv(self) -> list[str]:
        root = self.root
        return [
            str(self.binary),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={root / 'certs'}",
            f"--tls-cert-file={root / 'apiserver.crt'}",
            f"--tls-private-key-file={root / 'apiserver.key'}",
            f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={root / 'sa.pub'}",
            f"--service-account-signing-key-file={root / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            f"--audit-policy-file={root / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            # Each event is written before the request goes on, so a count taken right
            # after a call already includes it.
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=1024",
            "--profiling=false",
        ]

    def start_apiserver(self, timeout: float = 120) -> None:
        """Start the apiserver (again) on its port and wait for /readyz."""
        if self.apiserver_process is not None and self.apiserver_process.poll() is None:
            return
        self.apiserver_process = self._spawn("apiserver", self.apiserver_argv())
        deadline = time.monotonic() + timeout
        with self.client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.apiserver_process.poll() is not None:
                    raise RuntimeError(f"kube-apiserver exited early:\n{self.log('apiserver')}")
                with suppress(httpx.HTTPError):
                    if client.get("/readyz").text == "ok":
                        return
                time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready after {timeout} s:\n{self.log('apiserver')}")

    def stop_apiserver(self, graceful: bool = True) -> None:
        """Stop the apiserver (its process group); etcd, and so every object, stays.

        ``graceful=False`` kills it outright, as a crash or a pulled cable would."""
        self._stop(self.apiserver_process, graceful)
        self.apiserver_process = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    @contextmanager
    def apiserver_stopped(self, graceful: bool = True) -> Iterator[None]:
        """The apiserver is down inside the block and ready again after it, whatever happened."""
        self.stop_apiserver(graceful)
        try:
            yield
        finally:
            self.start_apiserver()

    def apiserver_running(self) -> bool:
        return self.apiserver_process is not None and self.apiserver_process.poll() is None

    @staticmethod
    def _stop(process: subprocess.Popen[bytes] | None, graceful: bool = True) -> None:
        if process is None or process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def destroy(self) -> None:
        """Stop both process groups and delete the data directory."""
        self._stop(self.apiserver_process)
        self._stop(self.etcd_process)
        self.apiserver_process = self.etcd_process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self, name: str, tail: int = 6000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    # Counting requests --------------------------------------------------------------------

    def audit_mark(self) -> int:
        """A position in the audit log: pass it as ``since`` to count only later requests."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit_events(self, since: int = 0) -> list[dict[str, Any]]:
        """One audit event per request after ``since`` (its first stage), oldest first."""
        if not self.audit_log.exists():
            return []
        with self.audit_log.open("rb") as log:
            log.seek(since)
            lines = log.read().splitlines()
        events, seen = [], set()
        for line in lines:
            with suppress(ValueError):
                event = json.loads(line)
                if event.get("auditID") not in seen:
                    seen.add(event.get("auditID"))
                    events.append(event)
        return events

    def audit_counts(
        self, since: int = 0, token: str | None = None, user: str | None = None, group: str | None = None
    ) -> Counter[tuple[str, str]]:
        """Requests after ``since`` as ``{(verb, resource): count}``; verbs are the apiserver's
        (``list``, ``watch``, ``get``, ``create``, ``patch``, ...). Narrow to the user of
        ``token`` (or ``user``) and to an API group (e.g. ``"vpc.githedgehog.com"``)."""
        if token is not None:
            user = self.user_of(token)
        counts: Counter[tuple[str, str]] = Counter()
        for event in self.audit_events(since):
            ref = event.get("objectRef") or {}
            if user is not None and event.get("user", {}).get("username") != user:
                continue
            if group is not None and ref.get("apiGroup", "") != group:
                continue
            counts[(event.get("verb", ""), ref.get("resource", event.get("requestURI", "")))] += 1
        return counts

    # Configuration for other clients ------------------------------------------------------

    def kubeconfig(self, token: str | None = None) -> dict[str, Any]:
        """A kubeconfig for this cluster (e.g. for kubectl or the kubernetes client)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fcp-test", "cluster": {
                "server": self.base_url, "certificate-authority-data": _b64(self.ca_pem)}}],
            "users": [{"name": "fcp-test", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "fcp-test", "context": {"cluster": "fcp-test", "user": "fcp-test"}}],
            "current-context": "fcp-test",
        }  # fmt: skip


# --- Helpers ------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- Fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """One real etcd + kube-apiserver for the session, with the Hedgehog CRDs Established.

    Skips without the binary on a laptop; fails in CI (see ``tests.conftest.require``).
    """
    from tests.conftest import require  # here, not at the top: conftest imports this module

    reason = unavailable_reason()
    require(reason is None, reason or "")
    cluster = KubeCluster.launch()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test (namespaces are never finalised here: no controller-manager)."""
    label = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return kube_cluster.create_namespace(f"{label}-{secrets.token_hex(3)}")
