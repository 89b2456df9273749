"""The third-party media host: signed, expiring, public URLs with Range support.

It stands for a CDN, so it refuses an ``Authorization`` header (a client that sends its
API key to a third party is a bug floraq's tests must catch) and never sees API faults;
its own fault is a body cut short under a full ``Content-Length``.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from floraq.sandbox.media import MediaFile
from floraq.sandbox.responses import GuardedApp, drop_connection, error_response
from floraq.sandbox.state import SandboxState

_MEDIA_PATH = re.compile(r"^/media/([0-9a-f]+)/([A-Za-z0-9_.-]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class MediaHost(GuardedApp):
    """Serves each completed run's outputs at ``/media/{token}/{output}.{ext}``."""

    label = "media host"

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        state = self.state
        state.counters.media_requests += 1
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if state.config.redirect_loop:  # a broken CDN: the URL sends the client to itself
            query = scope["query_string"].decode("latin-1")
            itself = f"{state.media_base_url}{scope['path']}" + (f"?{query}" if query else "")
            await Response(b"", status_code=302, headers={"location": itself})(scope, receive, send)
            return
        match = _MEDIA_PATH.match(scope["path"])
        file = state.media_file(match.group(1), match.group(2)) if match else None
        if file is None:
            await error_response(404, "not_found", "No such file.")(scope, receive, send)
            return
        await self._send_file(scope, headers, file, send, raw_send)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        state = self.state
        if "authorization" in headers:
            state.counters.media_auth_rejections += 1
            message = "Output URLs are public; requests must not carry an Authorization header."
            return error_response(400, "authorization_not_allowed", message)
        if scope["method"] not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "Method not allowed.")
        query = QueryParams(scope["query_string"].decode("latin-1"))
        expires = query.get("exp", "")
        if not expires.isdigit() or not state.check_signature(
            scope["path"], int(expires), query.get("sig", "")
        ):
            return error_response(403, "invalid_signature", "The URL signature is not valid.")
        if state.wall_ms() > int(expires):
            status = state.config.expired_status
            return error_response(status, "url_expired", "This URL has expired.")
        return None

    async def _send_file(
        self, scope: Scope, headers: Headers, file: MediaFile, send: Send, raw_send: Send
    ) -> None:
        size = len(file.body)
        start, end = 0, size
        response_headers = [
            (b"content-type", file.content_type.encode()),
            (b"etag", file.etag.encode()),
            (b"accept-ranges", b"bytes"),
        ]
        status = 200
        wanted = _requested_range(headers, file.etag)
        if wanted is not None:
            first, last = wanted
            if first >= size:
                refusal = Response(
                    b"", status_code=416, headers={"content-range": f"bytes */{size}"}
                )
                await refusal(scope, _no_body, send)
                return
            status, start, end = 206, first, min(size, (last + 1) if last is not None else size)
            response_headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        body = file.body[start:end]
        response_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._send_body(body, complete=end == size, send=send, raw_send=raw_send)

    async def _send_body(self, body: bytes, *, complete: bool, send: Send, raw_send: Send) -> None:
        """The body, or (an injected fault) part of it and then a hang-up."""
        cut = self.state.draw_truncation()
        if cut is not None:
            part = body[: int(len(body) * cut)]
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await drop_connection(raw_send)
            return
        await send({"type": "http.response.body", "body": body})
        if complete:
            self.state.counters.downloads += 1


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _requested_range(headers: Headers, etag: str) -> tuple[int, int | None] | None:
    """The single byte range asked for, if it applies (``If-Range`` must match the ETag)."""
    match = _RANGE.match(headers.get("range", "").strip())
    if match is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else None
    if last is not None and last < first:
        return None
    return first, last
