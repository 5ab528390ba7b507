"""A small Kubernetes REST client: every call through ``core.rpc`` and the cluster's breaker.

One ``KubeClient`` per fabric cluster (API server URL, CA bundle, bearer token). Each
call is one logical call of ``core.rpc.ResilientClient``: a per-call timeout, bounded
retries with jitter under one deadline, the shared breaker ``k8s:<host:port>`` (named
in ``core.guards``), latency percentiles per cluster (``latency()``).

Errors are classified like Git's (``sync.errors``), and every message is safe to store
and show (it never holds the token):

- ``KubePermanentError``: retrying cannot help. 401 (``KubeUnauthorized``), a refused
  certificate or a CA bundle that is not PEM (``KubeTLSError``), 403 (``KubeForbidden``),
  404 (``KubeNotFound``), 409 (``KubeConflict``), 422 / 400 (``KubeInvalid``).
- ``KubeTransientError``: timeouts, refused or dropped connections, 429 and 5xx.
- ``Gone``: 410, a resourceVersion too old to watch (or a list continuation expired):
  relist.
- ``ClusterUnavailable``: the breaker rejected the call; nothing was sent. It carries
  the breaker's ``retry_at``: "cluster unreachable (breaker open until …)".

The token is held as a ``core.credentials.Secret`` and revealed only while building
the headers of one request; it is never a default header, never in a repr, and no
exception raised here chains the HTTP library's exception (whose request holds the
headers). Server-side apply uses our own field manager and ``force`` only on request.
"""

from __future__ import annotations

__all__ = [
    "AccessReport",
    "ClusterUnavailable",
    "Gone",
    "KubeClient",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeInvalid",
    "KubeNotFound",
    "KubePermanentError",
    "KubeTLSError",
    "KubeTransientError",
    "KubeUnauthorized",
    "ListResult",
    "WatchEvent",
    "WatchResult",
]

import json
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from core.breaker import CircuitBreaker, CircuitBreakerOpenError
from core.breaker_core import BreakerConfig
from core.credentials import Secret
from core.rpc import LatencySummary, ResilientClient, tls_rejection
from sync.live.errors import (  # re-exported: callers import the errors from the client
    ClusterUnavailable,
    Gone,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeInvalid,
    KubeNotFound,
    KubePermanentError,
    KubeTLSError,
    KubeTransientError,
    KubeUnauthorized,
)
from sync.live.kinds import DEFAULT_KINDS, Kind, find_kind

USER_AGENT = "fabric-control-plane"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # JSON is YAML: the body is JSON
# Metadata a client must not send back in an apply: the server owns it, and a stale
# resourceVersion would turn every apply into a conflict.
_SERVER_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")


# --- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ListResult:
    items: list[dict[str, Any]]
    resource_version: str  # the collection's, to watch from
    pages: int = 1


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str(self.object.get("metadata", {}).get("resourceVersion", ""))


@dataclass(frozen=True)
class WatchResult:
    events: list[WatchEvent]
    resource_version: str  # the last event's, or the one watched from when nothing happened


@dataclass(frozen=True)
class AccessReport:
    server_version: str  # e.g. "v1.20.2"
    allowed: list[str] = field(default_factory=list)  # "list vpcs.vpc.githedgehog.com in fab"
    denied: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.denied


# --- the client ---------------------------------------------------------------------------


def ssl_context(ca_pem: str) -> ssl.SSLContext:
    """A context trusting only ``ca_pem`` (PEM text), or the system's store when empty."""
    try:
        context = ssl.create_default_context(cadata=ca_pem) if ca_pem.strip() else ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise KubeTLSError(f"the cluster's CA bundle is not a valid PEM certificate ({reason})") from None
    return context


def breaker_config() -> BreakerConfig:
    """The shared defaults; a trial call's lease outlasts the longest call (a watch)."""
    from core.breaker import default_config

    return default_config(trial_timeout=max(BreakerConfig.trial_timeout, 90.0))


