"""Hostile manifests: each ends in a permanent error naming the file, or a clean success.

Never a crash, never a transient error. The corpus is parsed in a child process, so
a parser that crashes (libyaml's C composer overflows its stack on deep nesting and
the process dies of SIGSEGV) fails these tests instead of killing the test run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sync import leases, runner
from sync.errors import ManifestError
from sync.manifests import parse_file
from sync.models import Fabric, Resource, RunStatus, SyncRun, SyncStatus
from sync.resources import replace_resources
from sync.runner import run_sync
from tests.conftest import ROOT, worker_database_url
from tests.factories import make_fabric
from tests.gitrepo import manifest

HEADER = "apiVersion: v1\nkind: Switch\nmetadata:\n  name: leaf1\nspec:\n"  # spec values start on line 6
NESTING_BOMB = b"[" * 30_000  # 30 KB: enough to overflow the 8 MB stack of libyaml's recursive C composer


def spec(text: str) -> bytes:
    return (HEADER + text).encode()


def alias_bomb() -> bytes:
    lines = ["  a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        prev, cur = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"  {cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return spec("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    error: str | None = None  # a regex the message must match after "<path>"; None: parses
    resources: int = 0
    path: str = ""

    @property
    def file(self) -> str:
        return self.path or f"manifests/{self.name}.yaml"


LONG_PATH = "manifests/" + "/".join(["d" * 150] * 3) + "/" + "f" * 132 + ".yaml"  # 600 characters
NESTED = r":\d+:\d+ \(document 1\): .*nested deeper than 64 levels"
NOT_STORABLE = r":6:\d+ \(document 1\): spec\.value: "

CORPUS = [
    # Nesting: refused from the event stream, before anything deep is built.
    Case("deep-flow-sequences", NESTING_BOMB, NESTED),
    Case("deep-flow-mappings", b"{a: " * 30_000, NESTED),
    Case("deep-flow-braces", b"{" * 30_000, r":1:2 \(document 1\): a mapping key must be a string"),
    Case("deep-block-sequences", b"- " * 30_000 + b"x\n", NESTED),
    Case("deep-block-mappings", "".join(" " * i + "a:\n" for i in range(100)).encode(), NESTED),
    Case("deep-inside-a-manifest", spec("  value: " + "[" * 1_000), r":6:\d+ \(document 1\): spec\.value.*deeper"),
    Case("nested-64-levels", spec("  value: " + "[" * 62 + "]" * 62 + "\n"), resources=1),
    Case("nested-65-levels", spec("  value: " + "[" * 63 + "]" * 63 + "\n"), NESTED),
    # Aliases.
    Case("billion-laughs", alias_bomb(), r":\d+:\d+ \(document 1\): spec\.\w\[\d\]: .*too many nodes"),
    Case("alias-cycle", spec("  value: &x [*x]\n"), NOT_STORABLE[:-2] + r"\[0\]: alias \*x is inside its own anchor"),
    Case("alias-undefined", spec("  value: *nowhere\n"), NOT_STORABLE + r"alias \*nowhere has no anchor"),
    Case("anchors-and-merges", spec("  a: &a {x: 1}\n  b: {<<: *a, y: 2}\n  c: [*a, *a]\n"), resources=1),
    # Tags.
    Case("python-object-apply", b"!!python/object/apply:os.system ['true']\n", r":1:1 .*unsupported tag 'tag:yaml"),
    Case("python-name", spec("  value: !!python/name:os.system ''\n"), NOT_STORABLE + "unsupported tag"),
    Case("python-object-in-spec", spec("  value: !!python/object:os.Foo {a: 1}\n"), NOT_STORABLE + "unsupported tag"),
    Case("unknown-tag", spec("  value: !Ref other\n"), NOT_STORABLE + "unsupported tag '!Ref'"),
    Case("set-tag", spec("  value: !!set {a, b}\n"), NOT_STORABLE + "unsupported tag"),
    Case("omap-tag", spec("  value: !!omap [a: 1]\n"), NOT_STORABLE + "unsupported tag"),
    Case("explicit-bad-int", spec("  value: !!int twelve\n"), NOT_STORABLE + "'twelve' is not a valid int"),
    # Encodings and bytes.
    Case("binary-garbage", random.Random(8).randbytes(4096), r": not valid UTF-8"),
    Case("utf16-with-bom", (HEADER + "  a: 1\n").encode("utf-16"), r": the file starts with a UTF-16"),
    Case("utf16-without-bom", (HEADER + "  a: 1\n").encode("utf-16-le"), r":1: invalid YAML: U\+0000 is not allowed"),
    Case("utf8-bom", b"\xef\xbb\xbf" + spec("  a: 1\n"), resources=1),
    Case("raw-control-character", spec("  value: a\x07b\n"), r":6: invalid YAML: U\+0007 is not allowed"),
    Case("lone-surrogate-escape", spec('  value: "\\ud800"\n'), r":6:\d+: invalid YAML: found invalid Unicode"),
    # Sizes.
    Case("huge-string", spec("  value: " + "x" * 900_000 + "\n"), resources=1),
    Case("huge-key", spec("  ? " + "k" * 100_000 + "\n  : 1\n"), resources=1),
    Case("huge-digits", spec("  value: " + "9" * 900_000 + "\n"), NOT_STORABLE + ".*outside the signed 64-bit"),
    Case("long-name", f"apiVersion: v1\nkind: S\nmetadata: {{name: {'a' * 10_000}}}\n".encode(), r":1 .*10,000 char"),
    Case("long-path", spec("  a: 1\n"), r"\.\.\.: the path is 600 characters long; the limit is 500", path=LONG_PATH),
    Case("many-empty-documents", b"---\n" * 100_000),
    # Values the database would refuse, or store differently on PostgreSQL and SQLite.
    Case("nan", spec("  value: .nan\n"), NOT_STORABLE + "'.nan' is not a finite number"),
    Case("infinity", spec("  value: [.inf]\n"), NOT_STORABLE[:-2] + r"\[0\]: '.inf' is not a finite number"),
    Case("float-overflow", spec("  value: 1.0e+400\n"), NOT_STORABLE + ".*not a finite number"),
    Case("nul-escape", spec('  value: "a\\0b"\n'), NOT_STORABLE + "a NUL character"),
    Case("nul-hex-escape", spec('  value: "\\x00"\n'), NOT_STORABLE + "a NUL character"),
    Case("nul-unicode-escape", spec('  value: "\\u0000"\n'), NOT_STORABLE + "a NUL character"),
    Case("nul-in-key", spec('  "val\\0ue": 1\n'), r":6:\d+ \(document 1\): spec: a NUL character"),
    Case("nul-in-name", b'apiVersion: v1\nkind: S\nmetadata: {name: "a\\0"}\n', r":3:\d+ .*metadata\.name: a NUL"),
    Case("raw-nul-byte", spec("  value: a\x00b\n"), r":6: invalid YAML: U\+0000 is not allowed"),
    Case("int-5000-digits", spec("  value: " + "7" * 5_000 + "\n"), NOT_STORABLE + ".*outside the signed 64-bit"),
    Case("int-over-64-bits", spec(f"  subnets:\n  - mtu: {2**63}\n"), r":7:\d+ .*spec\.subnets\[0\]\.mtu: .*64-bit"),
    Case("hex-over-64-bits", spec("  value: 0x10000000000000000\n"), NOT_STORABLE + ".*outside the signed 64-bit"),
    Case("ints-at-64-bits", spec(f"  low: {-(2**63)}\n  high: {2**63 - 1}\n"), resources=1),
    # Structure.
    Case("duplicate-keys", spec("  value: 1\n  value: 2\n"), r":7:3 \(document 1\): spec: duplicate key 'value'"),
    Case("duplicate-after-json", spec("  1: a\n  '1': b\n"), r":7:3 \(document 1\): spec: duplicate key '1'"),
    Case("complex-key", spec("  ? [a, b]\n  : 1\n"), r":6:\d+ \(document 1\): spec: a mapping key must be"),
    Case("multiple-documents", "---\n".join(manifest("Switch", f"leaf{i}") for i in range(3)).encode(), resources=3),
    Case("empty-documents", b"---\n---\n...\n---\n# nothing\n"),
    Case("empty-file", b""),
    Case("comments-only", b"# just a comment\n\n# another\n"),
    Case("a-list", b"- a\n- b\n", r":1 \(document 1\): a manifest must be a mapping, not list"),
    Case("a-string", b"just text\n", r":1 \(document 1\): a manifest must be a mapping, not str"),
    Case("second-not-a-mapping", spec("  a: 1\n") + b"---\n42\n", r":8 \(document 2\): .*mapping, not int"),
    Case("tab-indentation", b"apiVersion: v1\nmetadata:\n\tname: a\n", r":3:1: invalid YAML: found character"),
    Case("unclosed-flow", b"[a, [b, ", r":\d+:\d+: invalid YAML:"),
    Case("unclosed-quote", b'value: "' + b"x" * 500_000, r":1:\d+: invalid YAML:"),
]

CHILD = """
import base64, json, sys, time
from sync.errors import ManifestError
from sync.manifests import parse_file

