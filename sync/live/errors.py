"""Errors of the Kubernetes client, classified like Git's (``sync.errors``).

Every message is meant for operators and never holds a credential; see
``sync.live.client`` for which HTTP answers map to which class.
"""

from __future__ import annotations

from datetime import datetime

from core.breaker import CircuitBreakerOpenError


class KubeError(Exception):
    """Base class. The message is meant for operators and never holds a credential."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeTransientError(KubeError):
    """Timeouts, refused or dropped connections, 429, 5xx: retrying later may succeed."""


class KubePermanentError(KubeError):
    """The cluster refused us or the request; retrying cannot help."""


class KubeUnauthorized(KubePermanentError):
    """401: the token is wrong, expired or revoked."""


class KubeTLSError(KubePermanentError):
    """The server's certificate failed verification against the CA bundle, or the bundle is not PEM."""


class KubeForbidden(KubePermanentError):
    """403: authenticated, but RBAC does not allow this verb on this resource."""


class KubeNotFound(KubePermanentError):
    """404: no such object, or the cluster does not serve the kind (CRD missing)."""


class KubeConflict(KubePermanentError):
    """409: another field manager owns a field we apply (apply without force), or a precondition failed."""


class KubeInvalid(KubePermanentError):
    """400 / 422: the object or the request is invalid."""


class Gone(KubeError):
    """410: the resourceVersion is too old (compacted); the caller relists."""


class ClusterUnavailable(KubeError):
    """The cluster's breaker rejected the call: nothing was sent.

    Neither transient nor permanent: the caller skips the cluster until ``retry_at``
    (None when an operator holds the breaker open).
    """

    def __init__(self, message: str, retry_at: datetime | None = None, forced: bool = False) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.forced = forced

    @classmethod
    def from_rejection(cls, rejection: CircuitBreakerOpenError) -> ClusterUnavailable:
        return cls(f"cluster unreachable ({rejection.reason()})", rejection.retry_at, forced=rejection.forced)
