"""The log filter reads any message in linear time, and finds the same URLs as before.

A worker's failure message of 1 MB (a long token, a base64 blob, a huge manifest line)
used to spend about 20 minutes in ``RedactingFilter``: the scheme regex retried from
every position of a long run of letters (0.12 s at 10 KB, growing with the square).
"""

from __future__ import annotations

import logging
import random
import re

import pytest

from core import redaction
from core.redaction import RedactingFilter

# The regex the redaction used to search with: the reference for which URLs are found.
REFERENCE_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def reference_authorities(text: str) -> list[int]:
    found, position = [], 0
    while match := REFERENCE_SCHEME.search(text, position):
        found.append(match.end())
        position = match.end()
    return found


def authorities(text: str) -> list[int]:
    found, position = [], 0
    while (start := redaction._next_authority(text, position)) >= 0:
        found.append(start)
        position = start
    return found


def test_the_urls_found_are_the_ones_the_scheme_regex_finds() -> None:
    rng = random.Random(10)
    alphabet = "ab1Z:/@ .-+\n?&=_"
    texts = ["https://u:p@h/x", "9://a@b a1://b", "-a://u:p@h", "://x", "x://", "1.+://y"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20_000)]
    for text in texts:
        assert authorities(text) == reference_authorities(text), text


@pytest.mark.timeout(60)
def test_a_one_megabyte_message_goes_through_the_log_filter_and_a_url_after_it_is_masked() -> None:
    message = "x" * 1_000_000 + " https://oauth2:hunter2@git.example/r.git " + "0" * 1_000_000
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, None, None)
    assert RedactingFilter().filter(record)
    assert "hunter2" not in record.getMessage()
    assert "https://oauth2:***@git.example/r.git" in record.getMessage()
