"""The sandbox's HTTP face: the FLORA API, the media host, and the inspection endpoints.

Two ASGI apps share one ``SandboxState`` on one event loop. In front of the API sits
a "front door" that tags every answer with a ``request-id``, counts requests by route
template, and injects the configured faults (latency, 429, 5xx, dropped connections)
before auth and routing, the way a load balancer would. ``/_sandbox/*`` never sees a
fault. The media host stands for a third-party CDN: public signed URLs, no auth.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from floraq.sandbox import directory
from floraq.sandbox.media import MediaFile
from floraq.sandbox.state import Fault, Run, SandboxState, fingerprint, normalize_inputs
from floraq.sandbox.validation import (
    FieldError,
    error_message,
    is_valid_key,
    parse_limit,
    validate_run_body,
)

API_PREFIX = "/api/v1"
SANDBOX_PREFIX = "/_sandbox/"
CREATE_RUN = "POST /techniques/{slug}/runs"
COALESCE_GAP = 0.05  # seconds a non-coalescing create holds its key check open

_API_KEY = "floraq.sandbox.api_key"
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


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


class _TaggedSend:
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


async def _discard(message: Message) -> None:
    """A ``send`` for an answer the client will never get."""


async def _drain(receive: Receive) -> None:
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


class ApiFrontDoor:
    """The API app: request ids, request counts, injected faults, auth, then the routes."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        api = _Api(state)
        inspection = _Inspection(state)
        self.router = Starlette(
            routes=[
                Route(API_PREFIX + "/workspaces", api.workspaces),
                Route(API_PREFIX + "/projects", api.projects),
                Route(API_PREFIX + "/models", api.models),
                Route(API_PREFIX + "/techniques", api.list_techniques),
                Route(API_PREFIX + "/techniques/{slug}", api.get_technique),
                Route(API_PREFIX + "/techniques/{slug}/runs", api.create_run, methods=["POST"]),
                Route(API_PREFIX + "/techniques/{slug}/runs/{run_id}", api.get_run),
                Route("/_sandbox/stats", inspection.stats),
                Route("/_sandbox/runs", inspection.runs),
                Route("/_sandbox/config", inspection.get_config),
                Route("/_sandbox/config", inspection.configure, methods=["POST"]),
                Route("/_sandbox/reset", inspection.reset, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        tagged = _TaggedSend(send, new_request_id())
        try:
            await self._handle(scope, receive, tagged, send)
        except Exception:
            _logger.exception("sandbox API failed on %s %s", scope["method"], scope["path"])
            if not tagged.started:
                await _unknown_error()(scope, receive, tagged)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        if scope["path"].startswith(SANDBOX_PREFIX):
            await self.router(scope, receive, send)
            return
        template = self._template(scope)
        self.state.counters.requests[template] += 1
        fault = self.state.draw_api_fault(creates_run=template == CREATE_RUN)
        config = self.state.config
        if config.latency:
            await asyncio.sleep(config.latency)
        refusal = self._fault_response(fault) or self._authenticate(scope)
        if fault is Fault.DROP:
            await _drain(receive)
            await drop_connection(raw_send)
        elif refusal is not None:
            await refusal(scope, receive, send)
        elif fault is Fault.DROP_AFTER:
            await self.router(scope, receive, _discard)
            await drop_connection(raw_send)
        else:
            await self.router(scope, receive, send)

    def _template(self, scope: Scope) -> str:
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE and isinstance(route, Route):
                return f"{scope['method']} {route.path.removeprefix(API_PREFIX)}"
        return f"{scope['method']} (unmatched)"

    def _fault_response(self, fault: Fault) -> Response | None:
        config = self.state.config
        if fault is Fault.RATE_LIMITED:
            headers = (
                None if config.retry_after is None else {"retry-after": f"{config.retry_after:g}"}
            )
            return error_response(429, "rate_limited", "Rate limit exceeded.", headers=headers)
        if fault in (Fault.UNKNOWN_ERROR, Fault.UNAVAILABLE):
            status = 500 if fault is Fault.UNKNOWN_ERROR else 503
            if config.html_5xx:
                return Response(
                    _html_error_page(status), status_code=status, media_type="text/html"
                )
            if status == 500:
                return _unknown_error()
            return error_response(
                503, "service_unavailable", "The service is temporarily unavailable."
            )
        return None

    def _authenticate(self, scope: Scope) -> Response | None:
        header = Headers(scope=scope).get("authorization", "")
        if not header:
            return error_response(401, "unauthorized", "Missing Authorization header.")
        scheme, _, key = header.partition(" ")
        config = self.state.config
        if scheme.lower() != "bearer" or key not in config.api_keys or key in config.revoked_keys:
            return error_response(401, "invalid_api_key", "Invalid API key.")
        scope[_API_KEY] = key
        return None


def _html_error_page(status: int) -> str:
    title = {500: "500 Internal Server Error", 503: "503 Service Temporarily Unavailable"}[status]
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def _unknown_error() -> JSONResponse:
    return error_response(500, "unknown_error", "An unknown error occurred.")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return error_response(405, "method_not_allowed", "Method not allowed.")
    return error_response(404, "not_found", "Not found.")


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return _unknown_error()


class _Api:
    """The FLORA API routes; auth has already happened at the front door."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def workspaces(self, request: Request) -> Response:
        return JSONResponse({"workspaces": directory.WORKSPACES})

    async def projects(self, request: Request) -> Response:
        params = request.query_params
        workspace_id = params.get("workspace_id", "")
        errors = _list_errors(params)
        if "workspace_id" not in params:
            errors.insert(0, ("workspace_id", "Workspace identifier must start with ws_"))
        if errors:
            return validation_error(errors)
        projects = directory.PROJECTS.get(workspace_id)
        if projects is None:
            return error_response(404, "not_found", f"Workspace '{workspace_id}' not found.")
        return JSONResponse({"projects": projects, "meta": {"next_cursor": None}})

    async def models(self, request: Request) -> Response:
        kind = request.query_params.get("type")
        if kind is not None and kind not in directory.MODEL_TYPES:
            return validation_error(
                [("type", "Must be one of " + ", ".join(directory.MODEL_TYPES))]
            )
        models = [m for m in directory.MODELS if kind is None or m["type"] == kind]
        return JSONResponse({"models": models})

    async def list_techniques(self, request: Request) -> Response:
        params = request.query_params
        errors = _list_errors(params)
        limit = parse_limit(params.get("limit"))
        offset = _decode_cursor(params.get("cursor"))
        if offset is None:
            errors.append(("cursor", "Invalid cursor"))
        if errors or isinstance(limit, tuple) or offset is None:
            return validation_error(errors)
        query = params.get("query", "").lower()
        matching = [
            t
            for t in self.state.catalog.techniques
            if query in t.slug or query in t.name.lower() or query in t.description.lower()
        ]
        page = matching[offset : offset + limit]
        more = offset + limit < len(matching)
        return JSONResponse(
            {
                "techniques": [t.to_json() for t in page],
                "meta": {"next_cursor": _encode_cursor(offset + limit) if more else None},
            }
        )

    async def get_technique(self, request: Request) -> Response:
        technique = self.state.catalog.find(request.path_params["slug"])
        if technique is None:
            return _technique_not_found(request.path_params["slug"])
        return JSONResponse(technique.to_json())

    async def create_run(self, request: Request) -> Response:
        config, state = self.state.config, self.state
        api_key: str = request.scope[_API_KEY]
        if api_key in config.read_only_keys:
            return error_response(403, "forbidden", "This API key cannot create runs.")
        technique = state.catalog.find(request.path_params["slug"])
        if technique is None:
            return _technique_not_found(request.path_params["slug"])
        body = _parse_json(await request.body())
        if body is _MALFORMED:
            return error_response(400, "invalid_json", "Malformed JSON in request body.")
        if not isinstance(body, dict):
            return error_response(400, "invalid_json", "Request body must be a JSON object.")
        errors = validate_run_body(body, technique)
        header_key = request.headers.get("idempotency-key") or None
        body_key = body.get("idempotency_key")
        if header_key is not None and not is_valid_key(header_key):
            errors.append(("Idempotency-Key", "Must be a string of 1 to 255 characters"))
        elif header_key is not None and body_key is not None and header_key != body_key:
            errors.append(("idempotency_key", "Does not match the Idempotency-Key header"))
        if errors:
            return validation_error(errors)
        key = body_key if isinstance(body_key, str) else header_key
        same_as = fingerprint(technique.slug, body)
        if key:
            earlier = state.find_idempotent(api_key, key)
            if earlier is not None:
                return self._repeat(request, earlier, same_as)
            if not config.coalesce:
                await asyncio.sleep(max(config.latency, COALESCE_GAP))
        if not state.can_afford(technique):
            return error_response(402, "insufficient_credits", "Insufficient credits.")
        run = state.create_run(
            technique,
            normalize_inputs(body["inputs"]),
            key=key,
            api_key=api_key,
            fingerprint=same_as,
        )
        answer = {
            "run_id": run.run_id,
            "created_at": run.created_ms,
            "status": "pending",
            "progress": 0,
        }
        if not config.omit_poll_url:
            answer["poll_url"] = _poll_url(request, run)
        return JSONResponse(answer, status_code=config.create_status)

    def _repeat(self, request: Request, run: Run, same_as: str) -> Response:
        state = self.state
        if state.config.idempotency == "suppress":
            state.counters.idempotency_rejections += 1
            return error_response(409, "idempotency_duplicate", "Duplicate idempotency key.")
        if run.fingerprint != same_as:
            state.counters.idempotency_rejections += 1
            message = "This idempotency key was used with a different request body."
            return error_response(422, "idempotency_conflict", message)
        state.counters.idempotent_replays += 1
        return JSONResponse(
            state.view(run, poll_url=_poll_url(request, run)),
            status_code=state.config.create_status,
            headers={"idempotent-replayed": "true"},
        )

    async def get_run(self, request: Request) -> Response:
        technique = self.state.catalog.find(request.path_params["slug"])
        if technique is None:
            return _technique_not_found(request.path_params["slug"])
        run = self.state.runs.get(request.path_params["run_id"])
        if run is None or run.technique.slug != technique.slug:
            return error_response(404, "not_found", "Run not found.")
        self.state.settle()
        return JSONResponse(self.state.view(run, poll_url=_poll_url(request, run)))


_MALFORMED = object()


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _MALFORMED


def _technique_not_found(slug: str) -> JSONResponse:
    return error_response(404, "not_found", f"Technique '{slug}' not found.")


def _poll_url(request: Request, run: Run) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}{API_PREFIX}/techniques/{run.technique.slug}/runs/{run.run_id}"


def _list_errors(params: QueryParams) -> list[FieldError]:
    errors: list[FieldError] = []
    limit = parse_limit(params.get("limit"))
    if isinstance(limit, tuple):
        errors.append(limit)
    workspace_id = params.get("workspace_id")
    if workspace_id is not None and not workspace_id.startswith("ws_"):
        errors.append(("workspace_id", "Workspace identifier must start with ws_"))
    return errors


def _encode_cursor(offset: int) -> str:
    raw = json.dumps({"offset": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    """The offset a cursor stands for; None if it is not one of ours."""
    if cursor is None:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        return None
    offset = data.get("offset") if isinstance(data, dict) else None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return None
    return offset


class _Inspection:
    """``/_sandbox/*``: what tests and benchmarks read and turn; no auth, no faults."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def runs(self, request: Request) -> Response:
        return JSONResponse(self.state.report())

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.state.config.to_json())

    async def configure(self, request: Request) -> Response:
        changes = _parse_json(await request.body())
        if not isinstance(changes, dict):
            return error_response(400, "invalid_json", "Expected a JSON object of knob values.")
        try:
            config = self.state.configure(changes)
        except ValueError as exc:
            fields = [_split_problem(p) for p in str(exc).split("; ")]
            return validation_error(fields)
        return JSONResponse(config.to_json())

    async def reset(self, request: Request) -> Response:
        raw = await request.body()
        options = _parse_json(raw) if raw else {}
        if isinstance(options, dict) and options.get("restore_config"):
            self.state.restore_config()
        self.state.reset()
        return JSONResponse({"reset": True})


def _split_problem(problem: str) -> FieldError:
    name, _, message = problem.partition(": ")
    return (name, message)


_MEDIA_PATH = re.compile(r"^/media/([0-9a-f]+)/([A-Za-z0-9_.-]+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class MediaHost:
    """The third-party media host: signed, expiring, public URLs with Range support."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        tagged = _TaggedSend(send, new_request_id())
        try:
            await self._handle(scope, receive, tagged, send)
        except Exception:
            _logger.exception("sandbox media host failed on %s", scope["path"])
            if not tagged.started:
                await _unknown_error()(scope, receive, tagged)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        state = self.state
        state.counters.media_requests += 1
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
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
        cut = self.state.draw_truncation()
        if cut is not None:
            await send(
                {
                    "type": "http.response.body",
                    "body": body[: int(len(body) * cut)],
                    "more_body": True,
                }
            )
            await drop_connection(raw_send)
            return
        await send({"type": "http.response.body", "body": body})
        if end == size:
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


def create_apps(state: SandboxState) -> tuple[ASGIApp, ASGIApp]:
    """The API app and the media app, both over ``state``."""
    return ApiFrontDoor(state), MediaHost(state)
