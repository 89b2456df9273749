"""The routes that make and read runs: ``POST`` and ``GET /techniques/{slug}/runs[/{id}]``.

Idempotency is decided here, in the order FLORA's sources imply: validate the body and
the key, then look the key up (replay, 409 or 422), then check credits, then create.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from floraq.sandbox.api_directory import technique_not_found
from floraq.sandbox.assets import ASSET_URL_BASE, AssetStatus
from floraq.sandbox.config import Technique
from floraq.sandbox.responses import (
    API_PREFIX,
    MALFORMED,
    error_response,
    parse_json,
    validation_error,
)
from floraq.sandbox.state import Run, SandboxState, fingerprint, normalize_inputs
from floraq.sandbox.validation import FieldError, is_valid_key, validate_run_body

API_KEY_SCOPE = "floraq.sandbox.api_key"  # where the front door leaves the caller's key
COALESCE_GAP = 0.05  # seconds a non-coalescing create holds its key check open


class RunRoutes:
    """Create a run (idempotently) and poll one; auth has already happened."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def create_run(self, request: Request) -> Response:
        config, state = self.state.config, self.state
        api_key: str = request.scope[API_KEY_SCOPE]
        if api_key in config.read_only_keys:
            return error_response(403, "forbidden", "This API key cannot create runs.")
        technique = state.catalog.find(request.path_params["slug"])
        if technique is None:
            return technique_not_found(request.path_params["slug"])
        body = parse_json(await request.body())
        if body is MALFORMED:
            return error_response(400, "invalid_json", "Malformed JSON in request body.")
        if not isinstance(body, dict):
            return error_response(400, "invalid_json", "Request body must be a JSON object.")
        header_key = request.headers.get("idempotency-key") or None
        errors = validate_run_body(body, technique) + _key_errors(header_key, body)
        if config.check_asset_inputs and not errors:
            errors = self._asset_errors(body["inputs"], api_key)
        if errors:
            return validation_error(errors)
        body_key = body.get("idempotency_key")
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
        return self._create(request, technique, body, key=key, api_key=api_key, same_as=same_as)

    def _asset_errors(self, inputs: list[dict[str, Any]], api_key: str) -> list[FieldError]:
        """Every input naming one of our assets must name a ready one of this key's."""
        errors: list[FieldError] = []
        now = self.state.now()
        for n, item in enumerate(inputs):
            value = item["value"]
            if not value.startswith(ASSET_URL_BASE):
                continue
            asset = self.state.assets.by_url(value)
            if asset is None or asset.api_key != api_key:
                errors.append((f"inputs[{n}].value", "Unknown asset"))
            elif asset.status(now) is not AssetStatus.READY:
                errors.append((f"inputs[{n}].value", f"Asset {asset.asset_id} is not ready"))
        return errors

    def _create(
        self,
        request: Request,
        technique: Technique,
        body: dict[str, Any],
        *,
        key: str | None,
        api_key: str,
        same_as: str,
    ) -> Response:
        config = self.state.config
        run = self.state.create_run(
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
            answer["poll_url"] = poll_url(request, run)
        return JSONResponse(answer, status_code=config.create_status)

    def _repeat(self, request: Request, run: Run, same_as: str) -> Response:
        """A key seen before: replay its run, or refuse as the configured reading says."""
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
            state.view(run, poll_url=poll_url(request, run)),
            status_code=state.config.create_status,
            headers={"idempotent-replayed": "true"},
        )

    async def get_run(self, request: Request) -> Response:
        technique = self.state.catalog.find(request.path_params["slug"])
        if technique is None:
            return technique_not_found(request.path_params["slug"])
        run = self.state.runs.get(request.path_params["run_id"])
        if run is None or run.technique.slug != technique.slug:
            return error_response(404, "not_found", "Run not found.")
        self.state.settle()
        return JSONResponse(self.state.view(run, poll_url=poll_url(request, run)))


def _key_errors(header_key: str | None, body: dict[str, Any]) -> list[FieldError]:
    """The key may come as a header, in the body, or both if they agree."""
    body_key = body.get("idempotency_key")
    if header_key is not None and not is_valid_key(header_key):
        return [("Idempotency-Key", "Must be a string of 1 to 255 characters")]
    if header_key is not None and body_key is not None and header_key != body_key:
        return [("idempotency_key", "Does not match the Idempotency-Key header")]
    return []


def poll_url(request: Request, run: Run) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}{API_PREFIX}/techniques/{run.technique.slug}/runs/{run.run_id}"
