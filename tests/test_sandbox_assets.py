"""The sandbox's assets API: reserve, upload to a third-party host, complete, ready, retry."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import portrait

from floraq.sandbox import SandboxServer

WS = "ws_sandbox01"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def create(api: httpx.Client, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    payload = {"source": "signed-url", "workspace_id": WS, "file_name": "a.png"} | body
    return api.post("/assets", json=payload, headers=headers)


def upload(reservation: dict[str, Any], data: bytes, **headers: str) -> httpx.Response:
    up = reservation["upload"]
    return httpx.post(
        up["url"],
        data=up["form_fields"],
        files={up["file_field"]: ("a.png", data, "image/png")},
        headers=headers,
        trust_env=False,
    )


def test_the_whole_flow_makes_a_ready_asset_holding_the_bytes(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """create -> multipart upload (no key) -> complete -> GET ready, with the spec's shapes."""
    created = create(api, content_type="image/png")
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "pending_upload" and body["asset_id"].startswith("asset_")
    assert body["upload"]["method"] == "POST" and body["upload"]["file_field"] == "file"
    assert body["upload"]["content_type"] == "multipart/form-data"
    assert body["url"].startswith("https://") and body["visibility"] == "workspace"
    assert body["upload"]["url"].startswith(shared_sandbox.upload_url)
    assert upload(body, PNG).status_code == 200
    done = api.post(f"/assets/{body['asset_id']}/complete")
    assert done.status_code == 200 and done.json()["status"] == "ready"
    got = api.get(f"/assets/{body['asset_id']}").json()
    assert (got["status"], got["size_bytes"], got["content_type"]) == (
        "ready",
        len(PNG),
        "image/png",
    )
    assert got["failure_message"] is None and got["created_at"].endswith("Z")
    (asset,) = shared_sandbox.assets()
    assert asset["sha256"] == hashlib.sha256(PNG).hexdigest() and asset["uploads"] == 1
    stats = shared_sandbox.stats()
    assert (stats["assets_created"], stats["uploads"], stats["upload_bytes"]) == (1, 1, len(PNG))


def test_the_upload_host_refuses_an_authorization_header(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    body = create(api).json()
    refused = upload(body, PNG, Authorization=f"Bearer {shared_sandbox.api_key}")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "authorization_not_allowed"
    assert shared_sandbox.stats()["upload_auth_rejections"] == 1
    assert shared_sandbox.stats()["uploads"] == 0


def test_the_upload_host_checks_the_form_fields(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """A missing or forged field, or the file before the fields, takes no upload."""
    body = create(api).json()
    forged = {**body, "upload": {**body["upload"]}}
    forged["upload"]["form_fields"] = {**body["upload"]["form_fields"], "signature": "0" * 64}
    assert upload(forged, PNG).status_code == 403
    lacking = {**body, "upload": {**body["upload"]}}
    lacking["upload"]["form_fields"] = {"token": body["upload"]["form_fields"]["token"]}
    answer = upload(lacking, PNG)
    assert answer.status_code == 400 and "lacks expire, signature, fileName" in answer.text
    assert shared_sandbox.stats()["uploads"] == 0
    complete = api.post(f"/assets/{body['asset_id']}/complete")
    assert complete.status_code == 400 and "received no file" in complete.text


def test_an_expired_reservation_is_renewed_by_retry(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    shared_sandbox.configure(frozen_clock=True, upload_ttl=60)
    body = create(api).json()
    shared_sandbox.advance_clock(61)
    expired = upload(body, PNG)
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "upload_expired"
    fresh = api.post(f"/assets/{body['asset_id']}/retry")
    assert fresh.status_code == 200 and fresh.json()["asset_id"] == body["asset_id"]
    assert upload(body, PNG).status_code == 403  # the old reservation stays dead
    assert upload(fresh.json(), PNG).status_code == 200
    assert api.post(f"/assets/{body['asset_id']}/complete").json()["status"] == "ready"


def test_slow_ready_and_failed_assets(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    shared_sandbox.configure(frozen_clock=True, asset_ready_delay=5, asset_failure_rate=1.0)
    body = create(api).json()
    upload(body, PNG)
    assert api.post(f"/assets/{body['asset_id']}/complete").json()["status"] == "pending_upload"
    shared_sandbox.advance_clock(5)
    got = api.get(f"/assets/{body['asset_id']}").json()
    assert got["status"] == "failed" and got["failure_message"]
    shared_sandbox.configure(asset_failure_rate=0.0)
    again = api.post(f"/assets/{body['asset_id']}/retry").json()
    upload(again, PNG)
    api.post(f"/assets/{body['asset_id']}/complete")
    shared_sandbox.advance_clock(5)
    assert api.get(f"/assets/{body['asset_id']}").json()["status"] == "ready"


def test_create_replays_a_key_and_suppress_answers_409(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    first = create(api, key="fqa1_x")
    again = create(api, key="fqa1_x")
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["asset_id"] == first.json()["asset_id"]
    assert create(api, key="fqa1_x", file_name="b.png").status_code == 422
    shared_sandbox.configure(idempotency="suppress")
    assert create(api, key="fqa1_x").status_code == 409
    assert shared_sandbox.stats()["assets_created"] == 1


def test_upload_faults_answer_503_and_take_nothing(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    shared_sandbox.configure(upload_5xx_rate=1.0)
    body = create(api).json()
    assert upload(body, PNG).status_code == 503
    stats = shared_sandbox.stats()
    assert (stats["uploads"], stats["upload_faults"]) == (0, 1)


@pytest.mark.parametrize("ready", [False, True])
def test_runs_check_their_asset_inputs_when_asked(
    shared_sandbox: SandboxServer, api: httpx.Client, ready: bool
) -> None:
    """check_asset_inputs: an asset URL input must be ready; the run reports its bytes."""
    shared_sandbox.configure(check_asset_inputs=True)
    body = create(api).json()
    if ready:
        upload(body, PNG)
        api.post(f"/assets/{body['asset_id']}/complete")
    answer = api.post("/techniques/portrait-enhancer/runs", json=portrait(body["url"]))
    if not ready:
        assert answer.status_code == 400 and "is not ready" in answer.text
        return
    assert answer.status_code == 200
    (run,) = shared_sandbox.runs()
    assert run["input_assets"] == {"input_image": hashlib.sha256(PNG).hexdigest()}


def test_a_large_upload_streams_through(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """Eight megabytes in many chunks, boundary-like bytes included, hash exactly."""
    data = (b"\r\n--" + b"x" * 61 + b"\r\n") * 131072
    body = create(api).json()
    assert upload(body, data).status_code == 200
    (asset,) = shared_sandbox.assets()
    assert asset["sha256"] == hashlib.sha256(data).hexdigest() and asset["size"] == len(data)
