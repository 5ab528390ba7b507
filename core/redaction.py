"""Keep credentials out of logs, error messages and the admin.

Git echoes the remote URL in its errors, and operators paste tokens into URLs
(``https://oauth2:TOKEN@host/repo.git``), so every message that leaves a sync passes
through ``redact`` and every log record through ``RedactingFilter``.
"""

from __future__ import annotations

import logging
import re

# scheme://user:secret@host  or  scheme://token@host
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# ?access_token=...&private_token=... and similar query parameters
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&](?:access_token|private_token|token|password|key)=)[^&\s]+")
MASK = "***"


def redact(text: str) -> str:
    """Mask URL credentials and secret query parameters anywhere in ``text``."""

    def _mask_userinfo(match: re.Match[str]) -> str:
        user, sep, _secret = match.group("userinfo").partition(":")
        # "user:secret" keeps the user name (useful to operators); a lone token is masked.
        shown = f"{user}:{MASK}" if sep else MASK
        return f"{match.group('scheme')}{shown}@"

    text = _USERINFO.sub(_mask_userinfo, text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('key')}{MASK}", text)


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
