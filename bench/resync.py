"""Benchmark: a fabric's first sync and its re-sync after one of 5,000 manifests changed.

Issue 11, goal 2 ("changed sync in proportion to the change"). Run with ``make bench``
(or ``bash scripts/bench.sh``), or alone with the ``DATABASE_URL`` of a database of
its own (the script creates and deletes only fabrics named ``bench-resync-*``):

1. Build a local Git repository (in a temporary folder) with N manifest files
   (default 5,000; ``BENCH_MANIFESTS``) of 3 Hedgehog-like documents each, packed as
   a Git server keeps it.
2. Each round (default 5; ``BENCH_ROUNDS``), in an order swapped every round:
   (a) baseline: ``git clone --depth 1`` of the repository, then
       ``yaml.load_all(..., Loader=CSafeLoader)`` of every manifest of the clone;
   (b) first sync: ``run_sync`` of a new fabric (no resources, no Git cache);
   then (c): commit a change to one file and ``run_sync`` the same fabric again;
   and (d), the parser alone: CPU time of ``parse_manifests`` over every manifest in
   memory against ``yaml.load_all(..., Loader=CSafeLoader)`` of the same bytes.
3. Print the medians and ranges of (b)/(a), (c)/(b) and (d), each ratio taken per
   round, with the machine's load average before and after. Exit 1 when a median
   misses its target: (b)/(a) at most 1.2, (c)/(b) at most 0.05.

A warm-up round runs first and is not counted (the first ``git`` and database calls of
a process pay for loading code and opening connections).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKDIR = Path(tempfile.mkdtemp(prefix="bench-resync-"))
# Before Django reads its settings: the repository must be below an allowed local root,
# and the fabric's Git cache lives (and is deleted) with the rest of the run.
os.environ["SYNC_ALLOWED_LOCAL_ROOTS"] = str(WORKDIR)
os.environ["SYNC_GIT_CACHE_DIR"] = str(WORKDIR / "cache")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

import yaml  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from sync import leases  # noqa: E402
from sync.manifests import parse_manifests  # noqa: E402
from sync.models import Fabric, RunStatus  # noqa: E402
from sync.runner import SyncResult, run_sync  # noqa: E402

N = int(os.environ.get("BENCH_MANIFESTS", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
DOCUMENTS_PER_FILE = 3
FIRST_TARGET, RESYNC_TARGET = 1.2, 0.05
GIT_IDENTITY = ["-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", "-c", "commit.gpgsign=false"]
KINDS = ("Server", "Connection", "VPCAttachment")


def document(i: int, j: int, revision: int = 0) -> str:
    """About 30 values, nested as wiring objects are."""
    return f"""apiVersion: wiring.githedgehog.com/v1beta1
kind: {KINDS[j]}
metadata:
  name: server-{i:05}-{j}
  namespace: default
  labels:
    fabric: f1
    rack: r{i % 8}
spec:
  description: object {i} revision {revision}
  role: server-leaf
  asn: {65000 + i % 1000}
  ip: 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32
  groups: [mclag-1, g{i % 4}]
  portSpeeds: {{E1/1: 25G, E1/2: 25G, E1/3: 25G, E1/4: 25G}}
  subnets:
    default: {{subnet: 10.{i % 250}.0.0/24, vlan: {1000 + i % 3000}, dhcp: {{enable: true}}}}
    extra: {{subnet: 10.{i % 250}.1.0/24, vlan: {2000 + i % 3000}}}
  links:
  - server: {{port: s{i}/enp2s1}}
    switch: {{port: leaf-{i % 4}/E1/{i % 48}}}
