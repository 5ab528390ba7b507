"""Drift of 5,000 desired/live object pairs: CPU time of ``sync.live.drift.compare``.

Goal (issue 9): under 1 s of CPU. The live side looks like what an API server returns
for the desired side: metadata the server writes (uid, resourceVersion, managedFields,
an annotation), defaulted spec fields, a status; 1 in 50 objects has one field changed
out of band. Run: ``python -m bench.drift [pairs]``.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

from sync.live.drift import compare
from sync.live.kinds import DEFAULT_KINDS

NAMESPACE = "fabric-1"


def desired_object(i: int) -> dict[str, Any]:
    """A Hedgehog-like document: kinds in turn, about 30 leaves each."""
    kind = DEFAULT_KINDS[i % len(DEFAULT_KINDS)]
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {"name": f"obj-{i}", "namespace": NAMESPACE, "labels": {"fabric": "f1", "rack": f"r{i % 8}"}},
        "spec": {
            "description": f"object {i}",
            "role": "server-leaf",
            "asn": 65000 + i % 1000,
            "ip": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32",
            "groups": ["mclag-1", f"g{i % 4}"],
            "portSpeeds": {f"E1/{p}": "25G" for p in range(1, 9)},
            "subnets": {
                "default": {"subnet": f"10.{i % 250}.0.0/24", "vlan": 1000 + i % 3000, "dhcp": {"enable": True}},
                "extra": {"subnet": f"10.{i % 250}.1.0/24", "vlan": 2000 + i % 3000},
            },
            "links": [{"server": {"port": f"s{i}/enp2s1"}, "switch": {"port": f"leaf-{i % 4}/E1/{i % 48}"}}],
        },
    }


def live_object(desired: dict[str, Any], i: int) -> dict[str, Any]:
    obj = copy.deepcopy(desired)
    obj["metadata"].update(
        {
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": str(100000 + i),
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [
                {"manager": "fcp", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}
            ],
        }
    )
    obj["spec"]["mode"] = "l2vni"  # defaulted by the server
    obj["spec"]["subnets"]["default"]["dhcp"]["range"] = {"start": "", "end": ""}
    obj["spec"]["links"][0]["switch"]["speed"] = "auto"  # defaulted inside a list element
    obj["status"] = {"applied": {"gen": 1}, "state": "ready"}
    if i % 50 == 0:
        obj["spec"]["subnets"]["default"]["vlan"] += 1  # out-of-band change
    return obj


def main(pairs: int = 5000, rounds: int = 5) -> None:
    desired = [desired_object(i) for i in range(pairs)]
    live = [live_object(d, i) for i, d in enumerate(desired)]
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        report = compare(desired, live, kinds=DEFAULT_KINDS, namespaces=[NAMESPACE])
        best = min(best, time.process_time() - started)
    print(f"{pairs} pairs: {best:.3f} s CPU (best of {rounds}); counts {report.counts}; status {report.status}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
