"""The common row checked and keyed on a short path, decided once per job.

A CSV job's rows all carry the same inputs, and nearly all are fine: short texts and plain
https URLs on a documented host. ``FastRows`` decides once per job what the generic path
(``validation.check_row``, ``local_inputs.LocalFiles.row``, ``keys.row_keys``) decides
per row: which slots take media, the ids' order in the key, the fixed parts of the key's
payload. It answers only a row with no problem at all and nothing to read from disk; any
other row (a problem, a warning, a local file, an odd URL, a missing or unknown input) it
leaves to the generic path, so the two give the same result. A test compares them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from floraq.core.keys import RowKeyer
from floraq.core.technique import Technique
from floraq.core.validation import (
    CONTROL_CHARS,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
    PLAIN_HTTPS,
    SAFE_NAME,
    is_supported_host,
)

_HOSTS_KEPT = 4096  # hosts remembered per job (a batch has a handful)
_HOST = re.compile(r"[A-Za-z0-9.-]+")
_ASCII_SPACE = (" ", "\t", "\n", "\r")  # what \s finds in ASCII once controls are out


def _plain_host(value: str) -> str | None:
    r"""``PLAIN_HTTPS.fullmatch(value).group(1)``, found without scanning the whole URL by
    regex when it is ASCII (the usual case); None when it does not match.

    Only for a value with no control character (checked before): in ASCII, ``\S`` then
    refuses exactly space, tab, CR and LF. Any other value asks the regex itself.
    """
    if not value.isascii():
        plain = PLAIN_HTTPS.fullmatch(value)
        return None if plain is None else plain.group(1)
    if value[:8].lower() != "https://" or any(c in value for c in _ASCII_SPACE):
        return None
    found = _HOST.match(value, 8)
    if found is None:
        return None
    end = found.end()
    if end < len(value) and value[end] not in "/?#":
        return None
    return found.group()


class FastRows:
    """One job's rows of one technique: their keys, when the short path may answer."""

    def __init__(self, *, batch: str, technique: Technique, remote: bool) -> None:
        ids = [slot.id for slot in technique.inputs]
        # upload_remote reads some URLs from the network, and a technique naming an id
        # twice has its own rule: both are the generic path's.
        self.usable = not remote and len(set(ids)) == len(ids)
        self.slots = tuple((slot.id, slot.is_media) for slot in technique.inputs)
        self.keyer = RowKeyer(batch=batch, technique=technique.slug, ids=ids)
        self._hosts: dict[str, bool] = {}  # host as written -> documented

    def keys(self, values: Mapping[str, object], key: str | None) -> tuple[str, str, str] | None:
        """The row's ``RowKeys`` fields (inputs JSON, digest, key) if it has exactly the
        technique's inputs and no problem at all; None: check it the generic way."""
        if not self.usable or len(values) != len(self.slots):
            return None
        for input_id, media in self.slots:
            value = values.get(input_id)
            if type(value) is not str or not self._fine(value, media):
                return None
        if key is not None and SAFE_NAME.fullmatch(key) is None:
            return None
        return self.keyer.parts(values)  # type: ignore[arg-type]  # every value is a str: checked

    def _fine(self, value: str, media: bool) -> bool:
        """Whether the generic checks would find nothing to say about this value."""
        if not value or value.isspace() or CONTROL_CHARS.search(value) is not None:
            return False  # `not value.strip()` is exactly this
        if not media:
            return len(value) <= MAX_TEXT_LENGTH
        if "://" not in value or value.startswith("file://") or len(value) > MAX_URL_LENGTH:
            return False  # a local file (read from disk), or a problem
        host = _plain_host(value)
        if host is None:
            return False
        known = self._hosts.get(host)
        if known is None:
            if len(self._hosts) >= _HOSTS_KEPT:
                self._hosts.clear()
            known = self._hosts[host] = is_supported_host(host.lower())
        return known
