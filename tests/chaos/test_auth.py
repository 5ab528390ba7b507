"""Git credentials rejected by the host mid-run, then rotated by the operator.

Real: a Git HTTPS server (``git http-backend`` behind TLS and HTTP Basic auth,
``tests/githttp.py``) serves the repository of half the fabrics, which authenticate
with an encrypted ``Credential``; the other half sync from local repositories. A real
prefork worker and real ``manage.py tick`` processes run against the private stack.
The host "rotates" by accepting only a new token from one instant on: to git a
revoked, expired or rotated token all look the same, a 401.

Invariants: a rejected credential fails exactly its own fabrics, once each (a 401 is
permanent: no retry storm), with a reason that says so and never either token (not in
the fabric, the run or the worker's log); every other fabric syncs as if nothing
happened; nothing overlaps or sticks. When the operator sets the new secret, the
failing fabrics are due at once (not after their failure backoff) and the next tick
syncs them, their failure count back to 0.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import SYNCED, assert_healthy_history
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for
from tests.githttp import GitHttpsServer
from tests.gitrepo import GitRepo

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

USER = "deploy"
OLD_TOKEN = "old-t0ken-8f3a1c"
NEW_TOKEN = "new-t0ken-27be94"
SYNC_SECONDS = 120


def _basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"{USER}:{token}".encode()).decode()


def _synced_since(ids: list[int], since: object) -> set[int]:
    runs = SyncRun.objects.filter(fabric_id__in=ids, status__in=SYNCED, started_at__gte=since)
    return set(runs.values_list("fabric_id", flat=True))


def test_a_rejected_credential_fails_only_its_fabrics_and_its_rotation_recovers_them_at_once(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale, tmp_path: Path
) -> None:
    from core.models import Credential

    source = GitRepo.create(tmp_path / "source")
    source.with_switches(3)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "--quiet", "--bare", str(source.path), str(served / "fabric.git")], check=True)
    server = GitHttpsServer(served, USER, OLD_TOKEN, tmp_path).start()
    home = tmp_path / "home"
    server.trust_in_home(home)
    count = chaos_scale.n(8, minimum=4)
    try:
        local = make_fabrics(chaos_stack, count)
        with chaos_stack.orm():
            credential = Credential(name="git-host", username=USER)
            credential.set_secret(OLD_TOKEN)
            credential.save()
            https = [
                Fabric.objects.create(
                    name=f"https-{number:03d}",
                    git_url=server.url_for(served / "fabric.git"),
                    git_branch=source.branch,
                    git_path="manifests",
                    git_credential=credential,
                    sync_interval=60,
                    next_sync_at=timezone.now(),
                ).id
                for number in range(count)
            ]
            everyone = local + https
        worker = chaos_stack.start_worker("worker", concurrency=2, HOME=str(home))

        with chaos_stack.orm():
            start = timezone.now()
        chaos_stack.tick()
        with chaos_stack.orm():
            wait_for(lambda: _synced_since(everyone, start) == set(everyone), timeout=chaos_scale.drain(SYNC_SECONDS),
                     message="the first round did not sync every fabric")  # fmt: skip

            # The host stops accepting the old token.
            server.expected = _basic(NEW_TOKEN)
            rejected_at = timezone.now()
            Fabric.objects.update(next_sync_at=rejected_at)
        chaos_stack.tick()
        with chaos_stack.orm():

            def failed_since() -> set[int]:
                runs = SyncRun.objects.filter(fabric_id__in=https, status=RunStatus.FAILED, started_at__gte=rejected_at)
                return set(runs.values_list("fabric_id", flat=True))

            wait_for(lambda: failed_since() == set(https) and _synced_since(local, rejected_at) == set(local),
                     timeout=chaos_scale.drain(SYNC_SECONDS), message="rejection round did not finish")  # fmt: skip
            leased = Fabric.objects.filter(sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING])
            wait_for(lambda: not leased.exists(), timeout=30)
            for fabric in Fabric.objects.filter(id__in=https):
                assert fabric.sync_status == SyncStatus.ERROR, (fabric.name, fabric.sync_status)
                assert fabric.consecutive_failures == 1, (fabric.name, fabric.consecutive_failures)
                assert "authentic" in fabric.last_error.lower() or "401" in fabric.last_error, fabric.last_error
                assert fabric.next_sync_at > timezone.now(), "a failing fabric backs off"
            runs = SyncRun.objects.filter(fabric_id__in=https, started_at__gte=rejected_at)
            assert runs.count() == len(https), "a 401 is permanent: one run per fabric, no retries"
            assert _synced_since(local, rejected_at) == set(local)
            texts = [*Fabric.objects.values_list("last_error", flat=True),
                     *SyncRun.objects.values_list("error_message", flat=True), worker.log(tail=10_000_000)]  # fmt: skip
            for text in texts:
                assert OLD_TOKEN not in text
                assert NEW_TOKEN not in text
            assert_healthy_history()

            # The operator sets the new secret: the failing fabrics are due now, not in an hour.
            credential = Credential.objects.get(pk=credential.pk)
            credential.set_secret(NEW_TOKEN)
            credential.save()
            rotated_at = timezone.now()
            assert not Fabric.objects.filter(id__in=https, next_sync_at__gt=rotated_at).exists()
        chaos_stack.tick()
        with chaos_stack.orm():
            wait_for(lambda: _synced_since(https, rotated_at) == set(https), timeout=chaos_scale.drain(SYNC_SECONDS),
                     message="the fabrics did not sync after the rotation")  # fmt: skip
            assert set(Fabric.objects.filter(id__in=https).values_list("consecutive_failures", flat=True)) == {0}
            log = worker.log(tail=10_000_000)
            assert OLD_TOKEN not in log
            assert NEW_TOKEN not in log
            assert_healthy_history()
    finally:
        server.stop()
