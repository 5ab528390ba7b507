"""A sync reads and parses only the manifest files whose Git blob changed (issue 11).

Real Git repositories, ``run_sync`` called directly. Each test records which files
the parser was handed (``parsed_files``) and checks that rows of unchanged files keep
their ids and ``updated_at``, and that every check a full parse makes still holds.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from sync import leases, resources, runner
from sync.errors import ManifestError, PermanentSyncError
from sync.live.sync_step import LiveOutcome
from sync.manifests import parse_manifests
from sync.models import DriftStatus, Fabric, FabricCluster, LiveStatus, ManifestFile, Resource, SyncStatus
from sync.runner import SyncResult, run_sync
from tests.factories import make_fabric
from tests.gitrepo import GitRepo, manifest
from tests.livefabric import make_credential

pytestmark = pytest.mark.django_db

NESTING_BOMB = "[" * 30_000


def sync_now(fabric: Fabric) -> SyncResult:
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test")


@pytest.fixture
def parsed_files(monkeypatch) -> list[list[str]]:
    """The files handed to the parser, one list per sync."""
    calls: list[list[str]] = []

    def spy(files):
        calls.append(sorted(files))
        return parse_manifests(files)

    monkeypatch.setattr(runner, "parse_manifests", spy)
    return calls


def two_switches(first: str, second: str, asn: int = 1) -> str:
    return manifest("Switch", first, asn=asn) + "---\n" + manifest("Switch", second, asn=asn)


def rows(fabric: Fabric) -> dict[str, tuple[int, datetime, str]]:
    """name -> (id, updated_at, source_file)"""
    return {r.name: (r.id, r.updated_at, r.source_file) for r in Resource.objects.filter(fabric=fabric)}


def full_parse(repo: GitRepo, folder: str = "manifests") -> list:
    """What a full parse of the working tree gives (or the error it raises)."""
    root = repo.path / folder
    files = {f"{folder}/{p.relative_to(root)}": p.read_bytes() for p in sorted(root.rglob("*.y*ml"))}
    return parse_manifests(files)


@pytest.fixture
def synced(git_repo, parsed_files):
    """A fabric synced once from three files: a (2 switches), b (2 switches), c (a VLAN)."""
    repo = git_repo()
    repo.write("manifests/a.yaml", two_switches("a1", "a2"))
    repo.write("manifests/b.yaml", two_switches("b1", "b2"))
    repo.write("manifests/c.yml", manifest("VLAN", "c1", id=10))
    repo.commit()
    fabric = make_fabric(repo.url)
    result = sync_now(fabric)
    assert (result.counts.files_read, result.counts.created) == (3, 5)
    parsed_files.clear()
    return fabric, repo


@pytest.mark.parametrize("lookup_limit", [resources.LOOKUP_LIMIT, 0], ids=["rows-looked-up", "all-rows-read"])
def test_a_change_to_one_file_reads_parses_and_writes_only_that_file(synced, parsed_files, lookup_limit, monkeypatch):
    monkeypatch.setattr(resources, "LOOKUP_LIMIT", lookup_limit)
    fabric, repo = synced
    before = rows(fabric)
    repo.write("manifests/b.yaml", manifest("Switch", "b1", asn=1) + "---\n" + manifest("Switch", "b2", asn=2))
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/b.yaml"]]
    assert (result.counts.files_read, result.counts.files) == (1, 3)
    assert (result.counts.created, result.counts.updated, result.counts.deleted, result.resources) == (0, 1, 0, 5)
    after = rows(fabric)
    assert {name: after[name] for name in ("a1", "a2", "b1", "c1")} == {
        name: before[name] for name in ("a1", "a2", "b1", "c1")
    }  # not even an UPDATE: same ids, same updated_at
    assert after["b2"][0] == before["b2"][0]
    assert after["b2"][1] > before["b2"][1]
    assert Resource.objects.get(fabric=fabric, name="b2").spec["spec"] == {"asn": 2}
    assert result.as_dict()["files_read"] == 1


def test_a_commit_that_changes_no_manifest_reads_none(synced, parsed_files):
    fabric, repo = synced
    before = rows(fabric)
    repo.write("README.md", "not a manifest")
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [[]]
    assert (result.counts.files_read, result.resources) == (0, 5)
    assert rows(fabric) == before


def test_added_and_removed_files_create_and_delete_only_their_resources(synced, parsed_files):
    fabric, repo = synced
    before = rows(fabric)
    repo.remove("manifests/c.yml")
    repo.write("manifests/sub/d.yaml", manifest("VLAN", "d1", namespace="dc1", id=20))
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/sub/d.yaml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted, result.resources) == (1, 0, 1, 5)
    after = rows(fabric)
    assert "c1" not in after
    assert after["d1"][2] == "manifests/sub/d.yaml"
    assert {name: after[name] for name in ("a1", "a2", "b1", "b2")} == {
        name: before[name] for name in ("a1", "a2", "b1", "b2")
    }
    assert sorted(ManifestFile.objects.filter(fabric=fabric).values_list("path", flat=True)) == [
        "manifests/a.yaml",
        "manifests/b.yaml",
        "manifests/sub/d.yaml",
    ]


def test_a_renamed_file_is_read_under_its_new_name_and_its_rows_keep_their_ids(synced, parsed_files):
    fabric, repo = synced
    before = rows(fabric)
    repo.git("mv", "manifests/a.yaml", "manifests/renamed.yaml")
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/renamed.yaml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (0, 2, 0)
    after = rows(fabric)
    assert [after["a1"][0], after["a2"][0]] == [before["a1"][0], before["a2"][0]]
    assert after["a1"][2] == after["a2"][2] == "manifests/renamed.yaml"


def test_a_resource_moved_between_two_changed_files_is_not_a_duplicate(synced, parsed_files):
    fabric, repo = synced
    repo.write("manifests/a.yaml", manifest("Switch", "a1", asn=1))
    repo.write("manifests/b.yaml", two_switches("b1", "b2") + "---\n" + manifest("Switch", "a2", asn=1))
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/a.yaml", "manifests/b.yaml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (0, 1, 0)
    assert Resource.objects.get(fabric=fabric, name="a2").source_file == "manifests/b.yaml"


@pytest.mark.parametrize("new_file", ["manifests/0-first.yaml", "manifests/z-last.yaml"])
@pytest.mark.parametrize("lookup_limit", [resources.LOOKUP_LIMIT, 0], ids=["rows-looked-up", "all-rows-read"])
def test_a_change_that_declares_a_resource_of_an_unchanged_file_again_is_refused_as_a_full_parse_would(
    synced, parsed_files, new_file, lookup_limit, monkeypatch
):
    monkeypatch.setattr(resources, "LOOKUP_LIMIT", lookup_limit)
    fabric, repo = synced
    before = rows(fabric)
    repo.write(new_file, manifest("Switch", "b2", asn=9))
    repo.commit()
    with pytest.raises(ManifestError) as expected:
        full_parse(repo)

    with pytest.raises(ManifestError) as refused:
        sync_now(fabric)

    assert parsed_files == [[new_file]]
    assert str(refused.value) == str(expected.value)
    assert "Switch b2 is declared twice" in str(refused.value)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.ERROR
    assert rows(fabric) == before
    assert ManifestFile.objects.filter(fabric=fabric).count() == 3  # what the last success read

    repo.remove(new_file)
    repo.commit()
    assert sync_now(fabric).counts.files_read == 0  # the failed sync stored nothing
    assert rows(fabric) == before


def test_hostile_content_in_a_changed_file_is_still_refused(synced, parsed_files):
    fabric, repo = synced
    repo.write("manifests/b.yaml", NESTING_BOMB)
    repo.commit()

    with pytest.raises(ManifestError, match=r"^manifests/b\.yaml:1:65 \(document 1\): .*nested deeper than 64 levels$"):
        sync_now(fabric)

    assert Resource.objects.filter(fabric=fabric).count() == 5


def test_the_size_limit_applies_to_unchanged_files_too(synced, parsed_files, settings):
    fabric, repo = synced
    repo.write("manifests/c.yml", manifest("VLAN", "c1", id=11))  # small
    repo.commit()
    settings.SYNC_MAX_MANIFEST_BYTES = len((repo.path / "manifests/a.yaml").read_bytes()) - 1

    with pytest.raises(PermanentSyncError, match=r"^manifests/a\.yaml: .* over the manifest size limit"):
        sync_now(fabric)


def test_the_file_count_limit_counts_unchanged_files_too(synced, parsed_files, settings):
    fabric, repo = synced
    repo.write("manifests/d.yaml", manifest("VLAN", "d1", id=12))
    repo.commit()
    settings.SYNC_MAX_MANIFESTS = 3

    with pytest.raises(PermanentSyncError, match="4 manifest files is over the limit of 3"):
        sync_now(fabric)
    assert parsed_files == []


def test_a_force_push_of_an_unrelated_history_reads_the_files_whose_content_is_new(synced, parsed_files):
    fabric, repo = synced
    repo.git("checkout", "--quiet", "--orphan", "rewritten")
    repo.git("rm", "-r", "--quiet", "--cached", ".")
    for stale in (repo.path / "manifests").iterdir():
        stale.unlink()
    repo.write("manifests/a.yaml", two_switches("a1", "a2"))  # the same content: the same blob
    repo.write("manifests/b.yaml", two_switches("b1", "b2", asn=7))
    repo.write("manifests/e.yaml", manifest("Switch", "e1", asn=3))
    repo.commit("unrelated history")
    repo.git("branch", "--quiet", "-M", "rewritten", "main")  # what a force-push leaves on the remote

    result = sync_now(fabric)

    assert parsed_files == [["manifests/b.yaml", "manifests/e.yaml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (1, 2, 1)
    assert sorted(Resource.objects.filter(fabric=fabric).values_list("source_file", "name", "content_hash")) == sorted(
        (p.source_file, p.name, p.content_hash) for p in full_parse(repo)
    )


def test_a_lost_git_cache_changes_nothing_but_the_fetch(synced, parsed_files):
    fabric, repo = synced
    before = rows(fabric)
    for cache in Path(settings.SYNC_GIT_CACHE_DIR).glob(f"{fabric.id}-*"):
        for path in sorted(cache.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        cache.rmdir()
    repo.write("manifests/c.yml", manifest("VLAN", "c1", id=99))
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/c.yml"]]
    assert result.counts.updated == 1
    assert {k: v for k, v in rows(fabric).items() if k != "c1"} == {k: v for k, v in before.items() if k != "c1"}


def test_a_changed_source_folder_reads_every_file(git_repo, parsed_files):
    repo = git_repo()
    repo.write("one/a.yaml", two_switches("a1", "a2"))
    repo.write("two/a.yaml", two_switches("a1", "a2"))  # the same blob under another folder
    repo.commit()
    fabric = make_fabric(repo.url, git_path="one")
    sync_now(fabric)
    Fabric.objects.filter(id=fabric.id).update(git_path="two")

    result = sync_now(fabric)

    assert parsed_files == [["one/a.yaml"], ["two/a.yaml"]]
    assert (result.counts.updated, result.counts.deleted) == (2, 0)
    assert set(Resource.objects.filter(fabric=fabric).values_list("source_file", flat=True)) == {"two/a.yaml"}
    assert list(ManifestFile.objects.filter(fabric=fabric).values_list("path", flat=True)) == ["two/a.yaml"]


def test_a_new_parser_version_reads_every_file_again_and_writes_only_what_parses_differently(
    synced, parsed_files, monkeypatch
):
    fabric, repo = synced
    before = rows(fabric)
    monkeypatch.setattr(resources, "PARSER_VERSION", 2)
    repo.write("README.md", "a commit that changes no manifest")
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/a.yaml", "manifests/b.yaml", "manifests/c.yml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (0, 0, 0)
    assert rows(fabric) == before
    assert set(ManifestFile.objects.filter(fabric=fabric).values_list("parser", flat=True)) == {2}


def test_stored_rows_that_do_not_add_up_make_the_sync_read_every_file(synced, parsed_files):
    fabric, repo = synced
    Resource.objects.filter(fabric=fabric, name="a1").delete()  # behind the sync's back
    repo.write("manifests/c.yml", manifest("VLAN", "c1", id=99))
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/a.yaml", "manifests/b.yaml", "manifests/c.yml"]]
    assert (result.counts.created, result.counts.updated, result.resources) == (1, 1, 5)


def test_an_empty_file_is_remembered_and_not_read_again(git_repo, parsed_files):
    repo = git_repo()
    repo.write("manifests/a.yaml", manifest("Switch", "a1"))
    repo.write("manifests/empty.yaml", "# nothing yet\n---\n")
    repo.commit()
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    repo.write("manifests/a.yaml", manifest("Switch", "a1", asn=5))
    repo.commit()

    sync_now(fabric)

    assert parsed_files == [["manifests/a.yaml", "manifests/empty.yaml"], ["manifests/a.yaml"]]
    assert ManifestFile.objects.get(fabric=fabric, path="manifests/empty.yaml").resources == 0


def test_the_live_step_gets_every_desired_document_not_only_the_changed_ones(synced, parsed_files, monkeypatch):
    fabric, repo = synced
    FabricCluster.objects.create(fabric=fabric, server_url="https://127.0.0.1:1", token=make_credential("t"))
    seen: list[list[str]] = []

    def live_step(cluster, *, desired, source, trigger, now):
        seen.append(sorted(document["metadata"]["name"] for document in desired()))
        return LiveOutcome(LiveStatus.COMPARED, DriftStatus.IN_SYNC)

    monkeypatch.setattr(runner, "run_live_step", live_step)
    repo.write("manifests/b.yaml", manifest("Switch", "b1", asn=1) + "---\n" + manifest("Switch", "b3", asn=1))
    repo.commit()

    sync_now(fabric)

    assert parsed_files == [["manifests/b.yaml"]]
    assert seen == [["a1", "a2", "b1", "b3", "c1"]]


def test_replace_resources_forgets_the_files_so_the_next_sync_reads_them_all(synced, parsed_files):
    fabric, repo = synced
    resources.replace_resources(fabric, full_parse(repo))
    assert not ManifestFile.objects.filter(fabric=fabric).exists()
    repo.write("README.md", "no manifest changed")
    repo.commit()

    result = sync_now(fabric)

    assert parsed_files == [["manifests/a.yaml", "manifests/b.yaml", "manifests/c.yml"]]
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (0, 0, 0)
