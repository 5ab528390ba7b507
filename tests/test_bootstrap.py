"""``manage.py bootstrap``: the admin user, the demo repository and fabric, the schedule."""

from __future__ import annotations

import re
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from project.tasks import MASTER_TASK_NAME
from sync.models import Fabric, SyncStatus

PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture
def var_dir(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VAR_DIR, so the test never touches the real demo repository."""
    var = tmp_path / "var"
    settings.VAR_DIR = var
    settings.SYNC_ALLOWED_LOCAL_ROOTS = [*settings.SYNC_ALLOWED_LOCAL_ROOTS, str(var / "repos")]
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    return var


def bootstrap() -> str:
    out = StringIO()
    call_command("bootstrap", stdout=out)
    return out.getvalue()


def head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def files_containing(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_generated_admin_password_is_printed_once_and_works(db, var_dir, settings):
    first = bootstrap()
    second = bootstrap()

    password = re.search(r"password: (\S+)", first)
    assert password is not None
    assert len(password.group(1)) >= 20
    assert authenticate(username=settings.ADMIN_USERNAME, password=password.group(1)) is not None
    assert get_user_model().objects.get(username=settings.ADMIN_USERNAME).is_superuser
    assert f"admin user '{settings.ADMIN_USERNAME}' exists, password unchanged" in second
    assert password.group(1) not in second
    assert files_containing(var_dir, password.group(1)) == []  # only Django's hash is stored


def test_the_admin_password_comes_from_the_environment_when_set(db, var_dir, settings, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)

    output = bootstrap()

    assert "created with the password from ADMIN_PASSWORD" in output
    assert PASSWORD not in output
    assert authenticate(username=settings.ADMIN_USERNAME, password=PASSWORD) is not None


def test_an_existing_admins_password_is_never_changed(db, var_dir, settings, monkeypatch):
    get_user_model().objects.create_superuser(settings.ADMIN_USERNAME, "", PASSWORD)
    monkeypatch.setenv("ADMIN_PASSWORD", "another-long-password-99")

    assert "password unchanged" in bootstrap()
    assert authenticate(username=settings.ADMIN_USERNAME, password=PASSWORD) is not None


def test_a_weak_admin_password_from_the_environment_is_refused(db, var_dir, settings, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", "admin")

    with pytest.raises(CommandError, match="ADMIN_PASSWORD is too weak"):
        bootstrap()
    assert not get_user_model().objects.exists()


def test_bootstrap_is_idempotent(db, var_dir):
    bootstrap()
    repo = var_dir / "repos" / "demo-fabric"
    commit = head(repo)

    second = bootstrap()

    assert "demo repository exists" in second
    assert "fabric 'demo' exists" in second
    assert "master schedule exists" in second
    assert head(repo) == commit
    assert Fabric.objects.count() == 1
    assert PeriodicTask.objects.filter(name=MASTER_TASK_NAME).count() == 1
    assert get_user_model().objects.count() == 1


def test_the_demo_fabric_syncs_to_in_sync_with_its_example_resources(db, var_dir):
    bootstrap()

    call_command("sync", "demo", stdout=StringIO(), stderr=StringIO())

    demo = Fabric.objects.get(name="demo")
    assert demo.sync_status == SyncStatus.IN_SYNC
    assert demo.git_url == str(var_dir / "repos" / "demo-fabric")
    assert (demo.git_branch, demo.git_path) == ("main", "manifests")
    assert demo.current_commit == head(var_dir / "repos" / "demo-fabric")
    # A small Hedgehog wiring (sync/demo_manifests/README.md): 18 objects in the namespace "default".
    assert set(demo.resources.values_list("kind", flat=True)) == {
        "IPv4Namespace", "VLANNamespace", "SwitchGroup", "Switch", "Server", "Connection",
        "VPC", "VPCPeering", "VPCAttachment",
    }  # fmt: skip
    assert demo.resources.count() == 18
    assert set(demo.resources.values_list("namespace", flat=True)) == {"default"}
    leaf = demo.resources.get(kind="Switch", namespace="default", name="leaf-01")
    assert leaf.spec["spec"]["redundancy"] == {"group": "mclag-1", "type": "mclag"}


def test_a_demo_repository_left_without_a_commit_is_completed(db, var_dir):
    repo = var_dir / "repos" / "demo-fabric"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "--quiet"], cwd=repo, check=True)

    assert "demo repository created" in bootstrap()
    assert head(repo)
    assert (repo / "manifests" / "switches.yaml").exists()


def test_a_demo_repository_outside_the_allowed_roots_is_a_clear_error(db, var_dir, settings):
    settings.SYNC_ALLOWED_LOCAL_ROOTS = []

    with pytest.raises(CommandError, match="SYNC_ALLOWED_LOCAL_ROOTS must include"):
        bootstrap()
