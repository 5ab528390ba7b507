"""``manage.py bootstrap``: the idempotent set-up behind ``make run``.

1. The admin user ``ADMIN_USERNAME``: its password comes from ``ADMIN_PASSWORD``,
   or is generated and printed once. Only Django's hash is stored; an existing
   user's password is never changed.
2. A real local Git repository of example manifests (``sync/demo_manifests``) at
   ``VAR_DIR/repos/demo-fabric``, committed on branch ``main``. An existing one is
   left alone: operators try the product by committing to it.
3. The fabric "demo", syncing from that repository's ``manifests`` folder.
4. With ``DEMO_CLUSTER_FILE`` (written by ``scripts/demo_cluster.py`` under
   ``DEMO_CLUSTER=1 make run``): the demo fabric connected to that private cluster,
   in observe mode, its token in the credential "demo-cluster". Without it, a demo
   connection left from an earlier run (its cluster is gone) is removed; a cluster an
   operator connected the demo fabric to is left alone.
5. The master scheduler's beat entry.

Every step says what it did, so running it twice is safe and shows "exists".
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from core.models import Credential
from project.schedule import TICK_SECONDS, ensure_master_schedule
from sync import operations
from sync.models import ClusterMode, Fabric, FabricCluster

DEMO_SOURCE = Path(__file__).resolve().parents[3] / "sync" / "demo_manifests"
DEMO_FABRIC = "demo"
DEMO_BRANCH = "main"
DEMO_PATH = "manifests"
GIT_IDENTITY = [
    "-c",
    "user.name=Fabric control plane",
    "-c",
    "user.email=bootstrap@localhost.invalid",
    "-c",
    "commit.gpgsign=false",
]


DEMO_CREDENTIAL = "demo-cluster"
DEMO_NAMESPACES = ["default"]


def demo_repo_path() -> Path:
    return Path(settings.VAR_DIR) / "repos" / "demo-fabric"


def ensure_admin(username: str, password: str | None) -> tuple[bool, str | None]:
    """Create the superuser if missing. Returns (created, generated password or None).

    A password from the environment must pass the site's password validators: a
    weak one would be an open door on a machine that serves the admin.
    """
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        return False, None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(18)
    else:
        try:
            validate_password(password)
        except ValidationError as exc:
            raise CommandError(f"ADMIN_PASSWORD is too weak: {' '.join(exc.messages)}") from exc
    users.objects.create_superuser(username=username, email="", password=password)
    return True, generated


def _git_env() -> dict[str, str]:
    # GIT_* variables from a calling hook or shell (GIT_DIR, ...) would redirect git.
    return {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}


def _git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=repo, env=_git_env(), capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise CommandError(f"git {' '.join(args)} failed in {repo}: {completed.stderr.strip()}")
    return completed.stdout.strip()


def _has_commit(repo: Path) -> bool:
    if not (repo / ".git").is_dir():
        return False
    verify = ["git", "rev-parse", "--verify", "--quiet", "HEAD"]
    return subprocess.run(verify, cwd=repo, env=_git_env(), capture_output=True, check=False).returncode == 0


def ensure_demo_repo(repo: Path, source: Path = DEMO_SOURCE) -> str | None:
    """Create and commit the demo repository. Returns the new commit, or None if it existed.

    A folder left half-made by an interrupted run (no commit yet) is completed.
    """
    if _has_commit(repo):
        return None
    shutil.copytree(source, repo, dirs_exist_ok=True)
    _git(repo, "init", "--quiet")
    # Set the branch this way rather than ``init -b``: works with any git version.
    _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{DEMO_BRANCH}")
    _git(repo, "add", "--all")
    _git(repo, "commit", "--quiet", "-m", "Demo fabric: switches, VLANs and VPCs")
    return _git(repo, "rev-parse", "HEAD")


def ensure_demo_fabric(repo: Path) -> Fabric | None:
    """Create the demo fabric if no fabric has its name. Returns it when created."""
    if Fabric.objects.filter(name=DEMO_FABRIC).exists():
        return None
    fabric = Fabric(
        name=DEMO_FABRIC,
        description="Example leaf-spine fabric created by `manage.py bootstrap` (see its repository's README).",
        git_url=str(repo),
        git_branch=DEMO_BRANCH,
        git_path=DEMO_PATH,
    )
    try:
        fabric.full_clean()
    except ValidationError as exc:
        raise CommandError(
            f"cannot create the demo fabric: {' '.join(exc.messages)} "
            f"(SYNC_ALLOWED_LOCAL_ROOTS must include {repo.parent})"
        ) from exc
    fabric.save()
    return fabric


def read_demo_connection(path: str | None) -> dict[str, str] | None:
    """The demo cluster's server, CA and token from ``DEMO_CLUSTER_FILE``, or None."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
        return {key: str(data[key]) for key in ("server", "ca", "token")}
    except (OSError, ValueError, KeyError) as exc:
        raise CommandError(f"cannot read the demo cluster's connection from {path}: {type(exc).__name__}") from None


