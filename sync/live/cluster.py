"""From a ``FabricCluster`` row to what the live step works with: its parsed settings and a client.

``client_for`` is the one place a cluster's token leaves its ``Credential``: decrypted
into a masked ``Secret`` that ``KubeClient`` reveals only into the headers of each
request. No message raised here holds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.credentials import CredentialError
from sync.live.client import KubeClient, KubePermanentError
from sync.live.drift import IgnoreRule, ObjectKey, parse_ignore_rules
from sync.live.kinds import Kind, parse_kinds, split_api_version

if TYPE_CHECKING:
    from sync.models import FabricCluster

# Our field manager for server-side apply: what the cluster's managedFields name as the owner.
FIELD_MANAGER = "fabric-control-plane"


class ClusterSettingsError(KubePermanentError):
    """The cluster row's settings cannot be used (bad JSON, a credential that is not a bearer token)."""


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed settings of one fabric's cluster."""

    kinds: tuple[Kind, ...]
    namespaces: tuple[str, ...]
    ignore: tuple[IgnoreRule, ...]

    @property
    def default_namespace(self) -> str:
        """Where a namespaced Git document without a namespace lives (as ``kubectl apply -n`` would put it)."""
        return self.namespaces[0]

    def kind_of(self, key: ObjectKey) -> Kind | None:
        return next((k for k in self.kinds if k.group == key.group and k.kind == key.kind), None)

    def key_of(self, document: dict[str, Any]) -> ObjectKey:
        """The key ``sync.live.drift.compare`` gives a desired document."""
        group, _ = split_api_version(str(document.get("apiVersion", "")))
        kind_name = str(document.get("kind", ""))
        metadata = document.get("metadata") or {}
        kind = next((k for k in self.kinds if k.group == group and k.kind == kind_name), None)
        namespaced = kind.namespaced if kind is not None else True
        namespace = str(metadata.get("namespace") or self.default_namespace) if namespaced else ""
        return ObjectKey(group, kind_name, namespace, str(metadata.get("name", "")))

    def fingerprint(self, *parts: str) -> str:
        """A hash of ``parts`` (the commit, the Git source) and these settings: what the
        stored drift was computed for. Equal fingerprints and an unchanged cluster mean
        the stored drift still holds."""
        settings = {
            "kinds": [k.to_dict() for k in self.kinds],
            "namespaces": list(self.namespaces),
            "ignore": [r.to_dict() for r in self.ignore],
        }
        text = "\n".join([*parts, json.dumps(settings, sort_keys=True)])
        return hashlib.sha256(text.encode()).hexdigest()


def config_of(cluster: FabricCluster) -> ClusterConfig:
    """``ClusterSettingsError`` (permanent, readable) for settings the admin would have refused."""
    try:
        kinds = parse_kinds(cluster.kinds or None)
        ignore = parse_ignore_rules(cluster.ignore_rules or ())
    except (ValueError, TypeError, AttributeError) as exc:
        raise ClusterSettingsError(f"the cluster's settings are invalid: {exc}") from None
    namespaces = tuple(str(ns) for ns in (cluster.namespaces or []) if ns)
    if not namespaces:
        raise ClusterSettingsError("the cluster manages no namespace: set at least one")
    return ClusterConfig(kinds, namespaces, ignore)


def client_for(cluster: FabricCluster, **options: Any) -> KubeClient:
    """A client for the cluster, its token decrypted from the credential (``options`` go to ``KubeClient``)."""
    credential = cluster.token
    if credential.kind != credential.Kind.BEARER_TOKEN:
        raise ClusterSettingsError(f"credential {credential.name!r} is not a bearer token")
    try:
        secret = credential.secret()
    except CredentialError as exc:  # names the credential, never the secret
        raise ClusterSettingsError(str(exc)) from None
    return KubeClient(cluster.server_url, token=secret, ca_pem=cluster.ca_bundle, **options)
