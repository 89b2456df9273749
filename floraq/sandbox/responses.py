"""What both of the sandbox's apps answer with: the error envelope, request ids, hang-ups.

``GuardedApp`` is the shell of each app: it tags every answer with a ``request-id`` and
turns a bug in the sandbox into the API's own 500 rather than a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from floraq.sandbox.validation import FieldError, error_message

API_PREFIX = "/api/v1"  # where the FLORA API lives; poll URLs are built under it

_logger = logging.getLogger("floraq.sandbox")


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    fields: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The API's error envelope: ``{"error": {"code", "message", "fields"?}}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = [{"field": f, "message": m} for f, m in fields]
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def validation_error(fields: Sequence[FieldError]) -> JSONResponse:
    return error_response(400, "input_validation_error", error_message(list(fields)), fields=fields)


def unknown_error() -> JSONResponse:
    return error_response(500, "unknown_error", "An unknown error occurred.")


def html_error_page(status: int) -> str:
    """The HTML a load balancer sends instead of the API's JSON."""
    title = {500: "500 Internal Server Error", 503: "503 Service Temporarily Unavailable"}[status]
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


MALFORMED = object()


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body, or ``MALFORMED``."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return MALFORMED


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class TaggedSend:
    """Adds the ``request-id`` header to the answer and remembers whether one started."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._header = (b"request-id", request_id.encode())
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message = {**message, "headers": [*message.get("headers", []), self._header]}
        await self._send(message)


class GuardedApp:
    """An ASGI app that tags answers with a request id and answers 500 if it crashes.

    Subclasses implement ``handle``; it gets the tagged ``send`` and uvicorn's own
    (``raw_send``), which ``drop_connection`` needs.
    """

    label = "app"  # names the app in the log line of a crash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        tagged = TaggedSend(send, new_request_id())
        try:
            await self.handle(scope, receive, tagged, send)
        except Exception:
            _logger.exception(
                "sandbox %s failed on %s %s", self.label, scope["method"], scope["path"]
            )
            if not tagged.started:
                await unknown_error()(scope, receive, tagged)

    async def handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        raise NotImplementedError


async def discard(message: Message) -> None:
    """A ``send`` for an answer the client will never get."""


async def drain(receive: Receive) -> None:
    """Read the whole request body, so closing the socket sends a FIN rather than a RST."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def drop_connection(send: Send) -> None:
    """Close the client's connection now, without (the rest of) an answer.

    Reaches through uvicorn's ``send`` to its transport; waits until uvicorn has seen the
    disconnect, so it does not log the unfinished answer as an application error.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot reach the connection to drop it (not served by uvicorn?)")
    transport.close()
    for attempt in range(500):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0 if attempt < 10 else 0.001)
