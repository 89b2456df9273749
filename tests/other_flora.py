"""A second, deliberately different FLORA implementation, to keep floraq honest.

It follows the same contract as the sandbox but makes every other choice the sources
leave open: opaque run ids, 201 without `poll_url`, status driven by polls rather
than time, a late `charged_cost`, media on `localhost` under another path, extra
fields everywhere, UUID request ids, terse error bodies, a 429 without Retry-After.
Its assets differ too: two workspaces (a manifest must choose), UUID asset ids, an
upload host named `localhost` under another path with S3-like form fields, a
`complete` that answers `pending_upload`, and `ready` only after two polls.
floraq must work against both.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KEY = "sk_live_other_0123456789"
TECHNIQUE = {
    "technique_id": "tech_zz9",
    "name": "Sketch",
    "run_cost": 0.25,
    "inputs": [{"id": "subject", "name": "Subject", "type": "text", "specified_duration": 0}],
    "outputs": [{"id": "sketch", "name": "Sketch", "type": "imageUrl"}],
    "workspace_id": "ws_other",
    "tags": ["unknown", "fields"],
}


RESTYLE = {
    "technique_id": "tech_rs1",
    "name": "Restyle",
    "run_cost": 0.5,
    "inputs": [{"id": "photo", "name": "Photo", "type": "imageUrl"}],
    "outputs": [{"id": "sketch", "name": "Sketch", "type": "imageUrl"}],
}
WORKSPACES = [
    {"workspace_id": "ws_other_a", "name": "Studio A", "created_at": "2026-01-01T00:00:00Z",
     "role": "owner"},
    {"workspace_id": "ws_other_b", "name": "Studio B", "created_at": "2026-02-01T00:00:00Z",
     "role": "member"},
]  # fmt: skip


@dataclass
class Asset:
    asset_id: str
    workspace_id: str
    policy: str
    sha256: str | None = None
    uploads: int = 0
    completed: bool = False
    polls: int = 0

    @property
    def url(self) -> str:
        return f"https://ik.imagekit.io/other/{self.asset_id}"

    @property
    def status(self) -> str:
        return "ready" if self.completed and self.polls >= 2 else "pending_upload"


@dataclass
class Run:
    run_id: str
    key: str
    subject: str
    polls: int = 0
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def body(self) -> bytes:
        return hashlib.sha512(self.subject.encode()).digest() * 50


@dataclass
class OtherFlora:
    port: int = 0
    runs: dict[str, Run] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    posts: int = 0
    media_gets: int = 0
    throttled_once: bool = False
    assets: dict[str, Asset] = field(default_factory=dict)
    asset_keys: dict[str, str] = field(default_factory=dict)
    upload_auth_headers: int = 0
    run_inputs: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/techniques/{slug}", self.technique),
                Route("/v1/techniques/{slug}/runs", self.create, methods=["POST"]),
                Route("/v1/techniques/{slug}/runs/{run_id}", self.poll),
                Route("/files/{run_id}/{name}", self.media),
                Route("/v1/workspaces", self.workspaces),
                Route("/v1/assets", self.create_asset, methods=["POST"]),
                Route("/v1/assets/{asset_id}", self.get_asset),
                Route("/v1/assets/{asset_id}/complete", self.complete, methods=["POST"]),
                Route("/v1/assets/{asset_id}/retry", self.complete, methods=["POST"]),
                Route("/upload-here/{policy}", self.upload, methods=["POST"]),
            ]
        )

    def answer(self, status: int, body: Any) -> Response:
        headers = {"request-id": str(uuid.uuid4())}
        return JSONResponse(body, status_code=status, headers=headers)

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {KEY}"

    async def technique(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.answer(401, {"error": {"code": "invalid_api_key", "message": "no"}})
        slug = request.path_params["slug"]
        if slug not in ("sketch", "restyle"):
            return self.answer(404, {"error": {"code": "not_found", "message": "?"}})
        return self.answer(200, TECHNIQUE if slug == "sketch" else RESTYLE)

    async def create(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.answer(401, {"error": {"code": "invalid_api_key", "message": "no"}})
        if not self.throttled_once:
            self.throttled_once = True
            return self.answer(429, {"error": {"code": "rate_limited", "message": "slow"}})
        body = json.loads(await request.body())
        key = body.get("idempotency_key", "")
        self.posts += 1
        value = body["inputs"][0]["value"]
        if request.path_params["slug"] == "restyle":
            asset = self.assets.get(value.rsplit("/", 1)[-1])
            if asset is None or asset.status != "ready":
                error = {"code": "input_validation_error", "message": "photo: not a ready asset"}
                return self.answer(400, {"error": error})
            self.run_inputs.append(asset.sha256 or "")
        if key in self.by_key:
            run = self.runs[self.by_key[key]]
        else:
            run = Run(
                run_id="j57" + uuid.uuid4().hex[:17], key=key, subject=body["inputs"][0]["value"]
            )
            self.runs[run.run_id] = run
            self.by_key[key] = run.run_id
        return self.answer(
            201,
            {"run_id": run.run_id, "status": "pending", "progress": 0,
             "created_at": run.created_at, "queue_position": 3},
        )  # fmt: skip

    async def poll(self, request: Request) -> Response:
        run = self.runs.get(request.path_params["run_id"])
        if not self.authorized(request) or run is None:
            return self.answer(404, {"error": {"code": "not_found", "message": "?"}})
        run.polls += 1
        status = ["pending", "running"][min(run.polls, 1)] if run.polls < 3 else "completed"
        body: dict[str, Any] = {
            "run_id": run.run_id,
            "status": status,
            "progress": min(100, run.polls * 40),
            "created_at": run.created_at,
            "debug": {"worker": "w-7"},
        }
        if status == "completed":
            body["completed_at"] = run.created_at + 1500
            host = "localhost"  # the API was called on 127.0.0.1: media elsewhere
            body["outputs"] = [
                {"output_id": "sketch", "type": "imageUrl",
                 "url": f"http://{host}:{self.port}/files/{run.run_id}/x?sig=1", "width": 64},
            ]  # fmt: skip
            if run.polls > 3:
                body["charged_cost"] = 0.25
        return self.answer(200, body)

    async def media(self, request: Request) -> Response:
        if "authorization" in request.headers:
            return Response("no keys here", status_code=400)
        run = self.runs[request.path_params["run_id"]]
        self.media_gets += 1
        return Response(run.body, media_type="image/webp")

    async def workspaces(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.answer(401, {"error": {"code": "invalid_api_key", "message": "no"}})
        return self.answer(200, {"workspaces": WORKSPACES})

    def asset_answer(self, asset: Asset, status: int = 200) -> Response:
        return self.answer(
            status,
            {"asset_id": asset.asset_id, "uploaded_via": "signed_url", "url": asset.url,
             "workspace_id": asset.workspace_id, "visibility": "workspace",
             "status": asset.status, "region": "eu",
             "upload": {"url": f"http://localhost:{self.port}/upload-here/{asset.policy}",
                        "method": "POST", "content_type": "multipart/form-data",
                        "file_field": "file",
                        "form_fields": {"policy": asset.policy, "x-amz-meta": "1"}}},
        )  # fmt: skip

    async def create_asset(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.answer(401, {"error": {"code": "invalid_api_key", "message": "no"}})
        body = json.loads(await request.body())
        key = request.headers.get("idempotency-key", "")
        if key in self.asset_keys:
            return self.asset_answer(self.assets[self.asset_keys[key]], 201)
        asset = Asset("asset_" + uuid.uuid4().hex, body["workspace_id"], uuid.uuid4().hex)
        self.assets[asset.asset_id] = asset
        if key:
            self.asset_keys[key] = asset.asset_id
        return self.asset_answer(asset, 201)

    async def get_asset(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["asset_id"])
        if not self.authorized(request) or asset is None:
            return self.answer(404, {"error": {"code": "not_found", "message": "?"}})
        if asset.completed:
            asset.polls += 1
        return self.answer(200, {"asset_id": asset.asset_id, "status": asset.status,
                                 "url": asset.url, "failure_message": None})  # fmt: skip

    async def complete(self, request: Request) -> Response:
        asset = self.assets.get(request.path_params["asset_id"])
        if not self.authorized(request) or asset is None:
            return self.answer(404, {"error": {"code": "not_found", "message": "?"}})
        if asset.sha256 is None:
            return self.answer(400, {"error": {"code": "input_validation_error",
                                               "message": "no file"}})  # fmt: skip
        asset.completed = True
        return self.asset_answer(asset)

    async def upload(self, request: Request) -> Response:
        if "authorization" in request.headers:
            self.upload_auth_headers += 1
            return Response("no keys here", status_code=400)
        asset = next((a for a in self.assets.values()
                      if a.policy == request.path_params["policy"]), None)  # fmt: skip
        boundary = request.headers["content-type"].split("boundary=", 1)[1].strip('"')
        pieces = (await request.body()).split(b"--" + boundary.encode())
        fields = {}
        for piece in pieces[1:-1]:
            head, _, data = piece[2:].partition(b"\r\n\r\n")
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            fields[name] = data[:-2]
        if asset is None or fields.get("policy") != asset.policy.encode() or "file" not in fields:
            return Response("bad form", status_code=400)
        asset.sha256 = hashlib.sha256(fields["file"]).hexdigest()
        asset.uploads += 1
        return Response(status_code=204)


@contextmanager
def serving() -> Iterator[OtherFlora]:
    flora = OtherFlora()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    flora.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(flora.app(), log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield flora
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
