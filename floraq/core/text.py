"""Text from elsewhere made fit for one line of a terminal, a log or a ledger column.

Whatever a server sends (error messages, codes, names, ids) is untrusted: an escape
sequence could rewrite the operator's terminal, a newline could forge a log line, and a
40 KB message buries the one line that matters. Everything that came from outside goes
through ``one_line`` before floraq stores or shows it.
"""

from __future__ import annotations

import re

# Every C0 and C1 control character, DEL, and the Unicode bidi overrides and isolates
# (they reorder what a terminal shows: "exe.txt" can be made to read "txt.exe").
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
_SPACES = re.compile(r"\s{2,}")
MAX_LINE = 2000  # characters of server text kept in one message


def one_line(text: str, *, limit: int = MAX_LINE) -> str:
    """``text`` without control characters or line breaks (each run becomes one space).

    Longer than ``limit``: cut, with how much was left out, so the line stays readable.
    """
    flat = _SPACES.sub(" ", _UNPRINTABLE.sub(" ", text)).strip()
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}… ({len(flat) - limit:,} more characters)"


def is_unprintable(text: str) -> bool:
    """Whether ``text`` holds a character ``one_line`` would remove (line breaks included)."""
    return _UNPRINTABLE.search(text) is not None


def some_of(items: list[str], *, shown: int = 10) -> str:
    """A list for a message: the first ``shown``, then "and N more"."""
    head = ", ".join(items[:shown])
    rest = len(items) - shown
    return head if rest <= 0 else f"{head} and {rest:,} more"
