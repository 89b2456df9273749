"""Idempotency keys: the contract that keeps one manifest row from being paid for twice.

A key is derived only from what the row *means*, never from where or when it was read, so the
same row in the same batch gets the same key after a crash, a restart or on another machine.
The formula, precisely enough to reimplement (Python shown)::

    payload = {"attempt": attempt, "batch": batch, "inputs": inputs, "technique": technique}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key = "fq1_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:48]

``inputs`` is the row's input id -> value mapping with the manifest's ``with`` constants merged
in, a local file given as ``floraq-file:sha256:<its content's sha256>`` (so moving a folder
or re-uploading never changes a key, and editing the file does); ``attempt`` starts at 1
and grows only when an operator asks for a fresh run of a row.
Strings are hashed exactly as given (no Unicode normalisation, no trimming). Changing any of
this changes every key, so old batches would be paid for again: bump ``KEY_VERSION`` instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

KEY_VERSION = "fq1"
encode_basestring = json.encoder.encode_basestring  # a str as JSON, raw UTF-8 (C speed)
_KEY_HEX_CHARS = 48
ROW_KEY_HEX_CHARS = 12


def canonical_json(value: Any) -> str:
    """Serialize ``value`` one way only: sorted keys, no whitespace, raw UTF-8, no NaN.

    Changing this changes every idempotency key and every output folder name.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def idempotency_key(*, batch: str, technique: str, inputs: Mapping[str, str], attempt: int) -> str:
    """The key sent with every POST of this row's run, identical on every retry of one attempt."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, got {attempt}")
    payload = {"attempt": attempt, "batch": batch, "inputs": dict(inputs), "technique": technique}
    return f"{KEY_VERSION}_{_sha256(payload)[:_KEY_HEX_CHARS]}"


def asset_key(*, sha256: str, workspace_id: str, attempt: int) -> str:
    """The Idempotency-Key of ``POST /assets`` for one content in one workspace.

    From the content and the workspace only, so a crash between the POST and recording its
    answer sends the same key again and FLORA replays the same asset.
    """
    payload = {"attempt": attempt, "sha256": sha256, "workspace": workspace_id}
    return f"fqa1_{_sha256(payload)[:_KEY_HEX_CHARS]}"


def row_key(inputs: Mapping[str, str]) -> str:
    """A short stable name for a row's output folder when the CSV gives no key column."""
    return inputs_digest(inputs)[:ROW_KEY_HEX_CHARS]


def inputs_digest(inputs: Mapping[str, str]) -> str:
    """The full sha256 of a row's inputs, so the ledger can tell when a row changed."""
    return _sha256(dict(inputs))


@dataclass(frozen=True, slots=True)
class RowKeys:
    """A row's canonical inputs text, its digest and its first-attempt key, from one encoding."""

    inputs_json: str
    inputs_digest: str
    idempotency_key: str

    @property
    def row_key(self) -> str:
        """The output folder's name when the CSV gives no key column (see ``row_key``)."""
        return self.inputs_digest[:ROW_KEY_HEX_CHARS]


def row_keys(*, batch: str, technique: str, inputs: Mapping[str, Any]) -> RowKeys:
    """``inputs_digest`` and attempt 1's ``idempotency_key`` at once, encoding the inputs once.

    A str -> str mapping (the usual row) goes through ``RowKeyer``, which builds the
    canonical JSON by hand and splices it into the key's payload instead of encoding it
    twice more; anything else takes the documented formula as it is.
    """
    if all(type(k) is str and type(v) is str for k, v in inputs.items()):
        return RowKeyer(batch=batch, technique=technique, ids=inputs)(inputs)
    values = dict(inputs)
    return RowKeys(
        canonical_json(values),
        inputs_digest(values),
        idempotency_key(batch=batch, technique=technique, inputs=values, attempt=1),
    )


def inputs_json(inputs: Mapping[str, Any]) -> str:
    """``canonical_json`` of a row's inputs, built by hand for a str -> str mapping (the
    usual row: a test compares the two), as the ledger stores and hashes them."""
    if all(type(k) is str and type(v) is str for k, v in inputs.items()):
        pairs = (f"{encode_basestring(k)}:{encode_basestring(inputs[k])}" for k in sorted(inputs))
        return "{" + ",".join(pairs) + "}"
    return canonical_json(dict(inputs))


class RowKeyer:
    """Keys for many rows of one batch and technique whose inputs are always the same ids
    (a CSV job): the ids' order and the payload's fixed parts are encoded once.

    Gives the documented formula's exact result (a test compares them) for a mapping of
    str to str with exactly these ids; ``row_keys`` sends any other mapping that way.
    """

    __slots__ = ("_head", "_names", "_tail", "ids")

    def __init__(self, *, batch: str, technique: str, ids: Iterable[str]) -> None:
        self.ids = tuple(sorted(ids))
        self._names = tuple((k, encode_basestring(k) + ":") for k in self.ids)
        self._head = f'{{"attempt":1,"batch":{encode_basestring(batch)},"inputs":'
        self._tail = f',"technique":{encode_basestring(technique)}}}'

    def __call__(self, inputs: Mapping[str, str]) -> RowKeys:
        text, digest, key = self.parts(inputs)
        return RowKeys(text, digest, key)

    def parts(self, inputs: Mapping[str, str]) -> tuple[str, str, str]:
        """``RowKeys``'s three fields as a plain tuple (no object built per row)."""
        text = "{" + ",".join([name + encode_basestring(inputs[k]) for k, name in self._names])
        text += "}"
        payload = self._head + text + self._tail
        key_hex = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_KEY_HEX_CHARS]
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return text, digest, KEY_VERSION + "_" + key_hex


def api_key_fingerprint(api_key: str) -> str:
    """16 hex digits that tell two API keys apart without revealing either.

    Stored with each intent: FLORA scopes idempotency keys per API key, so a POST sent
    under one key must not be re-sent under another.
    """
    return hashlib.sha256(f"floraq-api-key:{api_key}".encode()).hexdigest()[:16]