results = {}
for name, (path, raw) in json.load(sys.stdin).items():
    started = time.monotonic()
    try:
        outcome = {"resources": len(parse_file(path, base64.b64decode(raw)))}
    except ManifestError as exc:
        outcome = {"error": str(exc)}
    except BaseException as exc:
        outcome = {"unexpected": f"{type(exc).__name__}: {exc}"[:300]}
    outcome["seconds"] = time.monotonic() - started
    results[name] = outcome
json.dump(results, sys.stdout)
"""


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    """Every case of the corpus parsed in one child process: name -> outcome."""
    corpus = {case.name: (case.file, base64.b64encode(case.raw).decode()) for case in CORPUS}
    child = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, input=json.dumps(corpus), capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, f"the parser process died (exit {child.returncode}): {child.stderr[-2000:]}"
    return json.loads(child.stdout)


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_a_hostile_manifest_ends_in_a_permanent_error_naming_the_file_or_parses_cleanly(case, outcomes):
    outcome = outcomes[case.name]
    assert "unexpected" not in outcome, outcome
    if case.error is None:
        assert outcome.get("resources") == case.resources, outcome
    else:
        # A long path is shortened to its first 80 characters in messages.
        assert re.match(re.escape(case.file[:80]) + case.error, outcome.get("error", "")), outcome
    assert outcome["seconds"] < 2, f"{case.name} took {outcome['seconds']:.2f} s"


@pytest.mark.django_db
def test_every_hostile_manifest_that_parses_is_stored_and_read_back_unchanged():
    fabric = make_fabric()
    parsed = [r for case in CORPUS if case.error is None for r in parse_file(case.file, case.raw)]
    for resource in parsed:  # one at a time: several cases declare the same Switch
        replace_resources(fabric, [resource])
        stored = Resource.objects.get(fabric=fabric)
        assert (stored.name, stored.spec, stored.content_hash) == (resource.name, resource.spec, resource.content_hash)


def sync_now(fabric: Fabric) -> None:
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    run_sync(fabric.id, token, trigger="manual", worker="test")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "content", "problem"),
    [
        ("manifests/a.yaml", manifest("Switch", "a" * 10_000), "metadata.name is 10,000 characters long"),
        (LONG_PATH, manifest("Switch", "a"), "the path is 600 characters long"),
        ("manifests/a.yaml", manifest("Switch", "a", mtu=".nan"), "spec.mtu: '.nan' is not a finite number"),
        ("manifests/a.yaml", manifest("Switch", "a", label='"a\\0b"'), "spec.label: a NUL character"),
        ("manifests/a.yaml", manifest("Switch", "a", asn="9" * 5_000), "spec.asn: .* 64-bit integer range"),
    ],
    ids=["long-name", "long-path", "nan", "nul", "5000-digits"],
)
def test_content_the_database_would_refuse_fails_the_sync_permanently_naming_the_file(git_repo, path, content, problem):
    repo = git_repo()
    repo.write(path, content)
    repo.commit()
    fabric = make_fabric(repo.url, git_path="")

    with pytest.raises(ManifestError, match=re.escape(path[:80]) + ".*" + problem):
        sync_now(fabric)

    fabric.refresh_from_db()
    assert (fabric.sync_status, fabric.consecutive_failures, fabric.lease_token) == (SyncStatus.ERROR, 1, "")
    assert fabric.last_error.startswith(path[:80])
    run = SyncRun.objects.get(fabric=fabric)
    assert (run.status, run.error_class) == (RunStatus.FAILED, "ManifestError")


def test_a_nesting_bomb_fails_its_fabric_in_manage_py_sync_and_the_next_fabric_still_syncs(
    transactional_db, git_repo, tmp_path
):
    bomb_repo = git_repo("bomb")
    bomb_repo.write("manifests/fine.yaml", manifest("Switch", "leaf1"))
    bomb_repo.write("manifests/nested.yaml", NESTING_BOMB)
    bomb_repo.commit()
    good_repo = git_repo("good")
    good_commit = good_repo.with_switches(3)
    bomb = make_fabric(bomb_repo.url, name="bomb")
    good = make_fabric(good_repo.url, name="good")
    env = {**os.environ, "DATABASE_URL": worker_database_url(), "SYNC_GIT_CACHE_DIR": str(tmp_path / "cli-cache")}

    # The real entry point in its own process: libyaml's composer would kill it with SIGSEGV.
    done = subprocess.run(
        [sys.executable, "manage.py", "sync", "bomb", "good"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip

    assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-2000:]}"  # -11 would be SIGSEGV
    assert "1 of 2 syncs failed: bomb" in done.stderr
    bomb.refresh_from_db()
    assert bomb.sync_status == SyncStatus.ERROR
    assert bomb.lease_token == ""
    assert bomb.last_error.startswith("manifests/nested.yaml:1:65 (document 1): ")
    assert bomb.last_error.endswith("nested deeper than 64 levels")
    assert not bomb.resources.exists()
    assert SyncRun.objects.get(fabric=bomb).status == RunStatus.FAILED
    good.refresh_from_db()
    assert (good.sync_status, good.current_commit) == (SyncStatus.IN_SYNC, good_commit)
    assert good.resources.count() == 3


def test_an_unexpected_parser_crash_fails_only_its_fabric_and_the_next_one_still_syncs(db, git_repo, monkeypatch):
    real_parse = runner.parse_manifests

    def parse(files):
        if "manifests/crash.yaml" in files:
            raise RecursionError("maximum recursion depth exceeded")
        return real_parse(files)

    monkeypatch.setattr(runner, "parse_manifests", parse)
    crash_repo, good_repo = git_repo("crash"), git_repo("good")
    crash_repo.write("manifests/crash.yaml", manifest("Switch", "leaf1"))
    crash_repo.commit()
    good_repo.with_switches(2)
    crash, good = make_fabric(crash_repo.url, name="crash"), make_fabric(good_repo.url, name="good")

    with pytest.raises(CommandError, match="1 of 2 syncs failed: crash"):
        call_command("sync", "crash", "good", stdout=StringIO(), stderr=StringIO())

    crash.refresh_from_db()
    good.refresh_from_db()
    assert (crash.sync_status, crash.lease_token) == (SyncStatus.ERROR, "")
    assert crash.last_error == "unexpected RecursionError: maximum recursion depth exceeded"
    assert (good.sync_status, good.resources.count()) == (SyncStatus.IN_SYNC, 2)


@pytest.mark.django_db
def test_two_manifests_whose_names_differ_only_in_bytes_that_are_not_utf8_fail_the_sync(git_repo):
    repo = git_repo()
    repo.write(os.fsdecode(b"manifests/leaf\xff.yaml"), manifest("Switch", "leaf1"))
    repo.write(os.fsdecode(b"manifests/leaf\xfe.yaml"), manifest("Switch", "leaf2"))
    repo.write(os.fsdecode(b"manifests/README\xff.md"), "not a manifest: ignored")
    repo.commit()
    fabric = make_fabric(repo.url)

    # Decoded with replacement, both were "manifests/leaf\ufffd.yaml": one hid the other.
    with pytest.raises(ManifestError, match=r"^manifests/leaf\\xf[ef]\.yaml: the file name is not valid UTF-8"):
        sync_now(fabric)
