"""``manage.py sync``: in-process syncs with a summary table and a truthful exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sync import leases
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.conftest import ROOT, worker_database_url
from tests.factories import make_fabric

BAD_YAML = "apiVersion: v1\nkind: Switch\nmetadata:\n  name: leaf1\n  bad: a: b\n"


def sync(*args: str) -> str:
    out = StringIO()
    call_command("sync", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def failing_sync(*args: str) -> tuple[str, str]:
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("sync", *args, stdout=out, stderr=StringIO())
    return out.getvalue(), str(raised.value)


def table_row(output: str, fabric: str) -> list[str]:
    """The cells of ``fabric``'s row in the rendered table."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells and cells[0] == fabric:
            return cells
    raise AssertionError(f"no row for {fabric} in:\n{output}")


@pytest.fixture
def good_fabric(db, git_repo):
    def make(name: str, switches: int = 3, **fields) -> tuple[Fabric, str]:
        repo = git_repo(name)
        commit = repo.with_switches(switches)
        return make_fabric(repo.url, name=name, **fields), commit

    return make


@pytest.fixture
def broken_fabric(db, git_repo):
    repo = git_repo("broken")
    repo.write("manifests/bad.yaml", BAD_YAML)
    repo.commit()
    return make_fabric(repo.url, name="broken")


def test_named_fabrics_sync_and_the_table_shows_status_commit_resources_and_duration(good_fabric):
    (east, east_commit), (west, west_commit) = good_fabric("east", 3), good_fabric("west", 5)

    output = sync("east", "west")

    east_row, west_row = table_row(output, "east"), table_row(output, "west")
    assert east_row[1:4] == ["success", east_commit[:10], "3"]
    assert west_row[1:4] == ["success", west_commit[:10], "5"]
    assert east_row[4].endswith(" s")
    for fabric in (east, west):
        fabric.refresh_from_db()
        assert fabric.sync_status == SyncStatus.IN_SYNC
        assert fabric.lease_token == ""
        run = SyncRun.objects.get(fabric=fabric)
        assert (run.trigger, run.status) == ("manual", RunStatus.SUCCESS)


def test_a_second_sync_of_the_same_commit_is_reported_unchanged(good_fabric):
    good_fabric("east", 2)
    sync("east")

    row = table_row(sync("east"), "east")
    assert (row[1], row[3]) == ("unchanged", "2")


def test_a_broken_fabric_fails_the_command_with_its_reason_while_the_others_sync(good_fabric, broken_fabric):
    east, _ = good_fabric("east")

    output, error = failing_sync("broken", "east")

    assert error == "1 of 2 syncs failed: broken"
    assert table_row(output, "broken")[1] == "failed"
    assert "manifests/bad.yaml:5:" in output
    assert table_row(output, "east")[1] == "success"
    broken_fabric.refresh_from_db()
    east.refresh_from_db()
    assert broken_fabric.sync_status == SyncStatus.ERROR
    assert broken_fabric.consecutive_failures == 1
    assert east.sync_status == SyncStatus.IN_SYNC


def test_all_syncs_every_enabled_fabric_and_only_those(good_fabric):
    good_fabric("east")
    good_fabric("west")
    disabled, _ = good_fabric("paused", sync_enabled=False)

    output = sync("--all")

    assert table_row(output, "east")[1] == "success"
    assert table_row(output, "west")[1] == "success"
    assert "paused" not in output
    disabled.refresh_from_db()
    assert disabled.sync_status == SyncStatus.NEVER_SYNCED


def test_an_unknown_fabric_name_is_a_clear_error_and_nothing_syncs(good_fabric):
    east, _ = good_fabric("east")

    _, error = failing_sync("east", "nope", "nada")

    assert error == "Unknown fabrics: nada, nope"
    assert not SyncRun.objects.exists()
    east.refresh_from_db()
    assert east.sync_status == SyncStatus.NEVER_SYNCED


def test_names_or_all_are_required(db):
    assert "or pass --all" in failing_sync()[1]


def test_a_fabric_whose_lease_is_held_is_reported_busy_and_counts_as_failed(good_fabric):
    east, _ = good_fabric("east")
    token = leases.claim_one(east.id, timezone.now())

    output, error = failing_sync("east")

    assert error == "1 of 1 syncs failed: east"
    assert table_row(output, "east")[1] == "busy"
    east.refresh_from_db()
    assert (east.sync_status, east.lease_token) == (SyncStatus.QUEUED, token)  # the holder keeps its claim
    assert not SyncRun.objects.exists()


def test_the_process_exits_non_zero_when_a_sync_fails(transactional_db, broken_fabric, good_fabric, tmp_path):
    good_fabric("east")
    # The real entry point, so the exit code is the one a script or cron job sees.
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "SYNC_GIT_CACHE_DIR": str(tmp_path / "cli-cache")}
    command = [sys.executable, "manage.py", "sync"]

    good = subprocess.run([*command, "east"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    bad = subprocess.run([*command, "broken"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)

    assert good.returncode == 0, good.stderr
    assert bad.returncode == 1
    assert "1 of 1 syncs failed: broken" in bad.stderr


@pytest.mark.django_db(transaction=True)
def test_a_fabric_whose_remote_breaker_is_open_is_reported_skipped_and_counts_no_failure(good_fabric):
    from core import guards

    fabric, _ = good_fabric("behind-open-breaker")
    breaker = guards.git_remote("local")
    breaker.force_open()
    try:
        out, error = failing_sync("behind-open-breaker")
    finally:
        breaker.forget()

    row = table_row(out, "behind-open-breaker")
    assert row[1] == "skipped"
    assert "remote unavailable" in out
    assert error == "1 of 1 syncs failed: behind-open-breaker"  # the table says why: skipped
    fabric.refresh_from_db()
    assert fabric.consecutive_failures == 0
    assert fabric.lease_token == ""
    assert SyncRun.objects.get(fabric=fabric).status == RunStatus.SKIPPED
