"""The asset routes: ``POST /assets``, ``GET /assets/{id}``, ``complete`` and ``retry``.

Create, complete and retry take an ``Idempotency-Key`` (remembered per API key for
``idempotency_window``, as run keys are): a repeat replays the asset as it is now, or
answers 409 under ``idempotency: suppress``, or 422 when a create's body differs.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from floraq.sandbox import directory
from floraq.sandbox.api_runs import API_KEY_SCOPE
from floraq.sandbox.assets import Asset, AssetStatus, full_view, short_view
from floraq.sandbox.idempotency import fingerprint
from floraq.sandbox.responses import MALFORMED, error_response, parse_json, validation_error
from floraq.sandbox.state import SandboxState
from floraq.sandbox.validation import FieldError, is_valid_key

CREATE_FIELDS = ("source", "workspace_id", "folder", "content_type", "file_name")


class AssetRoutes:
    """Reserve, complete, read and retry assets; auth has already happened."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def create(self, request: Request) -> Response:
        state, api_key = self.state, request.scope[API_KEY_SCOPE]
        if api_key in state.config.read_only_keys:
            return error_response(403, "forbidden", "This API key cannot create assets.")
        body = parse_json(await request.body())
        if body is MALFORMED or not isinstance(body, dict):
            return error_response(400, "invalid_json", "Request body must be a JSON object.")
        key = request.headers.get("idempotency-key")
        errors = _create_errors(body) + _key_errors(key)
        if errors:
            return validation_error(errors)
        workspaces = {w["workspace_id"] for w in directory.WORKSPACES}
        if body["workspace_id"] not in workspaces:
            return error_response(
                404, "not_found", f"Workspace '{body['workspace_id']}' not found."
            )
        same_as = fingerprint("assets", body)
        if key:
            earlier = state.find_asset_key(api_key, "create|" + key)
            if earlier is not None:
                return self._repeat(earlier, state.asset_key_bodies.get((api_key, key)), same_as)
        asset = state.assets.create(
            body, api_key=api_key, wall_ms=state.wall_ms(), config=state.config
        )
        state.counters.assets_created += 1
        if key:
            state.asset_keys.remember(api_key, "create|" + key, asset.asset_id, now=state.now())
            state.asset_key_bodies[(api_key, key)] = same_as
        return JSONResponse(self._short(asset, with_upload=True), status_code=201)

    def _repeat(self, asset: Asset, earlier: str | None, same_as: str) -> Response:
        state = self.state
        if state.config.idempotency == "suppress":
            state.counters.idempotency_rejections += 1
            return error_response(409, "idempotency_duplicate", "Duplicate idempotency key.")
        if earlier is not None and earlier != same_as:
            state.counters.idempotency_rejections += 1
            message = "This idempotency key was used with a different request body."
            return error_response(422, "idempotency_conflict", message)
        state.counters.asset_replays += 1
        return JSONResponse(
            self._short(asset, with_upload=True),
            status_code=201,
            headers={"idempotent-replayed": "true"},
        )

    async def get(self, request: Request) -> Response:
        asset = self._find(request)
        if asset is None:
            return error_response(404, "not_found", "Asset not found.")
        return JSONResponse(full_view(asset, now=self.state.now()))

    async def complete(self, request: Request) -> Response:
        state = self.state
        asset, refusal = self._mutable(request, "complete")
        if asset is None:
            return refusal
        if asset.settles_at is None:
            if asset.sha256 is None:
                expired = state.wall_ms() > asset.expires_ms
                why = "has expired; retry the asset" if expired else "has received no file yet"
                return validation_error([("asset_id", f"The upload reservation {why}")])
            state.assets.complete(asset, now=state.now(), config=state.config)
        self._remember(request, "complete", asset)
        return JSONResponse(self._short(asset, with_upload=False))

    async def retry(self, request: Request) -> Response:
        state = self.state
        asset, refusal = self._mutable(request, "retry")
        if asset is None:
            return refusal
        status = asset.status(state.now())
        if status is AssetStatus.READY:
            return validation_error([("asset_id", "The asset is ready; there is nothing to retry")])
        if asset.settles_at is not None and status is AssetStatus.PENDING_UPLOAD:
            return validation_error([("asset_id", "The asset is being processed; wait for it")])
        state.assets.reserve(asset, wall_ms=state.wall_ms(), config=state.config)
        self._remember(request, "retry", asset)
        return JSONResponse(self._short(asset, with_upload=True))

    def _mutable(self, request: Request, kind: str) -> tuple[Asset | None, Response]:
        """The asset to complete or retry, or the answer when there is nothing to do."""
        state, api_key = self.state, request.scope[API_KEY_SCOPE]
        asset = self._find(request)
        if asset is None:
            return None, error_response(404, "not_found", "Asset not found.")
        key = request.headers.get("idempotency-key")
        errors = _key_errors(key)
        if errors:
            return None, validation_error(errors)
        if key:
            earlier = state.find_asset_key(api_key, f"{kind}|{key}")
            if earlier is not None:
                if state.config.idempotency == "suppress":
                    state.counters.idempotency_rejections += 1
                    return None, error_response(
                        409, "idempotency_duplicate", "Duplicate idempotency key."
                    )
                state.counters.asset_replays += 1
                replay = self._short(earlier, with_upload=kind == "retry")
                return None, JSONResponse(replay, headers={"idempotent-replayed": "true"})
        return asset, Response()

    def _remember(self, request: Request, kind: str, asset: Asset) -> None:
        """A key is kept only once its request succeeded: a refused one may come again."""
        key = request.headers.get("idempotency-key")
        if key:
            api_key = request.scope[API_KEY_SCOPE]
            self.state.asset_keys.remember(
                api_key, f"{kind}|{key}", asset.asset_id, now=self.state.now()
            )

    def _find(self, request: Request) -> Asset | None:
        asset = self.state.assets.assets.get(request.path_params["asset_id"])
        if asset is None or asset.api_key != request.scope[API_KEY_SCOPE]:
            return None  # missing and inaccessible both 404, as the spec says
        return asset

    def _short(self, asset: Asset, *, with_upload: bool) -> dict[str, Any]:
        state = self.state
        return short_view(
            state.assets,
            asset,
            now=state.now(),
            upload_url=state.upload_url,
            with_upload=with_upload,
        )


def _create_errors(body: dict[str, Any]) -> list[FieldError]:
    errors = [(name, "Unrecognized field") for name in body if name not in CREATE_FIELDS]
    for name in ("source", "workspace_id"):
        if name not in body:
            errors.append((name, "Required"))
    for name in CREATE_FIELDS:
        if name in body and not isinstance(body[name], str):
            errors.append((name, "Must be a string"))
    if isinstance(body.get("source"), str) and body["source"] != "signed-url":
        errors.append(("source", 'The sandbox takes "signed-url" uploads only'))
    return errors


def _key_errors(key: str | None) -> list[FieldError]:
    if key is not None and not is_valid_key(key):
        return [("Idempotency-Key", "Must be a string of 1 to 255 characters")]
    return []
