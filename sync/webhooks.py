"""Git push webhooks from GitHub, GitLab and Gitea: who sent it, is it genuine, what was pushed.

Plain functions of the request's headers and raw body; no database, Redis or clock.
The view (``sync.webhook_views``) calls them in this order, and ``sync.push_sync``
does what a push means for fabrics.

1. ``detect_forge``: which forge sent it, from its event and signature headers.
   Gitea is asked first: it also sends GitHub's headers. Forgejo sends Gitea's.
2. ``signature_error``: the shared secret proves the sender, compared in constant time:

   - GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``
   - Gitea: ``X-Gitea-Signature: <hex HMAC-SHA256 of the body>``
   - GitLab: ``X-Gitlab-Token: <the secret itself>``

3. ``is_push`` / ``load_payload`` / ``parse_push``: the repository URLs the payload
   names and the pushed branch, as a ``Push``.
4. ``normalise_git_url``: the key two spellings of one repository share, so the
   payload's ``https://``, ``ssh://`` and ``git@host:path`` URLs all meet the URL a
   fabric was configured with.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Forge(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"


# The event header of each forge, and the value it sends for a push.
EVENT_HEADERS = {Forge.GITHUB: "X-GitHub-Event", Forge.GITLAB: "X-Gitlab-Event", Forge.GITEA: "X-Gitea-Event"}
PUSH_EVENTS = {Forge.GITHUB: "push", Forge.GITLAB: "Push Hook", Forge.GITEA: "push"}
SIGNATURE_HEADERS = {
    Forge.GITHUB: "X-Hub-Signature-256",
    Forge.GITLAB: "X-Gitlab-Token",
    Forge.GITEA: "X-Gitea-Signature",
}
# Where each forge puts the repository's URLs, in order of preference (the first names the push).
URL_FIELDS: dict[Forge, tuple[tuple[str, str], ...]] = {
    Forge.GITHUB: (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url")),
    Forge.GITEA: (("repository", "clone_url"), ("repository", "ssh_url"), ("repository", "html_url")),
    Forge.GITLAB: (
        ("project", "git_http_url"), ("project", "git_ssh_url"), ("project", "web_url"),
        ("repository", "git_http_url"), ("repository", "git_ssh_url"), ("repository", "homepage"),
    ),
}  # fmt: skip
BRANCH_PREFIX = "refs/heads/"
MAX_FIELD = 1000  # longer than any URL or ref a forge sends; anything longer is not one

_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:\\].*)$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class PayloadError(ValueError):
    """A genuine push whose payload does not say what was pushed (answered 400)."""


class IgnoredPush(Exception):
    """A genuine push that concerns no fabric: a tag, say (answered 202)."""


@dataclass(frozen=True)
class Push:
    forge: Forge
    repository: str  # the normalised key of the payload's first URL, e.g. "github.com/acme/fabric"
    repository_keys: frozenset[str]  # every normalised URL the payload names
    branch: str
    commit: str  # the new tip ("after"); may be empty
    pusher: str


def detect_forge(headers: Mapping[str, str]) -> Forge | None:
    """The forge whose headers the request carries; None when it carries none of them."""
    for forge in (Forge.GITEA, Forge.GITLAB, Forge.GITHUB):
        if EVENT_HEADERS[forge] in headers or SIGNATURE_HEADERS[forge] in headers:
            return forge
    return None


def signature_error(forge: Forge, headers: Mapping[str, str], body: bytes, secret: str) -> str:
    """Why the request is not signed with ``secret``; empty when it is.

    The reason never contains the secret or the signature.
    """
    given = headers.get(SIGNATURE_HEADERS[forge], "").strip()
    if not given:
        return "missing signature"
    if forge is Forge.GITLAB:
        expected = secret
    else:
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        expected = f"sha256={digest}" if forge is Forge.GITHUB else digest
        given = given.lower()
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        return "invalid signature"
    return ""


def event_name(forge: Forge, headers: Mapping[str, str]) -> str:
    return headers.get(EVENT_HEADERS[forge], "")[:100]


def is_push(forge: Forge, event: str) -> bool:
    return event == PUSH_EVENTS[forge]


def load_payload(body: bytes, content_type: str) -> Any:
    """The JSON payload, sent as the body or (GitHub's and Gitea's form option) as ``payload=``."""
    try:
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            form = parse_qs(body.decode("utf-8"), max_num_fields=10)
            return json.loads(form.get("payload", [""])[0])
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("the body is not a JSON push payload") from None


def parse_push(forge: Forge, payload: Any) -> Push:
    """What a push payload says: the repository's URLs, the branch, the new commit.

    Raises ``IgnoredPush`` for a push of anything but a branch and ``PayloadError``
    when the payload lacks the ref or any URL we can read.
    """
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    ref = _text(payload.get("ref"))
    if not ref:
        raise PayloadError("the payload has no ref")
    if not ref.startswith(BRANCH_PREFIX) or ref == BRANCH_PREFIX:
        raise IgnoredPush(f"not a branch: {ref[:200]}")
    keys: list[str] = []
    for section, name in URL_FIELDS[forge]:
        block = payload.get(section)
        key = normalise_git_url(_text(block.get(name))) if isinstance(block, dict) else None
        if key and key not in keys:
            keys.append(key)
    if not keys:
        raise PayloadError("the payload names no repository URL")
    return Push(
        forge=forge,
        repository=keys[0],
        repository_keys=frozenset(keys),
        branch=ref.removeprefix(BRANCH_PREFIX),
        commit=_text(payload.get("after") or payload.get("checkout_sha"))[:64],
        pusher=_pusher(forge, payload),
    )


def normalise_git_url(url: str) -> str | None:
    """The key that every spelling of one repository's URL shares; None if ``url`` is no Git URL.

    1. Scheme, user name, password and port go: ``https://u:t@Host:443/a/b.git``,
       ``ssh://git@host:2222/a/b`` and ``git@host:a/b`` are all ``host/a/b``.
    2. Surrounding slashes and one ``.git`` suffix go.
    3. Lower case: host names are case-insensitive, and so are owner and repository
       names on GitHub, GitLab and Gitea (a false match would only cost a sync).
    4. A local path (plain or ``file://``) keeps its case: ``file:///srv/git/fabric``.
    """
    url = url.strip()
    if not url or len(url) > MAX_FIELD or _CONTROL.search(url):
        return None
    if url.startswith("/"):
        return _local(url)
    if "://" in url:
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            return None
        if parts.scheme.lower() == "file":
            return _local(parts.path) if parts.path.startswith("/") else None
        path = parts.path
    else:
        match = _SCP_LIKE.match(url)
        if match is None:
            return None
        host, path = match["host"], match["path"]
    path = _repository_path(path)
    if not host or not path:
        return None
    return f"{host}/{path}".lower()


def _repository_path(path: str) -> str:
    path = path.strip("/")
    if path.lower().endswith(".git"):
        path = path[: -len(".git")]
    return path.rstrip("/")


def _local(path: str) -> str | None:
    path = _repository_path(posixpath.normpath(path))
    return f"file:///{path}" if path else None


def _text(value: Any) -> str:
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _pusher(forge: Forge, payload: dict[str, Any]) -> str:
    if forge is Forge.GITLAB:
        name = _text(payload.get("user_username")) or _text(payload.get("user_name"))
    else:
        pusher = payload.get("pusher")
        pusher = pusher if isinstance(pusher, dict) else {}
        name = _text(pusher.get("username")) or _text(pusher.get("login")) or _text(pusher.get("name"))
    return _CONTROL.sub(" ", name).strip()[:100]
