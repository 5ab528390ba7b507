"""Keep credentials out of logs, error messages and the admin.

Git echoes the remote URL in its errors, and operators paste tokens into URLs
(``https://oauth2:TOKEN@host/repo.git``), so every message that leaves a sync passes
through ``redact`` and every log record through ``RedactingFilter``.
"""

from __future__ import annotations

import logging
import re
import string
from urllib.parse import unquote

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_SCHEME_LETTERS = frozenset(string.ascii_letters)
# After "scheme://name:", digits then the end of the authority mean a port, not a password.
_PORT = re.compile(r"\d*(?:[/?#'\"]|$)")
_WHITESPACE = re.compile(r"\s")
# ?access_token=...&private_token=... and similar query parameters
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&](?:access_token|private_token|token|password|key)=)[^&\s]+")
MASK = "***"


def _userinfo_end(text: str, start: int) -> int:
    """Index of the ``@`` closing the user info of a URL whose authority starts at ``start``, or -1.

    Masking too much is harmless here, leaking is not, so this reads the URL the way
    that hides the most:

    1. Within the URL's run of non-space characters, the user info ends at the *last*
       ``@`` (a password may hold unencoded ``@`` and ``/``).
    2. A password may hold spaces: a ``user:password`` whose run has no ``@``, or
       whose "host" after the last ``@`` is a bare word (no ``.``, ``/`` or ``:``)
       directly followed by a run that holds an ``@``, runs on to that run's last ``@``.
    """
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    match = _WHITESPACE.search(text, start, line_end)
    run_end = match.start() if match else line_end
    at = text.rfind("@", start, run_end)
    user, colon, rest = text[start:run_end].partition(":")
    if not colon or "/" in user or (at < 0 and _PORT.match(rest)):
        return at  # no password here (a lone token, a user name, or "host:port")
    while run_end < line_end:
        if at >= 0 and any(c in text[at + 1 : run_end] for c in "./:"):
            break  # a real host: the password ended at ``at``
        # No "@" yet: the next "@" on the line; else only the directly following run.
        next_at = text.find("@", run_end, line_end) if at < 0 else run_end
        if next_at < 0:
            break
        match = _WHITESPACE.search(text, max(next_at, run_end + 1), line_end)
        next_end = match.start() if match else line_end
        next_at = text.rfind("@", run_end, next_end)
        if next_at < 0:
            break
        at, run_end = next_at, next_end
    return at


def _next_authority(text: str, position: int) -> int:
    """Where the authority of the next ``scheme://`` at or after ``position`` starts, or -1.

    The same URLs as ``_SCHEME.search``, in linear time: that regex, searched through a
    long run of letters and digits with no ``://`` (a token, a base64 blob, a 1 MB
    failure message), retries from every position and backtracks over the rest of the
    run, so a worker logging 1 MB spent minutes in this filter (issue 10). Here each
    ``://`` is found with ``str.find`` and is a URL when the characters directly before
    it are scheme characters that include a letter (where a scheme must start).
    """
    while (separator := text.find("://", position)) >= 0:
        index = separator - 1
        while index >= position and text[index] in _SCHEME_CHARS:
            if text[index] in _SCHEME_LETTERS:
                return separator + 3
            index -= 1
        position = separator + 1
    return -1


def _redact_userinfo(text: str) -> str:
    parts: list[str] = []
    position = 0
    while (start := _next_authority(text, position)) >= 0:
        at = _userinfo_end(text, start)
        if at < 0:
            parts.append(text[position:start])
            position = start
            continue
        user, colon, _secret = text[start:at].partition(":")
        # "user:secret" keeps the user name (useful to operators); a lone token is masked.
        shown = f"{user}:{MASK}" if colon else MASK
        parts.append(f"{text[position:start]}{shown}@")
        position = at + 1
    parts.append(text[position:])
    return "".join(parts)


def redact(text: str) -> str:
    """Mask URL credentials and secret query parameters anywhere in ``text``."""
    return _SECRET_QUERY.sub(lambda m: f"{m.group('key')}{MASK}", _redact_userinfo(text))


def url_userinfo(url: str) -> tuple[str, str, str | None] | None:
    """``(url without user info, user, password or None)`` of a ``scheme://`` URL, or None without user info.

    Read like ``redact`` reads it (the user info runs to the last ``@``), so the
    password may hold unencoded ``/``, ``@`` or spaces. User and password come back
    percent-decoded, as git would send them.
    """
    scheme = _SCHEME.match(url)
    if not scheme:
        return None
    at = _userinfo_end(url, scheme.end())
    if at < 0:
        return None
    user, colon, password = url[scheme.end() : at].partition(":")
    if "/" in user:
        return None  # an "@" in the path: a user name never holds a raw "/"
    return url[: scheme.end()] + url[at + 1 :], unquote(user), unquote(password) if colon else None


def has_secret_query(url: str) -> bool:
    """True when ``url`` carries a token-like query parameter (``?access_token=...``)."""
    return _SECRET_QUERY.search(url) is not None


def looks_like_port(text: str) -> bool:
    """True when what follows ``host:`` is a port (digits up to the path), not a password."""
    return _PORT.match(text) is not None


def redact_url(url: str) -> str:
    return redact(url)


class RedactingFilter(logging.Filter):
    """Logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
