"""Rows checked against a technique's definition before anything is sent.

Every problem of a row is reported at once, each pointing at the field to fix. A media URL on
a host FLORA does not list is only a warning: the documented list is "includes", and the API
has the last word.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from floraq.core.local_files import is_local
from floraq.core.manifest import Row
from floraq.core.problems import Problem
from floraq.core.technique import Technique, TechniqueIO
from floraq.core.text import some_of

# C0 controls (but tab, newline, carriage return: prompts have lines), DEL and C1 controls.
# They corrupt terminals, logs and CSV exports, and no technique input needs them.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MAX_URL_LENGTH = 8192  # longer than any storage host accepts; almost surely a pasted blob
MAX_TEXT_LENGTH = 100_000  # characters of a text input before floraq warns

# A URL that ``urlsplit`` would read as https, a plain host (no user, port or brackets) and
# no whitespace: checked by this one match instead of a parse. Anything else takes the
# full path, so both give the same answer (a test compares them).
PLAIN_HTTPS = re.compile(r"(?i:https)://([A-Za-z0-9.-]+)(?:[/?#]\S*)?")
_WHITESPACE = re.compile(r"\s")  # what str.isspace says, one character at a time

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SAFE_NAME_RULE = (
    "letters, digits, '.', '_' and '-' only, starting with a letter or digit, "
    "at most 100 characters"
)


@dataclass(frozen=True, slots=True)
class MediaHost:
    """A host family FLORA documents as a source of input media."""

    provider: str
    pattern: str  # as written in the docs: "*.flora.ai" means any subdomain of flora.ai
    regex: re.Pattern[str]

    def matches(self, host: str) -> bool:
        return self.regex.fullmatch(host) is not None


SUPPORTED_MEDIA_HOSTS: tuple[MediaHost, ...] = (
    MediaHost("FLORA media", "*.flora.ai", re.compile(r"(?:[a-z0-9-]+\.)+flora\.ai")),
    MediaHost(
        "Google Cloud Storage", "storage.googleapis.com", re.compile(r"storage\.googleapis\.com")
    ),
    MediaHost(
        "Google Cloud Storage",
        "*.storage.googleapis.com",
        re.compile(r"(?:[a-z0-9_.-]+\.)storage\.googleapis\.com"),
    ),
    MediaHost(
        "Google Cloud Storage",
        "storage.cloud.google.com",
        re.compile(r"storage\.cloud\.google\.com"),
    ),
    MediaHost(
        "Amazon S3",
        "*.amazonaws.com (an s3 endpoint)",
        re.compile(r"(?:[a-z0-9_.-]+\.)?s3(?:[.-][a-z0-9.-]+)?\.amazonaws\.com"),
    ),
    MediaHost("ImageKit", "ik.imagekit.io", re.compile(r"ik\.imagekit\.io")),
    MediaHost("ImageKit", "*.imagekit.io", re.compile(r"(?:[a-z0-9-]+\.)+imagekit\.io")),
)


_PROVIDERS = ", ".join(dict.fromkeys(rule.provider for rule in SUPPORTED_MEDIA_HOSTS))


@functools.lru_cache(maxsize=4096)
def is_supported_host(host: str) -> bool:
    """Whether ``host`` is on FLORA's documented list of input media hosts (cached: a batch
    has a handful of hosts and a million rows)."""
    normalized = host.lower().rstrip(".")
    return any(rule.matches(normalized) for rule in SUPPORTED_MEDIA_HOSTS)


def check_row(row: Row, technique: Technique) -> list[Problem]:
    """Every problem of one row against its technique, sorted; warnings included."""
    problems: list[Problem] = []
    slots = {slot.id: slot for slot in reversed(technique.inputs)}  # the first of an id wins
    for slot in technique.inputs:
        if slot.id not in row.values:
            problems.append(Problem(_at(row, slot.id), f"missing input '{slot.id}' ({slot.type})"))
    for input_id, value in row.values.items():
        found = slots.get(input_id)
        if found is None:
            problems.append(
                Problem(
                    _at(row, input_id), _unknown_input(input_id, [s.id for s in technique.inputs])
                )
            )
        else:
            problems.extend(_check_value(row, found, value))
    if row.key is not None and not SAFE_NAME.fullmatch(row.key):
        problems.append(
            Problem(
                f"{row.location}, key",
                f"key {row.key!r} cannot name an output folder: use {SAFE_NAME_RULE}",
            )
        )
    return sorted(problems)


def run_inputs(values: Mapping[str, str], technique: Technique) -> list[dict[str, str]]:
    """The ``inputs`` of a create-run request, in the technique's order, types added."""
    missing = [slot.id for slot in technique.inputs if slot.id not in values]
    if missing:
        raise ValueError(f"no value for input {', '.join(missing)} of '{technique.slug}'")
    return [{"id": s.id, "type": s.type, "value": values[s.id]} for s in technique.inputs]