class KubeClient:
    """One cluster. ``token`` is a ``Secret`` (``Credential.secret()``) or plain text."""

    def __init__(
        self,
        server_url: str,
        *,
        token: Secret | str,
        ca_pem: str = "",
        timeout: float = 10.0,
        deadline: float = 30.0,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 2.0,
        breaker: BreakerConfig | None = None,
        shared_breakers: bool = True,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        url = httpx.URL(server_url.rstrip("/"))
        if url.scheme != "https" or not url.host:
            raise KubePermanentError("the cluster's API server URL must be https://host[:port]")
        if url.userinfo or url.query:
            raise KubePermanentError("the cluster's API server URL must not carry credentials or a query")
        self.server = str(url)
        self._token = token if isinstance(token, Secret) else Secret(token)
        if not self._token:
            raise KubeUnauthorized("no bearer token is set for this cluster")
        self._rpc = ResilientClient(
            timeout=timeout,
            deadline=deadline,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            breaker_config=breaker or breaker_config(),
            shared_breakers=shared_breakers,
            transport=transport,
            breaker_prefix="k8s",
            verify=ssl_context(ca_pem),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            **({"sleep": sleep} if sleep else {}),
        )
        self.target = ResilientClient.target(self.server)
        self.breaker_name = f"k8s:{self.target}"

    def __repr__(self) -> str:
        return f"KubeClient({getattr(self, 'server', '?')!r})"

    def close(self) -> None:
        self._rpc.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latency(self) -> LatencySummary:
        """This process's latency percentiles and rate of calls to this cluster."""
        return self._rpc.stats(self.target)

    @property
    def breaker(self) -> CircuitBreaker:
        """This cluster's shared breaker (``k8s:<host:port>``), e.g. for its metrics."""
        return self._rpc.breaker_for(self.target)

    # -- paths ------------------------------------------------------------------------------
    def path(self, group: str, version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{plural}"
        return f"{base}/{quote(name, safe='')}" if name else base

    # -- calls --------------------------------------------------------------------------------
    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # The one place the token is revealed: the headers of the request being sent.
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        if extra:
            headers.update(extra)
        return headers

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        idempotent: bool | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        read: Callable[[httpx.Response], Any] | None = None,
    ) -> tuple[httpx.Response, Any]:
        """One logical call; the error it raises never chains an httpx exception."""
        what = f"{method} {path}"
        kwargs: dict[str, Any] = {
            "params": {k: v for k, v in (params or {}).items() if v is not None},
            "headers": self._headers({"Content-Type": content_type} if body is not None else None),
            "timeout": timeout,
            "deadline": deadline,
            "idempotent": idempotent,
        }
        if body is not None:
            kwargs["content"] = json.dumps(body, separators=(",", ":")).encode()
        error: KubeError | None = None
        try:
            if read is None:
                return self._rpc.request(method, self.server + path, **kwargs), None
            return self._rpc.stream(method, self.server + path, read, **kwargs)
        except CircuitBreakerOpenError as exc:
            error = ClusterUnavailable.from_rejection(exc)
        except httpx.HTTPError as exc:
            error = self._transport_error(exc, what)
        raise error  # outside the except blocks: no __context__ to carry a request's headers

    def _transport_error(self, exc: httpx.HTTPError, what: str) -> KubeError:
        tls = tls_rejection(exc)
        if tls is not None:
            if isinstance(tls, ssl.SSLCertVerificationError):
                reason = f"certificate verify failed: {tls.verify_message}"
            else:
                reason = str(getattr(tls, "reason", None) or "handshake failed").replace("_", " ").lower()
            return KubeTLSError(
                f"TLS with {self.target} failed: {reason} (check the cluster's CA bundle and the server URL)"
            )
        if isinstance(exc, httpx.TimeoutException):
            return KubeTransientError(f"{what} to {self.target} timed out")
        if isinstance(exc, httpx.ConnectError):
            return KubeTransientError(f"could not connect to {self.target}: {_short_reason(exc)}")
        return KubeTransientError(f"{what} to {self.target} failed: {type(exc).__name__}: {_short_reason(exc)}")

    def _check(self, response: httpx.Response, what: str) -> None:
        """Raise the classified error of a non-2xx answer."""
        status = response.status_code
        if status < 300:
            return
        message = _status_message(response)
        detail = f": {message}" if message else ""
        if status == 401:
            raise KubeUnauthorized(f"the cluster {self.target} rejected the bearer token (401 Unauthorized)", status)
        if status == 403:
            raise KubeForbidden(f"{what} forbidden (403){detail}", status)
        if status == 404:
            raise KubeNotFound(f"{what}: not found (404){detail}", status)
        if status == 409:
            raise KubeConflict(f"{what}: conflict (409){detail}", status)
        if status == 410:
            raise Gone(f"{what}: gone (410){detail}", status)
        if status in (400, 422):
            raise KubeInvalid(f"{what}: invalid ({status}){detail}", status)
        if status == 429 or status >= 500:
            raise KubeTransientError(f"{what}: the cluster answered {status}{detail}", status)
        raise KubePermanentError(f"{what}: the cluster answered {status}{detail}", status)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response, _ = self._send(method, path, **kwargs)
        self._check(response, f"{method} {path}")
        try:
            data = response.json()
        except ValueError:
            raise KubeTransientError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise KubeTransientError(f"{method} {path}: the answer is not a JSON object")
        return data

    # -- reads ----------------------------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        """GET /version (reachable and, with an invalid token, 401)."""
        return self._json("GET", "/version")

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        try:
            return self._json("GET", self.path(group, version, plural, namespace, name))
        except KubeNotFound:
            return None

    def list(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        *,
        limit: int = 500,
        label_selector: str | None = None,
    ) -> ListResult:
        """All objects, in pages of ``limit`` (``continue`` tokens), and the collection's
        resourceVersion (the first page's: every page is read at that snapshot).

        An expired continuation (410) restarts the list once; a second raises ``Gone``.
        """
        path = self.path(group, version, plural, namespace)
        for restart in range(2):
            items: list[dict[str, Any]] = []
            resource_version = ""
            token: str | None = None
            pages = 0
            try:
                while True:
                    params = {"limit": limit, "continue": token, "labelSelector": label_selector}
                    page = self._json("GET", path, params=params)
                    pages += 1
                    metadata = page.get("metadata") or {}
                    resource_version = resource_version or str(metadata.get("resourceVersion", ""))
                    items.extend(_with_type(page.get("items") or [], page.get("apiVersion"), page.get("kind")))
                    token = metadata.get("continue") or None
                    if not token:
                        return ListResult(items, resource_version, pages)
            except Gone:
                if restart or token is None:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def watch_changes(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        resource_version: str,
        *,
        timeout_seconds: int = 5,
        idle_seconds: float = 0.05,
    ) -> WatchResult:
        """The changes since ``resource_version``: WATCH, read until the stream is quiet.

        1. Opens ``?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=T``:
           the server sends every change since RV at once, then new ones as they come,
           and closes after T seconds.
        2. After the response headers, waits a quiet window for each next line: a quiet
           stream means we have caught up, so an unchanged collection costs about the
           window, not T. The server writes the changes since RV right after the headers
           (within milliseconds here). The window is ``idle_seconds``, or three times
           what the headers took when that is longer (at most T): a slow or distant
           server gets a longer one, so its changes are not always cut off. An event
           still in flight when we stop is not lost: the next watch starts after the
           last one we saw (and a full LIST every ``relist_after`` in ``sync.live.state``
           is the backstop).
        3. A 410 (an HTTP answer or an ``ERROR`` event with code 410) raises ``Gone``:
           RV was compacted away, and the caller relists. Other ``ERROR`` events raise
           a transient error.
        """
        path = self.path(group, version, plural, namespace)
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": int(timeout_seconds),
        }
        what = f"WATCH {path}"

        started = time.monotonic()

        def read(response: httpx.Response) -> list[dict[str, Any]] | None:
            if response.status_code != 200:
                response.read()
                return None
            window = min(max(idle_seconds, 3 * (time.monotonic() - started)), float(timeout_seconds))
            return _read_watch_lines(response, window)

        call_timeout = max(self._rpc.timeout, timeout_seconds + 5.0)
        response, raw = self._send(
            "GET", path, params=params, read=read, timeout=call_timeout, deadline=call_timeout + self._rpc.deadline
        )
        self._check(response, what)
        events: list[WatchEvent] = []
        last = resource_version
        for raw_event in raw or []:
            kind, obj = raw_event.get("type"), raw_event.get("object") or {}
            if kind == "ERROR":
                code = obj.get("code")
                message = obj.get("message", "")
                if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                    raise Gone(f"{what}: resourceVersion {resource_version} is too old (410): {message}", 410)
                raise KubeTransientError(f"{what}: the cluster sent an error ({code}): {message}", code)
            if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                continue
            event = WatchEvent(kind, obj)
            events.append(event)
            last = event.resource_version or last
        return WatchResult(events, last)

    # -- writes ---------------------------------------------------------------------------------
    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        plural: str | None = None,
        namespace: str | None = None,
        dry_run: bool = False,
        force: bool = False,
        kinds: Iterable[Kind] = DEFAULT_KINDS,
    ) -> dict[str, Any]:
        """Server-side apply of ``obj``; returns the object as the server has it (or, with
        ``dry_run``, would have it: nothing is written).

        ``plural`` defaults to the tracked kind's; ``namespace`` fills a missing
        ``metadata.namespace``. Fields another manager owns conflict (``KubeConflict``)
        unless ``force``. Server-owned metadata in ``obj`` is not sent. Retried after a
        timeout: an apply is idempotent.
        """
        api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
        metadata = dict(obj.get("metadata") or {})
        name = str(metadata.get("name") or "")
        if not (api_version and kind and name):
            raise KubeInvalid("an applied object needs apiVersion, kind and metadata.name")
        tracked = find_kind(api_version, kind, kinds)
        if plural is None:
            if tracked is None:
                raise KubeInvalid(f"no plural known for {kind} ({api_version}): pass plural=")
            plural = tracked.plural
        namespaced = tracked.namespaced if tracked else True
        if namespaced:
            metadata["namespace"] = metadata.get("namespace") or namespace or "default"
        for key in _SERVER_METADATA:
            metadata.pop(key, None)
        body = {**obj, "metadata": metadata}
        body.pop("status", None)
        group, _, version = api_version.rpartition("/")
        path = self.path(group, version, plural, metadata.get("namespace") if namespaced else None, name)
        params = {
            "fieldManager": field_manager,
            "force": "true" if force else None,
            "dryRun": "All" if dry_run else None,
        }
        return self._json("PATCH", path, params=params, body=body, content_type=APPLY_CONTENT_TYPE, idempotent=True)

    def delete(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        dry_run: bool = False,
    ) -> bool:
        """Delete one object; False when it was already gone. ``uid`` deletes only that
        incarnation (a precondition): an object re-created since we read it survives."""
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if dry_run:
            options["dryRun"] = ["All"]
        try:
            self._json("DELETE", self.path(group, version, plural, namespace, name), body=options)
        except KubeNotFound:
            return False
        return True

    # -- access -----------------------------------------------------------------------------------
    def check_access(
        self,
        kinds: Iterable[Kind] = (),
        namespaces: Iterable[str | None] = (),
        verbs: Iterable[str] = ("list", "watch"),
    ) -> AccessReport:
        """Reachable and authenticated (GET /version with the token), then, for each kind,
        namespace and verb, whether RBAC allows it (SelfSubjectAccessReview, which every
        authenticated user may ask). Raises the classified error when the cluster cannot
        be reached or refuses the token; denied verbs are listed, not raised."""
        info = self.version()
        report = AccessReport(server_version=str(info.get("gitVersion", "")))
        for kind in kinds:
            for namespace in list(namespaces) or [None]:
                for verb in verbs:
                    attributes = {"group": kind.group, "resource": kind.plural, "verb": verb}
                    if namespace and kind.namespaced:
                        attributes["namespace"] = namespace
                    review = {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": attributes},
                    }
                    answer = self._json(
                        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review, idempotent=True
                    )
                    where = f" in {namespace}" if namespace and kind.namespaced else ""
                    line = f"{verb} {kind.plural}.{kind.group}{where}" if kind.group else f"{verb} {kind.plural}{where}"
                    allowed = bool((answer.get("status") or {}).get("allowed"))
                    (report.allowed if allowed else report.denied).append(line)
        return report


