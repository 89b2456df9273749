"""The sandbox's read-only API: auth, directory endpoints, the technique catalog."""

from __future__ import annotations

import re

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import auth

from floraq.sandbox import SandboxServer


def test_missing_auth_header_is_unauthorized(anon: httpx.Client) -> None:
    """No Authorization header: 401 unauthorized in the error envelope."""
    response = anon.get("/techniques/portrait-enhancer")
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "unauthorized", "message": "Missing Authorization header."}
    }


@pytest.mark.parametrize(
    "header", ["Bearer sk_live_wrong", "sk_test_sandbox", "Bearer  sk_test_sandbox"]
)
def test_wrong_key_is_invalid_api_key(anon: httpx.Client, header: str) -> None:
    """A wrong key, a missing Bearer scheme or stray whitespace: 401 invalid_api_key."""
    response = anon.get("/techniques", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "invalid_api_key", "message": "Invalid API key."}


def test_revoked_key_is_invalid_api_key(shared_sandbox: SandboxServer, anon: httpx.Client) -> None:
    """A revoked key is refused like an unknown one, while other keys still work."""
    shared_sandbox.configure(api_keys=["sk_test_a", "sk_test_b"], revoked_keys=["sk_test_a"])
    refused = anon.get("/techniques", headers=auth("sk_test_a"))
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert anon.get("/techniques", headers=auth("sk_test_b")).status_code == 200


def test_every_answer_has_a_request_id(api: httpx.Client, anon: httpx.Client) -> None:
    """Successes and errors alike carry `request-id: req_…`, unique per request."""
    ids = [client.get("/workspaces").headers["request-id"] for client in (api, anon)]
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)
    assert ids[0] != ids[1]


def test_workspaces_have_the_spec_shape(api: httpx.Client) -> None:
    """GET /workspaces lists ws_ workspaces with name, created_at and role."""
    (workspace,) = api.get("/workspaces").json()["workspaces"]
    assert set(workspace) == {"workspace_id", "name", "created_at", "role"}
    assert workspace["workspace_id"].startswith("ws_")


def test_projects_of_a_workspace(api: httpx.Client) -> None:
    """GET /projects?workspace_id= lists prj_ projects with a null next_cursor."""
    body = api.get("/projects", params={"workspace_id": "ws_sandbox01"}).json()
    assert [p["project_id"] for p in body["projects"]] == ["prj_sandbox01", "prj_sandbox02"]
    assert body["meta"] == {"next_cursor": None}


@pytest.mark.parametrize("params", [{}, {"workspace_id": "sandbox01"}])
def test_projects_need_a_ws_prefixed_workspace(api: httpx.Client, params: dict[str, str]) -> None:
    """A missing or unprefixed workspace_id: 400 naming the field and the prefix."""
    response = api.get("/projects", params=params)
    message = "Workspace identifier must start with ws_"
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "input_validation_error",
        "message": f"workspace_id: {message}",
        "fields": [{"field": "workspace_id", "message": message}],
    }


def test_projects_of_unknown_workspace_is_not_found(api: httpx.Client) -> None:
    """A well-formed but unknown workspace id: 404 not_found."""
    response = api.get("/projects", params={"workspace_id": "ws_nobody"})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_models_filtered_by_type(api: httpx.Client) -> None:
    """GET /models?type=image returns only image models, each with the required fields."""
    models = api.get("/models", params={"type": "image"}).json()["models"]
    assert [m["type"] for m in models] == ["image", "image"]
    required = {"model_id", "name", "type", "provider", "capabilities", "estimated_credits"}
    assert all(required | {"estimated_seconds", "params"} <= set(m) for m in models)


def test_models_reject_unknown_type(api: httpx.Client) -> None:
    """An unknown model type is a validation error on the `type` field."""
    response = api.get("/models", params={"type": "hologram"})
    assert response.json()["error"]["fields"] == [
        {"field": "type", "message": "Must be one of image, video, audio, text"}
    ]


def test_list_techniques_limit_5_as_in_the_curl_example(api: httpx.Client) -> None:
    """`?limit=5` returns five techniques in the documented shape and a next cursor."""
    body = api.get("/techniques", params={"limit": 5}).json()
    assert len(body["techniques"]) == 5
    assert isinstance(body["meta"]["next_cursor"], str)
    for technique in body["techniques"]:
        assert set(technique) == {
            "technique_id",
            "name",
            "description",
            "run_cost",
            "inputs",
            "outputs",
        }
        assert technique["technique_id"].startswith("tech_")


def test_following_cursors_lists_every_technique_once(api: httpx.Client) -> None:
    """Following next_cursor until null visits the whole catalog exactly once."""
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = api.get("/techniques", params=params).json()
        seen += [t["technique_id"] for t in body["techniques"]]
        cursor = body["meta"]["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7


@pytest.mark.parametrize("limit", ["0", "101", "five", "-1", "2.5"])
def test_list_techniques_rejects_bad_limit(api: httpx.Client, limit: str) -> None:
    """limit outside 1-100 or not an integer: 400 with a `limit` field error."""
    response = api.get("/techniques", params={"limit": limit})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == [
        {"field": "limit", "message": "Must be an integer from 1 to 100"}
    ]


def test_list_techniques_rejects_foreign_cursor(api: httpx.Client) -> None:
    """A cursor the sandbox did not issue: 400 on the `cursor` field, not a 500."""
    response = api.get("/techniques", params={"cursor": "%%%not-base64"})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == [{"field": "cursor", "message": "Invalid cursor"}]


def test_get_technique_has_exactly_the_documented_shape(api: httpx.Client) -> None:
    """GET /techniques/portrait-enhancer matches the reference's example response."""
    assert api.get("/techniques/portrait-enhancer").json() == {
        "technique_id": "tech_portrait01",
        "name": "Portrait Enhancer",
        "description": "Enhance portrait photos with AI",
        "run_cost": 0.05,
        "inputs": [{"id": "input_image", "name": "Input Image", "type": "imageUrl"}],
        "outputs": [{"id": "output_image", "name": "Output Image", "type": "imageUrl"}],
    }


def test_get_technique_by_its_tech_id(api: httpx.Client) -> None:
    """The path accepts a technique id as well as a slug."""
    assert api.get("/techniques/tech_video04").json()["name"] == "Image to Video"


def test_unknown_technique_is_not_found(api: httpx.Client) -> None:
    """An unknown slug: 404 not_found naming the slug."""
    response = api.get("/techniques/cctv-cam")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "Technique 'cctv-cam' not found."}
    }


def test_unknown_path_is_a_json_404(api: httpx.Client) -> None:
    """Paths the API does not have still answer in the error envelope."""
    response = api.get("/nowhere")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_requests_are_counted_by_route_template(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """Stats count requests under their route template, not their concrete path."""
    api.get("/techniques/portrait-enhancer")
    api.get("/techniques/poster-maker")
    api.get("/workspaces")
    assert shared_sandbox.stats()["requests"] == {"GET /techniques/{slug}": 2, "GET /workspaces": 1}
