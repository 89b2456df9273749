"""FLORA's workspaces and assets endpoints, over ``FloraClient.call``; answers read as untrusted.

``POST /assets`` (``source: signed-url``) reserves an upload; the file goes to the
reservation's third-party host (``floraq.uploads``, never with the key); then
``complete``, and ``GET /assets/{id}`` until ``ready``. ``retry`` renews an expired or
failed reservation. Create, complete and retry carry an ``Idempotency-Key``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from floraq.api import MALFORMED, FloraClient
from floraq.core.text import one_line
from floraq.errors import ServerError


class AssetStatus(StrEnum):
    """An asset's status as FLORA reports it."""

    PENDING_UPLOAD = "pending_upload"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AssetInfo:
    """What FLORA said about an asset (create, complete, retry or GET)."""

    asset_id: str
    status: AssetStatus | str
    url: str | None
    upload: dict[str, Any] | None  # url, form_fields, file_field, expires_at
    failure_message: str | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class Workspace:
    workspace_id: str
    name: str


def _object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise ServerError(
            "malformed response: the body is not a JSON object",
            status=response.status_code,
            code=MALFORMED,
            request_id=response.headers.get("request-id"),
        )
    return data


def _malformed(response: httpx.Response, why: str) -> ServerError:
    return ServerError(
        f"malformed response: {why}",
        status=response.status_code,
        code=MALFORMED,
        request_id=response.headers.get("request-id"),
    )


def _asset(response: httpx.Response) -> AssetInfo:
    data = _object(response)
    asset_id, status = data.get("asset_id"), data.get("status")
    if not isinstance(asset_id, str) or not asset_id or not isinstance(status, str):
        raise _malformed(response, "the answer has no asset_id or status")
    try:
        known: AssetStatus | str = AssetStatus(status)
    except ValueError:
        known = one_line(status, limit=100)
    url = data.get("url")
    message = data.get("failure_message")
    return AssetInfo(
        asset_id=asset_id,
        status=known,
        url=url if isinstance(url, str) and url else None,
        upload=_upload(data),
        failure_message=one_line(message) if isinstance(message, str) else None,
        replayed=response.headers.get("idempotent-replayed", "").strip().lower() == "true",
    )


def _upload(data: dict[str, Any]) -> dict[str, Any] | None:
    """The reservation, if the answer has a usable one."""
    upload = data.get("upload")
    if not isinstance(upload, dict) or not isinstance(upload.get("url"), str):
        return None
    fields = upload.get("form_fields")
    field = upload.get("file_field")
    expires = data.get("expires_at")
    return {
        "url": upload["url"],
        "form_fields": {
            str(k): str(v) for k, v in (fields.items() if isinstance(fields, dict) else ())
        },
        "file_field": field if isinstance(field, str) and field else "file",
        "expires_at": expires if isinstance(expires, str) else None,
    }


def _workspaces(response: httpx.Response) -> list[Workspace]:
    items = _object(response).get("workspaces")
    if not isinstance(items, list):
        raise _malformed(response, "the answer has no workspaces array")
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("workspace_id"), str):
            name = item.get("name")
            found.append(
                Workspace(item["workspace_id"], one_line(name) if isinstance(name, str) else "")
            )
    return found


async def list_workspaces(client: FloraClient) -> list[Workspace]:
    """Every workspace the key can use (the list is not paginated)."""
    return await client.call("GET", ("workspaces",), _workspaces)


async def create_asset(
    client: FloraClient, *, workspace_id: str, file_name: str, content_type: str, key: str
) -> AssetInfo:
    body = {
        "source": "signed-url",
        "workspace_id": workspace_id,
        "file_name": file_name,
        "content_type": content_type,
    }
    return await client.call("POST", ("assets",), _asset, body=body, idempotency_key=key)


async def get_asset(client: FloraClient, asset_id: str) -> AssetInfo:
    return await client.call("GET", ("assets", asset_id), _asset)


async def complete_asset(client: FloraClient, asset_id: str, *, key: str) -> AssetInfo:
    return await client.call("POST", ("assets", asset_id, "complete"), _asset, idempotency_key=key)


async def retry_asset(client: FloraClient, asset_id: str, *, key: str) -> AssetInfo:
    return await client.call("POST", ("assets", asset_id, "retry"), _asset, idempotency_key=key)