def ensure_demo_cluster(connection: dict[str, str] | None) -> str:
    """Connect the demo fabric to the demo cluster (or drop a stale demo connection); says what it did.

    Only the connection (URL, CA, token) is set on an existing row: an operator who
    switched the demo to reconcile mode or added ignore rules keeps them. The settings go
    through ``sync.operations.save_cluster_settings``, which makes the fabric due now.
    """
    fabric = Fabric.objects.filter(name=DEMO_FABRIC).first()
    if fabric is None:
        return "no demo fabric: no demo cluster connection"
    cluster = FabricCluster.objects.defer("live_state").select_related("token").filter(fabric=fabric).first()
    ours = cluster is not None and cluster.token.name == DEMO_CREDENTIAL
    if connection is None:
        if ours:
            operations.disconnect_cluster(fabric)
            return f"fabric '{DEMO_FABRIC}' disconnected from the demo cluster of an earlier run (Git only now)"
        return "no demo cluster (DEMO_CLUSTER=1 make run starts one)"
    if cluster is not None and not ours:
        return f"fabric '{DEMO_FABRIC}' has a cluster of its own: left alone"
    now = timezone.now()
    credential = Credential.objects.filter(name=DEMO_CREDENTIAL).first() or Credential(
        name=DEMO_CREDENTIAL, description="The token of the demo cluster `DEMO_CLUSTER=1 make run` starts."
    )
    credential.kind = Credential.Kind.BEARER_TOKEN
    credential.set_secret(connection["token"], now)
    credential.save()
    settings_ = {"server_url": connection["server"], "ca_bundle": connection["ca"], "token": credential}
    if cluster is None:
        cluster = FabricCluster(fabric=fabric, namespaces=DEMO_NAMESPACES, mode=ClusterMode.OBSERVE, **settings_)
        cluster.full_clean()
        cluster.save()
    else:
        for name, value in settings_.items():
            setattr(cluster, name, value)
        cluster.full_clean(exclude=["live_state"])
    operations.save_cluster_settings(cluster, settings_, now)
    return f"fabric '{DEMO_FABRIC}' connected to the demo cluster at {connection['server']} (observe mode)"


class Command(BaseCommand):
    help = "Create the admin user, the demo Git repository and fabric, and the master schedule (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.admin_user()
        repo = demo_repo_path()
        self.demo_repo(repo)
        self.demo_fabric(repo)
        self.say(ensure_demo_cluster(read_demo_connection(os.environ.get("DEMO_CLUSTER_FILE"))))
        if ensure_master_schedule():
            self.say(f"master schedule created: a tick every {TICK_SECONDS} s")
        else:
            self.say("master schedule exists (its enabled/disabled state is left as it is)")

    def say(self, message: str) -> None:
        self.stdout.write(f"bootstrap: {message}")

    def admin_user(self) -> None:
        username = settings.ADMIN_USERNAME
        created, generated = ensure_admin(username, os.environ.get("ADMIN_PASSWORD"))
        if not created:
            self.say(f"admin user '{username}' exists, password unchanged")
        elif generated:
            self.say(f"admin user '{username}' created with a generated password, shown this once only:")
            self.stdout.write(f"\n    username: {username}\n    password: {generated}\n")
            self.say(f"store it now; to set a new one later: manage.py changepassword {username}")
        else:
            self.say(f"admin user '{username}' created with the password from ADMIN_PASSWORD")

    def demo_repo(self, repo: Path) -> None:
        commit = ensure_demo_repo(repo)
        if commit is None:
            self.say(f"demo repository exists at {repo}")
        else:
            self.say(f"demo repository created at {repo} (branch {DEMO_BRANCH}, commit {commit[:10]})")

    def demo_fabric(self, repo: Path) -> None:
        fabric = ensure_demo_fabric(repo)
        if fabric is None:
            self.say(f"fabric '{DEMO_FABRIC}' exists")
        else:
            self.say(f"fabric '{DEMO_FABRIC}' created: syncs {repo} ({DEMO_BRANCH}:{DEMO_PATH}) at the next tick")
