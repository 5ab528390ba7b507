"""``DEMO_CLUSTER=1 make run``: the demo fabric's own private cluster, seeded with one
out-of-band change, connected by bootstrap; the first sync shows exactly that drift."""

from __future__ import annotations

import importlib.util
import stat
import sys
from io import StringIO
from pathlib import Path
from types import ModuleType

import pytest
from django.core.management import call_command

from core.models import Credential
from sync.models import ClusterMode, DriftedObject, DriftStatus, Fabric, FabricCluster
from tests.conftest import require
from tests.kube import unavailable_reason
from tests.kube_api import ROOT
from tests.livefabric import forget_k8s_breakers, sync_now  # noqa: F401

pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")


def demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_cluster", ROOT / "scripts" / "demo_cluster.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("demo_cluster", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def var_dir(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    var = tmp_path / "var"
    var.mkdir()
    settings.VAR_DIR = var
    settings.SYNC_ALLOWED_LOCAL_ROOTS = [*settings.SYNC_ALLOWED_LOCAL_ROOTS, str(var / "repos")]
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("DEMO_CLUSTER_FILE", raising=False)
    return var


def bootstrap(monkeypatch: pytest.MonkeyPatch, connection_file: Path | None = None) -> str:
    if connection_file is None:
        monkeypatch.delenv("DEMO_CLUSTER_FILE", raising=False)
    else:
        monkeypatch.setenv("DEMO_CLUSTER_FILE", str(connection_file))
    out = StringIO()
    call_command("bootstrap", stdout=out)
    return out.getvalue()


def test_the_demo_cluster_shows_a_drifted_demo_fabric_and_leaves_with_the_run(db, var_dir, monkeypatch):
    require(unavailable_reason() is None, unavailable_reason() or "")
    demo = demo_module().DemoCluster.start(var_dir)
    try:
        assert stat.S_IMODE(demo.connection_file.stat().st_mode) == 0o600  # it holds the token

        said = bootstrap(monkeypatch, demo.connection_file)

        assert f"fabric 'demo' connected to the demo cluster at {demo.server} (observe mode)" in said
        fabric = Fabric.objects.get(name="demo")
        cluster = FabricCluster.objects.get(fabric=fabric)
        assert (cluster.mode, cluster.namespaces, cluster.token.name) == (
            ClusterMode.OBSERVE,
            ["default"],
            "demo-cluster",
        )
        assert cluster.token.kind == Credential.Kind.BEARER_TOKEN

        sync_now(fabric, "schedule")  # what the first tick does

        cluster.refresh_from_db()
        assert cluster.drift_status == DriftStatus.OUT_OF_SYNC, cluster.last_error
        assert cluster.drift_counts == {"in_sync": 17, "drifted": 1, "missing": 0, "unmanaged": 0}
        row = DriftedObject.objects.get(fabric=fabric)
        assert (row.kind, row.name) == ("VPC", "vpc-web")
        assert row.diff == [
            {"path": "/spec/subnets/frontend/vlan", "desired": 1001, "live": 1999, "live_absent": False}
        ]
        # The token only goes in with reads: the observer cannot write (the README's observe RBAC).
        assert demo.kube.request("DELETE", demo.kube.path("vpc.githedgehog.com/v1beta1", "VPC", "default", "vpc-web"),
                                 cluster.token.secret().reveal()).status_code == 403  # fmt: skip

        again = bootstrap(monkeypatch, demo.connection_file)  # a second run keeps the operator's settings
        assert "connected to the demo cluster" in again
        assert FabricCluster.objects.get(fabric=fabric).drift_status == DriftStatus.OUT_OF_SYNC
    finally:
        demo.stop()
    assert not demo.connection_file.exists()

    said = bootstrap(monkeypatch)  # the next `make run` without DEMO_CLUSTER

    assert "disconnected from the demo cluster of an earlier run" in said
    assert not FabricCluster.objects.exists()
    assert not DriftedObject.objects.exists()


def test_without_the_switch_bootstrap_leaves_a_cluster_an_operator_connected_alone(db, var_dir, monkeypatch):
    bootstrap(monkeypatch)
    token = Credential(name="prod-observer", kind=Credential.Kind.BEARER_TOKEN)
    token.set_secret("t")
    token.save()
    FabricCluster.objects.create(
        fabric=Fabric.objects.get(name="demo"), server_url="https://10.0.0.1:6443", token=token
    )

    said = bootstrap(monkeypatch)

    assert "no demo cluster (DEMO_CLUSTER=1 make run starts one)" in said
    assert FabricCluster.objects.filter(token=token).exists()