# --- helpers -----------------------------------------------------------------------------------


def _with_type(items: list[dict[str, Any]], list_api_version: Any, list_kind: Any) -> Iterator[dict[str, Any]]:
    """List items of built-in kinds come without apiVersion/kind: fill them from the list."""
    kind = str(list_kind or "")
    kind = kind[: -len("List")] if kind.endswith("List") else kind
    for item in items:
        if "kind" not in item or "apiVersion" not in item:
            item = {"apiVersion": list_api_version, "kind": kind, **item}
        yield item


def _read_watch_lines(response: httpx.Response, idle_seconds: float) -> list[dict[str, Any]]:
    """Events of a watch stream until it closes or stays quiet for ``idle_seconds``.

    httpx reads a body's chunks with the request's read timeout, looked up when the
    body starts: shortening it here (after the headers came with the full timeout)
    makes every later read wait at most ``idle_seconds``. Should httpx stop honouring
    it, a watch still ends, at the server's ``timeoutSeconds``.
    """
    timeouts = response.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = idle_seconds
    events: list[dict[str, Any]] = []
    try:
        for line in response.iter_lines():
            if line.strip():
                events.append(json.loads(line))
    except httpx.ReadTimeout:
        pass  # quiet: caught up
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server dropped the stream: keep what arrived whole; the next watch resumes after it
    except ValueError:
        pass  # a line cut short; everything before it is whole
    return events


def _status_message(response: httpx.Response) -> str:
    """The ``message`` of a Kubernetes Status answer (never echoes request headers)."""
    try:
        response.read()
        data = response.json()
    except (ValueError, httpx.HTTPError):
        return ""
    message = data.get("message", "") if isinstance(data, dict) else ""
    return str(message)[:500]


def _short_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0][:200]
