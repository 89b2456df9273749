"""Idempotency keys: which run a key made, for how long, and what makes two requests one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


class KeyStore:
    """Keys per API key, each remembered from its first use for ``window`` seconds."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], tuple[str, float]] = {}

    def find(self, api_key: str, key: str, *, now: float, window: float) -> str | None:
        """The run id an earlier request with this key made, if the key is still remembered."""
        entry = self._keys.get((api_key, key))
        if entry is None:
            return None
        run_id, recorded = entry
        if now - recorded >= window:
            del self._keys[(api_key, key)]
            return None
        return run_id

    def remember(self, api_key: str, key: str, run_id: str, *, now: float) -> None:
        self._keys[(api_key, key)] = (run_id, now)


def fingerprint(slug: str, body: Mapping[str, Any]) -> str:
    """What two requests with one idempotency key must share to be the same request."""
    rest = {k: v for k, v in body.items() if k != "idempotency_key"}
    canonical = json.dumps([slug, rest], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
