"""The data migration moves credentials out of existing Git URLs into encrypted credentials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core.models import Credential
from sync.models import Fabric

BEFORE = [("sync", "0002_fabric_git_credential")]


@pytest.fixture
def old_schema(transactional_db: None) -> Iterator[MigrationExecutor]:
    """The database as it was before the migration; migrated to the latest state afterwards."""
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def insert_old_fabrics(executor: MigrationExecutor, urls: dict[str, str]) -> None:
    OldFabric = executor.loader.project_state(BEFORE).apps.get_model("sync", "Fabric")
    for name, url in urls.items():
        OldFabric.objects.create(name=name, git_url=url, next_sync_at=timezone.now())


def migrate_forward() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_credentials_move_out_of_urls_encrypted_and_shared(old_schema):
    insert_old_fabrics(
        old_schema,
        {
            "encoded": "https://bob:s3cr%2Ft@git.example.com/r.git",
            "same-secret": "https://bob:s3cr%2Ft@git.example.com/other.git",
            "unencoded": "https://ann:p/w@rd x@git.example.com/r2.git",
            "lone-token": "https://ghp_T0KEN@github.com/acme/fabric.git",
            "ssh-password": "ssh://git:sshpw@git.example.com/r.git",
            "clean": "https://git.example.com/public.git",
            "ssh-user": "ssh://git@git.example.com/r.git",
        },
    )

    migrate_forward()

    fabrics = {f.name: f for f in Fabric.objects.select_related("git_credential")}
    assert fabrics["encoded"].git_url == "https://git.example.com/r.git"
    bob = fabrics["encoded"].git_credential
    assert bob is not None
    assert (bob.name, bob.username, bob.secret().reveal()) == ("git.example.com-bob", "bob", "s3cr/t")
    assert fabrics["same-secret"].git_credential == bob

    assert fabrics["unencoded"].git_url == "https://git.example.com/r2.git"
    ann = fabrics["unencoded"].git_credential
    assert ann is not None
    assert (ann.username, ann.secret().reveal()) == ("ann", "p/w@rd x")

    assert fabrics["lone-token"].git_url == "https://github.com/acme/fabric.git"
    token = fabrics["lone-token"].git_credential
    assert token is not None
    assert (token.username, token.secret().reveal()) == ("", "ghp_T0KEN")

    assert fabrics["ssh-password"].git_url == "ssh://git@git.example.com/r.git"
    assert fabrics["ssh-password"].git_credential is None
    kept = Credential.objects.get(name="git.example.com-git-ssh-password")
    assert kept.secret().reveal() == "sshpw"

    for name, url in [("clean", "https://git.example.com/public.git"), ("ssh-user", "ssh://git@git.example.com/r.git")]:
        assert (fabrics[name].git_url, fabrics[name].git_credential) == (url, None)

    with connection.cursor() as cursor:
        cursor.execute("SELECT git_url FROM sync_fabric")
        urls = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("SELECT encrypted_secret FROM core_credential")
        ciphertexts = " ".join(row[0] for row in cursor.fetchall())
    for secret in ("s3cr", "p/w@rd", "ghp_T0KEN", "sshpw"):
        assert secret not in urls
        assert secret not in ciphertexts


def test_reversing_puts_the_credentials_back_into_the_urls(old_schema):
    insert_old_fabrics(old_schema, {"encoded": "https://bob:s3cr%2Ft@git.example.com/r.git"})
    migrate_forward()
    assert Fabric.objects.get().git_url == "https://git.example.com/r.git"

    old_schema = MigrationExecutor(connection)
    old_schema.migrate(BEFORE)
    OldFabric = old_schema.loader.project_state(BEFORE).apps.get_model("sync", "Fabric")
    assert OldFabric.objects.get().git_url == "https://bob:s3cr%2Ft@git.example.com/r.git"
