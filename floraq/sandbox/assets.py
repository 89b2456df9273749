"""The sandbox's assets: reservations, uploads, ``complete`` and ``ready``; no HTTP here.

An asset keeps only the sha256 and size of the bytes uploaded to it (never the bytes),
so a 2 GB upload costs the sandbox no memory, and a run can still be checked against
what was uploaded. Its fate (``ready`` after ``asset_ready_delay``, or ``failed``) is
fixed at ``complete``, drawn from the seed like a run's.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from floraq.sandbox.config import SandboxConfig

ASSET_URL_BASE = "https://assets.floraq-sandbox.invalid/"  # https, as run inputs must be
FAILURE_MESSAGE = "The uploaded file could not be processed."


class AssetStatus(StrEnum):
    PENDING_UPLOAD = "pending_upload"
    READY = "ready"
    FAILED = "failed"


@dataclass(slots=True)
class Asset:
    """One asset and its current upload reservation (a fresh one after each ``retry``)."""

    asset_id: str
    workspace_id: str
    api_key: str
    file_name: str | None
    content_type: str | None  # as declared at create
    created_ms: int
    token: str  # the reservation: what the upload form must carry
    expires_ms: int  # wall ms after which the reservation takes no upload
    sha256: str | None = None  # of the bytes uploaded to this reservation
    size: int | None = None
    upload_type: str | None = None  # the file part's Content-Type
    uploads: int = 0  # complete uploads received, every reservation included
    settles_at: float | None = None  # sandbox clock: when complete's fate shows
    failed: bool = False

    @property
    def url(self) -> str:
        return f"{ASSET_URL_BASE}{self.asset_id}/{self.file_name or 'file'}"

    def status(self, now: float) -> AssetStatus:
        if self.settles_at is None or now < self.settles_at:
            return AssetStatus.PENDING_UPLOAD
        return AssetStatus.FAILED if self.failed else AssetStatus.READY


class AssetStore:
    """Every asset, by id and by reservation token, with their own idempotency keys."""

    def __init__(self, seed: int, secret: bytes) -> None:
        self.assets: dict[str, Asset] = {}
        self._by_token: dict[str, str] = {}
        self._secret = secret
        self._fates = random.Random(f"{seed}|assets")

    def create(
        self, body: dict[str, Any], *, api_key: str, wall_ms: int, config: SandboxConfig
    ) -> Asset:
        index = len(self.assets)
        asset_id = (
            "asset_" + hashlib.sha256(self._secret + f"asset|{index}".encode()).hexdigest()[:20]
        )
        asset = Asset(
            asset_id=asset_id,
            workspace_id=body["workspace_id"],
            api_key=api_key,
            file_name=body.get("file_name"),
            content_type=body.get("content_type"),
            created_ms=wall_ms,
            token="",
            expires_ms=0,
        )
        self.assets[asset_id] = asset
        self.reserve(asset, wall_ms=wall_ms, config=config)
        return asset

    def reserve(self, asset: Asset, *, wall_ms: int, config: SandboxConfig) -> None:
        """A fresh upload reservation: the old token takes no more uploads."""
        self._by_token.pop(asset.token, None)
        asset.token = hashlib.sha256(
            self._secret
            + f"token|{asset.asset_id}|{asset.uploads}|{wall_ms}|{len(self._by_token)}".encode()
        ).hexdigest()[:32]
        asset.expires_ms = wall_ms + round(config.upload_ttl * 1000)
        asset.sha256 = asset.size = asset.upload_type = asset.settles_at = None
        asset.failed = False
        self._by_token[asset.token] = asset.asset_id

    def form_fields(self, asset: Asset) -> dict[str, str]:
        """What the upload form must carry, signed so the upload host can check it."""
        expire = str(asset.expires_ms)
        return {
            "token": asset.token,
            "expire": expire,
            "signature": self.sign(asset.token, expire),
            "fileName": asset.file_name or "file",
        }

    def sign(self, token: str, expire: str) -> str:
        return hmac.new(self._secret, f"{token}|{expire}".encode(), "sha256").hexdigest()

    def by_token(self, token: str) -> Asset | None:
        return self.assets.get(self._by_token.get(token, ""))

    def by_url(self, url: str) -> Asset | None:
        """The asset a run input names, if it is one of ours."""
        if not url.startswith(ASSET_URL_BASE):
            return None
        return self.assets.get(url[len(ASSET_URL_BASE) :].split("/", 1)[0])

    def complete(self, asset: Asset, *, now: float, config: SandboxConfig) -> None:
        """Fix the asset's fate: failed or ready, shown after ``asset_ready_delay``."""
        draw = self._fates.random()
        asset.failed = draw < config.asset_failure_rate
        asset.settles_at = now + config.asset_ready_delay


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def upload_block(store: AssetStore, asset: Asset, upload_url: str) -> dict[str, Any]:
    """The ``upload`` object and its neighbours, as create, complete and retry show them."""
    return {
        "upload": {
            "url": upload_url,
            "method": "POST",
            "content_type": "multipart/form-data",
            "file_field": "file",
            "form_fields": store.form_fields(asset),
        },
        "upload_url": upload_url,
        "expires_at": iso(asset.expires_ms),
    }


def short_view(
    store: AssetStore, asset: Asset, *, now: float, upload_url: str, with_upload: bool
) -> dict[str, Any]:
    """The answer of create, complete and retry."""
    status = asset.status(now)
    out: dict[str, Any] = {
        "asset_id": asset.asset_id,
        "uploaded_via": "signed_url",
        "url": asset.url,
        "workspace_id": asset.workspace_id,
        "visibility": "workspace",
        "status": status.value,
        "failure_message": FAILURE_MESSAGE if status is AssetStatus.FAILED else None,
    }
    if with_upload:
        out |= upload_block(store, asset, upload_url)
    return out


def full_view(asset: Asset, *, now: float) -> dict[str, Any]:
    """The answer of ``GET /assets/{id}``."""
    status = asset.status(now)
    return {
        "asset_id": asset.asset_id,
        "name": asset.file_name,
        "description": None,
        "workspace_id": asset.workspace_id,
        "url": asset.url,
        "content_type": asset.upload_type or asset.content_type or "application/octet-stream",
        "upload_content_type": asset.content_type,
        "size_bytes": asset.size if status is AssetStatus.READY else None,
        "uploaded_via": "signed_url",
        "created_at": iso(asset.created_ms),
        "status": status.value,
        "failure_message": FAILURE_MESSAGE if status is AssetStatus.FAILED else None,
        "width": None,
        "height": None,
    }
