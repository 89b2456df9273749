"""The read-only FLORA routes: workspaces, projects, models, and the technique catalog."""

from __future__ import annotations

import base64
import binascii
import json

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from floraq.sandbox import directory
from floraq.sandbox.config import Catalog, Technique
from floraq.sandbox.responses import error_response, validation_error
from floraq.sandbox.state import SandboxState
from floraq.sandbox.validation import FieldError, parse_limit


class DirectoryRoutes:
    """``/workspaces``, ``/projects``, ``/models`` and ``/techniques[/{slug}]``."""

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
        matching = _search(self.state.catalog, params.get("query", "").lower())
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
            return technique_not_found(request.path_params["slug"])
        return JSONResponse(technique.to_json())


def technique_not_found(slug: str) -> JSONResponse:
    return error_response(404, "not_found", f"Technique '{slug}' not found.")


def _search(catalog: Catalog, query: str) -> list[Technique]:
    return [
        t
        for t in catalog.techniques
        if query in t.slug or query in t.name.lower() or query in t.description.lower()
    ]


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
