"""Text from the ledger or the server, made safe to put in a page, and costs for people.

Every value a report shows came from a manifest, the ledger or FLORA: untrusted. It goes
through ``clean`` (control and bidi-override characters removed, then HTML-escaped);
nothing is written to the page any other way.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from html import escape

from floraq.core.money import usd

# Bidi overrides and isolates can make a file name read backwards; they go with the rest.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """``text`` without control characters (newlines and tabs stay)."""
    text = _CONTROL.sub("", text)
    if text.isascii():
        return text
    return "".join(
        c for c in text if c not in _BIDI and (unicodedata.category(c) != "Cc" or c in "\n\t")
    )


def clean(text: str) -> str:
    """Untrusted text as HTML: control characters removed, then escaped (quotes too)."""
    return escape(strip_controls(text))


def money(value: float | Decimal) -> str:
    """Every cost the report shows goes through here (the one place to change its format):
    4 decimals, more when the micro-dollars are not zero, so a figure reads exactly as in
    ``status`` and ``status --json`` (a failed run charged 0.026667 is not "0.0267")."""
    return usd(value if isinstance(value, Decimal) else Decimal(str(value)), places=4)


def shorten(text: str, limit: int) -> str:
    """At most ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def size(n: int) -> str:
    """A byte count for people: 930 B, 14.2 kB, 3.1 MB."""
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
