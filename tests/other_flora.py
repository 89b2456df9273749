"""A second, deliberately different FLORA implementation, to keep floraq honest.

It follows the same contract as the sandbox but makes every other choice the sources
leave open: opaque run ids, 201 without `poll_url`, status driven by polls rather
than time, a late `charged_cost`, media on `localhost` under another path, extra
fields everywhere, UUID request ids, terse error bodies, a 429 without Retry-After.
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

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/techniques/{slug}", self.technique),
                Route("/v1/techniques/{slug}/runs", self.create, methods=["POST"]),
                Route("/v1/techniques/{slug}/runs/{run_id}", self.poll),
                Route("/files/{run_id}/{name}", self.media),
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
        if request.path_params["slug"] != "sketch":
            return self.answer(404, {"error": {"code": "not_found", "message": "?"}})
        return self.answer(200, TECHNIQUE)

    async def create(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.answer(401, {"error": {"code": "invalid_api_key", "message": "no"}})
        if not self.throttled_once:
            self.throttled_once = True
            return self.answer(429, {"error": {"code": "rate_limited", "message": "slow"}})
        body = json.loads(await request.body())
        key = body.get("idempotency_key", "")
        self.posts += 1
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
