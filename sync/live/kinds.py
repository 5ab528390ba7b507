"""The Kubernetes kinds a fabric tracks: group, version, kind and the REST plural.

The defaults are the Hedgehog kinds the NetBox plugin listed per fabric; plurals as in
the upstream CRDs (``githedgehog/fabric``, ``config/crd/bases``). All are namespaced.
A fabric may track other kinds; ``parse_kinds`` reads them from the JSON a fabric keeps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

VPC_GROUP = "vpc.githedgehog.com"
WIRING_GROUP = "wiring.githedgehog.com"
_CORE_VERSION = re.compile(r"v\d+(?:(?:alpha|beta)\d+)?")


@dataclass(frozen=True, order=True)
class Kind:
    group: str  # "" for the core API ("v1")
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "version": self.version,
            "kind": self.kind,
            "plural": self.plural,
            "namespaced": self.namespaced,
        }


def _hedgehog(group: str, kind: str, plural: str) -> Kind:
    return Kind(group, "v1beta1", kind, plural)


DEFAULT_KINDS: tuple[Kind, ...] = (
    _hedgehog(VPC_GROUP, "VPC", "vpcs"),
    _hedgehog(VPC_GROUP, "External", "externals"),
    _hedgehog(VPC_GROUP, "ExternalAttachment", "externalattachments"),
    _hedgehog(VPC_GROUP, "ExternalPeering", "externalpeerings"),
    _hedgehog(VPC_GROUP, "IPv4Namespace", "ipv4namespaces"),
    _hedgehog(VPC_GROUP, "VPCAttachment", "vpcattachments"),
    _hedgehog(VPC_GROUP, "VPCPeering", "vpcpeerings"),
    _hedgehog(WIRING_GROUP, "Connection", "connections"),
    _hedgehog(WIRING_GROUP, "Server", "servers"),
    _hedgehog(WIRING_GROUP, "Switch", "switches"),
    _hedgehog(WIRING_GROUP, "SwitchGroup", "switchgroups"),
    _hedgehog(WIRING_GROUP, "VLANNamespace", "vlannamespaces"),
)


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"vpc.githedgehog.com/v1beta1"`` -> ``("vpc.githedgehog.com", "v1beta1")``; ``"v1"`` -> ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def find_kind(api_version: str, kind: str, kinds: Iterable[Kind] = DEFAULT_KINDS) -> Kind | None:
    """The tracked kind of a document's ``apiVersion`` and ``kind`` (the version must match too)."""
    group, version = split_api_version(api_version)
    return next((k for k in kinds if k.group == group and k.version == version and k.kind == kind), None)


def parse_kinds(value: Iterable[Mapping[str, Any] | str] | None) -> tuple[Kind, ...]:
    """Kinds from a fabric's JSON setting; empty or None means ``DEFAULT_KINDS``.

    Each entry is a dict (``group``, ``version``, ``kind``, ``plural``, optional
    ``namespaced``) or a string ``"group/version/Kind"`` naming a default kind, or
    ``"group/version/Kind/plural"`` for any other (``"v1/Kind/plural"`` in the core API).
    ``ValueError`` names a bad entry.
    """
    if not value:
        return DEFAULT_KINDS
    kinds: list[Kind] = []
    for entry in value:
        if isinstance(entry, str):
            parts = entry.split("/")
            if len(parts) == 3 and (known := find_kind("/".join(parts[:2]), parts[2])):
                kinds.append(known)
            elif len(parts) == 4 and all(parts[1:]):
                kinds.append(Kind(parts[0], parts[1], parts[2], parts[3].lower()))
            elif len(parts) == 3 and _CORE_VERSION.fullmatch(parts[0]) and all(parts):
                kinds.append(Kind("", parts[0], parts[1], parts[2].lower()))  # "v1/ConfigMap/configmaps"
            else:
                raise ValueError(
                    f"unknown kind {entry!r}: use group/version/Kind/plural for kinds not tracked by default"
                )
        elif isinstance(entry, Mapping):
            try:
                kinds.append(
                    Kind(
                        str(entry["group"]),
                        str(entry["version"]),
                        str(entry["kind"]),
                        str(entry["plural"]).lower(),
                        bool(entry.get("namespaced", True)),
                    )
                )
            except KeyError as exc:
                raise ValueError(f"kind {dict(entry)!r} lacks {exc.args[0]!r}") from None
        else:
            raise ValueError(f"a kind is a string or an object, not {type(entry).__name__}")
    return tuple(dict.fromkeys(kinds))  # first occurrence wins, order kept