def _at(row: Row, input_id: str) -> str:
    return f"{row.location}, field '{input_id}'"


def _unknown_input(input_id: str, known: list[str]) -> str:
    close = difflib.get_close_matches(input_id, known, n=1)
    if close:
        return f"unknown input '{input_id}'; did you mean '{close[0]}'?"
    takes = some_of([f"'{k}'" for k in known]) or "no inputs"
    return f"unknown input '{input_id}'; this technique takes {takes}"


def _check_value(row: Row, slot: TechniqueIO, value: object) -> list[Problem]:
    at = _at(row, slot.id)
    if not isinstance(value, str):
        return [Problem(at, f"must be a string; quote it (got {type(value).__name__} {value!r})")]
    if not value.strip():
        return [Problem(at, f"is empty; give a {'URL' if slot.is_media else 'value'}")]
    control = CONTROL_CHARS.search(value)
    if control is not None:
        return [
            Problem(
                at,
                f"contains the control character U+{ord(control.group()):04X} at position"
                f" {control.start() + 1}; remove it (only tabs and line breaks are allowed)",
            )
        ]
    if not slot.is_media:
        if len(value) > MAX_TEXT_LENGTH:
            return [
                Problem(
                    at,
                    f"is {len(value):,} characters long (over {MAX_TEXT_LENGTH:,}); FLORA may"
                    " refuse or truncate it",
                    severity="warning",
                )
            ]
        return []
    if is_local(value):
        return []  # a local file: checked on disk before anything is sent (local_inputs)
    return _check_url(at, value)


def _check_url(at: str, value: str) -> list[Problem]:
    if len(value) > MAX_URL_LENGTH:
        return [Problem(at, f"URL is {len(value):,} characters long (at most {MAX_URL_LENGTH:,})")]
    plain = PLAIN_HTTPS.fullmatch(value)
    if plain is not None:
        return _host_warning(at, plain.group(1).lower())
    return _parsed_url_problems(at, value)


def _parsed_url_problems(at: str, value: str) -> list[Problem]:
    """What is wrong with a URL of any shape, by parsing it (the fast path's reference)."""
    shown = _shown_url(value)
    if _WHITESPACE.search(value) is not None:
        return [Problem(at, f"URL {shown!r} contains whitespace; percent-encode it (%20)")]
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return [Problem(at, f"{shown!r} is not a valid URL")]
    scheme = parts.scheme.lower()
    if scheme == "http":
        return [Problem(at, f"{shown!r} is an http:// URL; use https://")]
    if scheme != "https":
        return [Problem(at, f"{shown!r} is not an https:// URL; use https://")]
    if not host:
        return [Problem(at, f"{shown!r} has no host; use https://host/path")]
    if parts.username is not None or parts.password is not None:
        return [
            Problem(
                at,
                f"{shown!r} carries credentials (user:password@); floraq would store them in"
                " the ledger and exports: use a signed URL instead",
            )
        ]
    return _host_warning(at, host)


def _host_warning(at: str, host: str) -> list[Problem]:
    if is_supported_host(host):
        return []
    return [
        Problem(
            at,
            f"host '{host}' is not a documented FLORA input host ({_PROVIDERS}); "
            "FLORA may refuse it",
            severity="warning",
        )
    ]


def _shown_url(value: str) -> str:
    """A URL as an error line may show it: credentials masked, at most 80 characters."""
    scheme, sep, rest = value.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        value = f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"
    return value if len(value) <= 80 else value[:77] + "..."
