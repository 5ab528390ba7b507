"""Benchmark: a fabric with 5,000 live Hedgehog objects in a real kube-apiserver.

Run with ``make bench`` (or ``bash -c 'source scripts/services.sh && .venv/bin/python
bench/live.py'``: ``KubeClient`` keeps its breaker ``k8s:<host:port>`` in the Redis of
``settings.REDIS_URL``, which ``scripts/services.sh`` provides). Needs the cached
kube-apiserver binary and etcd (``bash scripts/kube-apiserver.sh build``).

1. Start a private etcd + kube-apiserver with the Hedgehog CRDs (``tests.kube``),
   create a namespace, a read-only token for it (observe mode: get/list/watch), and
   N objects (default 5,000; ``BENCH_LIVE_OBJECTS``) spread over the 12 default kinds
   like a real wiring: servers, their connections and VPC attachments, VPCs, peerings,
   switches, externals, pools. The desired documents (what Git holds) are kept.
2. Rounds (one to warm up, then ``ROUNDS``), interleaved, the order of (a) and (b)
   swapped every round:
   (a) our first live read + drift: a new ``KubeClient``, ``read_live`` without state
       (GET /version, then a paginated LIST per kind, concurrently), ``compare``
       against the desired documents, the fingerprint of what was compared;
   (b) the baseline a user would write: the official ``kubernetes`` client,
       ``CustomObjectsApi.list_namespaced_custom_object`` with ``limit``/``_continue``
       for each kind, one after another, same page size and token;
   (c) an unchanged re-sync as ``sync.live.sync_step`` does it: ``read_live`` from the
       stored state (one quiet WATCH per kind) and step 3's check that skips the drift
       recompute. Reported with and without decoding the stored state from its JSON
       (the ``live_state`` column the sync loads with the fabric's row).
   (d) the CPU time (``time.process_time``) of ``compare`` inside (a).
3. Targets (issue 9): median (a)/(b) <= 1.5, median (c)/(a) <= 0.1, median (d) < 1 s.
   Per-round ratios are reported as median and range. Exit 1 when a target is missed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from sync.live.client import KubeClient  # noqa: E402
from sync.live.cluster import ClusterConfig  # noqa: E402
from sync.live.drift import IN_SYNC, compare  # noqa: E402
from sync.live.kinds import DEFAULT_KINDS, Kind  # noqa: E402
from sync.live.state import read_live  # noqa: E402
from sync.live.sync_step import RELIST_AFTER  # noqa: E402
from sync.models import DriftStatus  # noqa: E402
from tests.kube import KubeCluster, unavailable_reason  # noqa: E402

N = int(os.environ.get("BENCH_LIVE_OBJECTS", "5000"))
ROUNDS = int(os.environ.get("BENCH_LIVE_ROUNDS", "5"))
NAMESPACE = "fabric-bench"
PAGE = 500  # read_live's default page size; the baseline uses the same
CONFIG = ClusterConfig(DEFAULT_KINDS, (NAMESPACE,), ())
SOURCE = ("0123456789abcdef0123456789abcdef01234567", "git-source-fingerprint")  # commit, Git source

# Share of the objects per kind: one connection and one VPC attachment per server, as a
# real wiring has; the rest are fewer and bigger (VPCs, switches).
SHARES = {
    "Server": 24,
    "Connection": 24,
    "VPCAttachment": 24,
    "VPC": 10,
    "VPCPeering": 5,
    "Switch": 4,
    "SwitchGroup": 2,
    "ExternalAttachment": 2,
    "ExternalPeering": 2,
    "External": 1,
    "IPv4Namespace": 1,
    "VLANNamespace": 1,
}


# --- The fabric --------------------------------------------------------------------------------


def counts(total: int) -> dict[str, int]:
    """Objects per kind, summing to ``total`` (the remainder goes to the servers' triple)."""
    out = {kind: total * share // 100 for kind, share in SHARES.items()}
    for i in range(total - sum(out.values())):
        out[("Server", "Connection", "VPCAttachment")[i % 3]] += 1
    return out


def name(kind: str, i: int) -> str:
    """The name of the ``i``-th object of ``kind``: ``vpc-00042``, ``switch-00007``."""
    return f"{kind.lower()}-{i:05}"


def spec_of(kind: str, i: int, n: dict[str, int]) -> dict[str, Any]:
    """A valid spec (for the CRDs of sync/live/crds) of the ``i``-th object of ``kind``.

    References between objects use the names ``name`` gives: a server's connection and
    VPC attachment share its index; leaves come in MCLAG pairs."""
    vpcs, switches, externals = max(n["VPC"], 2), max(n["Switch"], 2), max(n["External"], 1)
    vpc, server, external = name("VPC", i % vpcs), name("Server", i), name("External", i % externals)
    spines = max(switches // 10, 1)  # the last tenth of the switches; the leaves pair up from 0
    pair = 2 * (i % max((switches - spines) // 2, 1))
    leaf1, leaf2 = name("Switch", pair), name("Switch", pair + 1)
    if kind == "Server":
        return {"description": f"{server}, rack {i // 40}", "profile": "linux-x86"}
    if kind == "Connection":
        port = i % 48 + 1

        def link(nic: str, leaf: str, port: int) -> dict[str, Any]:
            return {"server": {"port": f"{server}/{nic}"}, "switch": {"port": f"{leaf}/E1/{port}"}}

        if i % 3 == 0:
            return {"mclag": {"links": [link("enp2s1", leaf1, port), link("enp2s2", leaf2, port)], "mtu": 9036}}
        if i % 3 == 1:
            return {"bundled": {"links": [link("enp2s1", leaf1, port), link("enp2s2", leaf1, port + 1)]}}
        return {"unbundled": {"link": link("enp2s1", leaf1, port)}}
    if kind == "VPCAttachment":
        return {"subnet": f"{vpc}/frontend", "connection": name("Connection", i), "nativeVLAN": i % 5 == 0}
    if kind == "VPC":
        net = f"10.{i // 250 % 250}.{i % 250}"

        def subnet(k: int, vlan: int) -> dict[str, Any]:
            return {
                "subnet": f"{net}.{64 * k}/26",
                "gateway": f"{net}.{64 * k + 1}",
                "vlan": vlan,
                "dhcp": {"enable": True, "range": {"start": f"{net}.{64 * k + 10}", "end": f"{net}.{64 * k + 60}"}},
            }

        return {
            "subnets": {"frontend": subnet(0, 1000 + 2 * i % 2000), "backend": subnet(1, 1001 + 2 * i % 2000)},
            "permit": [["frontend", "backend"]],
        }
    if kind == "VPCPeering":
        other = name("VPC", (i + 1) % vpcs)
        return {"permit": [{vpc: {"subnets": ["frontend"]}, other: {"subnets": ["backend"]}}]}
    if kind == "Switch":
        spine = i >= switches - spines
        spec: dict[str, Any] = {
            "role": "spine" if spine else "server-leaf",
            "description": f"{name('Switch', i)}, {'spine' if spine else 'leaf'}",
            "profile": "dell-s5248f-on",
            "asn": 65100 + i,
            "ip": f"172.30.{i // 250}.{i % 250 + 2}/21",
            "protocolIP": f"172.30.8.{i % 250 + 1}/32",
            "boot": {"serial": f"SN{i:06}"},
            "portSpeeds": {f"E1/{p}": "25G" for p in range(1, 5)},
            "portBreakouts": {"E1/55": "4x25G"},
        }
        if not spine:
            group = name("SwitchGroup", i // 2)
            spec.update(
                vtepIP=f"172.30.12.{i // 2 % 250}/32", groups=[group], redundancy={"group": group, "type": "mclag"}
            )
        return spec
    if kind == "SwitchGroup":
        return {}
    if kind == "ExternalAttachment":
        return {
            "connection": f"border-{i:05}--external",
            "external": external,
            "neighbor": {"asn": 64102, "ip": f"100.{i // 250}.{i % 250}.6"},
            "switch": {"ip": f"100.{i // 250}.{i % 250}.5/24", "vlan": 100 + i % 3000},
        }
    if kind == "ExternalPeering":
        return {
            "permit": {
                "vpc": {"name": vpc, "subnets": ["frontend"]},
                "external": {"name": external, "prefixes": [{"prefix": "0.0.0.0/0"}]},
            }
        }
    if kind == "External":
        return {"inboundCommunity": f"65102:{5000 + i}", "outboundCommunity": f"50000:{50001 + i}"}
    if kind == "IPv4Namespace":
        return {"subnets": [f"10.{i % 250}.0.0/16"]}
    if kind == "VLANNamespace":
        return {"ranges": [{"from": 1000, "to": 2999}]}
    raise ValueError(kind)


def desired_documents(total: int) -> list[dict[str, Any]]:
    """The fabric as Git holds it: ``total`` documents over the default kinds."""
    n = counts(total)
    by_name = {k.kind: k for k in DEFAULT_KINDS}
    documents = []
    for kind_name, count in n.items():
        kind = by_name[kind_name]
        for i in range(count):
            documents.append(
                {
                    "apiVersion": kind.api_version,
                    "kind": kind.kind,
                    "metadata": {
                        "name": name(kind.kind, i),
                        "namespace": NAMESPACE,
                        "labels": {"fabric": "bench", "rack": f"r{i % 40:02}"},
                    },
                    "spec": spec_of(kind_name, i, n),
                }
            )
    return documents


def create_all(cluster: KubeCluster, documents: list[dict[str, Any]], workers: int = 8) -> float:
    """POST every document (setup, not measured against anything); return the seconds it took."""
    started = time.perf_counter()
    with cluster.client(timeout=60) as http, ThreadPoolExecutor(workers) as pool:

        def create(doc: dict[str, Any]) -> None:
            response = http.post(cluster.path(doc["apiVersion"], doc["kind"], NAMESPACE), json=doc)
            if response.status_code != 201:
                raise RuntimeError(f"creating {doc['kind']} {doc['metadata']['name']}: {response.text[:300]}")

        list(pool.map(create, documents))
    return time.perf_counter() - started


# --- The measures ------------------------------------------------------------------------------


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process, every thread included)."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def ours_first(cluster: KubeCluster, token: str, desired: list[dict[str, Any]]) -> dict[str, Any]:
    """(a): what the first sync of a fabric does with its cluster, as ``sync_step._after_read``."""
    with KubeClient(cluster.base_url, token=token, ca_pem=cluster.ca_pem) as client:
        live = read_live(client, CONFIG.kinds, CONFIG.namespaces, None, now=time.time())
        read_done = time.perf_counter()
        cpu = time.process_time()
        report = compare(
            desired,
            live.objects(),
            kinds=CONFIG.kinds,
            namespaces=CONFIG.namespaces,
            ignore=CONFIG.ignore,
            default_namespace=CONFIG.default_namespace,
        )
        compare_cpu = time.process_time() - cpu
        compare_wall = time.perf_counter() - read_done
        fingerprint = CONFIG.fingerprint(*SOURCE)
    assert live.complete, live.errors
    assert report.counts[IN_SYNC] == len(desired), report.counts  # every object valid, nothing pruned
    return {
        "state": live.state,
        "stats": live.stats,
        "status": report.status,
        "fingerprint": fingerprint,
        "compare_cpu": compare_cpu,
        "compare_wall": compare_wall,
    }


def baseline_list(configuration: k8s.Configuration, kinds: tuple[Kind, ...]) -> tuple[int, int]:
    """(b): a paginated LIST of every kind with the official client; (objects, pages)."""
    items: list[Any] = []
    pages = 0
    with k8s.ApiClient(configuration) as api_client:
        api = k8s.CustomObjectsApi(api_client)
        for kind in kinds:
            token = None
            while True:
                page: dict[str, Any] = api.list_namespaced_custom_object(  # type: ignore[assignment]
                    kind.group, kind.version, NAMESPACE, kind.plural, limit=PAGE, _continue=token
                )
                pages += 1
                items.extend(page["items"])
                token = page["metadata"].get("continue")
                if not token:
                    break
    return len(items), pages


def ours_unchanged(
    cluster: KubeCluster, token: str, stored_json: str, fingerprint: str, drift_status: str
) -> tuple[float, Any]:
    """(c): an unchanged re-sync; (seconds spent decoding the stored state, read stats)."""
    started = time.perf_counter()
    state = json.loads(stored_json)  # the live_state column, as loading the fabric's row decodes it
    decoded = time.perf_counter() - started
    with KubeClient(cluster.base_url, token=token, ca_pem=cluster.ca_pem) as client:
        live = read_live(client, CONFIG.kinds, CONFIG.namespaces, state, now=time.time(), relist_after=RELIST_AFTER)
        # sync_step._after_read, step 3: nothing changed, same commit and settings, drift
        # known, observe mode (nothing to reconcile): the stored drift stands.
        skipped = (
            live.complete
            and not live.changed
            and CONFIG.fingerprint(*SOURCE) == fingerprint
            and drift_status != DriftStatus.UNKNOWN
        )
    assert skipped, live.stats
    assert live.stats.lists == 0, live.stats
    return decoded, live.stats


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "range": [round(min(values), digits), round(max(values), digits)],
    }


def run(cluster: KubeCluster) -> dict[str, Any]:
    cluster.create_namespace(NAMESPACE)
    token = cluster.readonly_token(NAMESPACE)  # observe mode: get/list/watch, for both sides
    desired = desired_documents(N)
    create_seconds = create_all(cluster, desired)
    desired = json.loads(json.dumps(desired))  # Git's copy: nothing shared with what was sent

    configuration = k8s.Configuration()
    k8s_config.load_kube_config_from_dict(cluster.kubeconfig(token), client_configuration=configuration)
    with KubeClient(cluster.base_url, token=token, ca_pem=cluster.ca_pem) as client:
        server_version = client.version()["gitVersion"]

    samples: dict[str, list[float]] = {}
    stored: dict[str, Any] = {}
    first: dict[str, Any] = {}
    for round_no in range(ROUNDS + 1):  # round 0 warms up (connections, caches) and is not counted
        for step in ("a", "b") if round_no % 2 else ("b", "a"):
            if step == "a":
                first, a_wall, a_cpu = timed(ours_first, cluster, token, desired)
            else:
                (objects, b_pages), b_wall, b_cpu = timed(baseline_list, configuration, CONFIG.kinds)
                assert objects == N, objects
        if not stored:  # what the first sync stores: the live state (JSON column) and its drift
            stored = {
                "json": json.dumps(first["state"]),
                "fingerprint": first["fingerprint"],
                "status": first["status"],
            }
        (decoded, unchanged_stats), c_wall, _ = timed(
            ours_unchanged, cluster, token, stored["json"], stored["fingerprint"], stored["status"]
        )
        if round_no == 0:
            continue
        for key, value in {
            "a": a_wall,
            "a_cpu": a_cpu,
            "a_compare_wall": first["compare_wall"],
            "d": first["compare_cpu"],
            "b": b_wall,
            "b_cpu": b_cpu,
            "c": c_wall - decoded,
            "c_total": c_wall,
            "a/b": a_wall / b_wall,
            "c/a": (c_wall - decoded) / a_wall,
            "c_total/a": c_wall / a_wall,
        }.items():
            samples.setdefault(key, []).append(value)

    with KubeClient(cluster.base_url, token=token, ca_pem=cluster.ca_pem) as client:
        breaker = client.breaker.metrics  # every call above went through it: shared, in Redis?
    first_stats = first["stats"]
    return {
        "objects": N,
        "kinds": len(CONFIG.kinds),
        "rounds": ROUNDS,
        "kube_apiserver": server_version,
        "kubernetes_client": version("kubernetes"),
        "setup_create_seconds": round(create_seconds, 1),
        "stored_state_mb": round(len(stored["json"]) / 1e6, 1),
        "a_first_read_and_drift_s": spread(samples["a"]),
        "a_cpu_s": spread(samples["a_cpu"]),
        "a_compare_wall_s": spread(samples["a_compare_wall"]),
        "a_requests": {"probes": first_stats.probes, "list_pages": first_stats.list_pages},
        "b_kubernetes_client_list_s": spread(samples["b"]),
        "b_cpu_s": spread(samples["b_cpu"]),
        "b_requests": {"list_pages": b_pages},
        "ratio_a_to_b": spread(samples["a/b"]),
        "c_unchanged_resync_s": spread(samples["c"]),
        "c_requests": {
            "probes": unchanged_stats.probes,
            "watches": unchanged_stats.watches,
            "lists": unchanged_stats.lists,
        },
        "ratio_c_to_a": spread(samples["c/a"]),
        "c_with_state_decode_s": spread(samples["c_total"]),
        "ratio_c_with_state_decode_to_a": spread(samples["c_total/a"]),
        "d_compare_cpu_s": spread(samples["d"]),
        "breaker": {"name": breaker.name, "backend": breaker.backend, "fallback_events": breaker.fallback_events},
    }


def main() -> None:
    reason = unavailable_reason()
    if reason:
        print(f"FAILED: {reason}", file=sys.stderr)
        sys.exit(1)
    try:  # the shared breaker needs Redis; without it KubeClient would fall back silently
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        print(
            f"FAILED: no Redis at REDIS_URL for the shared breaker ({exc}); run through scripts/bench.sh",
            file=sys.stderr,
        )
        sys.exit(1)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    load_before = os.getloadavg()
    cluster = KubeCluster.launch()
    try:
        result = run(cluster)
    finally:
        cluster.destroy()
    result["load_average_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["cores"] = os.cpu_count()
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in result.items()]
    print("{\n" + ",\n".join(lines) + "\n}")  # one line per measure, still JSON
    failed = []
    if result["breaker"]["backend"] != "redis" or result["breaker"]["fallback_events"]:
        failed.append("every call should go through the shared breaker in Redis (settings.REDIS_URL)")
    if result["ratio_a_to_b"]["median"] > 1.5:
        failed.append("first live read + drift should take at most 1.5x the kubernetes client's LIST")
    if result["ratio_c_to_a"]["median"] > 0.1:
        failed.append("an unchanged re-sync should take at most 0.1x the first")
    if result["d_compare_cpu_s"]["median"] >= 1.0:
        failed.append("drift of the object pairs should take under 1 s of CPU")
    for message in failed:
        print(f"FAILED target: {message}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