"""


def manifest_file(i: int, revision: int = 0) -> str:
    return "---\n".join(document(i, j, revision) for j in range(DOCUMENTS_PER_FILE))


def relative_path(i: int) -> str:
    return f"manifests/rack-{i % 50:02}/server-{i:05}.yaml"


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def build_repository(path: Path) -> None:
    git("init", "--quiet", "-b", "main", str(path), cwd=WORKDIR)
    for i in range(N):
        target = path / relative_path(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(manifest_file(i))
    git("add", "--all", cwd=path)
    git("commit", "--quiet", "-m", f"{N} manifests", cwd=path)
    git("gc", "--quiet", cwd=path)  # packed, as a Git server keeps it


def baseline(repo: Path) -> tuple[float, float]:
    """Seconds of ``git clone --depth 1`` (with its checkout) and of CSafeLoader over every manifest of the clone."""
    clone = WORKDIR / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--no-tags", f"file://{repo}", str(clone)], check=True)
    cloned = time.perf_counter()
    documents = 0
    for path in sorted((clone / "manifests").rglob("*.yaml")):
        documents += sum(1 for _ in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))
    loaded = time.perf_counter()
    assert documents == N * DOCUMENTS_PER_FILE, documents
    shutil.rmtree(clone)
    return cloned - started, loaded - cloned


def timed_sync(fabric: Fabric) -> tuple[float, SyncResult]:
    """One sync through the runner, the lease taken first (as the tick and the task do), untimed."""
    now = timezone.now()
    Fabric.objects.filter(id=fabric.id).update(next_sync_at=now)
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "bench").outcome is leases.BeginOutcome.STARTED
    started = time.perf_counter()
    result = run_sync(fabric.id, token, trigger="manual", worker="bench")
    return time.perf_counter() - started, result


def delete_bench_fabrics() -> None:
    Fabric.objects.filter(name__startswith="bench-resync-").delete()
    shutil.rmtree(WORKDIR / "cache", ignore_errors=True)


def one_round(repo: Path, number: int, baseline_first: bool) -> dict[str, float]:
    delete_bench_fabrics()
    fabric = Fabric.objects.create(name=f"bench-resync-{number}", git_url=str(repo), git_path="manifests")
    times: dict[str, float] = {}

    def run_baseline() -> None:
        times["clone"], times["csafeloader"] = baseline(repo)
        times["baseline"] = times["clone"] + times["csafeloader"]

    def run_first() -> None:
        times["first"] = first_sync(fabric)

    for run in (run_baseline, run_first) if baseline_first else (run_first, run_baseline):
        run()
    changed = number * 37 % N
    (repo / relative_path(changed)).write_text(manifest_file(changed, revision=number + 1))
    git("commit", "--quiet", "--all", "-m", f"change {relative_path(changed)}", cwd=repo)
    times["resync"], result = timed_sync(fabric)
    assert result.status == RunStatus.SUCCESS, result
    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (0, DOCUMENTS_PER_FILE, 0), result
    assert result.counts.files_read == 1, result
    times["parse_cpu"], times["csafeloader_cpu"] = parser_alone(repo)
    return times


def parser_alone(repo: Path) -> tuple[float, float]:
    """CPU seconds of ``parse_manifests`` and of CSafeLoader over the same bytes, in memory."""
    files = {str(path.relative_to(repo)): path.read_bytes() for path in sorted((repo / "manifests").rglob("*.yaml"))}
    started = time.process_time()
    parsed = parse_manifests(files)
    parse_seconds = time.process_time() - started
    started = time.process_time()
    documents = [d for raw in files.values() for d in yaml.load_all(raw.decode(), Loader=yaml.CSafeLoader)]
    csafe_seconds = time.process_time() - started
    assert len(parsed) == len(documents) == N * DOCUMENTS_PER_FILE
    return parse_seconds, csafe_seconds


def first_sync(fabric: Fabric) -> float:
    seconds, result = timed_sync(fabric)
    assert result.status == RunStatus.SUCCESS, result
    assert result.resources == N * DOCUMENTS_PER_FILE, result
    return seconds


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}  # fmt: skip


def main() -> int:
    repo = WORKDIR / "repo"
    build_repository(repo)
    load_before = os.getloadavg()
    one_round(repo, 0, True)  # warm-up
    rounds = [one_round(repo, number, number % 2 == 1) for number in range(1, ROUNDS + 1)]
    load_after = os.getloadavg()
    delete_bench_fabrics()

    first_ratio = [r["first"] / r["baseline"] for r in rounds]
    resync_ratio = [r["resync"] / r["first"] for r in rounds]
    result = {
        "manifests": N,
        "documents": N * DOCUMENTS_PER_FILE,
        "rounds": ROUNDS,
        "database": connection.vendor,
        "baseline_clone_and_csafeloader_seconds": summary([r["baseline"] for r in rounds]),
        "baseline_clone_seconds": summary([r["clone"] for r in rounds]),
        "baseline_csafeloader_seconds": summary([r["csafeloader"] for r in rounds]),
        "first_sync_seconds": summary([r["first"] for r in rounds]),
        "resync_one_file_seconds": summary([r["resync"] for r in rounds]),
        "ratio_first_sync_to_baseline": summary(first_ratio),
        "ratio_resync_to_first_sync": summary(resync_ratio, 4),
        "parser_cpu_seconds": summary([r["parse_cpu"] for r in rounds]),
        "csafeloader_cpu_seconds": summary([r["csafeloader_cpu"] for r in rounds]),
        "ratio_parser_to_csafeloader_cpu": summary([r["parse_cpu"] / r["csafeloader_cpu"] for r in rounds]),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    failed = 0
    if statistics.median(first_ratio) > FIRST_TARGET:
        print(f"FAILED target: first sync should take at most {FIRST_TARGET}x the baseline", file=sys.stderr)
        failed = 1
    if statistics.median(resync_ratio) > RESYNC_TARGET:
        print(f"FAILED target: a 1-file re-sync should take at most {RESYNC_TARGET}x the first sync", file=sys.stderr)
        failed = 1
    return failed


if __name__ == "__main__":
    try:
        status = main()
    finally:
        try:
            delete_bench_fabrics()
        finally:
            shutil.rmtree(WORKDIR, ignore_errors=True)
    sys.exit(status)
