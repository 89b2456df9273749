"""The API app's front door: counts, faults and auth before any route, like a load balancer.

Every answer gets a ``request-id``; every request is counted by its route template;
the configured faults (latency, 429, 5xx, dropped connections) are injected before
auth and routing. ``/_sandbox/*`` goes straight to its routes: never a fault, no auth.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from floraq.sandbox.api_assets import AssetRoutes
from floraq.sandbox.api_directory import DirectoryRoutes
from floraq.sandbox.api_runs import API_KEY_SCOPE, RunRoutes
from floraq.sandbox.inspection import InspectionRoutes
from floraq.sandbox.responses import (
    API_PREFIX,
    GuardedApp,
    discard,
    drain,
    drop_connection,
    error_response,
    html_error_page,
    unknown_error,
)
from floraq.sandbox.state import Fault, SandboxState

SANDBOX_PREFIX = "/_sandbox/"
CREATE_RUN = "POST /techniques/{slug}/runs"


def _routes(state: SandboxState) -> list[Route]:
    """Every route of the API app, FLORA's under ``API_PREFIX``, then the sandbox's own."""
    api, runs, inspection = DirectoryRoutes(state), RunRoutes(state), InspectionRoutes(state)
    assets = AssetRoutes(state)
    return [
        Route(API_PREFIX + "/workspaces", api.workspaces),
        Route(API_PREFIX + "/projects", api.projects),
        Route(API_PREFIX + "/models", api.models),
        Route(API_PREFIX + "/techniques", api.list_techniques),
        Route(API_PREFIX + "/techniques/{slug}", api.get_technique),
        Route(API_PREFIX + "/techniques/{slug}/runs", runs.create_run, methods=["POST"]),
        Route(API_PREFIX + "/techniques/{slug}/runs/{run_id}", runs.get_run),
        Route(API_PREFIX + "/assets", assets.create, methods=["POST"]),
        Route(API_PREFIX + "/assets/{asset_id}", assets.get),
        Route(API_PREFIX + "/assets/{asset_id}/complete", assets.complete, methods=["POST"]),
        Route(API_PREFIX + "/assets/{asset_id}/retry", assets.retry, methods=["POST"]),
        Route("/_sandbox/assets", inspection.assets),
        Route("/_sandbox/stats", inspection.stats),
        Route("/_sandbox/runs", inspection.runs),
        Route("/_sandbox/config", inspection.get_config),
        Route("/_sandbox/config", inspection.configure, methods=["POST"]),
        Route("/_sandbox/reset", inspection.reset, methods=["POST"]),
        Route("/_sandbox/clock", inspection.advance_clock, methods=["POST"]),
    ]


class ApiFrontDoor(GuardedApp):
    """The API app: request ids, request counts, injected faults, auth, then the routes."""

    label = "API"

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.router = Starlette(
            routes=_routes(state),
            exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        if scope["path"].startswith(SANDBOX_PREFIX):
            await self.router(scope, receive, send)
            return
        self.state.request_started()
        try:
            await self._answer(scope, receive, send, raw_send)
        finally:
            self.state.request_ended()

    async def _answer(self, scope: Scope, receive: Receive, send: Send, raw_send: Send) -> None:
        template = self._template(scope)
        self.state.counters.requests[template] += 1
        fault = self.state.draw_api_fault(creates_run=template == CREATE_RUN)
        config = self.state.config
        if config.latency:
            await asyncio.sleep(config.latency)
        refusal = self._fault_response(fault) or self._authenticate(scope)
        if fault is Fault.DROP:
            await drain(receive)
            await drop_connection(raw_send)
        elif refusal is not None:
            await refusal(scope, receive, send)
        elif fault is Fault.DROP_AFTER:
            await self.router(scope, receive, discard)
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
                return Response(html_error_page(status), status_code=status, media_type="text/html")
            if status == 500:
                return unknown_error()
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
        scope[API_KEY_SCOPE] = key
        return None


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return error_response(405, "method_not_allowed", "Method not allowed.")
    return error_response(404, "not_found", "Not found.")


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return unknown_error()
