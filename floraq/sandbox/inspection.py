"""``/_sandbox/*``: what tests and benchmarks read and turn; no auth, no faults."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from floraq.sandbox.responses import error_response, parse_json, validation_error
from floraq.sandbox.state import SandboxState
from floraq.sandbox.validation import FieldError


class InspectionRoutes:
    """Stats, runs, knobs, reset, and the clock."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def runs(self, request: Request) -> Response:
        return JSONResponse(self.state.report())

    async def assets(self, request: Request) -> Response:
        """Every asset: its status, and the sha256, size and upload count of its bytes."""
        now = self.state.now()
        return JSONResponse(
            [
                {
                    "asset_id": a.asset_id,
                    "url": a.url,
                    "status": a.status(now).value,
                    "sha256": a.sha256,
                    "size": a.size,
                    "uploads": a.uploads,
                    "file_name": a.file_name,
                }
                for a in self.state.assets.assets.values()
            ]
        )

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.state.config.to_json())

    async def configure(self, request: Request) -> Response:
        changes = parse_json(await request.body())
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
        options = parse_json(raw) if raw else {}
        if isinstance(options, dict) and options.get("restore_config"):
            self.state.restore_config()
        self.state.reset()
        return JSONResponse({"reset": True})

    async def advance_clock(self, request: Request) -> Response:
        """``{"advance": seconds}`` moves the sandbox clock on, frozen or not."""
        body = parse_json(await request.body())
        seconds = body.get("advance") if isinstance(body, dict) else None
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < math.inf
        ):
            return validation_error([("advance", "Must be a finite number of seconds >= 0")])
        self.state.clock.advance(float(seconds))
        return JSONResponse({"frozen": self.state.clock.frozen, "wall_ms": self.state.wall_ms()})


def _split_problem(problem: str) -> FieldError:
    name, _, message = problem.partition(": ")
    return (name, message)
