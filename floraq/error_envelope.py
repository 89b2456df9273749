"""Reading what FLORA sends with an error: its JSON envelope and its ``Retry-After``.

Both are untrusted: anything that is not the documented shape reads as "nothing said",
and every text is made one line (``core.text.one_line``) before an error carries it.
"""

from __future__ import annotations

import json
from typing import Any

from floraq.core.text import one_line

MAX_FIELDS = 50  # per-field problems kept from one error answer


def parse_envelope(
    body: bytes,
) -> tuple[str | None, str | None, list[dict[str, str]]]:
    """Read `{"error": {"code", "message", "fields"?}}`, tolerating anything else."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, []
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None, []
    code = one_line(error["code"], limit=100) if isinstance(error.get("code"), str) else None
    message = one_line(error["message"]) if isinstance(error.get("message"), str) else None
    raw_fields = error.get("fields")
    fields = [
        {
            "field": one_line(str(f.get("field", "")), limit=200),
            "message": one_line(str(f.get("message", "")), limit=500),
        }
        for f in (raw_fields if isinstance(raw_fields, list) else [])[:MAX_FIELDS]
        if isinstance(f, dict)
    ]
    return code or None, message or None, fields


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds form only); None if absent or odd."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
