"""The third-party upload host: takes an asset's file as a signed multipart form.

It stands for ImageKit's upload endpoint, so it refuses an ``Authorization`` header (a
client that sends its FLORA key here is a bug floraq's tests must catch), and checks
the form: every field the reservation gave, signed and unexpired, before the file part
``file``. The file is hashed as it streams in and never kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from floraq.sandbox.assets import Asset
from floraq.sandbox.multipart import (
    MAX_FIELD_BYTES,
    MalformedForm,
    PartStart,
    boundary_of,
    parts,
)
from floraq.sandbox.responses import GuardedApp, drain, error_response
from floraq.sandbox.state import SandboxState

UPLOAD_PATH = "/api/v1/files/upload"
FORM_FIELDS = ("token", "expire", "signature", "fileName")


class UploadHost(GuardedApp):
    """``POST /api/v1/files/upload``: one reservation's file, checked and hashed."""

    label = "upload host"

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        state = self.state
        state.counters.upload_requests += 1
        answer = self._refusal(scope)
        if answer is None:
            if state.faults.upload_fault(state.config):
                state.counters.upload_faults += 1
                await drain(receive)
                answer = error_response(503, "service_unavailable", "Upload service unavailable.")
            else:
                answer = await self._receive(scope, receive)
        else:
            await drain(receive)
        await answer(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        if "authorization" in headers:
            self.state.counters.upload_auth_rejections += 1
            message = "The upload host is a third party; requests must not carry Authorization."
            return error_response(400, "authorization_not_allowed", message)
        if scope["method"] != "POST" or scope["path"] != UPLOAD_PATH:
            return error_response(404, "not_found", "No such upload endpoint.")
        if boundary_of(headers.get("content-type", "")) is None:
            return error_response(400, "invalid_form", "Expected multipart/form-data.")
        return None

    async def _receive(self, scope: Scope, receive: Receive) -> Response:
        boundary = boundary_of(Headers(scope=scope).get("content-type", "")) or ""
        fields: dict[str, bytes] = {}
        current: str | None = None
        asset: Asset | None = None
        digest, size, part_type = hashlib.sha256(), 0, None
        body = _Body(receive)
        try:
            async for item in parts(body.chunks(), boundary):
                if isinstance(item, PartStart):
                    current = item.name
                    if current == "file":
                        asset, refusal = self._check(fields)
                        if asset is None:
                            await body.drain()
                            return refusal
                        part_type = item.content_type
                    elif current in fields:
                        return _bad(f"the field {current!r} is given twice")
                    else:
                        fields[current] = b""
                elif current == "file":
                    digest.update(item.data)
                    size += len(item.data)
                elif current is not None:
                    fields[current] += item.data
                    if len(fields[current]) > MAX_FIELD_BYTES:
                        return _bad(f"the field {current!r} is too long")
        except MalformedForm as exc:
            return _bad(str(exc))
        if asset is None:
            return _bad("the form has no file part 'file'")
        self._take(asset, digest.hexdigest(), size, part_type)
        return JSONResponse({"fileId": asset.asset_id, "name": asset.file_name, "size": size})

    def _check(self, fields: dict[str, bytes]) -> tuple[Asset | None, Response]:
        """The reservation the fields name, or why the file part is refused."""
        missing = [name for name in FORM_FIELDS if name not in fields]
        if missing:
            return None, _bad(f"the form lacks {', '.join(missing)} before the file part")
        text = {k: v.decode("utf-8", "replace") for k, v in fields.items()}
        store = self.state.assets
        asset = store.by_token(text["token"])
        if asset is None or store.sign(text["token"], text["expire"]) != text["signature"]:
            return None, error_response(403, "invalid_signature", "The upload form is not signed.")
        if self.state.wall_ms() > asset.expires_ms:
            return None, error_response(
                403, "upload_expired", "This upload reservation has expired."
            )
        if asset.settles_at is not None:
            return None, error_response(409, "already_completed", "This asset is already complete.")
        return asset, Response()

    def _take(self, asset: Asset, sha256: str, size: int, part_type: str | None) -> None:
        counters = self.state.counters
        asset.sha256, asset.size, asset.upload_type = sha256, size, part_type
        asset.uploads += 1
        counters.uploads += 1
        counters.upload_bytes += size


def _bad(message: str) -> Response:
    return error_response(400, "invalid_form", f"Malformed upload: {message}.")


class _Body:
    """The request body as chunks, remembering whether it has all been read."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self._receive()
            if message["type"] != "http.request":
                self.done = True
                return
            self.done = not message.get("more_body", False)
            yield message.get("body", b"")

    async def drain(self) -> None:
        """Read what is left, so the answer is not sent into a half-read request."""
        async for _ in self.chunks():
            pass
